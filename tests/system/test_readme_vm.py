"""The README's admin blocks that only make sense on a Pi, run as written in one guest: the package
installed by apt from the .deb, the units running, a camera on a real (emulated) USB bus.

tests/test_readme.py lists these blocks (its VM table) and runs the others on the host; both read
the blocks from README.md when they run, so an edited block is what runs here. The guest has no
sudo: the same stand-ins as on the host (root already; sudoedit runs $EDITOR, which makes the
edit the README asks for). "Changing the interval" is also proven across a reboot by
test_interval.py; here its blocks run once, in order with the rest.
"""
import os
import struct
import subprocess

import pytest

import guest
from vm import wait_for

from test_readme import SUDO, SUDOEDIT, VM as VM_BLOCKS, as_pasted, block

pytestmark = pytest.mark.system

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # a root login's, the stand-ins first

EDITOR = """#!/usr/bin/python3
# the README's edit of /etc/dashcam/config.yaml: at least upload.host, upload.user, upload.dest_path
import sys
import yaml
path = sys.argv[1]
data = yaml.safe_load(open(path)) or {}
data.setdefault("upload", {}).update({"host": "10.0.2.2", "port": 9, "user": "dashcam", "dest_path": "footage"})
open(path, "w").write(yaml.safe_dump(data, sort_keys=False))
"""


def run_block(vm, block_id, cwd="/", input_data=None, timeout=600, check=True):
    b = block(block_id)
    script = "export PATH=%s EDITOR=/usr/local/sbin/readme-editor\ncd %s\n%s" % (PATH, cwd, as_pasted(b.text))
    r = vm.run(["/bin/sh", "-c", script], timeout=timeout, check=False, input_data=input_data)
    assert r.rc == 0 or not check, "README line %d (%s) as written:\n%s\n--- %r" % (b.line, b.id, b.text, r)
    return r


def partitioned_card(path):
    """A card as cameras format them: one partition (so the camera's volume is /dev/sdX1), vfat."""
    sectors = (64 << 20) // 512
    with open(path, "wb") as f:
        f.truncate(sectors * 512)
        # an MBR with one FAT32 (LBA) partition from sector 2048 to the end (no sfdisk needed)
        entry = bytes([0, 0xFE, 0xFF, 0xFF, 0x0C, 0xFE, 0xFF, 0xFF]) + struct.pack("<II", 2048, sectors - 2048)
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")
    subprocess.run(["mkfs.vfat", "-n", "DASHCAM", "--offset", "2048", path, str((64 << 10) - 1024)],
                   check=True, stdout=subprocess.DEVNULL)
    return path


def test_the_readme_blocks_for_a_pi_work_as_written_in_a_guest(make_vm, deb_path, tmp_path):
    assert set(VM_BLOCKS) == {"Installing on a Pi #1", "Installing on a Pi #2", "USB hubs: what can switch the camera #1",
                              "The camera records whenever the car can move #1", "Changing the interval #1",
                              "Changing the interval #2"}, "test_readme.VM changed: run the new block here"
    vm = make_vm()
    vm.start()
    vm.write_file("/usr/local/sbin/sudo", SUDO, 0o755)
    vm.write_file("/usr/local/sbin/sudoedit", SUDOEDIT, 0o755)
    vm.write_file("/usr/local/sbin/readme-editor", EDITOR, 0o755)

    # Installing on a Pi: the .deb in the current folder, then the config edit and check-config
    share = os.path.dirname(vm.put(deb_path))
    r = run_block(vm, "Installing on a Pi #1", cwd=share, input_data="y\n")
    assert "/etc/dashcam/config.yaml: ok" in r.out, r
    assert vm.run(["/usr/bin/dpkg-query", "-W", "-f", "${Status}", "dashcam-manager"]).out == "install ok installed"
    assert "host: 10.0.2.2" in vm.read_file("/etc/dashcam/config.yaml").decode()
    guest.install_tools(vm)  # the UPS's lifepo4wered-cli (a fake on PATH) and the test camera's gadget

    # the policy, seen and tried without touching anything
    r = run_block(vm, "The camera records whenever the car can move #1")
    assert '"decision"' in r.out and "dashcam-policy.timer" in r.out, r

    # changing the interval, and back
    r = run_block(vm, "Changing the interval #1")
    assert "dashcam-policy.timer: every 60 s, first tick 45 s after boot" in r.out, r
    r = run_block(vm, "Changing the interval #2")
    assert "every 60 s" in r.out and "every 30 s" in r.out, r
    assert not vm.exists("/etc/systemd/system/dashcam-policy.timer.d/interval.conf")

    # doctor on the configured package: the units as the package installed them (the server and
    # the camera's hub are not there, so it may FAIL elsewhere; exit 1 exactly then)
    # first one policy tick, as the README says (it may fail here: the camera's hub is not there yet)
    ticks = "/bin/journalctl --no-pager -o cat -u dashcam-policy.service | grep -c 'policy: saw' || true"
    before = int(vm.sh(ticks).out.strip() or 0)
    run_block(vm, "Installing on a Pi #2", check=False)
    assert int(vm.sh(ticks).out.strip() or 0) > before, vm.sh("/bin/journalctl --no-pager -u dashcam-policy.service").out
    r = run_block(vm, "Installing on a Pi #3", timeout=120, check=False)
    lines = r.out.strip().splitlines()
    for name in ("units installed", "upload path", "boot service"):
        assert any(ln.startswith("ok") and " %s " % name in ln for ln in lines), r
    assert any(" policy timer " in ln and "every 30 s" in ln for ln in lines), r
    assert r.rc == (1 if any(ln.startswith("FAIL") for ln in lines) else 0), r

    # finding the hub, the port and the camera: plugged in and in data mode, its card partitioned
    guest.camera_bus(vm)
    bus = guest.camera_up(vm, partitioned_card(str(tmp_path / "card.img")), data=True)
    wait_for(lambda: vm.exists("/dev/sda1"), 60, "the camera's volume /dev/sda1")
    r = run_block(vm, "USB hubs: what can switch the camera #1")
    assert "Current status for hub %d" % bus in r.out, r
    assert "ID_SERIAL_SHORT=%s" % guest.CAMERA_SERIAL in r.out and "/usb%d/%d-1/" % (bus, bus) in r.out, r
