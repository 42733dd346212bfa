"""doctor's checks of the hardware in the car: the UPS (battery reading and its own settings), the USB
hub and the camera's port, the camera (seen, its storage, its card)."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

from .. import runner
from ..log import get as get_logger
from .check import Check, Machine, fail, first_line, ok, tool, warn

log = get_logger("dashcam.doctor")

BATTERY_TIMEOUT = 3  # seconds for the one battery reading
# LiFePO4wered AUTO_BOOT register values (lifepo4wered-data.h)
AUTO_BOOT = {
    0: "off",
    1: "when the battery is above VBAT_BOOT",
    2: "when the battery is above VBAT_BOOT (smart)",
    3: "when external power appears",
    4: "when external power appears (smart)",
    5: "when external power goes away",
    6: "when external power goes away (smart)",
}
AUTO_BOOT_ON_VIN = (3, 4)
# the UPS's cut-off must sit this far below our shutdown voltage (readings are noisy)
UPS_MARGIN_MV = 50
# a clean poweroff of a Pi takes tens of seconds; the UPS waits PI_SHDN_TO s for it, then SHDN_DELAY
# ticks of its firmware (8 a second) before it cuts power
SHDN_DELAY_TICKS_PER_SECOND = 8
MIN_SHUTDOWN_SECONDS = 60
# after the halt, the card's last writes and the kernel's power-off need a moment: 2 s at least
MIN_SHDN_DELAY_TICKS = 2 * SHDN_DELAY_TICKS_PER_SECOND
SHIPPED_SHDN_DELAY_TICKS = 64  # what a LiFePO4wered/Pi reads as shipped (tests/fixtures/lifepo4wered-get.txt)

# ---------------------------------------------------------------------------- battery and UPS


def shutdown_millivolts(cfg) -> Optional[int]:
    """The voltage below which the policy's percent falls under thresholds.shutdown_percent:
    the lowest step of the voltage table that still reads as shutdown_percent or more."""
    steps = [mv for mv, percent in cfg.battery.voltage_table if percent >= cfg.thresholds.shutdown_percent]
    return min(steps) if steps else None


def check_battery(cfg) -> Tuple[List[Check], Any]:
    """One real reading (bounded by BATTERY_TIMEOUT); (checks, the reading)."""
    from .. import battery

    quick = cfg.replace(battery=cfg.battery.replace(timeout_seconds=min(cfg.battery.timeout_seconds, BATTERY_TIMEOUT)))
    r = battery.read(quick)
    source = cfg.battery.source
    if source == "none":
        return [ok("battery", "battery.source is none: mains powered, no battery to watch")], r
    power = {True: "on external power", False: "on battery", None: "external power unknown"}[r.external]
    fix = ("check the UPS: sudo lifepo4wered-cli get" if source == "lifepo4wered"
           else f"run {cfg.battery.command} by hand: it must print battery-info.sh JSON")
    if not r.known:
        return [fail("battery", f"{source}: unknown ({r.reason}); {power}", fix)], r
    found = f"{source}: {r.percent} %" + (f", {r.millivolts} mV" if r.millivolts is not None else "") + f", {power}"
    if r.reason or r.external is None:
        return [warn("battery", f"{found} ({r.reason})", fix)], r
    return [ok("battery", found)], r


def check_ups_settings(cfg, raw: Dict[str, Any]) -> List[Check]:
    """The LiFePO4wered's own settings (from the `get` values of the reading) against ours."""
    def value(name: str) -> Optional[int]:
        v = raw.get(name)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    set_cmd = "sudo lifepo4wered-cli set {name} {value} && sudo lifepo4wered-cli set CFG_WRITE 0x46"
    checks = []
    auto = value("AUTO_BOOT")
    if auto is None:
        checks.append(warn("ups AUTO_BOOT", "not read", "sudo lifepo4wered-cli get AUTO_BOOT"))
    elif auto in AUTO_BOOT_ON_VIN:
        checks.append(ok("ups AUTO_BOOT", f"{auto}: the Pi boots {AUTO_BOOT[auto]} (the car starts)"))
    elif auto == 0:
        checks.append(fail("ups AUTO_BOOT", "0: the Pi does not boot again when the car starts",
                           set_cmd.format(name="AUTO_BOOT", value=3)))
    else:
        checks.append(warn("ups AUTO_BOOT", f"{auto}: the Pi boots {AUTO_BOOT.get(auto, 'in an unknown mode')}, "
                           "not when the car starts", set_cmd.format(name="AUTO_BOOT", value=3)))
    ours = shutdown_millivolts(cfg)
    for register in ("VBAT_SHDN", "VBAT_MIN"):
        v = value(register)
        name = f"ups {register}"
        if v is None:
            checks.append(warn(name, "not read", f"sudo lifepo4wered-cli get {register}"))
        elif ours is None:
            checks.append(warn(name, f"{v} mV; the voltage of thresholds.shutdown_percent is not in battery.voltage_table",
                               "give battery.voltage_table a step at or above thresholds.shutdown_percent"))
        elif v >= ours:
            checks.append(fail(name, f"{v} mV: the UPS cuts power at or above our clean shutdown at {ours} mV "
                               f"(shutdown_percent {cfg.thresholds.shutdown_percent} %)",
                               f"raise thresholds.shutdown_percent, or {set_cmd.format(name=register, value=ours - 2 * UPS_MARGIN_MV)}"))
        elif ours - v < UPS_MARGIN_MV:
            checks.append(warn(name, f"{v} mV: only {ours - v} mV below our clean shutdown at {ours} mV",
                               "raise thresholds.shutdown_percent"))
        else:
            checks.append(ok(name, f"{v} mV, below our clean shutdown at {ours} mV"))
    timeout, ticks = value("PI_SHDN_TO"), value("SHDN_DELAY")
    delay = "not read" if ticks is None else f"{ticks}, about {ticks / SHDN_DELAY_TICKS_PER_SECOND:g} s"
    if timeout is None:
        checks.append(warn("ups PI_SHDN_TO", "not read", "sudo lifepo4wered-cli get PI_SHDN_TO"))
    elif timeout < MIN_SHUTDOWN_SECONDS:
        checks.append(fail("ups PI_SHDN_TO", f"{timeout} s (SHDN_DELAY {delay}): too short for a clean poweroff",
                           set_cmd.format(name="PI_SHDN_TO", value=120)))
    else:
        checks.append(ok("ups PI_SHDN_TO", f"{timeout} s for the Pi to power off (SHDN_DELAY {delay})"))
    if ticks is None:
        checks.append(warn("ups SHDN_DELAY", "not read", "sudo lifepo4wered-cli get SHDN_DELAY"))
    elif ticks < MIN_SHDN_DELAY_TICKS:
        checks.append(warn("ups SHDN_DELAY", f"{delay}: power goes off right after the Pi says it has halted "
                           "(the SD card may still be writing)",
                           set_cmd.format(name="SHDN_DELAY", value=SHIPPED_SHDN_DELAY_TICKS)))
    else:
        checks.append(ok("ups SHDN_DELAY", f"{delay} between the Pi's halt and the power cut"))
    return checks


# ---------------------------------------------------------------------------- USB


def pi_model(m: Machine) -> Optional[str]:
    try:
        with open(m.path("proc", "device-tree", "model"), "rb") as f:
            return f.read(200).rstrip(b"\0\n").decode("ascii", "replace")
    except OSError:
        return None


def mode_off_reach(model: Optional[str]) -> str:
    """What else a power switch of the Pi's onboard USB ports takes with it, on this model."""
    if model is None:
        return "not a Raspberry Pi (no device-tree model)"
    if re.search(r"Raspberry Pi (4|5|400|500)\b|Compute Module 4", model):
        return f"{model}: its onboard ports are ganged, `mode off` on them switches off every USB port"
    if re.search(r"Raspberry Pi 3|Raspberry Pi 2|Model B Plus|Model B Rev", model):
        return f"{model}: its onboard ports share the hub with Ethernet, `mode off` on them switches off Ethernet too"
    return f"{model}: `mode off` switches only the camera's port"


# (models, vid:pid prefixes uhubctl prints) of the hubs on a Pi's board: the VL805 and the root
# hubs (Linux's 1d6b) of a Pi 4; the root hubs of a Pi 5 (RP1); the LAN951x/LAN7515 of a Pi 1-3.
# The same chips in an external hub on another model are not the Pi's.
ONBOARD_HUBS = (
    (r"Raspberry Pi (4|400)\b|Compute Module 4", ("2109:3431", "1d6b:")),
    (r"Raspberry Pi (5|500)\b", ("1d6b:",)),
    (r"Raspberry Pi (3|2|Model B)\b", ("0424:9514", "0424:2514", "0424:ec00", "0424:9512")),
)


def onboard_hub(model: Optional[str], description: str) -> bool:
    """The camera's hub is one of the Pi's own (by the model and the hub's vid:pid uhubctl prints)."""
    return model is not None and any(re.search(pattern, model) and description.startswith(ids)
                                      for pattern, ids in ONBOARD_HUBS)


def check_usb(cfg, m: Machine, seen: Optional[Dict[str, Any]] = None) -> List[Check]:
    """The hub, its port and the kernel's switches; the camera's port status goes into ``seen["port"]``
    (for the camera check: is anything plugged into it)."""
    from .. import camera

    cam = cfg.camera
    checks = [ok("usb pi model", mode_off_reach(pi_model(m)))]  # what the onboard ports share
    if cam.backend != "uhubctl":
        checks.append(ok("usb hub", "camera.backend is scripts: the scripts switch the camera"))
        return checks
    argv = [cfg.tools.uhubctl, "-l", cam.hub_location, "-p", str(cam.port_number)]
    try:
        res = tool(argv)
    except runner.CommandError as e:
        checks.append(fail("usb hub", str(e), "sudo apt install uhubctl (or set tools.uhubctl)"))
        return checks
    blocks = [b for b in _parse_uhubctl(res.stdout) if b.hub == cam.hub_location]
    if res.returncode != 0 or not blocks:
        checks.append(fail("usb hub", f"uhubctl finds no switchable hub at {cam.hub_location}: "
                           f"{first_line(res.stderr) or first_line(res.stdout) or runner.describe_returncode(res.returncode)}",
                           "run `sudo uhubctl` to list the hubs, then set camera.hub_location and camera.port_number"))
        return checks
    hub = blocks[-1]
    port = hub.ports.get(cam.port_number)
    if port is None:
        checks.append(fail("usb hub", f"hub {cam.hub_location} has no port {cam.port_number}",
                           "run `sudo uhubctl`, then set camera.port_number"))
        return checks
    if seen is not None:
        seen["port"] = port
    power = "powered" if port.powered else "off"
    where = f"hub {cam.hub_location} [{hub.description}] port {cam.port_number} {power}"
    model = pi_model(m)
    if onboard_hub(model, hub.description):
        # the Pi's own hubs say ppps but switch together (Pi 4/5) or carry Ethernet (Pi 3 and earlier)
        checks.append(warn("usb hub", f"{where}: the Pi's onboard hub; {mode_off_reach(model)}",
                           "plug the camera into an external hub with per-port power switching (README: USB hubs)"))
    elif "ppps" in hub.description:
        checks.append(ok("usb hub", f"{where}: per-port power switching"))
    elif "ganged" in hub.description:
        checks.append(warn("usb hub", f"{where}: ganged, switching the camera switches every port of the hub",
                           "use a hub with per-port power switching (README: USB hubs)"))
    else:
        checks.append(fail("usb hub", f"{where}: the hub cannot switch port power",
                           "use a hub with per-port power switching (README: USB hubs), or camera.backend: scripts"))
    disable = camera.port_disable_path(cfg)
    checks.append(ok("usb port switch", f"kernel port switch {disable}") if disable else
                  ok("usb port switch", "no kernel port switch (Linux before 6.0): uhubctl alone switches power"))
    path = camera.authorized_path(cfg)
    if not os.path.exists(path):
        checks.append(fail("usb data switch", f"{path} does not exist",
                           "set camera.data_device to the hub the camera is on (README: The camera and the battery): "
                           "it must stay present while the camera is off or unplugged"))
    elif not os.access(path, os.W_OK):
        if m.is_root():
            checks.append(fail("usb data switch", f"{path} is not writable"))
        else:
            checks.append(warn("usb data switch", f"{path} is not writable by this user", "sudo dashcamctl doctor"))
    else:
        checks.append(ok("usb data switch", f"{path} writable"))
    return checks


def _parse_uhubctl(text: str):
    from .. import camera

    try:
        return camera.parse_uhubctl(text)
    except camera.UhubctlParseError as e:
        log.debug("uhubctl output: %s", e)
        return []


# ---------------------------------------------------------------------------- camera


def kernel_filesystems(m: Machine) -> Tuple[str, ...]:
    """The camera filesystems (vfat, exfat) this kernel mounts now or can load a module for."""
    found = set()
    try:
        with open(m.path("proc", "filesystems"), encoding="ascii", errors="replace") as f:
            found.update(line.split()[-1] for line in f if line.strip())
    except OSError:
        pass
    release = os.uname().release
    for fs, module in (("vfat", "fat/vfat"), ("exfat", "exfat/exfat")):
        base = m.path("lib", "modules", release, "kernel", "fs", module + ".ko")
        if any(os.path.exists(base + ext) for ext in ("", ".xz", ".zst", ".gz")):
            found.add(fs)
    return tuple(fs for fs in ("vfat", "exfat") if fs in found)


def camera_port(cfg, port) -> Check:
    """No camera volume now: what the hub says is on the camera's port (uhubctl's `connect` flag and
    the device it names). Recording, the camera is on the bus with its data off, so no volume shows;
    nothing on a powered port means it is unplugged."""
    cam = cfg.camera
    where = f"hub {cam.hub_location} port {cam.port_number}"
    if not port.powered:
        return ok("camera", f"{where} is off (`mode off`, or the policy on a low battery): the camera has no power now")
    if "connect" in port.flags:
        on = f" {port.device}" if port.device else ""
        return ok("camera", f"camera on {where}{on}, recording: its storage is attached only while footage is fetched")
    return fail("camera", f"nothing on {where}: the camera is unplugged, or on another port",
                f"plug the camera into {where}, or run `sudo uhubctl` and set camera.hub_location and camera.port_number")


def check_camera(cfg, m: Machine, hub_port=None) -> List[Check]:
    """The kernel's filesystems, then the camera: a USB volume that matches; else what is on its port
    (``hub_port``: its uhubctl status from the USB check, None when unknown)."""
    from .. import device

    checks = []
    filesystems = kernel_filesystems(m)
    if filesystems:
        checks.append(ok("camera filesystems", f"the kernel mounts {', '.join(filesystems)}"))
    else:
        checks.append(fail("camera filesystems", "the kernel has neither vfat nor exfat",
                           "install a kernel with vfat/exfat (modprobe vfat)"))
    crit = device.criteria(cfg)
    wanted = ", ".join(f"{n}={v}" for n, v in crit)
    try:
        context = m.udev_context or device._context()
        volumes = []
        for dev in context.list_devices(subsystem="block"):
            props, port = device.facts(dev)
            if props.get("ID_FS_TYPE") and device.on_usb(props, port):
                volumes.append((dev, props, port, device.which_match(crit, props, port)))
    except Exception as e:
        checks.append(warn("camera", f"cannot list block devices: {e}", "sudo dashcamctl doctor (udev must be running)"))
        return checks
    hits = [v for v in volumes if v[3]]
    if hits:
        dev, props, port, hit = hits[0]
        fs = props.get("ID_FS_TYPE")
        found = f"{dev.device_node} on USB port {port}, {fs}, matched by camera.match_{hit.split('=')[0]} ({hit})"
        if fs not in filesystems:
            checks.append(fail("camera", f"{found}: the kernel cannot mount {fs}", f"modprobe {fs}"))
        else:
            checks.append(ok("camera", found))
        checks.append(check_card(dev.device_node))
        return checks
    others = "; ".join(f"{d.device_node}: serial {p.get('ID_SERIAL')}, port {port}, uuid {p.get('ID_FS_UUID')}"
                       for d, p, port, _ in volumes[:3])
    if others:
        checks.append(warn("camera", f"no USB volume matches {wanted}; present: {others}",
                           "set camera.match_serial (or another camera.match_* key) to the camera's"))
    elif hub_port is not None:
        checks.append(camera_port(cfg, hub_port))
    else:
        checks.append(ok("camera", f"not attached now (normal while it records: data is off); looking for {wanted}"))
    return checks


def card_space(devnode: str) -> Tuple[Optional[Tuple[int, int]], str]:
    """((free bytes, total bytes), "") of the camera's card from its own count, read from the
    device without mounting it (FAT32: the FSInfo sector's free cluster count; exFAT: the boot
    sector's PercentInUse); (None, why) when the card does not say or cannot be read."""
    import struct

    try:
        with open(devnode, "rb") as f:
            boot = f.read(512)
            if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
                return None, "no FAT or exFAT boot sector"
            if boot[3:11] == b"EXFAT   ":
                cluster = 1 << (boot[108] + boot[109])
                total = struct.unpack_from("<I", boot, 92)[0] * cluster
                used = boot[112]
                if used > 100:
                    return None, "the exFAT card does not say how full it is"
                return (total * (100 - used) // 100, total), ""
            sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", boot, 11)
            sectors = struct.unpack_from("<H", boot, 19)[0] or struct.unpack_from("<I", boot, 32)[0]
            fat_sectors, info = struct.unpack_from("<H", boot, 22)[0], 0
            if fat_sectors == 0:  # FAT32
                fat_sectors, info = struct.unpack_from("<I", boot, 36)[0], struct.unpack_from("<H", boot, 48)[0]
            if not sector or not per_cluster or not info or info == 0xFFFF:
                return None, "a FAT12/16 card keeps no free count"
            f.seek(info * sector)
            fsinfo = f.read(512)
    except OSError as e:
        return None, f"cannot read {devnode}: {e.strerror}"
    if len(fsinfo) < 512 or fsinfo[0:4] != b"RRaA" or fsinfo[484:488] != b"rrAa":
        return None, "no FSInfo sector"
    free = struct.unpack_from("<I", fsinfo, 488)[0]
    clusters = (sectors - reserved - fats * fat_sectors) // per_cluster
    if free > clusters:
        return None, "the card's free count is not set"
    size = sector * per_cluster
    return (free * size, clusters * size), ""


def check_card(devnode: str) -> Check:
    """Free space on the camera's card, as the card counts it (a dashcam records in a loop: a full
    card is normal; the line says how much footage room there is)."""
    space, why = card_space(devnode)
    if space is None:
        return warn("camera card", f"{devnode}: free space unknown ({why})",
                    None if "cannot read" not in why else "sudo dashcamctl doctor")
    gib = 1024 ** 3
    free, total = space
    return ok("camera card", f"{devnode}: {free / gib:.1f} GiB free of {total / gib:.1f} GiB (the card's own count)")
