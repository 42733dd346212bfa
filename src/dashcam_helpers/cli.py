"""dashcamctl: the one command line of dashcam-manager.

Every systemd unit of the package is one short run of one subcommand. Subcommand
modules are imported only when chosen, so a policy tick does not pay for ingest code.
"""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    import argparse
    from typing import Any, Callable, Dict, List, Optional, Tuple

    from .config import Config

from . import __version__
from .errors import EX_CONFIG, EX_FAILURE, EX_OK, DashcamError
from .log import get as get_logger
from .strictjson import dumps

log = get_logger("dashcam")

# subcommand -> (module, function, given, one-line help). A function returns its exit code, or
# (exit code, document): the document is what --json prints (the command prints its text only without
# --json). `given` is what the function takes besides args:
#   "config"  the configuration (--config, $DASHCAM_CONFIG or /etc/dashcam/config.yaml) loaded here:
#             a broken one ends the run with every problem printed and exit 78
#   "cached"  the same through the JSON cache in $CACHE_DIRECTORY (config.load_cached): a tick every
#             30 s on battery parses no YAML. For these units, which keep the camera recording and
#             the battery safe, a broken file is said (ERROR) and the last good configuration the
#             cache holds is used in its place (config.broken): a typo over ssh must not stop a
#             low-battery shutdown nor leave the camera off the road. Exit 78 only without one.
#   "loader"  load_config itself: the command answers a broken configuration its own way (match
#             exits 255, policy-interval only leaves out a note, keygen first checks its argument)
#   None      nothing: the command reads the file itself (check-config names it, doctor checks it)
COMMANDS: Dict[str, Tuple[str, str, Optional[str], str]] = {
    "check-config": ("cli", "check_config", None, "validate a configuration file, print every problem"),
    "files": ("files", "files", "config", "list the footage ledger"),
    "status": ("status", "status", "config", "battery, power source, camera mode and attachment"),
    "mode": ("camera", "mode_command", "config", "switch the camera to record, data or off, and confirm it took"),
    "match": ("device", "match_command", "loader", "exit 0 if a block device is the configured camera, 1 if not, 255 if it cannot tell (broken config)"),
    "mqtt-publish": ("mqtt", "command", "config", "publish the current status to MQTT / Home Assistant once, and report how it went"),
    "policy": ("tick", "command", "cached", "one tick of the battery policy: decide the camera mode, start the upload, shut down when low"),
    "policy-interval": ("policy_timer", "command", "loader", "how often the battery policy ticks: set it (a correct drop-in on dashcam-policy.timer), --show it, --reset it"),
    "upload": ("upload", "cmd_upload", "config", "upload staged footage to the server, verify it, then free staging"),
    "keygen": ("ssh", "cmd_keygen", "loader", "create the upload ssh key, print the server's authorized_keys line"),
    "trust-host": ("ssh", "cmd_trust_host", "config", "fetch the server's host key, show its fingerprint, pin it"),
    "ingest": ("ingest", "command", "config", "copy new footage from the camera (or a directory) into staging"),
    "boot": ("ignition", "boot_command", "cached", "at power-on: camera to record on external power, else off (start disconnected)"),
    "doctor": ("doctor", "doctor_command", None, "check the whole chain (config, tools, battery, USB, camera, staging, server, systemd) and say what to fix"),
    "watch": ("ignition", "watch_command", "cached", "while the camera is not recording: back to record when the engine starts or the car leaves"),
}


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    import argparse  # on use: the policy timer's tick does without it (see _timer_args)

    parser = argparse.ArgumentParser(
        prog="dashcamctl",
        description="Keep a USB dashcam recording, bring its footage home, mind the battery.",
        epilog="Exit codes: 0 ok, 1 failure, 75 try later, 78 bad configuration.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config", metavar="PATH", help="configuration file (default: $DASHCAM_CONFIG or /etc/dashcam/config.yaml)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="log every action that would change hardware, mounts, files or the server; do none"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=COMMANDS[name][3], description=COMMANDS[name][3])

    p = add("check-config")
    p.add_argument("file", nargs="?", help="file to check (default: the --config file)")
    _add_json(p)

    p = add("files")
    p.add_argument("--state", choices=("staged", "uploaded", "verified", "pruned", "failed"))
    _add_json(p)

    p = add("status")
    _add_json(p)

    p = add("mode")
    p.add_argument("mode", choices=("record", "data", "off"), help="record: power on, data off; data: power and data on; off: power off")

    p = add("match")
    p.add_argument("devname", metavar="DEVNAME", help="block device, e.g. sda1 or /dev/sda1")

    p = add("mqtt-publish")
    p.add_argument("--offline", action="store_true", help="publish only availability 'offline' (clean shutdown)")
    p.add_argument("--if-configured", action="store_true", help="exit 0 quietly when MQTT is not configured")
    _add_json(p)

    p = add("policy")
    _add_json(p)

    p = add("policy-interval")
    p.add_argument("seconds", nargs="?", metavar="SECONDS",
                   help="tick every SECONDS (10..300): writes /etc/systemd/system/dashcam-policy.timer.d/interval.conf, "
                        "reloads systemd, restarts the timer and shows what systemd loaded")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="print the interval systemd really uses (changes nothing)")
    what.add_argument("--reset", action="store_true", help="remove the drop-in: back to the shipped 30 s")
    _add_json(p)

    add("upload")

    p = add("keygen")
    p.add_argument(
        "--server-dir",
        default="/srv/dashcam",
        metavar="DIR",
        help="directory on the server the key is restricted to (rrsync -wo -no-del -no-lock DIR; an absolute path of letters, digits and / . _ - + @ %% = : only; default /srv/dashcam)",
    )

    p = add("trust-host")
    p.add_argument("--yes", action="store_true", help="pin without asking")

    p = add("ingest")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("devname", nargs="?", help="the camera's block device (sda1 or /dev/sda1): mounted read-only")
    where.add_argument("--source", metavar="DIR", help="an already-mounted directory (an SD card in a reader)")
    _add_json(p)

    add("boot")
    add("watch")

    p = add("doctor")
    p.add_argument("--switch", action="store_true",
                   help="also cycle the camera through data mode and back to record, and say how long its storage took "
                        "to appear; refused (exit 75) on battery below thresholds.disconnect_percent, with an unknown "
                        "reading off external power, or while an ingest or upload runs")
    _add_json(p)
    p.add_argument("--server-timeout", type=float, metavar="SECONDS", default=None,
                   help="seconds for the server's probes (default 8): more for a slow link or a slow machine")

    return parser


def _timer_args(argv: List[str]):
    """The few argument lists of `dashcamctl [--config PATH] [--dry-run] [-v] policy [--json]`,
    parsed without argparse: importing it and building the parser costs a policy tick, run
    every 30 s on battery, about as much CPU as starting Python. Anything else: None (argparse)."""
    from types import SimpleNamespace

    args = SimpleNamespace(config=None, dry_run=False, verbose=False, command=None, json=False)
    rest = iter(argv)
    for word in rest:
        if args.command is None:
            if word == "--config":
                args.config = next(rest, None)
                if args.config is None or args.config.startswith("-"):
                    return None
            elif word.startswith("--config="):
                args.config = word[len("--config=") :]
            elif word == "--dry-run":
                args.dry_run = True
            elif word in ("-v", "--verbose"):
                args.verbose = True
            elif word == "policy":
                args.command = word
            else:
                return None
        elif word == "--json":
            args.json = True
        else:
            return None
    return args if args.command == "policy" and args.config != "" else None


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = _timer_args(argv)
    if args is None:
        args = build_parser().parse_args(argv)
    from . import log as logsetup

    logsetup.setup(args.verbose)
    module_name, func_name, given, _ = COMMANDS[args.command]
    func: Callable[..., Any] = getattr(
        # __import__, not importlib.import_module: the importlib package (and warnings) is not
        # loaded at startup, and every policy tick would pay for it
        __import__(f"{__package__}.{module_name}", fromlist=[func_name]), func_name
    )
    from .config import ConfigError

    try:
        if given is None:
            result = func(args)
        elif given == "loader":
            result = func(args, load_config)
        else:
            result = func(args, load_config(args, cached=given == "cached"))
        if isinstance(result, tuple):
            result, document = result
            if getattr(args, "json", False):
                print_json(document)
        return int(result or 0)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.path}: {problem}", file=sys.stderr)
        return EX_CONFIG
    except DashcamError as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EX_FAILURE
    except Exception as e:  # a bug: one clear line, the traceback only in debug output
        log.debug("traceback", exc_info=True)
        log.error("internal error in %s: %s: %s (run with -v for the traceback)", args.command, type(e).__name__, e)
        return EX_FAILURE


def load_config(args: argparse.Namespace, cached: bool = False) -> Config:
    """The configuration chosen by --config / DASHCAM_CONFIG, with its warnings logged. ``cached``:
    through the JSON cache in $CACHE_DIRECTORY (the units of the policy tick and the watch give one)."""
    from . import config

    if cached:
        cfg = config.load_cached(args.config, os.environ.get("CACHE_DIRECTORY"), last_good=True)
    else:
        cfg = config.load(args.config)
    for warning in cfg.warnings:
        get_logger("dashcam.config").warning("%s: %s", cfg.path, warning)
    if cfg.broken:
        more = f" (and {len(cfg.broken) - 1} more)" if len(cfg.broken) > 1 else ""
        get_logger("dashcam.config").error(
            "%s is broken: %s%s; %s runs on the last good configuration: the camera records and the battery"
            " is watched, no copy or upload until `dashcamctl check-config` passes",
            cfg.path, cfg.broken[0], more, args.command)
    return cfg


def print_json(data) -> None:
    sys.stdout.write(dumps(data, indent=2, sort_keys=True))
    sys.stdout.write("\n")


def check_config(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    """dashcamctl check-config [FILE]: every problem of the file (exit 78), or ok and its warnings."""
    from . import config

    cfg = config.load(args.file or args.config)  # ConfigError -> every problem printed, exit 78 (main)
    if not args.json:
        for warning in cfg.warnings:
            print(f"{cfg.path}: warning: {warning}", file=sys.stderr)
        print(f"{cfg.path}: ok")
    return EX_OK, {"path": cfg.path, "ok": True, "warnings": list(cfg.warnings), "config": config.as_dict(cfg)}

if __name__ == "__main__":
    sys.exit(main())
