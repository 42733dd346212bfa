"""Camera modes: record (power on, data off), data (power on, data on), off (power off).

Backend ``uhubctl`` (default) switches port power with uhubctl and data with the sysfs
``authorized`` attribute of a USB device, as the user's start-for-*.sh scripts do:

    record: <sysfs>/bus/usb/devices/<device>/authorized <- 0 ; uhubctl -l HUB -p PORT -a on
    data:   <sysfs>/bus/usb/devices/<device>/authorized <- 1 ; uhubctl -l HUB -p PORT -a on
    off:    uhubctl -l HUB -p PORT -a off

Where the kernel offers the port's own switch (``<hub>:1.0/<hub>-portN/disable``, Linux 6.0
and later), power goes through it as well, ahead of uhubctl: ``disable`` <- 1 makes the hub
driver disconnect the camera and keep the port unpowered, ``disable`` <- 0 powers it again.
uhubctl alone sends the hub a control transfer behind the hub driver's back (uhubctl 2.5 does
so on every root hub): the driver may keep a camera that is gone (dummy_hcd reports no
disconnect at all, so the camera stays in sysfs) or power the port again on the next port
event. uhubctl still runs after it and its ``New status`` is still the confirmation.

uhubctl exits 0 even when the port did not change, so every switch is confirmed from the
``New status`` block it prints and from ``authorized`` read back; a switch that did not
take raises CameraError saying what was expected and what was found.

Backend ``scripts`` runs the user's own three programs and then reads the state back the
same way (a readback it cannot make is logged, not fatal: the scripts are the authority).
"""

from __future__ import annotations

import os
import re
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Dict, List, Optional, Tuple

from . import runner
from .errors import DashcamError
from .record import Record
from .log import get as get_logger

log = get_logger("dashcam.camera")

MODES = ("record", "data", "off")
UHUBCTL_TIMEOUT = 20  # seconds; a power request on a USB3 hub takes a fraction of one
SCRIPT_TIMEOUT = 60  # seconds; the user's scripts call uhubctl and write sysfs
ENUMERATE_TIMEOUT = 10  # seconds for a camera that is its own data device to appear after power on
# bytes uhubctl may print (a status of every hub on a big tree: a few KB); more is a tool printing
# in a loop, stopped before it fills the memory
UHUBCTL_MAX_OUTPUT = 256 * 1024


class CameraError(DashcamError):
    """A camera switch that did not take (message: expected vs found), or could not be made."""


def sysfs_root() -> str:
    return os.environ.get("DASHCAM_SYSFS", "/sys")


def authorized_path(cfg) -> str:
    return os.path.join(sysfs_root(), "bus", "usb", "devices", cfg.camera.authorized_device, "authorized")


# ---------------------------------------------------------------------------- uhubctl output


class PortStatus(Record):
    number: int
    status: str  # the hex status word, e.g. "0503"
    flags: Tuple[str, ...]  # e.g. ("power", "highspeed", "enable", "connect")
    device: Optional[str]  # the description in brackets when something is connected

    @property
    def powered(self) -> bool:
        return "power" in self.flags


class HubStatus(Record):
    kind: str  # "current" or "new"
    hub: str  # location, e.g. "1-1"
    description: str
    ports: Dict[int, PortStatus]


_HUB_LINE = re.compile(r"^(Current|New) status for hub (\S+) \[(.*)\]\s*$")
_PORT_LINE = re.compile(r"^\s+Port (\d+): ([0-9a-fA-F]{4})((?: [A-Za-z0-9.]+)*)(?: \[(.*)\])?\s*$")


class UhubctlParseError(ValueError):
    pass


def parse_uhubctl(text: str) -> List[HubStatus]:
    """Every status block uhubctl printed, in order ("Current status ..." and "New status ...")."""
    blocks: List[HubStatus] = []
    current: Optional[Tuple[str, str, str, Dict[int, PortStatus]]] = None
    for line in text.splitlines():
        m = _HUB_LINE.match(line)
        if m:
            if current:
                blocks.append(HubStatus(*current))
            current = (m.group(1).lower(), m.group(2), m.group(3), {})
            continue
        m = _PORT_LINE.match(line)
        if m:
            if current is None:
                raise UhubctlParseError(f"port line before any hub line: {line.strip()!r}")
            number = int(m.group(1))
            current[3][number] = PortStatus(number, m.group(2), tuple(m.group(3).split()), m.group(4))
            continue
        if current:  # "Sent power off request", "Resetting hub...": ends a block
            blocks.append(HubStatus(*current))
            current = None
    if current:
        blocks.append(HubStatus(*current))
    return blocks


def port_status(text: str, hub: str, port: int, kind: str) -> Optional[PortStatus]:
    """The port's status in the last ``kind`` block ("new" or "current") for ``hub``, if printed."""
    found = None
    for block in parse_uhubctl(text):
        if block.kind == kind and block.hub == hub and port in block.ports:
            found = block.ports[port]
    return found


# ---------------------------------------------------------------------------- reading the state


def _read_authorized(cfg) -> Optional[str]:
    try:
        with open(authorized_path(cfg), encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _write_authorized(cfg, value: str, dry_run: bool) -> None:
    path = authorized_path(cfg)
    if dry_run:
        log.info("dry run, not writing %s to %s", value, path)
        return
    log.debug("writing %s to %s", value, path)
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except FileNotFoundError:
        raise CameraError(
            f"cannot switch camera data: {path} does not exist (is camera.data_device "
            f"{cfg.camera.authorized_device!r} a USB device that is plugged in?)"
        )
    except OSError as e:
        raise CameraError(f"cannot write {value} to {path}: {e.strerror} (run as root)")


def _uhubctl(cfg, action: Optional[str], dry_run: bool = False) -> runner.Result:
    argv = [cfg.tools.uhubctl, "-l", cfg.camera.hub_location, "-p", str(cfg.camera.port_number)]
    if action:
        argv += ["-a", action]
    try:
        return runner.run(argv, timeout=UHUBCTL_TIMEOUT, dry_run=dry_run, changes_state=action is not None,
                          max_output=UHUBCTL_MAX_OUTPUT)
    except runner.CommandFailed as e:
        said = [line.strip() for line in (e.stderr or e.stdout).splitlines() if line.strip()]
        raise CameraError(
            f"uhubctl found no switchable hub at {cfg.camera.hub_location} "
            f"({said[0] if said else runner.describe_returncode(e.returncode)}); "
            "check camera.hub_location with `uhubctl`"
        )
    except runner.CommandError as e:
        raise CameraError(f"uhubctl: {e}")


def port_disable_path(cfg) -> Optional[str]:
    """The kernel's power switch for the camera's port, if it has one (Linux 6.0+), else None:
    <sysfs>/bus/usb/devices/<hub>/<hub>:<config>.<interface>/<hub>-port<N>/disable (a root hub's
    sysfs name is usbN, its interface N-0:1.0)."""
    hub = _hub_sysfs_name(cfg.camera.hub_location)
    hub_dir = os.path.join(sysfs_root(), "bus", "usb", "devices", hub)
    try:
        interfaces = sorted(name for name in os.listdir(hub_dir) if ":" in name)
    except OSError:
        return None
    for interface in interfaces:
        path = os.path.join(hub_dir, interface, f"{hub}-port{cfg.camera.port_number}", "disable")
        if os.path.exists(path):
            return path
    return None


def _switch_power(cfg, action: str, dry_run: bool) -> runner.Result:
    """Switch the port on or off through the kernel's ``disable`` attribute where there is one,
    then with uhubctl (whose ``New status`` output confirms it; see the module docstring)."""
    path = port_disable_path(cfg)
    if path is not None:
        try:
            with open(path, encoding="ascii") as f:
                disabled = f.read().strip()  # the port's real power state: "1" unpowered
            # off: always, so that a camera the hub driver still lists is disconnected too;
            # on: only an unpowered port (writing 0 to a powered one would drop its connect event)
            value = "1" if action == "off" else ("0" if disabled == "1" else None)
            if value is not None:
                if dry_run:
                    log.info("dry run, not writing %s to %s", value, path)
                else:
                    log.debug("writing %s to %s", value, path)
                    with open(path, "w", encoding="ascii") as f:
                        f.write(value)
        except OSError as e:
            log.warning("cannot switch camera power through %s (%s): uhubctl alone switches it", path,
                        e.strerror or e)
    return _uhubctl(cfg, action, dry_run)


def port_powered(cfg) -> Optional[bool]:
    """Whether the camera's port has power now (uhubctl status, no switching); None if unknown."""
    try:
        result = _uhubctl(cfg, None)
        status = port_status(result.stdout, cfg.camera.hub_location, cfg.camera.port_number, "current")
    except (CameraError, UhubctlParseError) as e:
        log.debug("port power unknown: %s", e)
        return None
    return None if status is None else status.powered


def mode_from(powered: Optional[bool], authorized: Optional[str]) -> str:
    """The mode that a port power state and an ``authorized`` value mean."""
    if powered is None:
        return "unknown"
    if not powered:
        return "off"
    return {"0": "record", "1": "data"}.get(authorized or "", "unknown")


def current_mode(cfg) -> str:
    """record | data | off | unknown, read back from uhubctl's status and sysfs (no switching)."""
    return mode_from(port_powered(cfg), _read_authorized(cfg))


# ---------------------------------------------------------------------------- switching


def set_mode(cfg, mode: str, *, dry_run: bool = False) -> None:
    """Switch the camera to ``mode`` and confirm it took (CameraError when it did not)."""
    if mode not in MODES:
        raise CameraError(f"unknown camera mode {mode!r} (one of {', '.join(MODES)})")
    log.info("camera: switching to %s%s", mode, " (dry run)" if dry_run else "")
    if cfg.camera.backend == "scripts":
        _set_mode_scripts(cfg, mode, dry_run)
    else:
        _set_mode_uhubctl(cfg, mode, dry_run)
    if not dry_run:
        log.info("camera: %s", mode, extra={"DASHCAM_CAMERA_MODE": mode})


def _wait_for_authorized(cfg, timeout: float) -> None:
    """Wait until the data device's sysfs entry exists: a camera that is its own data device
    appears only once its port has power and it has enumerated (a second or two)."""
    import time

    path = authorized_path(cfg)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)


def _hub_sysfs_name(hub: str) -> str:
    """uhubctl's location of a root hub is the bus number ("3"); its sysfs name is usb3."""
    return f"usb{hub}" if hub.isdigit() else hub


def _power_on_and_wait(cfg, authorize: bool) -> runner.Result:
    """Power the port of a camera that is its own data device, and wait until it has enumerated.

    For record, new devices on the bus come up unauthorized while we wait (the root hub's
    authorized_default, restored afterwards), so the camera's storage never binds, not even
    for the moment before its own 'authorized' can be written."""
    default = os.path.join(sysfs_root(), "bus", "usb", "devices", _hub_sysfs_name(cfg.camera.hub_location),
                           "authorized_default")
    saved = None
    if not authorize:
        try:
            with open(default, encoding="ascii") as f:
                saved = f.read().strip()
            with open(default, "w", encoding="ascii") as f:
                f.write("0")
        except OSError:
            saved = None  # not a root hub, or no such attribute: the camera may bind for a moment
    try:
        result = _switch_power(cfg, "on", False)
        _wait_for_authorized(cfg, ENUMERATE_TIMEOUT)
    finally:
        if saved is not None:
            try:
                with open(default, "w", encoding="ascii") as f:
                    f.write(saved)
            except OSError as e:
                log.error("cannot restore %s to %s: %s", default, saved, e.strerror)
    return result


def _set_mode_uhubctl(cfg, mode: str, dry_run: bool) -> None:
    hub, port = cfg.camera.hub_location, cfg.camera.port_number
    # Data is switched before power when the data device is there (the hub, as the original
    # scripts do: the camera then comes up with data already as wanted). When the data device
    # is the camera itself and it is powered off, it exists only after power on: switch after.
    data_first = mode in ("record", "data") and (dry_run or os.path.exists(authorized_path(cfg)))
    if data_first:
        _write_authorized(cfg, "0" if mode == "record" else "1", dry_run)
        result = _switch_power(cfg, "off" if mode == "off" else "on", dry_run)
    elif mode == "off":
        result = _switch_power(cfg, "off", dry_run)
    else:
        result = _power_on_and_wait(cfg, authorize=mode == "data")
    if dry_run:
        return
    if mode in ("record", "data") and not data_first:
        _write_authorized(cfg, "0" if mode == "record" else "1", dry_run)
    want_power = mode != "off"
    try:
        status = port_status(result.stdout, hub, port, "new")
    except UhubctlParseError as e:
        raise CameraError(f"camera {mode}: could not read uhubctl's output ({e})")
    if status is None:
        raise CameraError(
            f"camera {mode}: expected port {port} of hub {hub} powered {'on' if want_power else 'off'}, "
            f"found no 'New status' for it in uhubctl's output: {runner.last_line(result.stdout) or 'nothing'}"
        )
    if status.powered != want_power:
        raise CameraError(
            f"camera {mode}: expected port {port} of hub {hub} powered {'on' if want_power else 'off'}, "
            f"found it {'on' if status.powered else 'off'} (uhubctl: {status.status} {' '.join(status.flags)}); "
            "the hub may not switch that port (ganged or no per-port power, see README)"
        )
    if mode in ("record", "data"):
        want = "0" if mode == "record" else "1"
        found = _read_authorized(cfg)
        if found != want:
            raise CameraError(
                f"camera {mode}: expected {authorized_path(cfg)} = {want}, found {found if found is not None else 'no such file'}"
            )


def _set_mode_scripts(cfg, mode: str, dry_run: bool) -> None:
    script = {"record": cfg.camera.record_script, "data": cfg.camera.data_script, "off": cfg.camera.off_script}[mode]
    try:
        runner.run([script], timeout=SCRIPT_TIMEOUT, dry_run=dry_run)
    except runner.CommandFailed as e:
        raise CameraError(f"camera {mode}: the {mode} script failed: {e}")
    except runner.CommandError as e:
        raise CameraError(f"camera {mode}: cannot run the {mode} script: {e}")
    if dry_run:
        return
    found = current_mode(cfg)
    if found == "unknown":
        log.warning("camera %s: %s succeeded; the mode could not be read back (uhubctl/sysfs)", mode, script)
    elif found != mode:
        raise CameraError(f"camera {mode}: {script} succeeded, but the camera reads back as {found}, expected {mode}")


def mode_command(args, cfg) -> int:
    """dashcamctl mode record|data|off: switch, confirm, say what the camera is now."""
    set_mode(cfg, args.mode, dry_run=args.dry_run)
    print(f"camera: {args.mode}" + (" (dry run: nothing switched)" if args.dry_run else ""))
    return 0
