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

Seams for tests (parameters of ``Machine``, never module globals): a root prefix for /proc
and /lib/modules, the names of systemctl, journalctl and timedatectl, the udev context,
the user that owns staging. The fake sysfs comes from DASHCAM_SYSFS, as everywhere.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import runner
from .errors import EX_CONFIG, EX_TEMPFAIL
from .ignition import LOCK_PATH
from .record import Record
from .log import get as get_logger

log = get_logger("dashcam.doctor")

OK, WARN, FAIL = "ok", "warn", "FAIL"
TOOL_TIMEOUT = 3.0  # seconds for one local tool (version, uhubctl status, systemctl, timedatectl)
SERVER_TIMEOUT = 3  # seconds for one connection to the server (TCP connect, ssh-keyscan, ssh)
SERVER_BUDGET = 8.0  # seconds for the two rsync probes together (each is one ssh session)
SECOND_PROBE_MIN = 2.0  # seconds the second probe (--delete refused?) gets at least
MQTT_BUDGET = 2.0  # seconds for the broker to accept us
BATTERY_TIMEOUT = 3  # seconds for the one battery reading

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
DASHCAM_USER = "dashcam"
# upload.host as the package ships it (etc/dashcam/config.yaml): a placeholder until the user sets it
SHIPPED_UPLOAD_HOST = "homeserver.lan"
RESTRICT_PROBE = ".dashcam-doctor-probe"  # a folder the --delete probe names: it deletes nothing anyway

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


class Check(Record):
    name: str
    status: str  # ok | warn | FAIL
    found: str
    fix: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix}


def ok(name: str, found: str) -> Check:
    return Check(name, OK, found)


def warn(name: str, found: str, fix: Optional[str] = None) -> Check:
    return Check(name, WARN, found, fix)


def fail(name: str, found: str, fix: Optional[str] = None) -> Check:
    return Check(name, FAIL, found, fix)


class Machine(Record):
    """Where the checks look: the seams tests replace."""

    root: str = "/"  # prefix of /proc/device-tree/model, /proc/filesystems, /lib/modules
    systemctl: str = "systemctl"
    journalctl: str = "journalctl"
    timedatectl: str = "timedatectl"
    udev_context: Any = None  # a pyudev Context (or a fake with list_devices); None: the real one
    user: str = DASHCAM_USER  # the unprivileged user that owns staging, the ledger and the key
    euid: Optional[int] = None  # None: os.geteuid()
    lock_path: str = LOCK_PATH  # --switch holds the policy's lock (the tick's and the watcher's)
    udev_monitor: Any = None  # a pyudev Monitor (or a fake with start/fileno/poll); None: the real one

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def is_root(self) -> bool:
        return (os.geteuid() if self.euid is None else self.euid) == 0


def tool(argv: Sequence[str], timeout: float = TOOL_TIMEOUT) -> runner.Result:
    """A read-only command; CommandError (not found, timeout) passes to the caller."""
    return runner.run(list(argv), timeout=timeout, changes_state=False, check=False)


def first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


# ---------------------------------------------------------------------------- configuration


def check_config(path: Optional[str]) -> Tuple[Any, List[Check]]:
    """(the Config or None, checks): the check-config result and its warnings (deprecated keys)."""
    from . import config

    name = config.config_path(path)
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        checks = [fail("config", f"{e.path}: {p}", f"sudoedit {e.path}, then dashcamctl check-config") for p in e.problems]
        return None, checks
    checks = [ok("config", f"{name} is valid")]
    for w in cfg.warnings:
        checks.append(warn("config", f"{name}: {w}", f"sudoedit {name}: remove or rename the key"))
    return cfg, checks


def _mode_text(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _uid_of(user: str) -> Optional[int]:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def check_config_mode(path: str) -> Check:
    """The configuration: root:dashcam 0640; never writable by anyone but root."""
    try:
        st = os.stat(path)
    except OSError as e:
        return fail("config file mode", f"{path}: {e.strerror}")
    mode = _mode_text(st.st_mode)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_uid != 0:
        return fail("config file mode", f"{path} is {mode}, owner {_owner_name(st.st_uid)}: others can change what root runs",
                    f"sudo chown root:{DASHCAM_USER} {path} && sudo chmod 0640 {path}")
    if st.st_mode & stat.S_IROTH:
        return warn("config file mode", f"{path} is {mode}: every user can read it",
                    f"sudo chown root:{DASHCAM_USER} {path} && sudo chmod 0640 {path}")
    return ok("config file mode", f"{path} is {mode}, owner root")


def check_key_mode(cfg, m: Machine) -> Check:
    """The upload's private key: present, the dashcam user's, 0600 (ssh refuses a key others can read)."""
    key = cfg.upload.ssh_key
    try:
        st = os.stat(key)
    except FileNotFoundError:
        return fail("ssh key", f"{key} does not exist", "sudo dashcamctl keygen (then add the line it prints on the server)")
    except OSError as e:
        return fail("ssh key", f"{key}: {e.strerror}", "sudo dashcamctl doctor (run as root)")
    mode = _mode_text(st.st_mode)
    if st.st_mode & 0o077:
        return fail("ssh key", f"{key} is {mode}: ssh refuses a private key others can read", f"sudo chmod 0600 {key}")
    uid = _uid_of(m.user)
    if uid is not None and st.st_uid != uid:
        return fail("ssh key", f"{key} belongs to {_owner_name(st.st_uid)}: the upload runs as {m.user} and cannot read it",
                    f"sudo chown {m.user}: {key}")
    return ok("ssh key", f"{key} is {mode}, owner {_owner_name(st.st_uid)}")


# ---------------------------------------------------------------------------- tools and programs

VERSION_ARGS = {"uhubctl": ["-v"], "rsync": ["--version"], "ssh": ["-V"], "mount": ["--version"]}


def _version(argv: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """(version text, None) or (None, why not)."""
    try:
        res = tool(argv)
    except runner.CommandError as e:
        return None, str(e)
    text = first_line(res.stdout) or first_line(res.stderr)
    if res.returncode != 0 and not text:
        return None, f"{argv[0]} exited with {runner.describe_returncode(res.returncode)}"
    return text or "(no version printed)", None


def check_tools(cfg) -> List[Check]:
    t = cfg.tools
    wanted: List[Tuple[str, str, str]] = [  # (label, program, the key or package that fixes it)
        ("rsync", t.rsync, "sudo apt install rsync (or set tools.rsync)"),
        ("ssh", t.ssh, "sudo apt install openssh-client (or set tools.ssh)"),
        ("mount", "mount", "sudo apt install mount"),
    ]
    if cfg.camera.backend == "uhubctl":
        wanted.insert(0, ("uhubctl", t.uhubctl, "sudo apt install uhubctl (or set tools.uhubctl)"))
    checks = []
    for label, program, fix in wanted:
        if runner.hidden_from_units(program):
            checks.append(check_program(f"tools.{label}", program))
            continue
        version, why = _version([program] + VERSION_ARGS[label])
        if version is None:
            checks.append(fail(f"tool {label}", why or "", fix))
        else:
            checks.append(ok(f"tool {label}", f"{program}: {version}"))
    if cfg.battery.source == "lifepo4wered" and runner.hidden_from_units(t.lifepo4wered_cli):
        checks.append(check_program("tools.lifepo4wered_cli", t.lifepo4wered_cli))
    elif cfg.battery.source == "lifepo4wered":
        # it has no --version: `get VBAT` proves it runs (the full read follows in the battery check)
        path = _which(t.lifepo4wered_cli)
        if path is None:
            checks.append(fail("tool lifepo4wered-cli", f"{t.lifepo4wered_cli}: not found on PATH",
                               "install the UPS vendor's lifepo4wered-cli, or set tools.lifepo4wered_cli"))
        else:
            checks.append(ok("tool lifepo4wered-cli", path))
    return checks


def _which(name: str) -> Optional[str]:
    import shutil

    return shutil.which(name)


def programs(cfg) -> List[Tuple[str, str]]:
    """(config key, program) of every program a unit runs, as configured."""
    out = []
    if cfg.battery.source == "command" and cfg.battery.command:
        out.append(("battery.command", cfg.battery.command))
    if cfg.camera.backend == "scripts":
        for key in ("record_script", "data_script", "off_script"):
            value = getattr(cfg.camera, key)
            if value:
                out.append((f"camera.{key}", value))
    return out


def check_program(key: str, program: str) -> Check:
    """Present, executable, and visible to the unit that runs it (not behind ProtectHome=yes)."""
    name = f"program {key}"
    hidden = runner.hidden_from_units(program)
    if hidden:
        return fail(name, f"{program} is under {hidden}, which the units cannot see (ProtectHome=yes)",
                    f"sudo install -m 0755 {program} /usr/local/bin/ and set {key}: /usr/local/bin/{os.path.basename(program)}")
    path = program if "/" in program else _which(program)
    if path is None:
        return fail(name, f"{program}: not found on PATH", f"install it, or set {key} to its absolute path")
    if not os.path.isfile(path):
        return fail(name, f"{path} does not exist", f"set {key} to the program's path")
    if not os.access(path, os.X_OK):
        return fail(name, f"{path} is not executable", f"sudo chmod +x {path}")
    st = os.stat(path)
    if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        return warn(name, f"{path} is {_mode_text(st.st_mode)}: others can change what a unit runs",
                    f"sudo chmod go-w {path}")
    return ok(name, path)


def check_programs(cfg) -> List[Check]:
    return [check_program(key, program) for key, program in programs(cfg)]


# ---------------------------------------------------------------------------- battery and UPS


def shutdown_millivolts(cfg) -> Optional[int]:
    """The voltage below which the policy's percent falls under thresholds.shutdown_percent:
    the lowest step of the voltage table that still reads as shutdown_percent or more."""
    steps = [mv for mv, percent in cfg.battery.voltage_table if percent >= cfg.thresholds.shutdown_percent]
    return min(steps) if steps else None


def check_battery(cfg) -> Tuple[List[Check], Any]:
    """One real reading (bounded by BATTERY_TIMEOUT); (checks, the reading)."""
    from . import battery

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
    from . import camera

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
    from . import camera

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
    from . import device

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


# ---------------------------------------------------------------------------- the camera, switched (--switch)

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
    from .policy import INGEST_UNITS, UPLOAD_UNIT, units_running_from

    try:
        res = tool([m.systemctl, "list-units", "--all", "--plain", "--no-legend", "--no-pager", "--type=service",
                    "--", INGEST_UNITS, UPLOAD_UNIT])
    except runner.CommandNotFound:
        return False, False
    return units_running_from(res.stdout)


def switch_precheck(cfg, m: Machine) -> Optional[str]:
    """The refusal as things stand (one battery reading, the units, the camera's mode)."""
    from . import battery, camera

    try:
        mode = camera.current_mode(cfg)
    except Exception as e:  # a broken hub: the switch itself says so
        log.debug("camera mode unknown: %s", e)
        mode = "unknown"
    return switch_refusal(cfg, battery.read(cfg), *units_running(m), mode)


def _stop_ingest(m: Machine) -> Optional[str]:
    """Stop the ingest udev started for the storage that appeared (it would copy and switch the
    camera itself); waits until it has dropped its .part and unmounted. An error, or None."""
    from .policy import INGEST_UNITS

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

    from . import camera, device
    from .ignition import PolicyLock

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


# ---------------------------------------------------------------------------- staging and ledger


def check_staging(cfg, m: Machine) -> List[Check]:
    from . import staging

    checks = []
    path = cfg.paths.local_staging
    try:
        free, reserve = staging.space(cfg)
    except OSError as e:
        return [fail("staging space", f"{path}: {e.strerror}")]
    gib = 1024 ** 3
    if free < reserve:
        checks.append(warn("staging space", f"{free / gib:.1f} GiB free, below the reserve of {reserve / gib:.1f} GiB: ingest copies nothing",
                           "free space there, or lower ingest.reserve_bytes / ingest.reserve_percent"))
    else:
        checks.append(ok("staging space", f"{free / gib:.1f} GiB free, reserve {reserve / gib:.1f} GiB"))
    uid = _uid_of(m.user)
    for label, d in (("staging", path), ("state dir", cfg.paths.state_dir)):
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            checks.append(fail(f"{label} owner", f"{d} does not exist", f"sudo install -d -o {m.user} -g {m.user} -m 0750 {d}"))
            continue
        except OSError as e:
            checks.append(fail(f"{label} owner", f"{d}: {e.strerror}"))
            continue
        mode = _mode_text(st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            checks.append(fail(f"{label} owner", f"{d} is not a directory", f"move it away, then sudo install -d -o {m.user} -g {m.user} -m 0750 {d}"))
        elif st.st_mode & stat.S_IWOTH:
            checks.append(fail(f"{label} owner", f"{d} is {mode}: every user can write there", f"sudo chmod 0750 {d}"))
        elif uid is not None and st.st_uid != uid:
            checks.append(fail(f"{label} owner", f"{d} belongs to {_owner_name(st.st_uid)}: the upload ({m.user}) cannot prune it",
                               f"sudo chown -R {m.user}: {d}"))
        else:
            checks.append(ok(f"{label} owner", f"{d} is {mode}, owner {_owner_name(st.st_uid)}"))
    checks.append(check_ledger(cfg.paths.ledger))
    return checks


def check_ledger(path: str) -> Check:
    """Readable, and SQLite's own PRAGMA quick_check says ok; opened read-only."""
    import sqlite3

    from .ledger import damage_marker, damage_message

    marker = damage_marker(path)
    if marker is not None:
        return fail("ledger", damage_message(path, marker))
    if not os.path.exists(path):
        return ok("ledger", f"{path} not created yet (the first ingest creates it)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TOOL_TIMEOUT)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        return fail("ledger", f"{path}: {e}", "sudo dashcamctl doctor (as root); a damaged ledger: README, Troubleshooting")
    said = [str(r[0]) for r in rows]
    if said == ["ok"]:
        return ok("ledger", f"{path}: quick_check ok")
    return fail("ledger", f"{path}: quick_check: {'; '.join(said[:3])[:160]}",
                "stop the units, keep a copy, see README: Troubleshooting (a damaged ledger)")


# ---------------------------------------------------------------------------- clock


def check_clock(m: Machine) -> Check:
    try:
        res = tool([m.timedatectl, "show", "-p", "NTPSynchronized", "--value"])
    except runner.CommandError as e:
        return warn("clock", f"cannot ask timedatectl: {e}")
    said = res.stdout.strip()
    if res.returncode == 0 and said == "yes":
        return ok("clock", "NTP synchronised")
    if res.returncode == 0 and said == "no":
        return warn("clock", "not NTP synchronised: the Pi has no RTC, clip dates and the policy's time window depend on it",
                    "sudo timedatectl set-ntp true (and give the Pi a network with NTP)")
    return warn("clock", f"timedatectl said {first_line(said or res.stderr)!r}")


# ---------------------------------------------------------------------------- server


def connection_timeout(budget: float) -> float:
    """Seconds for one connection to the server: SERVER_TIMEOUT, more with a longer --server-timeout."""
    return max(SERVER_TIMEOUT, budget * SERVER_TIMEOUT / SERVER_BUDGET)


def _quick(cfg, timeout: float = SERVER_TIMEOUT):
    """The configuration with the server's timeouts cut to ``timeout``: doctor must stay short."""
    up = cfg.upload
    t = int(round(timeout))
    return cfg.replace(upload=up.replace(connect_timeout=min(up.connect_timeout, t),
                                         io_timeout=min(up.io_timeout, t * 2)))


def pinned_keys(cfg) -> Optional[List[Tuple[str, str]]]:
    """(keytype, key) pinned for the server in upload.known_hosts; None when the file is missing."""
    from . import ssh

    if not os.path.exists(cfg.upload.known_hosts):
        return None
    name = ssh.known_hosts_name(cfg.upload.host, cfg.upload.port)
    res = tool(["ssh-keygen", "-F", name, "-f", cfg.upload.known_hosts])  # also finds hashed entries
    out = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            out.append((parts[1], parts[2]))
    return out


def check_server(cfg, shipped_host: str = SHIPPED_UPLOAD_HOST, budget: float = SERVER_BUDGET) -> List[Check]:
    """``budget``: seconds for the key probes (--server-timeout); one connection gets connection_timeout()."""
    from . import server, ssh
    from .errors import DashcamError

    timeout = int(round(connection_timeout(budget)))
    quick = _quick(cfg, timeout)
    up = cfg.upload
    where = f"{up.host}:{up.port}"
    if not server.reachable(quick, timeout):
        if up.host == shipped_host:
            return [fail("server", f"upload.host is still the shipped example {up.host!r}, and {where} does not answer",
                         f"sudoedit {cfg.path}: set upload.host, upload.user and upload.dest_path to your server's "
                         "(README: Setting up the home server)")]
        return [warn("server", f"{where} does not answer (normal away from home)",
                     "at home: check upload.host and upload.port, and that the server is on")]
    checks = [ok("server", f"{where} answers")]
    try:
        pinned = pinned_keys(cfg)
    except runner.CommandError as e:  # no ssh-keygen: the tool check says why
        checks.append(warn("host key", f"cannot read {up.known_hosts}: {e}", "sudo apt install openssh-client"))
        return checks
    if pinned is None:
        checks.append(fail("host key", f"{up.known_hosts} does not exist", "sudo dashcamctl trust-host"))
        return checks
    if not pinned:
        checks.append(fail("host key", f"no key for {ssh.known_hosts_name(up.host, up.port)} in {up.known_hosts}",
                           "sudo dashcamctl trust-host"))
        return checks
    try:
        offered = {tuple(line.split()[1:3]) for line in ssh.scan_host_keys(quick, timeout)}
    except DashcamError as e:
        checks.append(warn("host key", f"cannot fetch the server's host key: {e}"))
        offered = None
    if offered is not None:
        if offered & set(pinned):
            checks.append(ok("host key", f"pinned in {up.known_hosts} and matching"))
        else:
            checks.append(fail("host key", f"the server's host key differs from the one pinned in {up.known_hosts}",
                               "if the server was reinstalled, check its fingerprint on the server "
                               "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then sudo dashcamctl trust-host"))
            return checks
    checks.extend(check_key(quick, budget))
    return checks


def _rsync_probe(cfg, options: List[str], dest: str, timeout: float) -> runner.Result:
    """A dry-run rsync of an empty folder to ``dest`` on the server, as the upload connects."""
    import shlex
    import tempfile

    from . import ssh

    with tempfile.TemporaryDirectory(prefix="dashcam-doctor-") as empty:
        argv = [cfg.tools.rsync, "-e", shlex.join(ssh.ssh_argv(cfg)), "--dry-run", "-r", *options,
                empty + "/", f"{ssh.remote_host(cfg)}:{dest}"]
        return runner.run(argv, timeout=timeout, changes_state=False, check=False)


def check_key(cfg, budget: float = SERVER_BUDGET) -> List[Check]:
    """The key is accepted and the destination takes a (dry-run) write; then the key is restricted:
    an rrsync -wo -no-del key refuses --delete (refusal expected; acceptance is a warning)."""
    import time

    from . import ssh

    deadline = time.monotonic() + budget
    dest = cfg.upload.dest_path.rstrip("/") or "."
    try:
        # the first probe may take most of the budget: on a slow or busy machine the ssh handshake
        # alone takes seconds, and the second probe reuses what the first proved (the key works)
        res = _rsync_probe(cfg, [], dest + "/", budget - SECOND_PROBE_MIN)
    except runner.CommandTimeout as e:  # no answer proves nothing: neither accepted nor refused
        return [warn("ssh key accepted", f"cannot tell: {e}", "run sudo dashcamctl doctor again; "
                     "if it keeps timing out, check the server's load and sshd (UseDNS no)")]
    except runner.CommandError as e:
        return [fail("ssh key accepted", str(e))]
    if res.returncode != 0:
        problem = ssh.classify(cfg, res.returncode, res.stderr)
        said = str(problem) if problem else (runner.last_line(res.stderr) or runner.describe_returncode(res.returncode))
        return [fail("ssh key accepted", said, None if problem else "see README: Setting up the home server")]
    checks = [ok("ssh key accepted", f"{cfg.upload.user}@{cfg.upload.host} took a dry-run write to {dest}/")]
    try:
        res = _rsync_probe(cfg, ["--delete"], f"{dest}/{RESTRICT_PROBE}/", max(SECOND_PROBE_MIN, deadline - time.monotonic()))
    except runner.CommandError as e:
        return checks + [warn("ssh key restricted", f"cannot tell: {e}")]
    if res.returncode != 0 and "rrsync" in res.stderr and "disabled" in res.stderr:
        checks.append(ok("ssh key restricted", "the server refuses --delete with this key (rrsync -no-del)"))
    elif res.returncode == 0:
        checks.append(warn("ssh key restricted", "the key may delete on the server (a dry-run --delete was accepted)",
                           "on the server, use the authorized_keys line `dashcamctl keygen` prints "
                           "(command=\"/usr/bin/rrsync -wo -no-del -no-lock DIR\",restrict)"))
    else:
        checks.append(warn("ssh key restricted", f"cannot tell: {runner.last_line(res.stderr) or runner.describe_returncode(res.returncode)}"))
    return checks


# ---------------------------------------------------------------------------- systemd

def timespan(text: str) -> Optional[float]:
    """systemd's time span ("1h 2min 3.5s", "30s", "500ms", "0") in seconds; None when not one."""
    from .policy_timer import parse_timespan

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


# ---------------------------------------------------------------------------- MQTT


def check_mqtt(cfg) -> List[Check]:
    from . import mqtt

    if cfg.mqtt is None:
        return [ok("mqtt", "not configured")]
    outcome = mqtt.send(cfg, [], budget=MQTT_BUDGET)
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    if outcome.ok:
        return [ok("mqtt", f"broker {where} accepted us")]
    if outcome.misconfigured:
        return [fail("mqtt", outcome.why, "check mqtt.username and mqtt.password_file")]
    return [warn("mqtt", outcome.why, "check mqtt.host and mqtt.port, and that the broker runs")]


# ---------------------------------------------------------------------------- the run


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

    from . import config

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
    from .log import printable

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
        from . import config

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
