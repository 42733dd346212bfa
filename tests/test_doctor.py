"""dashcamctl doctor: each check's ok / warn / FAIL path, against fake tools on PATH, fake sysfs and
/proc trees, a real sshd, and the command itself as a subprocess."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import FIXTURES
from dashcam_helpers import config, doctor, runner
from dashcam_helpers.doctor import FAIL, OK, WARN, Machine
from sshd import SshServer, keygen


def statuses(checks, prefix=""):
    return {c.name: c.status for c in checks if c.name.startswith(prefix)}


def only(checks, name):
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, checks
    return found[0]


def fake_tool(bin_dir: Path, name: str, script: str) -> str:
    """A fake program ``name`` in ``bin_dir``: a shell script (argv lists, so no quoting issues)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def load(make_config):
    def make(overrides=None):
        return config.load(str(make_config(overrides)))

    return make


# ---------------------------------------------------------------------------- configuration


def test_a_valid_config_is_ok_and_a_deprecated_key_warns_naming_it(make_config):
    cfg, checks = doctor.check_config(str(make_config()))
    assert cfg is not None and [c.status for c in checks] == [OK]
    _, checks = doctor.check_config(str(make_config({"paths": {"log_path": "/var/log/dashcam.log"}})))
    assert [c.status for c in checks] == [OK, WARN]
    assert "paths.log_path" in checks[1].found


def test_a_broken_config_fails_once_per_problem_naming_the_key(make_config):
    cfg, checks = doctor.check_config(str(make_config({"upload": {"port": "ssh"}, "thresholds": {"shutdown_percent": 99}})))
    assert cfg is None
    assert {c.status for c in checks} == {FAIL}
    assert any("upload.port" in c.found for c in checks) and any("thresholds.shutdown_percent" in c.found for c in checks)
    assert all("check-config" in c.fix for c in checks)


@pytest.mark.parametrize("mode,expected", [(0o640, OK), (0o644, WARN), (0o664, FAIL), (0o666, FAIL)])
def test_config_file_mode(make_config, mode, expected):
    path = make_config()
    path.chmod(mode)
    if os.geteuid() != 0:
        pytest.skip("the file must belong to root")
    check = doctor.check_config_mode(str(path))
    assert check.status == expected
    if expected != OK:
        assert "chmod 0640" in check.fix


def test_ssh_key_missing_readable_by_others_or_fine(load, tmp_path):
    key = tmp_path / "id_ed25519"
    cfg = load({"upload": {"ssh_key": str(key)}})
    me = Machine(user=__import__("getpass").getuser())
    check = doctor.check_key_mode(cfg, me)
    assert check.status == FAIL and "keygen" in check.fix
    keygen(key)
    key.chmod(0o644)
    check = doctor.check_key_mode(cfg, me)
    assert check.status == FAIL and check.fix == f"sudo chmod 0600 {key}"
    key.chmod(0o600)
    assert doctor.check_key_mode(cfg, me).status == OK


def test_ssh_key_of_another_user_fails_with_the_chown(load, tmp_path):
    key = tmp_path / "id_ed25519"
    keygen(key)
    cfg = load({"upload": {"ssh_key": str(key)}})
    other = "nobody" if os.geteuid() == 0 else "root"
    check = doctor.check_key_mode(cfg, Machine(user=other))
    assert check.status == FAIL and check.fix == f"sudo chown {other}: {key}"


# ---------------------------------------------------------------------------- tools and programs


def test_tools_present_with_versions(load, fake_hw):
    checks = doctor.check_tools(load())
    assert statuses(checks) == {"tool uhubctl": OK, "tool rsync": OK, "tool ssh": OK, "tool mount": OK,
                                "tool lifepo4wered-cli": OK}
    assert "2.5.0-fake" in only(checks, "tool uhubctl").found
    assert "rsync" in only(checks, "tool rsync").found


def test_a_missing_tool_fails_with_its_key(load, fake_hw, tmp_path):
    cfg = load({"tools": {"rsync": str(tmp_path / "no-rsync"), "lifepo4wered_cli": "no-such-lifepo4wered-cli"}})
    checks = doctor.check_tools(cfg)
    assert only(checks, "tool rsync").status == FAIL and "tools.rsync" in only(checks, "tool rsync").fix
    assert only(checks, "tool lifepo4wered-cli").status == FAIL


def test_a_program_under_home_fails_as_hidden_from_the_units(tmp_path):
    check = doctor.check_program("battery.command", "/home/pi/battery-info.sh")
    assert check.status == FAIL
    assert "ProtectHome=yes" in check.found and "/home" in check.found
    assert "battery.command: /usr/local/bin/battery-info.sh" in check.fix
    for hidden in ("/root/x.sh", "/run/user/1000/x.sh"):
        assert doctor.check_program("camera.record_script", hidden).status == FAIL
    assert runner.hidden_from_units("/home2/x") is None and runner.hidden_from_units("/usr/local/bin/x") is None


def test_a_program_missing_not_executable_writable_or_fine(tmp_path):
    prog = tmp_path / "battery-info.sh"
    assert doctor.check_program("battery.command", str(prog)).status == FAIL
    prog.write_text("#!/bin/sh\necho {}\n")
    prog.chmod(0o644)
    check = doctor.check_program("battery.command", str(prog))
    assert check.status == FAIL and check.fix == f"sudo chmod +x {prog}"
    prog.chmod(0o777)
    assert doctor.check_program("battery.command", str(prog)).status == WARN
    prog.chmod(0o755)
    assert doctor.check_program("battery.command", str(prog)).status == OK


def test_programs_are_the_battery_command_and_the_scripts(load, tmp_path):
    cfg = load({"battery": {"source": "command", "command": "/usr/local/bin/b"},
                "camera": {"backend": "scripts", "record_script": "/a", "data_script": "/b", "off_script": "/c"}})
    assert doctor.programs(cfg) == [("battery.command", "/usr/local/bin/b"), ("camera.record_script", "/a"),
                                    ("camera.data_script", "/b"), ("camera.off_script", "/c")]


@pytest.mark.parametrize("overrides,key", [
    ({"battery": {"source": "command", "command": "/home/pi/battery-info.sh"}}, "battery.command"),
    ({"camera": {"backend": "scripts", "record_script": "/root/rec.sh", "data_script": "/usr/bin/d",
                 "off_script": "/usr/bin/o"}}, "camera.record_script"),
    ({"tools": {"uhubctl": "/run/user/1000/uhubctl"}}, "tools.uhubctl"),
])
def test_check_config_refuses_a_program_the_units_cannot_see(make_config, overrides, key):
    with pytest.raises(config.ConfigError) as e:
        config.load(str(make_config(overrides)))
    assert any(p.startswith(f"{key}:") and "ProtectHome=yes" in p for p in e.value.problems)


def test_the_runner_in_a_unit_says_a_hidden_program_is_hidden_not_missing(monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")  # as systemd sets it for a unit
    with pytest.raises(runner.CommandNotFound) as e:
        runner.run(["/home/no-such-user-here/battery-info.sh"], timeout=5)
    assert "hidden from the service" in str(e.value) and "command not found" not in str(e.value)
    assert "ProtectHome=yes" in str(e.value)
    with pytest.raises(runner.CommandNotFound) as e:
        runner.run(["/usr/local/bin/no-such-program-here"], timeout=5)
    assert "command not found" in str(e.value)


def test_the_runner_in_a_shell_says_a_missing_program_under_home_is_missing(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    with pytest.raises(runner.CommandNotFound) as e:
        runner.run(["/home/no-such-user-here/battery-info.sh"], timeout=5)
    assert "command not found" in str(e.value)


# ---------------------------------------------------------------------------- battery and UPS


def test_battery_one_real_read_on_external_power(load, fake_hw):
    checks, reading = doctor.check_battery(load())
    assert [c.status for c in checks] == [OK]
    assert "3611 mV" in checks[0].found and "on external power" in checks[0].found
    assert fake_hw.battery_call_count() == 1


def test_battery_on_battery_is_ok_and_says_so(load, fake_hw, monkeypatch):
    monkeypatch.setenv("LIFEPO4WERED_FAKE_SET", "VIN=0,VBAT=3250")
    checks, _ = doctor.check_battery(load())
    assert checks[0].status == OK and "on battery" in checks[0].found


def test_battery_unknown_fails_with_the_reason(load, fake_hw, monkeypatch):
    monkeypatch.setenv("LIFEPO4WERED_FAKE_MODE", "garbage")
    checks, _ = doctor.check_battery(load())
    assert checks[0].status == FAIL and "unknown" in checks[0].found and "garbage" in checks[0].found


def test_battery_source_none_is_ok(load):
    checks, _ = doctor.check_battery(load({"battery": {"source": "none"}}))
    assert checks[0].status == OK


def ups_values(**changes):
    from dashcam_helpers.battery import parse_lifepo4wered

    values = parse_lifepo4wered((FIXTURES / "lifepo4wered-get.txt").read_text())
    values.update(changes)
    return values


def test_ups_settings_of_the_fixture_are_ok(load):
    checks = doctor.check_ups_settings(load(), ups_values())
    assert set(statuses(checks).values()) == {OK}, checks
    assert doctor.shutdown_millivolts(load()) > 2950


@pytest.mark.parametrize("changes,name,expected", [
    ({"AUTO_BOOT": 0}, "ups AUTO_BOOT", FAIL),
    ({"AUTO_BOOT": 1}, "ups AUTO_BOOT", WARN),
    ({"AUTO_BOOT": 4}, "ups AUTO_BOOT", OK),
    ({"VBAT_SHDN": 3300}, "ups VBAT_SHDN", FAIL),
    ({"VBAT_MIN": 3200}, "ups VBAT_MIN", WARN),
    ({"PI_SHDN_TO": 20}, "ups PI_SHDN_TO", FAIL),
    ({"PI_SHDN_TO": -1}, "ups PI_SHDN_TO", WARN),
    ({"SHDN_DELAY": 64}, "ups SHDN_DELAY", OK),
    ({"SHDN_DELAY": 8}, "ups SHDN_DELAY", WARN),
    ({"SHDN_DELAY": -2}, "ups SHDN_DELAY", WARN),
])
def test_ups_settings_against_ours(load, changes, name, expected):
    cfg = load()
    check = only(doctor.check_ups_settings(cfg, ups_values(**changes)), name)
    assert check.status == expected, check
    if expected == FAIL:
        assert "lifepo4wered-cli set" in check.fix or "thresholds" in check.fix


def test_the_ups_cut_off_is_measured_against_our_shutdown_percent(load):
    cfg = load({"thresholds": {"shutdown_percent": 5, "disconnect_percent": 20}})
    ours = doctor.shutdown_millivolts(cfg)
    check = only(doctor.check_ups_settings(cfg, ups_values(VBAT_SHDN=ours)), "ups VBAT_SHDN")
    assert check.status == FAIL and str(ours) in check.found


# ---------------------------------------------------------------------------- USB


def pi_root(tmp_path, model=None, filesystems="nodev\tsysfs\n"):
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "filesystems").write_text(filesystems)
    if model:
        (root / "proc" / "device-tree").mkdir(parents=True, exist_ok=True)
        (root / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\0")
    return str(root)


@pytest.mark.parametrize("model,says", [
    ("Raspberry Pi 4 Model B Rev 1.4", "every USB port"),
    ("Raspberry Pi 5 Model B Rev 1.0", "every USB port"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "Ethernet"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "only the camera's port"),
    (None, "not a Raspberry Pi"),
])
def test_pi_model_and_what_mode_off_switches_with_it(tmp_path, model, says):
    m = Machine(root=pi_root(tmp_path, model))
    assert doctor.pi_model(m) == model
    assert says in doctor.mode_off_reach(doctor.pi_model(m))


def test_usb_hub_with_per_port_switching_and_a_writable_data_switch(load, fake_hw, tmp_path):
    fake_hw.usb_device("1-1")
    checks = doctor.check_usb(load(), Machine(root=pi_root(tmp_path, "Raspberry Pi Zero 2 W Rev 1.0")))
    assert statuses(checks) == {"usb pi model": OK, "usb hub": OK, "usb port switch": OK, "usb data switch": OK}
    assert "per-port" in only(checks, "usb hub").found
    assert all(len(argv) == 4 for argv in fake_hw.uhubctl_argvs()), "doctor never switches (no -a)"


@pytest.mark.parametrize("model,hub,says", [
    ("Raspberry Pi 4 Model B Rev 1.4", "2109:3431 USB2.0 Hub, USB 2.10, 4 ports, ppps", "every USB port"),  # the user's
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "0424:2514 USB 2.0 Hub, USB 2.00, 4 ports, ppps", "Ethernet"),
])
def test_usb_the_pis_own_hub_warns_though_it_says_ppps(load, fake_hw, tmp_path, model, hub, says):
    fake_hw.usb_device("1-1")
    prog = fake_tool(tmp_path / "bin", "uhubctl-onboard", f"""printf '%s\\n' 'Current status for hub 1-1 [{hub}]' \\
  '  Port 1: 0503 power highspeed enable connect [0603:8612 NOVATEKN vt-DSC]'
""")
    hub = only(doctor.check_usb(load({"tools": {"uhubctl": prog}}), Machine(root=pi_root(tmp_path, model))), "usb hub")
    assert hub.status == WARN and "onboard" in hub.found and says in hub.found and "external hub" in hub.fix


def test_usb_a_root_hub_of_a_pi_5_is_its_own(load):
    assert doctor.onboard_hub("Raspberry Pi 5 Model B Rev 1.0", "1d6b:0002 Linux 6.6.31 xhci-hcd xHCI Host Controller")
    assert not doctor.onboard_hub("Raspberry Pi Zero 2 W Rev 1.0", "1d6b:0002 Linux dwc2")
    assert not doctor.onboard_hub(None, "2109:3431 USB2.0 Hub")
    assert not doctor.onboard_hub("Raspberry Pi 4 Model B Rev 1.4", "05e3:0608 USB2.0 Hub, ppps")
    assert not doctor.onboard_hub("Raspberry Pi 5 Model B Rev 1.0", "2109:3431 USB2.0 Hub")  # an external VL805 hub


def test_usb_kernel_port_switch_is_reported(load, fake_hw, tmp_path, monkeypatch):
    monkeypatch.setenv("UHUBCTL_FAKE_HUBS", "1")  # a root hub, as on a Pi 4
    d = fake_hw.sysfs / "bus" / "usb" / "devices" / "usb1" / "1-0:1.0" / "usb1-port1"
    d.mkdir(parents=True)
    (d / "disable").write_text("0\n")
    checks = doctor.check_usb(load({"camera": {"hub_location": "1", "port_number": 1}}), Machine(root=pi_root(tmp_path)))
    assert "disable" in only(checks, "usb port switch").found


def test_usb_no_hub_fails_naming_the_key(load, fake_hw, tmp_path):
    checks = doctor.check_usb(load({"camera": {"hub_location": "3-9"}}), Machine(root=pi_root(tmp_path)))
    hub = only(checks, "usb hub")
    assert hub.status == FAIL and "camera.hub_location" in hub.fix


def test_usb_ganged_hub_warns_and_a_hub_without_switching_fails(load, fake_hw, tmp_path):
    fake_hw.usb_device("1-1")
    for kind, expected in (("ganged", WARN), ("nops", FAIL)):
        prog = fake_tool(tmp_path / "bin", f"uhubctl-{kind}", f"""cat <<'EOF'
Current status for hub 1-1 [1d6b:0002 Linux xhci-hcd, USB 2.00, 1 ports, {kind}]
  Port 1: 0503 power highspeed enable connect [0603:8612 NOVATEKN vt-DSC]
EOF
""")
        check = only(doctor.check_usb(load({"tools": {"uhubctl": prog}}), Machine(root=pi_root(tmp_path))), "usb hub")
        assert check.status == expected and kind in check.found


def test_usb_missing_data_switch_fails_with_the_key(load, fake_hw, tmp_path):
    checks = doctor.check_usb(load(), Machine(root=pi_root(tmp_path)))
    check = only(checks, "usb data switch")
    assert check.status == FAIL and "camera.data_device" in check.fix


# ---------------------------------------------------------------------------- camera


class FakeDevice:
    def __init__(self, node, props, port):
        self.device_node, self.properties, self.port = node, props, port

    def find_parent(self, subsystem, device_type=None):
        return SimpleNamespace(sys_name=self.port) if self.port else None


class FakeUdev:
    def __init__(self, devices):
        self.devices = devices

    def list_devices(self, subsystem):
        return [d for d in self.devices]


CAMERA_PROPS = {"ID_BUS": "usb", "ID_SERIAL": "NOVATEKN_vt-DSC_96680-00000-001-0:0", "ID_FS_TYPE": "vfat",
                "ID_FS_UUID": "67EF-9CED"}


def test_camera_present_names_the_match_key_and_filesystem(load, tmp_path):
    cfg = load({"camera": {"match_fs_uuid": "67ef-9ced"}})
    m = Machine(root=pi_root(tmp_path, filesystems="nodev\tsysfs\n\tvfat\n"),
                udev_context=FakeUdev([FakeDevice(str(tmp_path / "sda1"), CAMERA_PROPS, "1-1.1")]))
    checks = doctor.check_camera(cfg, m)
    assert statuses(checks) == {"camera filesystems": OK, "camera": OK, "camera card": WARN}  # a node it cannot read
    assert "camera.match_fs_uuid" in only(checks, "camera").found and "sda1" in only(checks, "camera").found


def test_camera_on_a_filesystem_the_kernel_lacks_fails(load, tmp_path):
    m = Machine(root=pi_root(tmp_path, filesystems="\tvfat\n"),
                udev_context=FakeUdev([FakeDevice("/dev/sda1", {**CAMERA_PROPS, "ID_FS_TYPE": "exfat"}, "1-1.1")]))
    assert only(doctor.check_camera(load(), m), "camera").status == FAIL


def test_no_camera_filesystem_in_the_kernel_fails(load, tmp_path):
    m = Machine(root=pi_root(tmp_path), udev_context=FakeUdev([]))
    assert only(doctor.check_camera(load(), m), "camera filesystems").status == FAIL


def test_camera_absent_is_ok_and_another_usb_volume_warns_showing_it(load, tmp_path):
    root = pi_root(tmp_path, filesystems="\tvfat\n")
    checks = doctor.check_camera(load(), Machine(root=root, udev_context=FakeUdev([])))
    assert only(checks, "camera").status == OK and "not attached" in only(checks, "camera").found
    stick = FakeDevice("/dev/sdb1", {**CAMERA_PROPS, "ID_SERIAL": "SanDisk_123"}, "1-1.3")
    sd_card = FakeDevice("/dev/mmcblk0p1", {"ID_FS_TYPE": "vfat", "ID_FS_UUID": "67EF-9CED"}, None)
    checks = doctor.check_camera(load({"camera": {"match_serial": "NOVATEKN"}}),
                                 Machine(root=root, udev_context=FakeUdev([stick, sd_card])))
    check = only(checks, "camera")
    assert check.status == WARN and "SanDisk_123" in check.found and "mmcblk0" not in check.found


def vfat_card(path, fat="32", mib=64):
    import subprocess

    with open(path, "wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.vfat", "-F", fat, str(path)], check=True, stdout=subprocess.DEVNULL)
    return str(path)


def test_card_space_from_the_fat32_free_count_and_after_a_clip_was_written(tmp_path):
    import subprocess

    card = vfat_card(tmp_path / "card.img")
    (free, total), why = doctor.card_space(card)
    assert why == "" and 60 << 20 < total <= 64 << 20 and total - (1 << 20) < free <= total
    clip = tmp_path / "clip.MP4"
    clip.write_bytes(os.urandom(4 << 20))
    subprocess.run(["mcopy", "-i", card, str(clip), "::clip.MP4"], check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    (after, _), _ = doctor.card_space(card)
    assert free - after >= 4 << 20
    check = doctor.check_card(card)
    assert check.status == OK and "GiB free of" in check.found


def test_card_space_from_the_exfat_percent_in_use(tmp_path):
    boot = bytearray(512)
    boot[3:11] = b"EXFAT   "
    boot[92:96] = (4096).to_bytes(4, "little")  # clusters
    boot[108], boot[109], boot[112] = 9, 3, 25  # 512-byte sectors, 8 a cluster, 25 % in use
    boot[510:512] = b"\x55\xaa"
    card = tmp_path / "exfat.img"
    card.write_bytes(bytes(boot))
    assert doctor.card_space(str(card)) == ((4096 * 4096 * 3 // 4, 4096 * 4096), "")
    boot[112] = 0xFF
    card.write_bytes(bytes(boot))
    assert doctor.check_card(str(card)).status == WARN


def test_card_space_unknown_warns_saying_why(tmp_path):
    assert "FAT12/16" in doctor.check_card(vfat_card(tmp_path / "fat16.img", fat="16", mib=32)).found
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(4096))
    assert doctor.check_card(str(garbage)).status == WARN
    missing = doctor.check_card(str(tmp_path / "no-such-card"))
    assert missing.status == WARN and "cannot read" in missing.found


def test_an_attached_camera_shows_its_cards_free_space(load, tmp_path):
    card = vfat_card(tmp_path / "card.img")
    m = Machine(root=pi_root(tmp_path, filesystems="\tvfat\n"),
                udev_context=FakeUdev([FakeDevice(card, CAMERA_PROPS, "1-1.1")]))
    checks = doctor.check_camera(load(), m)
    assert only(checks, "camera").status == OK and only(checks, "camera card").status == OK


def port(flags, device=None):
    from dashcam_helpers.camera import PortStatus

    return PortStatus(1, "0000", tuple(flags), device)


@pytest.mark.parametrize("flags,device,status,says", [
    (("power", "enable", "connect"), "[0603:8612 NOVATEKN vt-DSC 96680-00000-001]", OK, "camera on hub 1-1 port 1 [0603:8612"),
    (("power", "connect"), None, OK, "recording"),
    (("power",), None, FAIL, "nothing on hub 1-1 port 1"),
    ((), None, OK, "is off"),
])
def test_camera_not_attached_is_told_by_what_is_on_its_port(load, tmp_path, flags, device, status, says):
    # the Pi's own SD card is a block device too (not on USB): it must not hide the port's status
    sd_card = FakeDevice("/dev/mmcblk0p1", {"ID_FS_TYPE": "vfat", "ID_FS_UUID": "67EF-9CED"}, None)
    m = Machine(root=pi_root(tmp_path, filesystems="\tvfat\n"), udev_context=FakeUdev([sd_card]))
    check = only(doctor.check_camera(load(), m, port(flags, device)), "camera")
    assert check.status == status and says in check.found, check
    if status == FAIL:
        assert "camera.hub_location" in check.fix and "camera.port_number" in check.fix


def test_the_usb_check_hands_the_camera_port_to_the_camera_check(load, fake_hw, tmp_path):
    fake_hw.usb_device("1-1")
    seen = {}
    doctor.check_usb(load(), Machine(root=pi_root(tmp_path)), seen)
    assert seen["port"].number == 1 and seen["port"].powered


# ---------------------------------------------------------------------------- staging and ledger


def staging_dirs(tmp_path):
    for d in ("staging", "state"):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d).chmod(0o750)


def me():
    import getpass

    return Machine(user=getpass.getuser())


def test_staging_ok_with_its_ledger(load, tmp_path):
    from dashcam_helpers.ledger import Ledger

    staging_dirs(tmp_path)
    cfg = load({"ingest": {"reserve_bytes": 1, "reserve_percent": 0}})
    with Ledger(cfg.paths.ledger):
        pass
    checks = doctor.check_staging(cfg, me())
    assert set(statuses(checks).values()) == {OK}, checks
    assert "quick_check ok" in only(checks, "ledger").found


def test_staging_below_the_reserve_warns(load, tmp_path):
    staging_dirs(tmp_path)
    cfg = load({"ingest": {"reserve_bytes": 2**60}})
    check = only(doctor.check_staging(cfg, me()), "staging space")
    assert check.status == WARN and "ingest.reserve" in check.fix


def test_staging_missing_writable_by_all_or_of_another_owner_fails(load, tmp_path):
    cfg = load()
    check = only(doctor.check_staging(cfg, me()), "staging owner")
    assert check.status == FAIL and "install -d" in check.fix
    staging_dirs(tmp_path)
    (tmp_path / "staging").chmod(0o777)
    check = only(doctor.check_staging(cfg, me()), "staging owner")
    assert check.status == FAIL and "chmod 0750" in check.fix
    (tmp_path / "staging").chmod(0o750)
    other = "nobody" if os.geteuid() == 0 else "root"
    check = only(doctor.check_staging(cfg, Machine(user=other)), "staging owner")
    assert check.status == FAIL and f"chown -R {other}:" in check.fix


def test_a_damaged_ledger_fails(load, tmp_path):
    staging_dirs(tmp_path)
    cfg = load()
    Path(cfg.paths.ledger).write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    assert doctor.check_ledger(cfg.paths.ledger).status == FAIL


def test_a_ledger_not_created_yet_is_ok(load, tmp_path):
    assert doctor.check_ledger(str(tmp_path / "state" / "ledger.sqlite3")).status == OK


# ---------------------------------------------------------------------------- clock


@pytest.mark.parametrize("said,expected", [("yes", OK), ("no", WARN)])
def test_clock(tmp_path, said, expected):
    prog = fake_tool(tmp_path / "bin", "timedatectl", f'[ "$*" = "show -p NTPSynchronized --value" ] && echo {said}\n')
    check = doctor.check_clock(Machine(timedatectl=prog))
    assert check.status == expected
    if expected == WARN:
        assert "set-ntp true" in check.fix


# ---------------------------------------------------------------------------- systemd

GOOD_SHOW = """Id=dashcam-boot.service
LoadState=loaded
ActiveState=inactive
SubState=dead
UnitFileState=enabled

Id=dashcam-policy.timer
LoadState=loaded
ActiveState=active
SubState=waiting
UnitFileState=enabled
NextElapseUSecMonotonic=1h 2min 10s
TimersMonotonic={ OnBootUSec=45s ; next_elapse=0 }
TimersMonotonic={ OnUnitActiveUSec=30s ; next_elapse=1h 2min 10s }

Id=dashcam-policy.service
LoadState=loaded
ActiveState=inactive
UnitFileState=static

Id=dashcam-upload.path
LoadState=loaded
ActiveState=active
UnitFileState=enabled

Id=dashcam-upload.service
LoadState=loaded
ActiveState=inactive
UnitFileState=static

Id=dashcam-watch.service
LoadState=loaded
ActiveState=inactive
UnitFileState=static
"""


def fake_systemd(tmp_path, show=GOOD_SHOW, failed="", journal=""):
    (tmp_path / "show.txt").write_text(show)
    (tmp_path / "failed.txt").write_text(failed)
    systemctl = fake_tool(tmp_path / "bin", "systemctl", f"""case "$1" in
  show) cat {tmp_path / 'show.txt'} ;;
  list-units) cat {tmp_path / 'failed.txt'} ;;
  *) exit 1 ;;
esac
""")
    journalctl = fake_tool(tmp_path / "bin", "journalctl", f"echo '{journal}'\n")
    return Machine(systemctl=systemctl, journalctl=journalctl)


UPTIME = 3600 + 120  # seconds since boot in these tests: the next tick at 1h 2min 10s is 10 s away


def test_systemd_all_ok_shows_the_real_interval_and_next_tick(tmp_path):
    checks = doctor.check_systemd(fake_systemd(tmp_path), lambda: UPTIME)
    assert set(statuses(checks).values()) == {OK}, checks
    assert only(checks, "policy timer").found == "active, every 30 s, next tick in 10 s"


def test_systemd_next_tick_from_a_timestamp_when_the_monotonic_time_is_not_given(tmp_path):
    import time

    at = time.mktime(time.strptime("2026-08-13 08:39:21", "%Y-%m-%d %H:%M:%S"))
    show = (GOOD_SHOW.replace("NextElapseUSecMonotonic=1h 2min 10s\n", "")
            .replace("next_elapse=1h 2min 10s", "next_elapse=Thu 2026-08-13 08:39:21 CEST"))
    check = only(doctor.check_systemd(fake_systemd(tmp_path, show), lambda: UPTIME, lambda: at - 25), "policy timer")
    assert check.status == OK and check.found == "active, every 30 s, next tick in 25 s"


def test_systemd_without_any_next_tick_warns(tmp_path):
    show = GOOD_SHOW.replace("NextElapseUSecMonotonic=1h 2min 10s\n", "").replace("next_elapse=1h 2min 10s", "next_elapse=n/a")
    check = only(doctor.check_systemd(fake_systemd(tmp_path, show), lambda: UPTIME), "policy timer")
    assert check.status == WARN and "no next tick" in check.found


def test_systemd_two_intervals_warn_that_the_shortest_wins(tmp_path):
    show = GOOD_SHOW.replace("TimersMonotonic={ OnUnitActiveUSec=30s ; next_elapse=1h 2min 10s }",
                             "TimersMonotonic={ OnUnitActiveUSec=30s ; next_elapse=1h 2min 10s }\n"
                             "TimersMonotonic={ OnUnitActiveUSec=1min ; next_elapse=1h 3min }")
    check = only(doctor.check_systemd(fake_systemd(tmp_path, show), lambda: UPTIME), "policy timer")
    assert check.status == WARN and "every 30 s" in check.found and "Changing the interval" in check.fix


def test_systemd_missing_inactive_disabled_and_failed_units_fail(tmp_path):
    show = (GOOD_SHOW.replace("Id=dashcam-watch.service\nLoadState=loaded", "Id=dashcam-watch.service\nLoadState=not-found")
            .replace("ActiveState=active\nSubState=waiting", "ActiveState=inactive\nSubState=dead")
            .replace("Id=dashcam-upload.path\nLoadState=loaded\nActiveState=active", "Id=dashcam-upload.path\nLoadState=loaded\nActiveState=inactive")
            .replace("UnitFileState=enabled\n\nId=dashcam-policy.timer", "UnitFileState=disabled\n\nId=dashcam-policy.timer"))
    m = fake_systemd(tmp_path, show, failed="dashcam-upload.service loaded failed failed dashcam upload\n",
                     journal="the server refused the key")
    checks = doctor.check_systemd(m, lambda: UPTIME)
    assert statuses(checks) == {"units installed": FAIL, "policy timer": FAIL, "upload path": FAIL,
                                "boot service": FAIL, "failed units": FAIL}
    assert "dashcam-watch.service" in only(checks, "units installed").found
    assert only(checks, "failed units").found == "dashcam-upload.service (the server refused the key)"
    assert only(checks, "policy timer").fix == "sudo systemctl enable --now dashcam-policy.timer"


def test_systemd_unavailable_warns(tmp_path):
    prog = fake_tool(tmp_path / "bin", "systemctl", "echo 'System has not been booted with systemd' >&2; exit 1\n")
    checks = doctor.check_systemd(Machine(systemctl=prog), lambda: UPTIME)
    assert [c.status for c in checks] == [WARN]


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("1min 30s", 90), ("1h 2min 3.5s", 3723.5), ("500ms", 0.5),
                                          ("", None), ("soon", None), ("30s later", None)])
def test_timespan(text, seconds):
    assert doctor.timespan(text) == seconds


# ---------------------------------------------------------------------------- server (a real sshd)


@pytest.fixture
def server_config(make_config, tmp_path):
    def make(srv, known_hosts_line=None):
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text((known_hosts_line or srv.known_hosts_line()) + "\n")
        return config.load(str(make_config({"upload": {
            "host": "127.0.0.1", "port": srv.port, "user": srv.user, "dest_path": "footage",
            "ssh_key": str(srv.client_key), "known_hosts": str(known_hosts)}})))

    return make


def test_server_with_the_keygen_rrsync_key_is_all_ok(tmp_path, server_config):
    from dashcam_helpers import ssh

    with SshServer(tmp_path / "sshd", tmp_path / "server", key_line=ssh.authorized_keys_line) as srv:
        (tmp_path / "server" / "footage").mkdir()
        checks = doctor.check_server(server_config(srv))
    assert statuses(checks) == {"server": OK, "host key": OK, "ssh key accepted": OK, "ssh key restricted": OK}, checks
    assert not (tmp_path / "server" / "footage" / doctor.RESTRICT_PROBE).exists()


def test_server_with_an_unrestricted_key_warns(tmp_path, server_config):
    with SshServer(tmp_path / "sshd", tmp_path / "server", rrsync_args=None) as srv:
        (tmp_path / "server" / "footage").mkdir()
        cfg = server_config(srv)
        cfg = cfg.replace(upload=cfg.upload.replace(dest_path=str(tmp_path / "server" / "footage")))
        checks = doctor.check_server(cfg)
        probe_dir = tmp_path / "server" / "footage" / doctor.RESTRICT_PROBE
    check = only(checks, "ssh key restricted")
    assert check.status == WARN and "rrsync -wo -no-del" in check.fix
    assert only(checks, "ssh key accepted").status == OK
    assert not probe_dir.exists(), "the probes are dry runs: nothing is created on the server"


def test_server_with_a_wrong_host_key_fails(tmp_path, server_config):
    other = keygen(tmp_path / "other_host_key")
    with SshServer(tmp_path / "sshd", tmp_path / "server") as srv:
        wrong = f"[127.0.0.1]:{srv.port} {' '.join(other.split()[:2])}"
        checks = doctor.check_server(server_config(srv, wrong))
    check = only(checks, "host key")
    assert check.status == FAIL and "trust-host" in check.fix
    assert "ssh key accepted" not in statuses(checks)


def test_server_with_no_pinned_key_fails(tmp_path, server_config):
    with SshServer(tmp_path / "sshd", tmp_path / "server") as srv:
        checks = doctor.check_server(server_config(srv, "# nothing pinned"))
    assert only(checks, "host key").status == FAIL


def test_server_refusing_the_key_fails_with_the_authorized_keys_line(tmp_path, server_config):
    with SshServer(tmp_path / "sshd", tmp_path / "server") as srv:
        srv.authorized_keys.write_text("")
        checks = doctor.check_server(server_config(srv))
    check = only(checks, "ssh key accepted")
    assert check.status == FAIL and "authorized_keys" in check.found


def test_a_probe_that_times_out_proves_nothing_and_warns(load, tmp_path):
    """A slow ssh handshake (a busy server, a slow Pi) is no refusal of the key: 'cannot tell'."""
    slow = fake_tool(tmp_path / "bin", "rsync", "sleep 30\n")
    checks = doctor.check_key(load({"tools": {"rsync": slow}}), budget=doctor.SECOND_PROBE_MIN + 0.5)
    assert [(c.name, c.status) for c in checks] == [("ssh key accepted", WARN)]
    assert "cannot tell" in checks[0].found


def test_server_not_answering_warns_and_stops_there(load):
    from sshd import free_port

    checks = doctor.check_server(load({"upload": {"port": free_port()}}))
    assert [c.status for c in checks] == [WARN]


def test_the_shipped_example_host_not_answering_fails_naming_the_keys_to_set(load):
    from sshd import free_port

    cfg = load({"upload": {"host": "127.0.0.1", "port": free_port()}})
    [check] = doctor.check_server(cfg, shipped_host="127.0.0.1")
    assert check.status == FAIL and "shipped example" in check.found
    assert "upload.host" in check.fix and "upload.user" in check.fix and "upload.dest_path" in check.fix
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "dashcam", "config.yaml")) as f:
        shipped = yaml.safe_load(f)
    assert shipped["upload"]["host"] == doctor.SHIPPED_UPLOAD_HOST


# ---------------------------------------------------------------------------- MQTT


def test_mqtt_not_configured_is_ok_and_an_absent_broker_warns(load):
    from sshd import free_port

    assert doctor.check_mqtt(load())[0].status == OK
    cfg = load({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": free_port()}})
    check = doctor.check_mqtt(cfg)[0]
    assert check.status == WARN and "mqtt.host" in check.fix


# ---------------------------------------------------------------------------- the command


def doctor_env(tmp_path, fake_hw):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "systemctl", "echo 'System has not been booted with systemd' >&2; exit 1\n")
    fake_tool(bin_dir, "timedatectl", "echo yes\n")
    fake_hw.usb_device("1-1")
    return {**fake_hw.env, "PATH": f"{bin_dir}{os.pathsep}{fake_hw.env['PATH']}",
            "DASHCAM_ROOT": pi_root(tmp_path, "Raspberry Pi 4 Model B Rev 1.4", "\tvfat\n")}


def test_doctor_json_is_strict_and_exits_1_on_a_fail(dashcamctl, make_config, fake_hw, tmp_path):
    path = make_config({"upload": {"ssh_key": str(tmp_path / "missing-key")}})
    path.chmod(0o640)
    res = dashcamctl("--config", str(path), "doctor", "--json", env=doctor_env(tmp_path, fake_hw))
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert out["ok"] is False and out["fail"] >= 1
    names = [c["name"] for c in out["checks"]]
    assert names.index("config") < names.index("tool rsync") < names.index("battery") < names.index("usb hub") \
        < names.index("camera") < names.index("ledger") < names.index("clock") < names.index("server") < names.index("systemd")
    key = next(c for c in out["checks"] if c["name"] == "ssh key")
    assert key["status"] == FAIL and "keygen" in key["fix"]


def test_doctor_exits_0_when_nothing_fails_one_line_per_check(dashcamctl, make_config, fake_hw, tmp_path):
    key = tmp_path / "id_ed25519"
    keygen(key)
    staging_dirs(tmp_path)
    path = make_config({"upload": {"ssh_key": str(key)}, "ingest": {"reserve_bytes": 1, "reserve_percent": 0}})
    path.chmod(0o640)
    env = doctor_env(tmp_path, fake_hw)
    res = dashcamctl("--config", str(path), "doctor", env=env)
    lines = res.stdout.splitlines()
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(line.split()[0] in (OK, WARN, FAIL) for line in lines[:-1])
    assert not any(line.startswith(FAIL) for line in lines)
    assert re.fullmatch(r"\d+ checks: 0 FAIL, \d+ warn", lines[-1])
    assert any(line.startswith("ok") and "every USB port" in line for line in lines)


def test_doctor_with_a_broken_config_still_checks_the_rest(dashcamctl, tmp_path, fake_hw):
    path = tmp_path / "bad.yaml"
    path.write_text("upload: {port: ssh}\n")
    res = dashcamctl("--config", str(path), "doctor", "--json", env=doctor_env(tmp_path, fake_hw))
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert any(c["name"] == "config" and "upload.port" in c["found"] for c in out["checks"])
    assert any(c["name"] == "clock" for c in out["checks"])


def test_mqtt_broker_accepting_our_credentials_is_ok_and_refusing_them_fails(load, tmp_path):
    from test_mqtt import Broker

    broker = Broker(tmp_path, users={"dashcam": "s3cret-pw"})
    try:
        pw = tmp_path / "mqtt.pw"
        pw.write_text("s3cret-pw\n")
        pw.chmod(0o640)
        cfg = load({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "username": "dashcam",
                             "password_file": str(pw)}})
        check = doctor.check_mqtt(cfg)[0]
        assert check.status == OK and "accepted" in check.found
        pw.write_text("wrong-pw\n")
        check = doctor.check_mqtt(cfg)[0]
        assert check.status == FAIL and "refused" in check.found and "mqtt.password_file" in check.fix
    finally:
        broker.stop()


# ---------------------------------------------------------------------------- --switch: data mode and back


def reading(percent, external, reason=None):
    from dashcam_helpers.battery import Reading

    return Reading("lifepo4wered", None if percent is None else 3300, percent, external, {}, reason)


@pytest.mark.parametrize("battery,ingest,upload,mode,refused", [
    (reading(90, False), False, False, "record", None),
    (reading(90, True), False, False, "off", None),
    (reading(40, True), False, False, "record", None),  # external power: the thresholds do not count
    (reading(None, True, "i2c"), False, False, "record", None),
    (reading(50, False), False, False, "record", None),  # at disconnect_percent is not below it
    (reading(49, False), False, False, "record", "below thresholds.disconnect_percent 50 %"),
    (reading(40, None), False, False, "record", "external power unknown"),
    (reading(None, False, "i2c error"), False, False, "record", "unknown (i2c error)"),
    (reading(None, None, "garbage"), False, False, "record", "unknown (garbage)"),
    (reading(90, True), True, False, "record", "an ingest is running"),
    (reading(90, True), False, True, "record", "an upload is running"),
    (reading(90, True), False, False, "data", "in data mode"),
])
def test_switch_refusal(load, battery, ingest, upload, mode, refused):
    why = doctor.switch_refusal(load(), battery, ingest, upload, mode)
    if refused is None:
        assert why is None
    else:
        assert refused in why


def fake_units(tmp_path, running=""):
    """A systemctl that lists ``running`` units and logs every call to tmp_path/systemctl-calls."""
    (tmp_path / "units.txt").write_text(running)
    return fake_tool(tmp_path / "bin", "systemctl", f"""echo "$*" >>{tmp_path / 'systemctl-calls'}
case "$1" in
  list-units) cat {tmp_path / 'units.txt'} ;;
  stop) ;;
  *) exit 1 ;;
esac
""")


class SwitchMonitor:
    """The udev monitor --switch listens on: when started (the camera just went to data mode), it
    notes whether the policy's lock was held and the camera's data switch, then the storage appears."""

    def __init__(self, hw, lock_path, storage=True):
        from test_device import FakeMonitor

        self.inner, self.hw, self.lock_path, self.storage = FakeMonitor(), hw, lock_path, storage
        self.lock_held = self.authorized = None

    def fileno(self):
        return self.inner.fileno()

    def start(self):
        import fcntl

        from test_device import CAMERA_PROPS as PROPS, FakeDevice

        self.inner.start()
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.lock_held = False
        except BlockingIOError:
            self.lock_held = True
        finally:
            os.close(fd)
        self.authorized = self.hw.authorized("1-1")
        if self.storage:  # the camera's volume: a real FAT32 image, so its free space can be read
            self.inner.emit(FakeDevice(dict(PROPS, DEVNAME=vfat_card(Path(self.lock_path).parent / "card.img")), "1-1.1"))

    def poll(self, timeout=None):
        return self.inner.poll(timeout)


def switch_machine(tmp_path, fake_hw, running="", storage=True):
    from test_device import FakeContext

    fake_hw.usb_device("1-1", authorized="0")
    lock = str(tmp_path / "run" / "policy.lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    monitor = SwitchMonitor(fake_hw, lock, storage)
    m = Machine(root=pi_root(tmp_path), systemctl=fake_units(tmp_path, running), lock_path=lock,
                udev_context=FakeContext([]), udev_monitor=monitor)
    return m, monitor


def test_switch_goes_to_data_under_the_lock_says_how_long_the_storage_took_and_ends_in_record(load, fake_hw, tmp_path):
    cfg = load({"camera": {"match_serial": "NOVATEKN_vt-DSC_96680-00000-001-0:0"}})
    m, monitor = switch_machine(tmp_path, fake_hw)
    times = iter([100.0, 103.5])
    checks = doctor.check_switch(cfg, m, clock=lambda: next(times))
    assert statuses(checks) == {doctor.TO_DATA: OK, "camera card": OK, doctor.TO_RECORD: OK}, checks
    card = str(tmp_path / "run" / "card.img")
    assert only(checks, doctor.TO_DATA).found == f"the camera's storage appeared as {card} 3.5 s after the switch (enumeration)"
    assert monitor.lock_held is True, "a policy tick or the watcher could have switched against it"
    assert monitor.authorized == "1", "the camera was in data mode while the storage was awaited"
    assert fake_hw.authorized("1-1") == "0" and fake_hw.port_power("1-1", 1) is True  # record
    assert "stop -- dashcam-ingest@*.service" in (tmp_path / "systemctl-calls").read_text()


def test_switch_whose_ingest_cannot_be_stopped_warns(load, fake_hw, tmp_path):
    m, _ = switch_machine(tmp_path, fake_hw)
    fake_tool(tmp_path / "bin", "systemctl", "[ \"$1\" = stop ] && { echo 'Access denied' >&2; exit 4; }; exit 0\n")
    checks = doctor.check_switch(load(), m)
    assert only(checks, doctor.TO_RECORD).status == OK
    stop = only(checks, doctor.INGEST_STOP)
    assert stop.status == WARN and "Access denied" in stop.found


def test_switch_whose_storage_never_appears_fails_naming_the_keys_and_still_ends_in_record(load, fake_hw, tmp_path):
    cfg = load({"poll": {"mount_timeout_seconds": 1}})
    m, _ = switch_machine(tmp_path, fake_hw, storage=False)
    checks = doctor.check_switch(cfg, m)
    data = only(checks, doctor.TO_DATA)
    assert data.status == FAIL and "within 1 s" in data.found
    assert "camera.match_" in data.fix and "poll.mount_timeout_seconds" in data.fix
    assert only(checks, doctor.TO_RECORD).status == OK and fake_hw.authorized("1-1") == "0"


def test_switch_back_to_record_that_fails_is_a_fail_line_with_the_fix(load, fake_hw, tmp_path):
    sysfs_authorized = fake_hw.sysfs / "bus" / "usb" / "devices" / "1-1" / "authorized"
    data = fake_tool(tmp_path / "bin", "to-data", f"echo 1 >{sysfs_authorized}\n")
    record = fake_tool(tmp_path / "bin", "to-record", f"touch {tmp_path / 'record-tried'}; echo 'hub gone' >&2; exit 1\n")
    cfg = load({"camera": {"backend": "scripts", "data_script": data, "record_script": record,
                           "off_script": "/bin/true"}})
    m, _ = switch_machine(tmp_path, fake_hw)
    checks = doctor.check_switch(cfg, m)
    assert only(checks, doctor.TO_DATA).status == OK
    back = only(checks, doctor.TO_RECORD)
    assert back.status == FAIL and "NOT recording" in back.found and "hub gone" in back.found
    assert back.fix.startswith("sudo dashcamctl mode record")
    assert (tmp_path / "record-tried").exists()


def test_switch_to_data_that_fails_still_puts_the_camera_back_to_record(load, fake_hw, tmp_path, monkeypatch):
    monkeypatch.setenv("UHUBCTL_FAKE_STUCK", "1")  # the hub does not switch: data mode never confirmed
    m, _ = switch_machine(tmp_path, fake_hw)
    fake_hw.uhubctl_state.write_text(json.dumps({"1-1": {"1": False, "2": True, "3": True, "4": True}}))
    checks = doctor.check_switch(load(), m)
    assert only(checks, doctor.TO_DATA).status == FAIL
    assert only(checks, doctor.TO_RECORD).status == FAIL  # still off: stuck, and said so
    assert [argv for argv in fake_hw.uhubctl_argvs() if "-a" in argv][-1][-1] == "on", "record was tried last"


def test_switch_refused_under_the_lock_switches_nothing(load, fake_hw, tmp_path):
    m, monitor = switch_machine(tmp_path, fake_hw, running="dashcam-upload.service loaded active running upload\n")
    checks = doctor.check_switch(load(), m)
    assert [(c.name, c.status) for c in checks] == [(doctor.SWITCH, WARN)]
    assert "an upload is running" in checks[0].found
    assert not [argv for argv in fake_hw.uhubctl_argvs() if "-a" in argv] and fake_hw.authorized("1-1") == "0"
    assert monitor.lock_held is None, "never went to data mode"


def switch_env(tmp_path, fake_hw, running=""):
    env = doctor_env(tmp_path, fake_hw)
    fake_units(tmp_path, running)  # replaces the systemctl of doctor_env, same bin dir
    (tmp_path / "hw" / "sys" / "bus" / "usb" / "devices" / "1-1" / "authorized").write_text("0\n")
    return env


@pytest.mark.parametrize("battery,running,says", [
    ("VIN=0,VBAT=3260", "", "below thresholds.disconnect_percent 50 %, on battery"),
    ("", "dashcam-ingest@sda1.service loaded active running ingest\n", "an ingest is running"),
])
def test_doctor_switch_refused_is_one_line_exit_75_and_switches_nothing(dashcamctl, make_config, fake_hw, tmp_path,
                                                                        battery, running, says):
    env = {**switch_env(tmp_path, fake_hw, running), "LIFEPO4WERED_FAKE_SET": battery}
    res = dashcamctl("--config", str(make_config()), "doctor", "--switch", env=env)
    assert res.returncode == 75, res.stdout + res.stderr
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dashcamctl doctor --switch: refused: ") and says in lines[0]
    assert lines[0].endswith("nothing was switched")
    assert not [argv for argv in fake_hw.uhubctl_argvs() if "-a" in argv]


def test_doctor_switch_on_the_fakes_cycles_and_ends_in_record(dashcamctl, make_config, fake_hw, tmp_path):
    # no real camera here: data mode takes, its storage never appears (FAIL, exit 1), record again
    path = make_config({"poll": {"mount_timeout_seconds": 1}})
    env = {**switch_env(tmp_path, fake_hw), "DASHCAM_ROOT": str(tmp_path / "root")}
    res = dashcamctl("--config", str(path), "doctor", "--switch", "--json", env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks[doctor.TO_DATA]["status"] == FAIL and "within 1 s" in checks[doctor.TO_DATA]["found"]
    assert checks[doctor.TO_RECORD]["status"] == OK
    names = list(checks)
    assert names.index("camera") < names.index(doctor.TO_DATA) < names.index(doctor.TO_RECORD) < names.index("staging space")
    switched = [argv[-1] for argv in fake_hw.uhubctl_argvs() if "-a" in argv]
    assert switched == ["on", "on"] and fake_hw.authorized("1-1") == "0"


def test_doctor_switch_with_a_broken_config_is_refused_with_exit_78(dashcamctl, tmp_path, fake_hw):
    path = tmp_path / "bad.yaml"
    path.write_text("upload: {port: ssh}\n")
    res = dashcamctl("--config", str(path), "doctor", "--switch", env=switch_env(tmp_path, fake_hw))
    assert res.returncode == 78 and "refused" in res.stderr and res.stdout == ""


def test_server_timeout_option_gives_the_probes_a_longer_budget(load, tmp_path):
    """--server-timeout: a slow link (or a slow machine) gets its time; the first probe that answers
    within it is believed."""
    from dashcam_helpers import cli

    args = cli.build_parser().parse_args(["doctor", "--server-timeout", "30"])
    assert args.server_timeout == 30
    assert doctor.connection_timeout(30) > doctor.SERVER_TIMEOUT == doctor.connection_timeout(doctor.SERVER_BUDGET)
    slowish = fake_tool(tmp_path / "bin", "rsync", "sleep 3\nexit 0\n")  # answers after 3 s: accepted
    cfg = load({"tools": {"rsync": slowish}})
    assert only(doctor.check_key(cfg, budget=doctor.SECOND_PROBE_MIN + 1), "ssh key accepted").status == WARN
    assert only(doctor.check_key(cfg, budget=12), "ssh key accepted").status == OK
