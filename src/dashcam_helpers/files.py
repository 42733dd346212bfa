"""dashcamctl files: the footage ledger, one clip a line (or JSON)."""

from __future__ import annotations

import argparse
import datetime
from typing import Any, Dict, List, Tuple

from .errors import EX_OK


def _when(ts) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def files(args: argparse.Namespace, cfg) -> Tuple[int, List[Dict[str, Any]]]:
    from .ledger import Ledger

    with Ledger(cfg.paths.ledger) as ledger:
        clips = ledger.files(args.state)
    document = [clip.__dict__ for clip in clips]
    if args.json:
        return EX_OK, document
    if not clips:
        print("no clips" + (f" in state {args.state}" if args.state else ""))
        return EX_OK, document
    from .log import printable  # names come from the card: any bytes, shown escaped

    print(f"{'STATE':<9} {'SIZE':>12} {'UPDATED':<19} {'CAMERA':<10} PATH")
    for c in clips:
        extra = f"  ({printable(c.reason)})" if c.reason and c.state == "failed" else ""
        print(f"{c.state:<9} {c.size:>12} {_when(c.updated_at):<19} {printable(c.camera):<10} {printable(c.source_path)}{extra}")
    return EX_OK, document
