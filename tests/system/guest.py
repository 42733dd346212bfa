"""What the tests put into the guest: the package, its config, a fake UPS, the virtual camera, a monitor.

The virtual camera with the user's identity is a USB mass-storage *gadget* on dummy_hcd + libcomposite
(configfs) inside the guest: vendor 0603, product 8612, serial 96680-00000-001, its card a vfat image
carried in as a virtio disk. dummy_hcd's root hub switches port power, so the camera really loses
power, and sysfs `authorized` really turns its data on and off: power, data and identity behave like
the user's camera. As on a real hub, the port must be switched through the kernel (the port's
`disable` attribute, as the product does): `uhubctl -l <bus> -p 1 -a off` alone leaves a recording
camera listed in sysfs (dummy_hcd reports no disconnect), and one with its storage bound is powered
again by the kernel within a second.
"""
import json
import os

import yaml
from merge import deep_merge  # tests/merge.py: the system conftest puts tests/ on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHIPPED_CONFIG = os.path.join(REPO, "etc", "dashcam", "config.yaml")
UPS_FIXTURE = os.path.join(REPO, "tests", "fixtures", "lifepo4wered-get.txt")

CAMERA_VENDOR, CAMERA_PRODUCT = "0603", "8612"
CAMERA_SERIAL = "96680-00000-001"
FAKE_UPS_VALUES = "/var/lib/fake-lifepo4wered/values"
MONITOR_LOG = "monitor.jsonl"                # in the 9p share: the host reads it live

FAKE_LIFEPO4WERED_CLI = r"""#!/bin/sh
# fake lifepo4wered-cli for the system tests: answers `get` / `get NAME` from a file the test writes
F=/var/lib/fake-lifepo4wered/values
case "$1" in
get)
	[ -r "$F" ] || { echo "I2C failed" >&2; exit 6; }
	if [ -z "$2" ]; then cat "$F"; else
		v=$(sed -n "s/^$2 = //p" "$F"); [ -n "$v" ] || { echo "-1"; exit 0; }; echo "$v"; fi ;;
set) exit 0 ;;
*) echo "usage: lifepo4wered-cli get|set [NAME] [VALUE]" >&2; exit 1 ;;
esac
"""

# bus: load dummy_hcd, print its bus number. up BACKING SERIAL [DATA]: create and bind the gadget;
# on a powered port the camera enumerates with data off (authorized 0, like a camera recording)
# unless DATA=1; on a port the product switched off it waits for power. Then the root hub's
# authorized_default goes back to 1 so later power cycles behave like the Pi's. down: unplug it.
GADGET = r"""#!/bin/sh
set -e
G=/sys/kernel/config/usb_gadget/dashcam
bus() {
	modprobe dummy_hcd
	for h in /sys/bus/usb/devices/usb*; do
		case "$(readlink -f "$h")" in *dummy_hcd*) basename "$h" | sed 's/^usb//'; return 0 ;; esac
	done
	echo "no dummy_hcd root hub" >&2; exit 1
}
case "$1" in
bus) bus ;;
up)
	B=$(bus)
	modprobe libcomposite
	mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
	mkdir -p $G
	cd $G
	echo 0x__VENDOR__ > idVendor
	echo 0x__PRODUCT__ > idProduct
	echo 0x0200 > bcdUSB
	mkdir -p strings/0x409
	echo NOVATEKN > strings/0x409/manufacturer
	echo vt-DSC > strings/0x409/product
	echo "$3" > strings/0x409/serialnumber
	mkdir -p functions/mass_storage.0
	echo 1 > functions/mass_storage.0/lun.0/removable
	printf '%-8s%-16s%-4s' NOVATEKN vt-DSC 1.00 > functions/mass_storage.0/lun.0/inquiry_string
	echo "$2" > functions/mass_storage.0/lun.0/file
	mkdir -p configs/c.1/strings/0x409
	echo 500 > configs/c.1/MaxPower
	[ -e configs/c.1/mass_storage.0 ] || ln -s functions/mass_storage.0 configs/c.1/
	echo ${4:-0} > /sys/bus/usb/devices/usb$B/authorized_default
	[ -n "$(cat UDC)" ] || ls /sys/class/udc | head -n 1 > UDC
	# a powered port enumerates the camera at once; a port the product switched off does not
	if uhubctl -l $B -p 1 | grep -q 'Port 1: .* power'; then
		i=0; while [ ! -e /sys/bus/usb/devices/$B-1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
		[ -e /sys/bus/usb/devices/$B-1 ] || { echo "the gadget did not enumerate on a powered port" >&2; exit 1; }
	fi
	echo 1 > /sys/bus/usb/devices/usb$B/authorized_default
	echo $B ;;
down)
	[ -d $G ] && echo "" > $G/UDC || true ;;
esac
"""

# Records, as JSON lines in the share, every change of: camera present (power), authorized (data),
# its block device, and the number of files in staging (incoming + ready). Guest monotonic seconds.
MONITOR = r"""#!/usr/bin/python3
import json, os, sys, time
bus, staging, out = sys.argv[1], sys.argv[2], sys.argv[3]
dev = "/sys/bus/usb/devices/%s-1" % bus
def state():
    present = os.path.isdir(dev)
    auth = None
    block = None
    if present:
        try:
            auth = open(dev + "/authorized").read().strip()
        except OSError:
            pass
        for d, subdirs, _ in os.walk(dev):
            if os.path.basename(d) == "block" and subdirs:
                block = subdirs[0]
                break
    staged = 0                           # footage only: the product's own dotfiles (a lock) do not count
    for sub in ("incoming", "ready"):
        for _, _, names in os.walk(os.path.join(staging, sub)):
            staged += len([n for n in names if not n.startswith(".")])
    mode = "off" if not present else ("data" if auth == "1" else "record")
    return {"mode": mode, "block": block, "staged": staged}
last = None
with open(out, "a", buffering=1) as f:
    while True:
        s = state()
        if s != last:
            s["t"] = time.monotonic()
            f.write(json.dumps(s) + "\n")
            last = dict(s); last.pop("t")
        time.sleep(0.05)
"""


def config(overrides):
    """The shipped config with `overrides` merged in (nested dicts)."""
    with open(SHIPPED_CONFIG) as f:
        base = yaml.safe_load(f)
    return deep_merge(base, overrides)


def install_tools(vm):
    """Fake UPS, gadget script, monitor; speeds the policy timer up to a 5 s tick."""
    vm.write_file("/usr/local/bin/lifepo4wered-cli", FAKE_LIFEPO4WERED_CLI, 0o755)
    vm.write_file("/usr/local/sbin/vcam-gadget",
                  GADGET.replace("__VENDOR__", CAMERA_VENDOR).replace("__PRODUCT__", CAMERA_PRODUCT), 0o755)
    vm.write_file("/usr/local/sbin/vcam-monitor", MONITOR, 0o755)
    set_ups(vm, external=True, vbat=3611)


def fast_policy_dropin(seconds=15):
    """The drop-in's text. An empty OnBootSec= (or any empty timer assignment) resets ALL of the
    unit's timers, OnUnitActiveSec= too: one reset, then the full set."""
    return "[Timer]\nOnBootSec=\nOnBootSec=%ds\nOnUnitActiveSec=%ds\nAccuracySec=1s\n" % (seconds, seconds)


def fast_policy(vm, seconds=15):
    """A drop-in on dashcam-policy.timer: a tick every 15 s instead of 30 (tests are short; one tick costs ~15 s of CPU under TCG)."""
    vm.write_file("/etc/systemd/system/dashcam-policy.timer.d/zz-system-test.conf", fast_policy_dropin(seconds))
    vm.run(["/bin/systemctl", "daemon-reload"])


def ups_values(external, vbat):
    """The text of the fake lifepo4wered-cli's values: the fixture with VIN (external power or
    none) and VBAT in mV."""
    lines = []
    with open(UPS_FIXTURE) as f:
        for line in f:
            name = line.split("=")[0].strip()
            if name == "VIN":
                line = "VIN = %d\n" % (5208 if external else 0)
            elif name == "VBAT":
                line = "VBAT = %d\n" % vbat
            lines.append(line)
    return "".join(lines)


def set_ups(vm, external, vbat):
    """What the fake lifepo4wered-cli reports: external power (VIN vs VIN_THRESHOLD) and VBAT in mV."""
    vm.write_file(FAKE_UPS_VALUES + ".new", ups_values(external, vbat))
    vm.run(["/bin/mv", FAKE_UPS_VALUES + ".new", FAKE_UPS_VALUES])


def write_config(vm, cfg, server=None):
    """/etc/dashcam/config.yaml (+ the dashcam key and pinned host key when a server is given)."""
    if server is not None:
        vm.write_file("/var/lib/dashcam/.ssh/id_ed25519", server.private_key(), 0o600)
        vm.sh("chown -R dashcam:dashcam /var/lib/dashcam/.ssh && chmod 700 /var/lib/dashcam/.ssh")
        vm.write_file("/etc/dashcam/known_hosts", server.known_hosts_line(), 0o644)
    vm.write_file("/etc/dashcam/config.yaml", yaml.safe_dump(cfg, sort_keys=False), 0o640)
    vm.sh("chgrp dashcam /etc/dashcam/config.yaml")
    vm.run(["/usr/bin/dashcamctl", "check-config"])
    vm.run(["/bin/sync"])                       # a power-cut test must find it after the reboot


def scenario_config(vm, bus=None, server=None, unreachable_port=None, **sections):
    """A config for the VM: the server at 10.0.2.2, the gadget camera on dummy_hcd bus <bus>, fake UPS."""
    over = {
        "upload": {"host": "10.0.2.2", "port": server.port if server else unreachable_port,
                   "user": "root", "dest_path": "footage", "connect_timeout": 5, "io_timeout": 15,
                   # the test server's sshd ends a vanished client's session within about 40 s
                   "cut_session_seconds": 90},
        # settle_minutes 0: on external power the car arriving fetches at once, as these scenarios
        # expect (the settling is proven by the policy's tests; here it would only add 3 min a test)
        "camera": {"name": "dashcam", "after_ingest": "off", "max_data_minutes": 10, "settle_minutes": 0},
        "ingest": {"reserve_bytes": 16 << 20, "reserve_percent": 0},
        "battery": {"source": "lifepo4wered"},
        "tools": {"lifepo4wered_cli": "/usr/local/bin/lifepo4wered-cli"},
        "poll": {"upload_retries": 2},
    }
    if bus is not None:
        over["camera"].update({"backend": "uhubctl", "hub_location": str(bus), "port_number": 1,
                               "data_device": "%s-1" % bus,
                               "match_vendor_model": "%s:%s" % (CAMERA_VENDOR, CAMERA_PRODUCT),
                               "match_serial": CAMERA_SERIAL})
    for k, v in sections.items():
        over = deep_merge(over, {k: v})
    return config(over)


def camera_bus(vm):
    """The dummy_hcd root hub's bus number (loads the module); write the config with it before camera_up."""
    return int(vm.run(["/usr/local/sbin/vcam-gadget", "bus"]).out.strip())


def camera_up(vm, card_image, serial=CAMERA_SERIAL, data=False):
    """Carry the card in as a virtio disk and plug the gadget camera in, recording (data off) unless
    data=True; return the dummy_hcd bus number."""
    backing = vm.add_disk(card_image, "cardback", "cardbacking")
    out = vm.run(["/usr/local/sbin/vcam-gadget", "up", backing, serial, "1" if data else "0"]).out.strip()
    return int(out.splitlines()[-1])


NOOP_SWITCH = """#!/bin/sh
# camera.backend=scripts for a QEMU usb-storage camera (its port cannot be switched): log the request
# to the journal (the units that call it see a read-only file system)
logger -t vcam-switch "$(basename "$0")" || true
"""


def scripts_backend(vm):
    """Camera config for a QMP usb-storage camera: the three scripts only log what was asked."""
    paths = {}
    for mode in ("record", "data", "off"):
        path = "/usr/local/sbin/vcam-%s" % mode
        vm.write_file(path, NOOP_SWITCH, 0o755)
        paths["%s_script" % mode] = path
    return dict(backend="scripts", **paths)


def start_monitor(vm, bus, staging="/var/lib/dashcam/staging"):
    vm.spawn(["/usr/local/sbin/vcam-monitor", str(bus), staging, "/mnt/host/" + MONITOR_LOG])


def monitor_events(vm):
    try:
        with open(os.path.join(vm.share, MONITOR_LOG)) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


LEDGER = "/var/lib/dashcam/ledger.sqlite3"


def ledger_sql(vm, sql, *options):
    """sqlite3 (as root) on the guest's ledger, only once it exists (rc 3 before): sqlite3 on a missing
    path creates it, owned by root, and the package's ledger is created by the package, owned by
    dashcam, whose ingest copy then writes it (the unit's root holds no CAP_DAC_OVERRIDE)."""
    return vm.run(["/bin/sh", "-c", 'test -e "$1" || exit 3; shift; exec /usr/bin/sqlite3 "$@"', "sh", LEDGER,
                   *options, LEDGER, sql], check=False)


def ledger_rows(vm, where=""):
    """The footage table as dicts (read with sqlite3 in the guest)."""
    out = ledger_sql(vm, "SELECT camera, source_path, size, sha256, staged_path, remote_path, state FROM footage %s"
                     % where, "-json")
    if out.rc != 0 or not out.out.strip():
        return []
    return json.loads(out.out)


def ledger_state(vm, key):
    out = ledger_sql(vm, "SELECT value FROM state WHERE key = '%s'" % key)
    return json.loads(out.out) if out.rc == 0 and out.out.strip() else None


def staged_files(vm, staging="/var/lib/dashcam/staging"):
    """Relative paths of the footage under staging (incoming/ and ready/); the product's own
    bookkeeping dotfiles (e.g. incoming/.lock) are not footage."""
    r = vm.run(["/usr/bin/find", staging, "-type", "f", "!", "-name", ".*", "-printf", "%P\\n"], check=False)
    return [line for line in r.out.splitlines() if line]


def sha256_in_guest(vm, paths):
    if not paths:
        return {}
    r = vm.run(["/usr/bin/sha256sum"] + list(paths))
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in r.out.splitlines()}


def failed_units(vm):
    return vm.run(["/bin/systemctl", "--failed", "--no-legend", "--plain"]).out.strip()


def install_package(vm, deb):
    """apt install ./the.deb from the 9p share (offline: the image holds every dependency)."""
    inside = vm.put(deb)
    return vm.run(["/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", "/usr/bin/apt-get", "install", "-y",
                   "-q", inside], timeout=600)
