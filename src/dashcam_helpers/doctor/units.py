"""doctor's checks of systemd: the package's units enabled and active, the policy timer's interval
and next tick, no failed dashcam unit."""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional

from .. import runner
from .check import Check, Machine, fail, first_line, ok, tool, warn

# what `systemctl show` is asked about; the ingest unit is a template, started per device by udev
UNITS = (
    "dashcam-boot.service",
    "dashcam-policy.timer",
    "dashcam-policy.service",
    "dashcam-upload.path",
    "dashcam-upload.service",
    "dashcam-watch.service",
)
POLICY_TIMER = "dashcam-policy.timer"
UPLOAD_PATH = "dashcam-upload.path"
BOOT_SERVICE = "dashcam-boot.service"


def timespan(text: str) -> Optional[float]:
    """systemd's time span ("1h 2min 3.5s", "30s", "500ms", "0") in seconds; None when not one."""
    from ..policy_timer import parse_timespan

    return 0.0 if text.strip() == "0" else parse_timespan(text)


def parse_show(text: str) -> List[Dict[str, List[str]]]:
    """`systemctl show` of several units: one dict per unit (blank-line separated), every value of
    a property kept (TimersMonotonic comes once per timer)."""
    units: List[Dict[str, List[str]]] = []
    current: Dict[str, List[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                units.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current.setdefault(key, []).append(value)
    if current:
        units.append(current)
    return units


def _one(unit: Dict[str, List[str]], key: str) -> str:
    return (unit.get(key) or [""])[-1]


def timer_intervals(unit: Dict[str, List[str]]) -> List[float]:
    """Every OnUnitActiveSec of a timer, in seconds (more than one: it ticks at the shortest)."""
    found = []
    for value in unit.get("TimersMonotonic", []):
        for mt in re.finditer(r"OnUnitActiveUSec=([^;}]+)", value):
            span = timespan(mt.group(1))
            if span is not None:
                found.append(span)
    return found


def wall_time(text: str) -> Optional[float]:
    """A systemd timestamp in local time ("Thu 2026-08-13 08:39:21 CEST") as a Unix time; None if not one."""
    import time

    mt = re.search(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})", text)
    if not mt:
        return None
    try:
        return time.mktime(time.strptime(mt.group(1), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def next_tick(unit: Dict[str, List[str]], monotonic: Callable[[], float], wall: Callable[[], float]) -> Optional[float]:
    """Seconds until the timer's next tick: from NextElapseUSecMonotonic (a time since boot), else from
    the next_elapse of its OnUnitActiveSec (a time since boot or a local timestamp, by systemd version)."""
    candidates = [_one(unit, "NextElapseUSecMonotonic")]
    for value in unit.get("TimersMonotonic", []):
        mt = re.search(r"OnUnitActiveUSec=[^;}]+;\s*next_elapse=([^}]+)", value)
        if mt:
            candidates.append(mt.group(1).strip())
    for text in candidates:
        span = timespan(text)
        if span:
            return max(0.0, span - monotonic())
        at = wall_time(text)
        if at is not None:
            return max(0.0, at - wall())
    return None


def check_systemd(m: Machine, monotonic: Callable[[], float], wall: Optional[Callable[[], float]] = None) -> List[Check]:
    import time

    wall = wall or time.time
    props = "Id,LoadState,ActiveState,SubState,UnitFileState,NextElapseUSecMonotonic,TimersMonotonic"
    try:
        res = tool([m.systemctl, "show", "-p", props, "--", *UNITS])
    except runner.CommandError as e:
        return [warn("systemd", f"cannot ask systemctl: {e}")]
    if res.returncode != 0:
        return [warn("systemd", f"systemctl show: {first_line(res.stderr) or runner.describe_returncode(res.returncode)}")]
    units = {_one(u, "Id"): u for u in parse_show(res.stdout)}
    checks = []
    missing = [name for name in UNITS if _one(units.get(name, {}), "LoadState") != "loaded"]
    if missing:
        checks.append(fail("units installed", f"not loaded: {', '.join(missing)}",
                           "sudo apt install ./dashcam-manager_*_all.deb (then sudo systemctl daemon-reload)"))
    else:
        checks.append(ok("units installed", f"{len(UNITS)} units loaded"))
    timer = units.get(POLICY_TIMER, {})
    if _one(timer, "ActiveState") != "active":
        checks.append(fail("policy timer", f"{POLICY_TIMER} is {_one(timer, 'ActiveState') or 'unknown'}: the battery is not watched",
                           f"sudo systemctl enable --now {POLICY_TIMER}"))
    else:
        intervals = timer_intervals(timer)
        next_in = next_tick(timer, monotonic, wall)
        when = f"next tick in {next_in:.0f} s" if next_in is not None else "no next tick scheduled"
        every = f"every {min(intervals):g} s" if intervals else "no OnUnitActiveSec"
        if len(intervals) > 1:
            checks.append(warn("policy timer", f"active, {every} ({len(intervals)} OnUnitActiveSec settings: the shortest wins), {when}",
                               "README: Changing the interval"))
        elif not intervals or next_in is None:
            checks.append(warn("policy timer", f"active, {every}, {when}", "README: Changing the interval"))
        else:
            checks.append(ok("policy timer", f"active, {every}, {when}"))
    path = units.get(UPLOAD_PATH, {})
    if _one(path, "ActiveState") == "active":
        checks.append(ok("upload path", f"{UPLOAD_PATH} active: staged footage starts the upload"))
    else:
        checks.append(fail("upload path", f"{UPLOAD_PATH} is {_one(path, 'ActiveState') or 'unknown'}: staged footage waits",
                           f"sudo systemctl enable --now {UPLOAD_PATH}"))
    boot = _one(units.get(BOOT_SERVICE, {}), "UnitFileState")
    if boot == "enabled":
        checks.append(ok("boot service", f"{BOOT_SERVICE} enabled"))
    else:
        checks.append(fail("boot service", f"{BOOT_SERVICE} is {boot or 'unknown'}: the camera state at power-on is left to chance",
                           f"sudo systemctl enable {BOOT_SERVICE}"))
    checks.append(check_failed_units(m))
    return checks


def check_failed_units(m: Machine) -> Check:
    try:
        res = tool([m.systemctl, "list-units", "--all", "--state=failed", "--plain", "--no-legend", "--", "dashcam*"])
    except runner.CommandError as e:
        return warn("failed units", f"cannot ask systemctl: {e}")
    failed = [line.split()[0] for line in res.stdout.splitlines() if line.split()]
    if not failed:
        return ok("failed units", "none")
    said = []
    for unit in failed[:3]:
        try:
            last = first_line("\n".join(reversed(tool([m.journalctl, "-u", unit, "-n", "1", "-o", "cat", "--no-pager"]).stdout.splitlines())))
        except runner.CommandError:
            last = ""
        said.append(f"{unit}" + (f" ({last})" if last else ""))
    return fail("failed units", "; ".join(said), f"journalctl -u {failed[0]}, fix it, then sudo systemctl reset-failed 'dashcam*'")
