"""dashcamctl policy-interval: how often the battery policy ticks, changed the way systemd means it.

The interval lives on dashcam-policy.timer (OnBootSec=45s, OnUnitActiveSec=30s), not in the
configuration. A drop-in that only says ``OnUnitActiveSec=60s`` adds a second timer beside the
shipped one (ticks stay at 30 s); an empty ``OnUnitActiveSec=`` before it resets *every* timer of
the unit, OnBootSec= too, and after the next boot the policy never ticks at all. So the drop-in
written here resets once and then sets both, and the command reads back what systemd really
loaded (``systemctl show -p TimersMonotonic``) before it says done.
"""

from __future__ import annotations

import os
import re
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, Optional, Tuple, Union

from . import runner
from .systemd import Systemctl
from .errors import EX_FAILURE, EX_OK, DashcamError
from .log import get as get_logger

log = get_logger("dashcam.policy_timer")

TIMER = "dashcam-policy.timer"
DROPIN_DIR = os.path.join("etc", "systemd", "system", TIMER + ".d")  # under the root directory
DROPIN_NAME = "interval.conf"
# the shipped unit's first tick after boot (systemd/dashcam-policy.timer); kept by every drop-in
BOOT_DELAY_SECONDS = 45
SHIPPED_INTERVAL_SECONDS = 30
# Shorter: the tick's CPU time (bench/policy) adds up on battery. Longer: a low-battery shutdown
# waits for three readings below the threshold, 15 minutes at 300 s on a battery already low.
MIN_SECONDS, MAX_SECONDS = 10, 300
# keys of a timer unit that add (or, assigned empty, reset) a trigger
TRIGGER_KEYS = ("OnActiveSec", "OnBootSec", "OnStartupSec", "OnUnitActiveSec", "OnUnitInactiveSec", "OnCalendar")
SYSTEMCTL_TIMEOUT = 60


def dropin_text(seconds: int) -> str:
    """The drop-in for an interval of ``seconds``: one reset, then both of the shipped unit's timers."""
    return (
        f"# written by: dashcamctl policy-interval {seconds}\n"
        f"# undo with: dashcamctl policy-interval --reset\n"
        "[Timer]\n"
        "# An empty assignment resets every timer of the unit, OnBootSec= included: both are set\n"
        "# again below, or after the next boot the policy would never tick.\n"
        "OnUnitActiveSec=\n"
        f"OnBootSec={BOOT_DELAY_SECONDS}s\n"
        f"OnUnitActiveSec={seconds}s\n"
    )


def dropin_path(root: str = "/") -> str:
    return os.path.join(root, DROPIN_DIR, DROPIN_NAME)


# --- what systemd loaded ----------------------------------------------------------------------

_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "min": 60, "m": 60,
          "h": 3600, "hr": 3600, "d": 86400, "w": 604800, "M": 2629800, "month": 2629800, "y": 31557600}
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(usec|us|msec|ms|sec|month|min|hr|s|m|h|d|w|M|y)(?![a-z])")
_ENTRY = re.compile(r"\{\s*(\w+)=([^;{}]*?)\s*;\s*next_elapse=([^{}]*?)\s*\}")


def parse_timespan(text: str) -> Optional[float]:
    """Seconds of a systemd time span as ``systemctl show`` prints it ("30s", "1min 30s",
    "1d 2h 3min 4.5s"); None when it is not one (anything left over that is not a span)."""
    text = text.strip()
    if not text or text == "n/a":
        return None
    total, pos = 0.0, 0
    for m in _SPAN_PART.finditer(text):
        if text[pos:m.start()].strip():
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        return None
    return total


def parse_timers_monotonic(text: str) -> List[Dict[str, object]]:
    """The entries of ``systemctl show -p TimersMonotonic``: lines like
    ``TimersMonotonic={ OnUnitActiveUSec=30s ; next_elapse=1h 2min 3.456s }``, one per timer.
    Each entry: base (OnBootUSec, OnUnitActiveUSec, ...), seconds (None when unparsable), text."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("TimersMonotonic="):
            continue
        for base, value, _next in _ENTRY.findall(line):
            entries.append({"base": base, "seconds": parse_timespan(value), "text": value})
    return entries


class TimerState:
    """What the loaded timer does: its repeating interval and its first tick after boot."""

    def __init__(self, entries: List[Dict[str, object]]):
        self.entries = entries
        self.interval = self._only("OnUnitActiveUSec")
        self.boot = self._only("OnBootUSec")

    def _only(self, base: str):
        values = [e["seconds"] for e in self.entries if e["base"] == base]
        return values[0] if len(values) == 1 else (values or None)

    def problems(self) -> List[str]:
        """What is wrong with it, each with its fix; empty when the policy ticks after every boot."""
        out = []
        if self.boot is None:
            out.append("no OnBootSec=: after the next boot the policy never ticks "
                       f"(fix: dashcamctl policy-interval SECONDS, or --reset for the shipped {SHIPPED_INTERVAL_SECONDS} s)")
        if self.interval is None:
            out.append("no OnUnitActiveSec=: the policy ticks once after boot, then never again "
                       "(fix: dashcamctl policy-interval SECONDS)")
        elif isinstance(self.interval, list):
            out.append("more than one OnUnitActiveSec= ("
                       + ", ".join(_seconds(v) for v in self.interval)
                       + "): the shortest wins; a drop-in adds to the shipped one unless it resets first "
                       f"(fix: dashcamctl policy-interval SECONDS; look in /{DROPIN_DIR})")
        return out

    def as_dict(self) -> dict:
        return {"interval_seconds": self.interval, "boot_delay_seconds": self.boot,
                "timers": self.entries, "problems": self.problems()}


def _seconds(value) -> str:
    if value is None:
        return "unknown"
    return f"{value:g} s"


def loaded(dry_run: bool = False) -> TimerState:
    """The timers systemd has loaded for dashcam-policy.timer (read-only: runs in a dry run too)."""
    try:
        shown = Systemctl().show(TIMER, "TimersMonotonic", timeout=SYSTEMCTL_TIMEOUT)
    except runner.CommandError as e:
        raise DashcamError(f"cannot ask systemd about {TIMER}: {e}") from e
    return TimerState(parse_timers_monotonic(shown))


# --- the drop-in -------------------------------------------------------------------------------


def later_dropins(root: str = "/") -> List[str]:
    """Other drop-ins of the timer in /etc that set or reset a trigger and sort after ours (systemd
    reads them in name order): each adds its timers after our reset. Those before are reset by it."""
    directory = os.path.join(root, DROPIN_DIR)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".conf") and n > DROPIN_NAME)
    except FileNotFoundError:
        return []
    found = []
    pattern = re.compile(r"^\s*(%s)\s*=" % "|".join(TRIGGER_KEYS), re.MULTILINE)
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if pattern.search(f.read()):
                    found.append(path)
        except OSError as e:
            found.append(f"{path} (unreadable: {e.strerror})")
    return found


def write_dropin(seconds: int, root: str = "/", *, dry_run: bool = False) -> str:
    """Write the drop-in atomically (0644, root's directory); its path."""
    path = dropin_path(root)
    text = dropin_text(seconds)
    if dry_run:
        log.info("dry run, not writing %s:\n%s", path, text)
        return path
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{DROPIN_NAME}.{os.getpid()}")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        try:
            os.unlink(tmp)  # a leftover of a crashed run with our pid (unlink follows no link)
        except FileNotFoundError:
            pass
        # O_EXCL | O_NOFOLLOW: never through a link someone left in the directory
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise DashcamError(f"cannot write {path}: {e.strerror} (as root: sudo dashcamctl policy-interval {seconds})") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # whatever the umask
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise DashcamError(f"cannot write {path}: {e.strerror}") from e
        raise
    log.info("wrote %s: ticks every %d s, the first %d s after boot", path, seconds, BOOT_DELAY_SECONDS)
    return path


def remove_dropin(root: str = "/", *, dry_run: bool = False) -> bool:
    """Remove our drop-in; False when there was none."""
    path = dropin_path(root)
    if not os.path.lexists(path):
        return False
    if dry_run:
        log.info("dry run, not removing %s", path)
        return True
    try:
        os.unlink(path)
    except OSError as e:
        raise DashcamError(f"cannot remove {path}: {e.strerror} (as root: sudo dashcamctl policy-interval --reset)") from e
    log.info("removed %s", path)
    return True


def apply(dry_run: bool = False) -> None:
    """systemd reads the drop-in, and the running timer is restarted to follow it."""
    systemctl = Systemctl(dry_run=dry_run)
    try:
        systemctl.daemon_reload(timeout=SYSTEMCTL_TIMEOUT)
        systemctl.restart(TIMER, timeout=SYSTEMCTL_TIMEOUT)
    except runner.CommandError as e:
        raise DashcamError(f"{e} (the drop-in is in place; then run: systemctl daemon-reload; "
                           f"systemctl restart {TIMER})") from e


def parse_seconds(text: str) -> int:
    """SECONDS as given on the command line: a whole number, optionally with "s"."""
    t = text.strip()
    if t.endswith("s"):
        t = t[:-1]
    if not t.isdigit() or not t.isascii():
        raise DashcamError(f"policy-interval: {text!r} is not a number of seconds (e.g. 60)")
    seconds = int(t)
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise DashcamError(f"policy-interval: {seconds} s is outside {MIN_SECONDS}..{MAX_SECONDS} s")
    return seconds


def _mqtt_note(load_config, args, seconds: int) -> Optional[str]:
    """MQTT entities expire after mqtt.expire_after without a tick: a word when it is too short."""
    from .config import ConfigError

    try:
        cfg = load_config(args)
    except ConfigError as e:
        log.info("not checking mqtt.expire_after against the interval: %s: %s", e.path, "; ".join(e.problems))
        return None
    if cfg.mqtt is None or not cfg.mqtt.expire_after:
        return None
    if cfg.mqtt.expire_after < 3 * seconds:
        return (f"mqtt.expire_after is {cfg.mqtt.expire_after} s, under 3 ticks of {seconds} s: Home Assistant "
                f"will show the Pi unavailable between ticks; set it to about {4 * seconds}")
    return None


def _report(state: TimerState, as_json: bool) -> Tuple[int, Dict[str, Any]]:
    problems = state.problems()
    if not as_json:
        interval = state.interval if not isinstance(state.interval, list) else min(state.interval)
        print(f"{TIMER}: every {_seconds(interval)}, first tick {_seconds(state.boot if not isinstance(state.boot, list) else min(state.boot))} after boot")
        for p in problems:
            print(f"{TIMER}: FAIL: {p}")
    return (EX_FAILURE if problems else EX_OK), state.as_dict()


def command(args: argparse.Namespace, load_config) -> Union[int, Tuple[int, Dict[str, Any]]]:
    root = os.environ.get("DASHCAM_ROOT", "/")  # a test's tree; "/" on a real system
    dry_run = args.dry_run
    if (args.show or args.reset) and args.seconds is not None:
        raise DashcamError("policy-interval: SECONDS or --show or --reset, not both")
    if args.show:
        return _report(loaded(), args.json)
    if args.reset:
        if not remove_dropin(root, dry_run=dry_run):
            print(f"{dropin_path(root)}: not there; the timer keeps what it has")
        apply(dry_run)
        expected = SHIPPED_INTERVAL_SECONDS
    else:
        if args.seconds is None:
            raise DashcamError("policy-interval: give SECONDS, --show or --reset")
        expected = parse_seconds(args.seconds)
        write_dropin(expected, root, dry_run=dry_run)
        apply(dry_run)
    for path in later_dropins(root):
        log.warning("%s sets the timer too and is read after %s: remove it, or its timers add to ours",
                    path, DROPIN_NAME)
    note = _mqtt_note(load_config, args, expected)
    if note:
        log.warning("%s", note)
    if dry_run:
        return EX_OK
    state = loaded()
    rc, document = _report(state, args.json)
    if rc == EX_OK and state.interval != expected:
        print(f"{TIMER}: FAIL: asked for {expected} s, systemd ticks every {_seconds(state.interval)}")
        return EX_FAILURE, document
    return rc, document
