"""doctor --switch: the one check that changes something. Under the policy's lock the camera goes to
data mode, the time until its storage appears is measured, and it goes back to record whatever
happened. Refused (exit 75, nothing switched) when the battery or a running ingest or upload says
not now (switch_refusal)."""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple

from .. import runner
from ..log import get as get_logger
from .check import TOOL_TIMEOUT, Check, Machine, fail, first_line, ok, warn
from .hardware import check_card

log = get_logger("dashcam.doctor")

SWITCH = "camera switch"  # a switch not made (refused under the lock, a dry run)
TO_DATA = "switch to data"
TO_RECORD = "switch to record"
INGEST_STOP = "switch ingest stop"


def switch_refusal(cfg, reading, ingest: bool, upload: bool, mode: str) -> Optional[str]:
    """Why ``--switch`` must not take the camera out of record now, or None. A pure function of
    one battery reading, the units running and the camera's mode.

    On external power the battery thresholds do not count (as for the policy). Otherwise the
    battery must be known and at or above thresholds.disconnect_percent: below it, the policy
    keeps the camera off; unknown, nothing proves the battery can take a data-mode cycle."""
    if ingest:
        return "an ingest is running (dashcam-ingest@*.service): let it finish, then try again"
    if upload:
        return "an upload is running (dashcam-upload.service): let it finish, then try again"
    if mode == "data":
        return "the camera is in data mode now (the policy is fetching footage): try again when it records"
    if reading.external is True:
        return None
    power = "on battery" if reading.external is False else "external power unknown"
    limit = cfg.thresholds.disconnect_percent
    if reading.percent is None:
        return (f"the battery reading is unknown ({reading.reason or 'no reason given'}), {power}: "
                "run it on external power (engine running)")
    if reading.percent < limit:
        return (f"battery {reading.percent} % is below thresholds.disconnect_percent {limit} %, {power}: "
                "run it on external power (engine running)")
    return None


def units_running(m: Machine) -> Tuple[bool, bool]:
    """(an ingest runs, the upload runs), from systemctl as the policy reads it; a system
    without systemd (or without systemctl) runs none of our units."""
    from ..policy import INGEST_UNITS, UPLOAD_UNIT, ours_running
    from ..systemd import Systemctl

    try:
        return ours_running(Systemctl(m.systemctl).units(INGEST_UNITS, UPLOAD_UNIT, timeout=TOOL_TIMEOUT))
    except runner.CommandNotFound:
        return False, False


def switch_precheck(cfg, m: Machine) -> Optional[str]:
    """The refusal as things stand (one battery reading, the units, the camera's mode)."""
    from .. import battery, camera

    try:
        mode = camera.current_mode(cfg)
    except Exception as e:  # a broken hub: the switch itself says so
        log.debug("camera mode unknown: %s", e)
        mode = "unknown"
    return switch_refusal(cfg, battery.read(cfg), *units_running(m), mode)


def _stop_ingest(m: Machine) -> Optional[str]:
    """Stop the ingest udev started for the storage that appeared (it would copy and switch the
    camera itself); waits until it has dropped its .part and unmounted. An error, or None."""
    from ..policy import INGEST_UNITS

    try:
        res = runner.run([m.systemctl, "stop", "--", INGEST_UNITS], timeout=150, changes_state=True, check=False)
    except runner.CommandNotFound:
        return None  # no systemd: nothing started one
    except runner.CommandError as e:
        return str(e)
    if res.returncode != 0 and "not been booted with systemd" not in res.stderr:
        return f"systemctl stop {INGEST_UNITS}: {first_line(res.stderr) or runner.describe_returncode(res.returncode)}"
    return None


class _Terminated(Exception):
    pass


def check_switch(cfg, m: Machine, clock: Optional[Callable[[], float]] = None) -> List[Check]:
    """Data mode and back, under the policy's lock: how long the camera's storage took to appear.
    The camera ends in record whatever happens (a FAIL line with the fix when it does not)."""
    import signal
    import time

    from .. import camera, device
    from ..ignition import PolicyLock

    clock = clock or time.monotonic
    if m.is_root() and not os.path.isdir(os.path.dirname(m.lock_path)):
        # the units' RuntimeDirectory=dashcam: root's, 0755, as systemd makes it
        os.makedirs(os.path.dirname(m.lock_path), 0o755, exist_ok=True)

    def terminated(signum, frame):
        raise _Terminated(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, terminated)  # a kill mid-switch still puts the camera back
    try:
        with PolicyLock(m.lock_path):
            # again under the lock: a tick or the watcher may have acted since the first look
            why = switch_precheck(cfg, m)
            if why is not None:
                return [warn(SWITCH, f"not switched: {why}")]
            return _switch_cycle(cfg, m, clock, camera, device)
    finally:
        signal.signal(signal.SIGTERM, old)


def _switch_cycle(cfg, m: Machine, clock, camera, device) -> List[Check]:
    checks: List[Check] = []
    timeout = cfg.poll.mount_timeout_seconds
    try:
        monitor = m.udev_monitor if m.udev_monitor is not None else device._monitor(m.udev_context)
        start = clock()
        camera.set_mode(cfg, "data")
        node = device.wait_for_camera(cfg, timeout, monitor=monitor, context=m.udev_context)
        took = clock() - start
        if node:
            checks.append(ok(TO_DATA, f"the camera's storage appeared as {node} {took:.1f} s after the switch (enumeration)"))
            checks.append(check_card(node))
        else:
            checks.append(fail(TO_DATA, f"data mode took, but no storage matching the camera appeared within {timeout} s",
                               "in data mode, `dashcamctl match /dev/sdX1` must say it is the camera (camera.match_*); "
                               "a slow camera: raise poll.mount_timeout_seconds"))
    except camera.CameraError as e:
        checks.append(fail(TO_DATA, str(e), "see the usb lines above; README: USB hubs"))
    except Exception as e:  # a broken monitor, a signal (_Terminated): the camera still goes back
        checks.append(fail(TO_DATA, f"interrupted: {type(e).__name__}: {e}"))
    finally:
        stopped = _stop_ingest(m)
        try:
            camera.set_mode(cfg, "record")
        except Exception as e:
            checks.append(fail(TO_RECORD, f"the camera is NOT recording: {e}",
                               "sudo dashcamctl mode record (if that fails too: unplug the camera and plug it in again)"))
        else:
            checks.append(ok(TO_RECORD, "back in record, confirmed"))
        if stopped:
            checks.append(warn(INGEST_STOP, f"the ingest udev started for the camera's storage was not stopped: {stopped}",
                               "systemctl status 'dashcam-ingest@*' (it copies, then puts the camera back itself)"))
    return checks
