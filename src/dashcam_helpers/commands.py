"""Small subcommands that only read: check-config and files."""

from __future__ import annotations

import argparse
import datetime
import sys

from . import config
from .cli import print_json
from .errors import EX_OK


def load_config(args: argparse.Namespace) -> config.Config:
    """The configuration chosen by --config / DASHCAM_CONFIG, with its warnings logged."""
    from .log import get as get_logger

    cfg = config.load(args.config)
    for warning in cfg.warnings:
        get_logger("dashcam.config").warning("%s: %s", cfg.path, warning)
    return cfg


def check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    cfg = config.load(path)  # ConfigError -> every problem printed, exit 78 (cli.main)
    if args.json:
        print_json({"path": cfg.path, "ok": True, "warnings": list(cfg.warnings), "config": config.as_dict(cfg)})
        return EX_OK
    for warning in cfg.warnings:
        print(f"{cfg.path}: warning: {warning}", file=sys.stderr)
    print(f"{cfg.path}: ok")
    return EX_OK


def _when(ts) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def files(args: argparse.Namespace) -> int:
    from .ledger import Ledger

    cfg = load_config(args)
    with Ledger(cfg.paths.ledger) as ledger:
        clips = ledger.files(args.state)
    if args.json:
        print_json([clip.__dict__ for clip in clips])
        return EX_OK
    if not clips:
        print("no clips" + (f" in state {args.state}" if args.state else ""))
        return EX_OK
    from .log import printable  # names come from the card: any bytes, shown escaped

    print(f"{'STATE':<9} {'SIZE':>12} {'UPDATED':<19} {'CAMERA':<10} PATH")
    for c in clips:
        extra = f"  ({printable(c.reason)})" if c.reason and c.state == "failed" else ""
        print(f"{c.state:<9} {c.size:>12} {_when(c.updated_at):<19} {printable(c.camera):<10} {printable(c.source_path)}{extra}")
    return EX_OK
