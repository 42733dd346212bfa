"""dashcamctl doctor: one command that proves the whole chain works, or says which link does not.

One line per check, in the order the footage flows (configuration, tools, the programs the
units run, the battery and the UPS's own settings, USB, the camera, staging and the ledger,
the clock, the server, systemd, MQTT), each ``ok``, ``warn`` or ``FAIL`` with what was found
and, when not ok, the command or configuration key that fixes it. Exit status 1 when any
check FAILs, 0 otherwise.

Read-only: it reads the battery once, asks uhubctl for the port status (no ``-a``), reads
sysfs, opens the ledger read-only, and probes the server with dry runs only. Every external
call has a short timeout (TOOL_TIMEOUT, SERVER_TIMEOUT), so a run stays within seconds even
when the server or a tool does not answer.

``--switch`` adds the one check that changes something: under the policy's lock, the camera
goes to data mode, the time until its storage appears (enumeration) is measured, and it goes
back to record whatever happened (a failure to get back is a FAIL line with the fix). It is
refused (exit 75, one line, nothing switched) when the battery or a running ingest or upload
says not now: see ``switch_refusal``.

The checks live by area (``check``: the line and the machine; ``local``: configuration, tools,
programs, staging, ledger, clock; ``hardware``: UPS, USB, camera; ``switch``: --switch;
``network``: server and broker; ``units``: systemd); here is the run and its report.

Seams for tests (parameters of ``Machine``, never module globals): a root prefix for /proc
and /lib/modules, the names of systemctl, journalctl and timedatectl, the udev context,
the user that owns staging. The fake sysfs comes from DASHCAM_SYSFS, as everywhere.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import EX_CONFIG, EX_TEMPFAIL
from ..ignition import LOCK_PATH
from ..log import get as get_logger
from .check import FAIL, OK, WARN, Check, Machine, fail, ok, warn
from .hardware import (card_space, check_battery, check_camera, check_card, check_ups_settings, check_usb,
                       mode_off_reach, onboard_hub, pi_model, shutdown_millivolts)
from .local import (check_clock, check_config, check_config_mode, check_key_mode, check_ledger, check_program, check_programs,
                    check_staging, check_tools, programs)
from .network import (RESTRICT_PROBE, SECOND_PROBE_MIN, SERVER_BUDGET, SERVER_TIMEOUT, SHIPPED_UPLOAD_HOST,
                      check_key, check_mqtt, check_server, connection_timeout)
from .switch import INGEST_STOP, SWITCH, TO_DATA, TO_RECORD, check_switch, switch_precheck, switch_refusal
from .units import check_systemd, timespan

# what `from dashcam_helpers import doctor` offers: the run, and each check by its name
__all__ = [
    "FAIL", "OK", "WARN", "Check", "Machine", "run_checks", "render", "doctor_command",
    "card_space", "check_battery", "check_camera", "check_card", "check_ups_settings", "check_usb", "mode_off_reach",
    "onboard_hub", "pi_model", "shutdown_millivolts",
    "check_clock", "check_config", "check_config_mode", "check_key_mode", "check_ledger", "check_program", "check_programs",
    "check_staging", "check_tools", "programs",
    "RESTRICT_PROBE", "SECOND_PROBE_MIN", "SERVER_BUDGET", "SERVER_TIMEOUT", "SHIPPED_UPLOAD_HOST",
    "check_key", "check_mqtt", "check_server", "connection_timeout",
    "INGEST_STOP", "SWITCH", "TO_DATA", "TO_RECORD", "check_switch", "switch_precheck", "switch_refusal",
    "check_systemd", "timespan",
]

log = get_logger("dashcam.doctor")


def run_checks(config_path: Optional[str], m: Machine, monotonic: Optional[Callable[[], float]] = None,
               switch: bool = False, dry_run: bool = False, server_budget: float = SERVER_BUDGET) -> List[Check]:
    """Every check, in the order the footage flows. A check that breaks is a FAIL line, never the end.
    ``switch``: the camera through data mode and back, after the camera check (check_switch)."""
    import time

    monotonic = monotonic or time.monotonic
    checks: List[Check] = []
    if not m.is_root():
        checks.append(warn("privileges", "not root: some files and sysfs switches cannot be checked", "sudo dashcamctl doctor"))

    def guarded(label: str, fn: Callable[[], Any]) -> None:
        try:
            out = fn()
            checks.extend(out if isinstance(out, list) else [out])
        except Exception as e:  # one broken check must not hide the others
            log.debug("check %s failed", label, exc_info=True)
            checks.append(fail(label, f"the check itself failed: {type(e).__name__}: {e}"))

    from .. import config

    cfg, config_checks = check_config(config_path)
    checks.extend(config_checks)
    path = config.config_path(config_path)
    guarded("config file mode", lambda: check_config_mode(path) if os.path.exists(path) else [])
    if cfg is not None:
        guarded("ssh key", lambda: check_key_mode(cfg, m))
        guarded("tools", lambda: check_tools(cfg))
        guarded("programs", lambda: check_programs(cfg))
        reading: List[Any] = []

        def battery_checks():
            out, r = check_battery(cfg)
            reading.append(r)
            return out

        guarded("battery", battery_checks)
        if cfg.battery.source == "lifepo4wered" and reading and reading[0].raw:
            guarded("ups", lambda: check_ups_settings(cfg, dict(reading[0].raw)))
        seen: Dict[str, Any] = {}
        guarded("usb", lambda: check_usb(cfg, m, seen))
        guarded("camera", lambda: check_camera(cfg, m, seen.get("port")))
        if switch and dry_run:
            checks.append(ok(SWITCH, "dry run: not switched (data mode and back to record without --dry-run)"))
        elif switch:
            guarded(SWITCH, lambda: check_switch(cfg, m))
        guarded("staging", lambda: check_staging(cfg, m))
    guarded("clock", lambda: check_clock(m))
    if cfg is not None:
        guarded("server", lambda: check_server(cfg, budget=server_budget))
    guarded("systemd", lambda: check_systemd(m, monotonic))
    if cfg is not None:
        guarded("mqtt", lambda: check_mqtt(cfg))
    return checks


def render(checks: Sequence[Check]) -> str:
    from ..log import printable

    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {printable(c.found)}"
        if c.fix:
            line += f"  -> fix: {printable(c.fix)}"
        lines.append(line)
    return "\n".join(lines)


def doctor_command(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    import sys

    root = os.environ.get("DASHCAM_ROOT", "/")
    m = Machine(root=root, lock_path=os.path.join(root, LOCK_PATH.lstrip("/")))
    switch = getattr(args, "switch", False)
    if switch and not args.dry_run:
        from .. import config

        try:
            cfg = config.load(args.config)
        except config.ConfigError as e:
            print(f"dashcamctl doctor --switch: refused: {e.path} is not valid (dashcamctl doctor without --switch "
                  "lists the problems); nothing was switched", file=sys.stderr)
            return EX_CONFIG
        why = switch_precheck(cfg, m)
        if why is not None:
            print(f"dashcamctl doctor --switch: refused: {why}; nothing was switched", file=sys.stderr)
            return EX_TEMPFAIL
    budget = getattr(args, "server_timeout", None) or SERVER_BUDGET
    checks = run_checks(args.config, m, switch=switch, dry_run=args.dry_run, server_budget=budget)
    failed = sum(1 for c in checks if c.status == FAIL)
    warned = sum(1 for c in checks if c.status == WARN)
    if not args.json:
        print(render(checks))
        print(f"{len(checks)} checks: {failed} FAIL, {warned} warn")
    return (1 if failed else 0), {"ok": failed == 0, "fail": failed, "warn": warned, "checks": [c.as_dict() for c in checks]}
