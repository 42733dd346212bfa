"""The camera records whenever the car can move: the boot decision and the ignition watcher.

``dashcamctl boot`` (dashcam-boot.service, early in boot, before the network): one battery
read. On external power the engine runs: the camera records at once. On battery (or an unknown
reading) it starts disconnected, the policy decides at its first tick, and the watcher runs.

``dashcamctl watch`` (dashcam-watch.service): runs only while the camera is not recording (the
policy and the boot start it when the camera leaves record; it exits once the camera records
again). Every second it reads the battery's power flag (the LiFePO4wered answers in a few ms):

- battery -> external power (the engine started), the camera off or in data mode; or the camera
  off on external power however it got there (the policy never keeps it off then);
- in data mode (or a mode that reads unknown) on external power, the server stops answering (the
  car is leaving; probed every second too: a TCP connect to a host on the local network);

and then stops any ingest (crash-safe: the clip in flight is dropped and copied next time) and
puts the camera to record. An unknown reading is no change: the watcher only ever moves the
camera to record. It acts under the policy's lock and checks again there, so a policy tick and
the watcher never switch the camera against each other.

Each such return is logged with its reason, counted in the ledger (state ``back_to_record``,
shown by ``dashcamctl status``) and published as the Home Assistant event
``camera_back_to_record``.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional, Tuple

from .log import ERROR, INFO, get as get_logger
from .world import SystemFacts

log = get_logger("dashcam.ignition")

RETURNS_KEY = "back_to_record"
EVENT = "camera_back_to_record"
# RuntimeDirectory=dashcam of the policy and watch units: root's, writable under their
# ProtectSystem=strict, and no other user can plant a symlink there
LOCK_PATH = "/run/dashcam/policy.lock"

# the watcher: the power flag every POLL seconds; in data mode on external power, the server
# every PROBE seconds; the camera's mode (uhubctl) every MODE seconds, to exit once it records
POLL, PROBE, MODE = 1.0, 1.0, 5.0
# a switch to record that failed (said at ERROR, not counted) is tried again after a pause that
# doubles up to RETRY_MAX: a camera unplugged, or a hub that does not answer, must not become a
# loop of attempts (each may wait 10 s for the camera to enumerate) for as long as the car drives
RETRY, RETRY_MAX = 10.0, 300.0

WHAT = {
    "engine_started": "the engine started",
    "leaving_home": "the server stopped answering",
    "watchdog_external": "data mode reached max_data_minutes_external",
}


def describe(kind: str, stopped: Optional[Dict[str, Any]], seconds: Optional[float]) -> str:
    """One line: ``leaving home: ingest stopped after 7 of 31 clips, camera back to record 4.2 s
    after the engine started``. ``stopped``: the ingest's own account (ledger state last_ingest)
    of the run that was stopped, None when no ingest ran."""
    head = {"engine_started": "engine started", "leaving_home": "leaving home",
            "watchdog_external": "watchdog on external power"}.get(kind, kind)
    if stopped is None:
        copy = "no ingest running"
    elif not stopped:
        copy = "ingest stopped"
    else:
        files = _count(stopped.get("files"))
        total = files + _count(stopped.get("pending")) + _count(stopped.get("failed"))
        copy = f"ingest stopped after {files} of {total} clips"
    after = f" {seconds:.1f} s after {WHAT.get(kind, kind)}" if seconds is not None else ""
    return f"{head}: {copy}, camera back to record{after}"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def counted(memory: Any, kind: str, message: str, wall: float) -> Dict[str, Any]:
    """The ledger's ``back_to_record`` state with one more return (a broken value starts afresh)."""
    mem = memory if isinstance(memory, dict) else {}
    counts = mem.get("counts") if isinstance(mem.get("counts"), dict) else {}
    counts = {k: _count(v) for k, v in counts.items() if isinstance(k, str)}
    counts[kind] = counts.get(kind, 0) + 1
    return {"counts": counts, "total": sum(counts.values()), "last": {"kind": kind, "message": message, "wall": wall}}


def note(ledger, kind: str, message: str, wall: float) -> None:
    ledger.put_state(RETURNS_KEY, counted(ledger.get_state(RETURNS_KEY), kind, message, wall))


def publish(cfg, kind: str, message: str, seconds: Optional[float]) -> None:
    """The Home Assistant event (only with an mqtt section; bounded, never raises)."""
    if cfg.mqtt is None:
        return
    from . import mqtt

    mqtt.publish_event(cfg, EVENT, {"reason": kind, "detail": message,
                                    "seconds": None if seconds is None else round(seconds, 1)})


class PolicyLock:
    """flock on LOCK_PATH: the policy tick and the watcher decide and act one at a time."""

    def __init__(self, path: Optional[str] = LOCK_PATH):
        self.path = path  # None: no lock (a dry run)
        self.fd = -1

    def __enter__(self) -> "PolicyLock":
        import fcntl

        if self.path is None:
            return self
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as e:  # not root (a test, a dry run by hand): nothing else switches the camera then
            log.debug("policy lock %s unavailable: %s", self.path, e)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- the watcher ----------------------------------------------------------------------------------


def watch(cfg, facts, actions, *, ledger_open: Callable[[], Any], lock: Callable[[], Any] = PolicyLock,
          clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep, poll: float = POLL, probe: float = PROBE,
          mode_every: float = MODE, last_external: Optional[bool] = None, retry: float = RETRY,
          retry_max: float = RETRY_MAX) -> Optional[Dict[str, Any]]:
    """Watch until the camera records. Returns what it did when it put the camera back to record
    (kind, message, seconds), None when the camera went back to record otherwise. A switch that
    failed is said and tried again after ``retry`` seconds, then twice as long each time, up to
    ``retry_max``.

    ``facts``: battery(), camera_mode(), server_reachable() (world.SystemFacts);
    ``actions``: stop_units(units), set_camera(mode) (world.SystemActions); ``ledger_open()``:
    a Ledger context manager. ``last_external``: the power source the last policy tick saw (the
    engine may have started between that tick and the watcher's first reading)."""
    mode = facts.camera_mode()
    next_mode = next_probe = clock()
    pending: Optional[str] = None  # a return whose switch failed: tried again from retry_at on
    retry_at, pause = 0.0, retry
    while True:
        now = clock()
        if now >= next_mode:
            mode = facts.camera_mode()
            next_mode = now + mode_every
        if mode == "record":
            return None
        external = facts.battery().external
        kind = None
        # the mode unknown (a hub that does not answer) is not record either: the car can move.
        # Off on external power is never the policy's wish (it puts the camera to record then):
        # no change need be seen (a boot that read the power as unknown, a fresh or fallback
        # ledger, the previous boot's last reading). Unknown on external power is probed as data
        # mode is: the policy keeps it only at home.
        if external is True and (last_external is False or mode == "off"):
            kind = "engine_started"
        elif external is True and mode in ("data", "unknown") and now >= next_probe:
            next_probe = now + probe
            if not facts.server_reachable():
                kind = "leaving_home"
        if external is not None:
            last_external = external
        if kind is None and pending is not None and external is True:
            kind = pending
        if kind is not None and now < retry_at:
            pending, kind = kind, None  # after a failed switch: not before the pause is over
        if kind is not None:
            done = _back_to_record(cfg, facts, actions, kind, mode, now, ledger_open, lock, clock, wall)
            if done is not None and not done["failed"]:
                return done
            if done is None:
                pending = None  # checked again under the lock and not confirmed: go on watching
            else:
                pending, retry_at = kind, clock() + pause
                log.warning("ignition watch: the camera is not back to record; trying again in %.0f s", pause)
                pause = min(pause * 2, retry_max)
            mode = facts.camera_mode()
            next_mode = clock() + mode_every
        sleep(poll)


def _back_to_record(cfg, facts, actions, kind, mode, seen, ledger_open, lock, clock, wall) -> Optional[Dict[str, Any]]:
    """Stop the ingest (in data mode) and put the camera to record. Nothing between the reading
    and the switch but what must be there: a second reading, the ingest's stop (it drops the clip
    in flight), the switch. ``mode``: the camera's mode as the watcher last read it."""
    from .policy import INGEST_UNITS

    with lock():
        # again, under the lock: a second reading (one odd reading moves nothing)
        if facts.battery().external is not True:
            log.info("ignition watch: external power not confirmed by a second reading; watching on")
            return None
        if kind == "leaving_home" and facts.server_reachable():
            return None
        # a policy tick that read the same change may have put the camera back while we waited
        # for the lock: it counted that return; the watcher's work is done
        now_mode = facts.camera_mode()
        if now_mode == "record":
            log.info("ignition watch: the camera already records (a policy tick switched it)")
            return None
        with ledger_open() as ledger:
            before = ledger.get_state("last_ingest")
        failed = []
        if mode != "off" or now_mode != "off":  # data, or unknown, before or under the lock: an ingest may run
            try:
                # blocks until the ingest has dropped its .part and unmounted (nothing to do without one)
                actions.stop_units([INGEST_UNITS])
            except Exception as e:  # the camera goes to record all the same
                failed.append(f"stop {INGEST_UNITS}: {e}")
        try:
            actions.set_camera("record")
        except Exception as e:
            failed.append(f"camera record: {e}")
        seconds = clock() - seen
        with ledger_open() as ledger:
            after = ledger.get_state("last_ingest")
            # the ingest records how far it got as it stops: a new record is the run just stopped
            stopped = after if isinstance(after, dict) and after != before else None
            message = describe(kind, stopped, seconds)
            if failed:
                message += "; FAILED: " + "; ".join(failed)
            else:
                with ledger.transaction():  # read and write the counts as one: a tick may count too
                    note(ledger, kind, message, wall())
    log.log(ERROR if failed else INFO, message,
            extra={"DASHCAM_BACK_TO_RECORD": kind, "DASHCAM_CAMERA_TARGET": "record"})
    if not failed:
        publish(cfg, kind, message, seconds)
    return {"kind": kind, "message": message, "seconds": seconds, "failed": failed}


PROBE_TIMEOUT = 1.0  # seconds: the car leaving is a server that does not answer within one poll


class WatchFacts(SystemFacts):
    """world.SystemFacts as the watcher reads them, once a second: the server probed with a short
    timeout, and a battery reading that stays incomplete said once (and again when its reason
    changes), not every second."""

    said: Optional[str] = None

    def __init__(self, cfg, systemctl=None):
        super().__init__(cfg, systemctl, probe_timeout=PROBE_TIMEOUT)

    def battery(self):
        from . import battery

        self.reading = battery.read(self.cfg, quiet=True)
        if self.reading.reason != self.said:
            if self.reading.reason:
                log.warning("ignition watch: battery reading (%s) incomplete: %s (said again only when it changes)",
                            self.reading.source, self.reading.reason)
            self.said = self.reading.reason
        return self.reading


def watch_command(args, cfg) -> int:
    """dashcamctl watch: until the camera records, put it back to record when the engine starts or the car leaves."""
    from .policy import read_state
    from .tick import open_ledger
    from .world import SystemActions

    # the ledger only remembers the last tick's reading and counts the return: opened as the tick
    # opens it (a damaged or locked one is said, and a fallback file takes its place), it never
    # keeps the camera off the road
    says = "ignition watch: ledger unusable, the watcher keeps its count in a fallback file (the camera still goes back to record)"
    with open_ledger(cfg, says) as ledger:
        seen = read_state(ledger).last_external
    log.info("ignition watch: the camera is not recording; watching the power source every %.0f s", POLL)
    done = watch(cfg, WatchFacts(cfg), SystemActions(cfg, args.dry_run),
                 ledger_open=lambda: open_ledger(cfg, says), last_external=seen)
    if done is None:
        log.info("ignition watch: the camera records; watch ended")
        return 0
    return 1 if done["failed"] else 0


# --- the boot ---------------------------------------------------------------------------------------

# the camera's hub may still be enumerating this early in boot: tried again once a second for this long
BOOT_SECONDS = 20


def boot_mode(reading) -> Tuple[str, str]:
    """(mode, why) for the camera at boot, from one battery reading."""
    if reading.external is True:
        return "record", "on external power at boot (the engine runs): the camera records at once"
    power = "on battery" if reading.external is False else "power source unknown"
    return "off", f"{power} at boot: the camera starts disconnected; the policy decides"


def boot_command(args, cfg, *, seconds: float = BOOT_SECONDS, sleep: Callable[[float], None] = time.sleep,
                 systemctl: Any = None) -> int:
    """dashcamctl boot: the camera's mode at power-on, from one battery read. ``seconds``: how long
    the switch is tried; ``systemctl``: a systemd.Systemctl (or a fake with start())."""
    from . import battery, camera
    from .camera import CameraError

    reading = battery.read(cfg)
    mode, why = boot_mode(reading)
    log.info("boot: %s", why, extra={"DASHCAM_CAMERA_TARGET": mode})
    deadline = time.monotonic() + seconds
    took = False
    while not took:
        try:
            camera.set_mode(cfg, mode, dry_run=args.dry_run)
            took = True
        except CameraError as e:
            if time.monotonic() >= deadline:
                # no camera plugged in, or a hub that does not answer: said, and not a failed boot;
                # the watcher and the policy try again
                log.warning("boot: camera %s did not take within %d s: %s; the watcher and the policy try again",
                            mode, seconds, e)
                print(f"camera: {mode} did not take ({e})")
                break
            log.info("boot: camera %s not yet (%s); again in 1 s", mode, e)
            sleep(1)
    if took:
        print(f"camera: {mode} ({why})" + (" (dry run: nothing switched)" if args.dry_run else ""))
    # the camera is not known to record (off, or as the hub powered it up: in data): the engine may
    # start, or the car leave, before the policy's first tick
    if (mode == "off" or not took) and not args.dry_run:
        from .policy import WATCH_UNIT
        from .systemd import Systemctl

        (systemctl or Systemctl()).start(WATCH_UNIT, check=False)
    return 0
