"""Which block device is the camera: the matcher as a pure function, the pyudev glue with fakes.

The fake monitor follows pyudev's own test plugin: a real pipe whose read end is the monitor's
fileno(), so the code under test selects on it exactly as on a netlink socket.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Dict, Optional

import pytest

from dashcam_helpers import config, device

CAMERA_PROPS = {
    "DEVNAME": "/dev/sda1",
    "DEVTYPE": "partition",
    "ID_SERIAL": "NOVATEKN_vt-DSC_96680-00000-001-0:0",
    "ID_SERIAL_SHORT": "96680-00000-001",
    "ID_VENDOR_ID": "0603",
    "ID_MODEL_ID": "8612",
    "ID_FS_UUID": "67EF-9CED",
    "ID_FS_LABEL": "NO NAME",
    "ID_FS_TYPE": "vfat",
    "ID_BUS": "usb",
    "ID_PATH": "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.1:1.0-scsi-0:0:0:0",
}
STICK_PROPS = {
    "DEVNAME": "/dev/sdb1",
    "ID_SERIAL": "SanDisk_Cruzer_4C530001",
    "ID_SERIAL_SHORT": "4C530001",
    "ID_VENDOR_ID": "0781",
    "ID_MODEL_ID": "5567",
    "ID_FS_UUID": "1234-ABCD",
    "ID_FS_LABEL": "STICK",
    "ID_FS_TYPE": "vfat",
    "ID_BUS": "usb",
}
# the card's filesystem (same UUID and label) on disks that are not on USB: the Pi's own SD slot,
# a virtio disk, an NVMe disk; none has a USB device among its parents
CARD_ELSEWHERE = {
    "mmc": {"DEVNAME": "/dev/mmcblk0p1", "ID_PATH": "platform-fe340000.mmc", "ID_NAME": "SD32G"},
    "virtio": {"DEVNAME": "/dev/vdb1", "ID_PATH": "pci-0000:00:05.0"},
    "nvme": {"DEVNAME": "/dev/nvme0n1p1", "ID_PATH": "pci-0000:01:00.0-nvme-1", "ID_BUS": "nvme"},
    # udev claims usb but no USB device is among its parents (a forged or stale property)
    "usb-claim-only": {"DEVNAME": "/dev/vdc1", "ID_BUS": "usb"},
}
CARD_FS = {k: CAMERA_PROPS[k] for k in ("ID_FS_UUID", "ID_FS_LABEL", "ID_FS_TYPE", "ID_SERIAL", "ID_SERIAL_SHORT",
                                        "ID_VENDOR_ID", "ID_MODEL_ID")}


def cfg_with(**camera_keys):
    return config.validate({"upload": {"host": "h", "user": "u", "dest_path": "d"}, "camera": camera_keys})


# ---------------------------------------------------------------- the pure matcher


@pytest.mark.parametrize(
    "keys, camera, stick",
    [
        ({"match_serial": "NOVATEKN_vt-DSC_96680-00000-001-0:0"}, True, False),
        ({"match_serial": "96680-00000-001"}, True, False),  # ID_SERIAL_SHORT
        ({"match_serial": "NOVATEKN"}, False, False),  # no prefix matching
        ({"match_vendor_model": "0603:8612"}, True, False),
        ({"match_vendor_model": "0603:8612".upper()}, True, False),
        ({"match_vendor_model": "0603:0000"}, False, False),
        ({"match_fs_uuid": "67EF-9CED"}, True, False),
        ({"match_fs_uuid": "67ef-9ced"}, True, False),
        ({"match_fs_uuid": "67EF-9CEE"}, False, False),
        ({"match_fs_label": "NO NAME"}, True, False),
        ({"match_fs_label": "no name"}, False, False),  # labels are exact
        ({"match_usb_port": "1-1.1"}, True, False),
        ({"match_usb_port": "1-1.2"}, False, True),
        ({}, True, False),  # default: <hub_location>.<port_number> = 1-1.1
        ({"hub_location": "1-1", "port_number": 2}, False, True),
        # any configured criterion is enough: a reformatted card (new UUID) is still the camera by serial
        ({"match_serial": "NOVATEKN_vt-DSC_96680-00000-001-0:0", "match_fs_uuid": "0000-0000"}, True, False),
        ({"match_fs_label": "STICK", "match_fs_uuid": "67EF-9CED"}, True, True),
        # a match_* key replaces the default port rule
        ({"match_serial": "nothing-like-it"}, False, False),
    ],
)
def test_matcher(keys, camera, stick):
    crit = device.criteria(cfg_with(**keys))
    assert device.matches(crit, CAMERA_PROPS, "1-1.1") is camera
    assert device.matches(crit, STICK_PROPS, "1-1.2") is stick


def test_a_device_without_the_properties_never_matches():
    for crit in ([("serial", "x")], [("vendor_model", ":")], [("fs_uuid", "")], [("fs_label", "")], [("usb_port", "1-1.1")]):
        assert not device.matches(crit, {}, None)


def test_which_match_names_the_criterion():
    crit = device.criteria(cfg_with(match_fs_uuid="67EF-9CED", match_serial="nope"))
    assert device.which_match(crit, CAMERA_PROPS, "1-1.1") == "fs_uuid=67EF-9CED"


@pytest.mark.parametrize("bus", sorted(CARD_ELSEWHERE))
@pytest.mark.parametrize("keys", [{"match_fs_uuid": "67EF-9CED"}, {"match_fs_label": "NO NAME"},
                                  {"match_serial": "96680-00000-001"}, {"match_vendor_model": "0603:8612"}])
def test_a_disk_not_on_usb_is_never_the_camera_whatever_it_carries(bus, keys):
    props = dict(CARD_FS, **CARD_ELSEWHERE[bus])
    cfg = cfg_with(**keys)
    assert device.matches(device.criteria(cfg), dict(props, ID_BUS="usb"), "1-1.1")  # the same facts on USB match
    assert not device.matches(device.criteria(cfg), props, None)
    ctx = FakeContext([FakeDevice(props, None)])
    assert device.camera_attached(cfg, context=ctx) is None  # status does not show it as the camera
    assert device.is_camera(cfg, props["DEVNAME"], lookup=lambda name: FakeDevice(props, None)) is False


@pytest.mark.parametrize("name", ["sda1", "/dev/sda1", " /dev/sda1\n"])
def test_devname_forms(name):
    assert device.kernel_name(name) == "sda1"


# ---------------------------------------------------------------- pyudev-shaped fakes


class FakeUsb:
    def __init__(self, sys_name):
        self.sys_name = sys_name


class FakeDevice:
    def __init__(self, props: Dict[str, str], usb_port: Optional[str], action: str = "add"):
        self.properties = dict(props)
        self.device_node = props.get("DEVNAME")
        self.action = action
        self._usb = FakeUsb(usb_port) if usb_port else None

    def find_parent(self, subsystem, device_type=None):
        assert (subsystem, device_type) == ("usb", "usb_device")
        return self._usb


class FakeContext:
    def __init__(self, devices=()):
        self.devices = list(devices)

    def list_devices(self, subsystem):
        assert subsystem == "block"
        return list(self.devices)


class FakeMonitor:
    """A udev monitor on a real pipe: emit() writes a byte, poll() reads one and returns the device."""

    def __init__(self):
        self._r, self._w = os.pipe()
        self._queue = deque()
        self.started = False

    def fileno(self):
        return self._r

    def start(self):
        self.started = True

    def emit(self, dev):
        self._queue.append(dev)
        os.write(self._w, b"x")

    def poll(self, timeout=None):
        assert self.started, "events read before the monitor was started"
        os.read(self._r, 1)
        return self._queue.popleft()

    def close(self):
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def monitor():
    m = FakeMonitor()
    yield m
    m.close()


def test_is_camera_uses_the_devices_udev_facts():
    devices = {"sda1": FakeDevice(CAMERA_PROPS, "1-1.1"), "sdb1": FakeDevice(STICK_PROPS, "1-1.2")}
    cfg = cfg_with(match_serial="NOVATEKN_vt-DSC_96680-00000-001-0:0")
    lookup = lambda name: devices.get(device.kernel_name(name))  # noqa: E731
    assert device.is_camera(cfg, "/dev/sda1", lookup=lookup) is True
    assert device.is_camera(cfg, "sdb1", lookup=lookup) is False
    assert device.is_camera(cfg, "sdz9", lookup=lookup) is False


def test_camera_attached_finds_the_volume_with_a_filesystem():
    whole_disk = dict(CAMERA_PROPS, DEVNAME="/dev/sda", DEVTYPE="disk")
    del whole_disk["ID_FS_TYPE"]
    ctx = FakeContext([FakeDevice(STICK_PROPS, "1-1.2"), FakeDevice(whole_disk, "1-1.1"), FakeDevice(CAMERA_PROPS, "1-1.1")])
    assert device.camera_attached(cfg_with(), context=ctx) == "/dev/sda1"
    assert device.camera_attached(cfg_with(match_fs_uuid="0000-0000"), context=ctx) is None


def test_camera_attached_is_none_when_udev_cannot_be_asked():
    class Broken:
        def list_devices(self, subsystem):
            raise OSError("no /sys")

    assert device.camera_attached(cfg_with(), context=Broken()) is None


def test_wait_for_camera_returns_when_its_add_event_arrives(monitor):
    cfg = cfg_with(match_fs_uuid="67EF-9CED")
    timer = threading.Timer(0.2, lambda: [monitor.emit(FakeDevice(STICK_PROPS, "1-1.2")), monitor.emit(FakeDevice(CAMERA_PROPS, "1-1.1"))])
    timer.start()
    start = time.monotonic()
    try:
        assert device.wait_for_camera(cfg, 10, monitor=monitor, context=FakeContext()) == "/dev/sda1"
    finally:
        timer.cancel()
    assert time.monotonic() - start < 5


def test_wait_for_camera_ignores_remove_events_and_times_out(monitor):
    cfg = cfg_with()
    monitor.emit(FakeDevice(CAMERA_PROPS, "1-1.1", action="remove"))
    monitor.emit(FakeDevice(STICK_PROPS, "1-1.2"))
    start = time.monotonic()
    assert device.wait_for_camera(cfg, 0.3, monitor=monitor, context=FakeContext()) is None
    assert 0.25 <= time.monotonic() - start < 3


def test_wait_for_camera_returns_at_once_when_it_is_already_there(monitor):
    ctx = FakeContext([FakeDevice(CAMERA_PROPS, "1-1.1")])
    assert device.wait_for_camera(cfg_with(), 10, monitor=monitor, context=ctx) == "/dev/sda1"
    assert monitor.started  # listening began before looking, so nothing slips in between


# ---------------------------------------------------------------- dashcamctl match on this machine


def test_match_exits_1_for_a_device_that_is_not_there(dashcamctl, make_config):
    r = dashcamctl("--config", str(make_config()), "match", "/dev/sdzz9")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr


def test_match_exits_1_for_a_real_block_device_that_is_not_the_camera(dashcamctl, make_config):
    names = sorted(os.listdir("/sys/class/block")) if os.path.isdir("/sys/class/block") else []
    if not names:
        pytest.skip("no block devices visible here")
    r = dashcamctl("--config", str(make_config({"camera": {"match_serial": "NOVATEKN_vt-DSC_96680-00000-001-0:0"}})), "match", names[0])
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_match_with_real_pyudev_reads_a_real_device():
    names = sorted(os.listdir("/sys/class/block")) if os.path.isdir("/sys/class/block") else []
    if not names:
        pytest.skip("no block devices visible here")
    dev = device.lookup_block("/dev/" + names[0])
    props, port = device.facts(dev)
    assert props["DEVNAME"].endswith(names[0])
    assert device.lookup_block("sdzz9") is None


def test_match_by_udev_serial_takes_a_real_usb_device_and_refuses_any_other(dashcamctl, make_config):
    """No camera here, but any block device udev knows a serial of proves the real pyudev path end to end:
    exit 0 when it is on USB, 1 when it is on another bus (virtio, NVMe, SATA, mmc)."""
    names = sorted(os.listdir("/sys/class/block")) if os.path.isdir("/sys/class/block") else []
    serials = {}
    for name in names:
        dev = device.lookup_block(name)
        serial = dev is not None and device.facts(dev)[0].get("ID_SERIAL")
        if serial:
            serials[name] = serial
    if not serials:
        pytest.skip("udev knows no serial of any block device here")
    name, serial = next(iter(serials.items()))
    usb = device.on_usb(*device.facts(device.lookup_block(name)))
    r = dashcamctl("--config", str(make_config({"camera": {"match_serial": serial}})), "match", f"/dev/{name}")
    assert r.returncode == (0 if usb else 1), r.stderr
    r = dashcamctl("--config", str(make_config({"camera": {"match_serial": serial + "-other"}})), "match", name)
    assert r.returncode == 1, r.stderr
