"""Which block device is the camera: udev properties through pyudev.

The decision is a pure function, ``matches(criteria, properties, usb_port)``, of a
device's udev properties and the sys_name of its USB device ancestor (its port path,
e.g. ``1-1.1``); the pyudev glue around it only gathers those facts.

A device is the camera when ANY configured criterion matches it:
  camera.match_serial        ID_SERIAL or ID_SERIAL_SHORT
  camera.match_vendor_model  ID_VENDOR_ID:ID_MODEL_ID (case-insensitive hex)
  camera.match_fs_uuid       ID_FS_UUID (case-insensitive)
  camera.match_fs_label      ID_FS_LABEL
  camera.match_usb_port      the USB port path
With none of them set, the camera is whatever is plugged into <hub_location>.<port_number>.

Whatever the criterion, only a USB block device can be the camera: udev must say ID_BUS=usb
and the device must have a USB device among its parents. A disk on another bus (the Pi's own
SD slot on mmc, a virtio or NVMe disk) that carries the card's filesystem UUID or label, say a
copy of the card, is never taken for the camera.
"""

from __future__ import annotations

import select
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from .log import get as get_logger

log = get_logger("dashcam.device")

Criteria = List[Tuple[str, str]]  # (criterion name, wanted value)


def criteria(cfg) -> Criteria:
    """The configured match criteria; the default port when none is set."""
    cam = cfg.camera
    out: Criteria = []
    for name, value in (
        ("serial", cam.match_serial),
        ("vendor_model", cam.match_vendor_model),
        ("fs_uuid", cam.match_fs_uuid),
        ("fs_label", cam.match_fs_label),
        ("usb_port", cam.match_usb_port),
    ):
        if value is not None:
            out.append((name, str(value)))
    if not out:
        out.append(("usb_port", cam.usb_port))
    return out


def _criterion_matches(name: str, wanted: str, props: Mapping[str, str], usb_port: Optional[str]) -> bool:
    if name == "serial":
        return wanted in (props.get("ID_SERIAL"), props.get("ID_SERIAL_SHORT"))
    if name == "vendor_model":
        vendor, model = props.get("ID_VENDOR_ID"), props.get("ID_MODEL_ID")
        return bool(vendor and model) and f"{vendor}:{model}".lower() == wanted.lower()
    if name == "fs_uuid":
        uuid = props.get("ID_FS_UUID")
        return bool(uuid) and uuid.lower() == wanted.lower()
    if name == "fs_label":
        return props.get("ID_FS_LABEL") == wanted
    if name == "usb_port":
        return usb_port == wanted
    raise ValueError(f"unknown match criterion {name!r}")


def on_usb(props: Mapping[str, str], usb_port: Optional[str]) -> bool:
    """A USB block device: udev's ID_BUS says usb and a USB device is among its parents."""
    return props.get("ID_BUS") == "usb" and bool(usb_port)


def which_match(crit: Criteria, props: Mapping[str, str], usb_port: Optional[str]) -> Optional[str]:
    """The first criterion (as ``name=value``) the device meets, or None; never for a device not on USB."""
    if not on_usb(props, usb_port):
        return None
    for name, wanted in crit:
        if _criterion_matches(name, wanted, props, usb_port):
            return f"{name}={wanted}"
    return None


def matches(crit: Criteria, props: Mapping[str, str], usb_port: Optional[str]) -> bool:
    return which_match(crit, props, usb_port) is not None


def kernel_name(devname: str) -> str:
    """``/dev/sda1`` or ``sda1`` -> ``sda1``."""
    name = devname.strip()
    if name.startswith("/dev/"):
        name = name[len("/dev/"):]
    return name


# ---------------------------------------------------------------------------- pyudev glue


def facts(device) -> Tuple[Dict[str, str], Optional[str]]:
    """(udev properties, USB port path) of a pyudev Device (or anything shaped like one)."""
    props = {str(k): str(v) for k, v in dict(device.properties).items()}
    usb = device.find_parent("usb", "usb_device")
    return props, (usb.sys_name if usb is not None else None)


def _context():
    import pyudev

    return pyudev.Context()


def lookup_block(devname: str, context=None):
    """The pyudev Device of a block device by kernel name; None when there is none."""
    import pyudev

    context = context or _context()
    try:
        return pyudev.Devices.from_name(context, "block", kernel_name(devname))
    except pyudev.DeviceNotFoundError:
        return None


def is_camera(cfg, devname: str, *, lookup: Callable[[str], Any] = lookup_block) -> bool:
    """True when the block device ``devname`` is the configured camera."""
    device = lookup(devname)
    if device is None:
        log.info("%s: no such block device", kernel_name(devname))
        return False
    props, port = facts(device)
    hit = which_match(criteria(cfg), props, port)
    if hit:
        log.debug("%s is the camera (%s)", kernel_name(devname), hit)
    else:
        log.debug(
            "%s is not the camera (%sserial %s, usb port %s, fs uuid %s)",
            kernel_name(devname), "" if on_usb(props, port) else f"not on USB: bus {props.get('ID_BUS')}, ",
            props.get("ID_SERIAL"), port, props.get("ID_FS_UUID"),
        )
    return hit is not None


def _is_camera_volume(crit: Criteria, device) -> bool:
    """The camera's block device that holds its filesystem (what ingest mounts)."""
    props, port = facts(device)
    return bool(props.get("ID_FS_TYPE")) and matches(crit, props, port)


def camera_attached(cfg, *, context=None) -> Optional[str]:
    """Devnode of the camera's filesystem block device now, or None (also when udev is unavailable)."""
    try:
        context = context or _context()
        crit = criteria(cfg)
        for device in context.list_devices(subsystem="block"):
            if _is_camera_volume(crit, device):
                return device.device_node
    except Exception as e:  # no libudev, no /sys: "not attached" is the honest answer for status
        log.debug("cannot list block devices: %s", e)
    return None


def _monitor(context=None):
    import pyudev

    monitor = pyudev.Monitor.from_netlink(context or _context())
    monitor.filter_by("block")
    return monitor


def wait_for_camera(cfg, timeout: float, *, monitor=None, context=None, clock=time.monotonic) -> Optional[str]:
    """Wait up to ``timeout`` s for the camera's filesystem block device; its devnode, or None.

    Listens to udev events (no polling, no sleeps). The monitor starts before looking at what
    is already there, so a device that appears in between is not missed.
    """
    crit = criteria(cfg)
    monitor = monitor if monitor is not None else _monitor(context)
    monitor.start()
    present = camera_attached(cfg, context=context)
    if present:
        return present
    deadline = clock() + timeout
    while True:
        left = deadline - clock()
        if left <= 0:
            log.info("camera did not appear within %g s", timeout)
            return None
        ready, _, _ = select.select([monitor], [], [], left)
        if not ready:
            continue
        device = monitor.poll(timeout=0)
        if device is None or device.action not in ("add", "change"):
            continue
        if _is_camera_volume(crit, device):
            log.info("camera appeared as %s", device.device_node)
            return device.device_node


# dashcamctl match is the ingest unit's ExecCondition=: systemd skips the unit on exit 1-254 and
# fails it only on 255 (or a signal). 1 means "not the camera"; whatever means "cannot tell" (a
# broken configuration, an error) is 255, so the unit fails where a person sees it, instead of
# every camera being skipped in silence as "not the camera".
EX_CONDITION_FAILED = 255


def match_command(args, load_config) -> int:
    """dashcamctl match DEVNAME: exit 0 when it is the configured camera, 1 when it is not,
    255 when that cannot be told (broken configuration, an error)."""
    import sys

    from .config import ConfigError

    try:
        cfg = load_config(args)
        return 0 if is_camera(cfg, args.devname) else 1
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.path}: {problem}", file=sys.stderr)
        log.error("%s: broken configuration: cannot tell whether %s is the camera (exit %d fails the ingest unit)",
                  e.path, args.devname, EX_CONDITION_FAILED)
        return EX_CONDITION_FAILED
    except Exception as e:  # noqa: B902 - an error is "cannot tell", never "not the camera"
        log.error("match %s failed: %s: %s (exit %d fails the ingest unit)", args.devname, type(e).__name__, e,
                  EX_CONDITION_FAILED)
        return EX_CONDITION_FAILED
