"""Camera modes through the fake uhubctl and a fake sysfs tree: switch, confirm, or say what went wrong."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import FIXTURES
from dashcam_helpers import camera, config

SEED_OFF = (FIXTURES / "uhubctl-power-off.txt").read_text()


@pytest.fixture
def seed_config(tmp_path):
    """The original plan's config, its paths moved under tmp_path."""
    data = yaml.safe_load((FIXTURES / "seed-config.yaml").read_text())
    data["paths"] = {"local_staging": str(tmp_path / "staging"), "state_dir": str(tmp_path / "state")}
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- parsing uhubctl


def test_the_power_off_fixture_parses_into_a_current_and_a_new_block():
    blocks = camera.parse_uhubctl(SEED_OFF)
    assert [(b.kind, b.hub, sorted(b.ports)) for b in blocks] == [("current", "1-1", [1, 2, 3, 4]), ("new", "1-1", [1])]
    before = blocks[0].ports[1]
    assert before.powered and before.status == "0503" and before.device == "0603:8612 NOVATEKN vt-DSC 96680-00000-001"
    assert before.flags == ("power", "highspeed", "enable", "connect")
    after = blocks[1].ports[1]
    assert not after.powered and after.flags == ("off",)
    assert camera.port_status(SEED_OFF, "1-1", 1, "new") == after
    assert camera.port_status(SEED_OFF, "1-1", 2, "new") is None
    assert camera.port_status(SEED_OFF, "2", 1, "new") is None


def test_a_usb3_hub_and_its_dual_are_told_apart():
    text = (
        "Current status for hub 2 [1d6b:0003 Linux xhci-hcd, USB 3.00, 4 ports, ppps]\n"
        "  Port 1: 02a0 power 5gbps Rx.Detect\n"
        "Current status for hub 1-1 [2109:3431 USB2.0 Hub, USB 2.10, 4 ports, ppps]\n"
        "  Port 1: 0100 power\n"
        "Sent power off request\n"
        "New status for hub 2 [1d6b:0003 Linux xhci-hcd, USB 3.00, 4 ports, ppps]\n"
        "  Port 1: 00a0 Rx.Detect\n"
        "New status for hub 1-1 [2109:3431 USB2.0 Hub, USB 2.10, 4 ports, ppps]\n"
        "  Port 1: 0100 power\n"
    )
    assert camera.port_status(text, "2", 1, "new").powered is False
    assert camera.port_status(text, "1-1", 1, "new").powered is True


def test_a_port_line_without_a_hub_line_is_a_parse_error():
    with pytest.raises(camera.UhubctlParseError):
        camera.parse_uhubctl("  Port 1: 0000 off\n")


@pytest.mark.parametrize(
    "powered, authorized, mode",
    [(False, None, "off"), (False, "1", "off"), (True, "0", "record"), (True, "1", "data"), (True, None, "unknown"), (None, "1", "unknown")],
)
def test_mode_from_power_and_authorized(powered, authorized, mode):
    assert camera.mode_from(powered, authorized) == mode


# ---------------------------------------------------------------- dashcamctl mode with the uhubctl backend


def test_mode_off_with_the_seed_config_runs_uhubctl_for_its_hub_and_port(fake_hw, dashcamctl, seed_config):
    fake_hw.usb_device("1-1", authorized="1")
    r = dashcamctl("--config", str(seed_config), "mode", "off", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    assert fake_hw.uhubctl_argvs() == [["-l", "1-1", "-p", "1", "-a", "off"]]
    assert fake_hw.port_power("1-1", 1) is False
    assert r.stdout.strip() == "camera: off"


def test_mode_record_powers_the_port_and_takes_data_away(fake_hw, dashcamctl, make_config):
    fake_hw.usb_device("1-1", authorized="1")
    cfg = make_config()
    assert dashcamctl("--config", str(cfg), "mode", "off", env=fake_hw.env).returncode == 0
    r = dashcamctl("--config", str(cfg), "mode", "record", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    assert fake_hw.uhubctl_argvs()[-1] == ["-l", "1-1", "-p", "1", "-a", "on"]
    assert fake_hw.port_power() is True and fake_hw.authorized("1-1") == "0"
    assert camera.current_mode(config.load(str(cfg))) == "record"


def test_mode_data_authorizes_the_configured_data_device(fake_hw, dashcamctl, make_config):
    fake_hw.usb_device("1-1.1", authorized="0")
    cfg = make_config({"camera": {"data_device": "1-1.1"}})
    r = dashcamctl("--config", str(cfg), "mode", "data", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    assert fake_hw.authorized("1-1.1") == "1"
    assert camera.current_mode(config.load(str(cfg))) == "data"


def test_a_uhubctl_that_leaves_the_port_powered_makes_mode_off_fail(fake_hw, dashcamctl, seed_config):
    fake_hw.usb_device("1-1")
    env = dict(fake_hw.env, UHUBCTL_FAKE_STUCK="1")
    r = dashcamctl("--config", str(seed_config), "mode", "off", env=env)
    assert r.returncode == 1
    assert "expected port 1 of hub 1-1 powered off, found it on" in r.stderr
    assert "Traceback" not in r.stderr
    assert fake_hw.port_power() is True


def test_a_port_that_will_not_power_on_makes_mode_record_fail(fake_hw, make_config, monkeypatch):
    fake_hw.usb_device("1-1")
    cfg = config.load(str(make_config()))
    camera.set_mode(cfg, "off")
    monkeypatch.setenv("UHUBCTL_FAKE_STUCK", "1-1:1")
    with pytest.raises(camera.CameraError, match="expected port 1 of hub 1-1 powered on, found it off"):
        camera.set_mode(cfg, "record")


def test_an_authorized_attribute_that_cannot_be_written_is_reported(fake_hw, make_config):
    # a directory where the attribute should be: open() for writing fails as on a read-only sysfs
    (fake_hw.sysfs / "bus/usb/devices/1-1/authorized").mkdir(parents=True)
    cfg = config.load(str(make_config()))
    with pytest.raises(camera.CameraError, match="cannot write 0 to .*authorized"):
        camera.set_mode(cfg, "record")


def test_a_missing_data_device_is_named(fake_hw, make_config, monkeypatch):
    monkeypatch.setattr(camera, "ENUMERATE_TIMEOUT", 0.3)
    cfg = config.load(str(make_config({"camera": {"data_device": "1-1.3"}})))
    with pytest.raises(camera.CameraError, match=r"devices/1-1\.3/authorized does not exist"):
        camera.set_mode(cfg, "data")


def test_a_camera_that_is_its_own_data_device_is_switched_once_it_appears_after_power_on(fake_hw, make_config):
    import threading

    cfg = config.load(str(make_config({"camera": {"data_device": "1-1.1"}})))
    camera.set_mode(cfg, "off")  # powered off: the camera's sysfs entry is gone
    appeared = threading.Timer(0.5, lambda: fake_hw.usb_device("1-1.1", authorized="1"))  # enumerates with data on
    appeared.start()
    try:
        camera.set_mode(cfg, "record")
    finally:
        appeared.join()
    assert fake_hw.port_power() is True
    assert fake_hw.authorized("1-1.1") == "0"  # written after it appeared, not before power on


def test_no_compatible_hub_is_a_clear_failure(fake_hw, dashcamctl, make_config):
    fake_hw.usb_device("1-1")
    cfg = make_config({"camera": {"hub_location": "3-1"}})
    r = dashcamctl("--config", str(cfg), "mode", "off", env=fake_hw.env)
    assert r.returncode == 1
    assert "uhubctl found no switchable hub at 3-1" in r.stderr and "No compatible devices" in r.stderr


def test_uhubctl_missing_is_a_clear_failure(fake_hw, dashcamctl, make_config):
    cfg = make_config({"tools": {"uhubctl": "/nonexistent/uhubctl"}})
    r = dashcamctl("--config", str(cfg), "mode", "off", env=fake_hw.env)
    assert r.returncode == 1 and "command not found" in r.stderr


def test_dry_run_changes_nothing(fake_hw, dashcamctl, make_config):
    fake_hw.usb_device("1-1", authorized="1")
    cfg = make_config()
    for mode in ("off", "record", "data"):
        r = dashcamctl("--config", str(cfg), "--dry-run", "mode", mode, env=fake_hw.env)
        assert r.returncode == 0, r.stderr
        assert "dry run" in r.stdout
    assert fake_hw.uhubctl_argvs() == []
    assert not fake_hw.uhubctl_state.exists()
    assert fake_hw.authorized("1-1") == "1"
    assert "dry run, not writing 0 to" in r.stderr or "dry run, not writing 1 to" in r.stderr
    assert "dry run, not running: uhubctl -l 1-1 -p 1 -a on" in r.stderr


def test_an_unknown_mode_is_refused_by_the_command_line(dashcamctl, make_config):
    r = dashcamctl("--config", str(make_config()), "mode", "sleep")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    with pytest.raises(camera.CameraError):
        camera.set_mode(config.load(str(make_config())), "sleep")


def test_current_mode_is_unknown_without_a_hub(fake_hw, make_config):
    cfg = config.load(str(make_config({"camera": {"hub_location": "9-9"}})))
    assert camera.current_mode(cfg) == "unknown"


def test_current_mode_reads_without_switching(fake_hw, make_config):
    fake_hw.usb_device("1-1", authorized="0")
    cfg = config.load(str(make_config()))
    assert camera.current_mode(cfg) == "record"
    assert fake_hw.uhubctl_argvs() == [["-l", "1-1", "-p", "1"]]


# ---------------------------------------------------------------- the scripts backend


def script(path, body):
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def scripts_config(tmp_path, make_config):
    def make(record="exit 0", data="exit 0", off="exit 0"):
        return make_config(
            {
                "camera": {
                    "backend": "scripts",
                    "record_script": script(tmp_path / "start-for-recording.sh", record),
                    "data_script": script(tmp_path / "start-for-data.sh", data),
                    "off_script": script(tmp_path / "stop-all-ports.sh", off),
                }
            }
        )

    return make


def test_scripts_backend_runs_the_script_of_the_mode(fake_hw, dashcamctl, scripts_config, tmp_path):
    marker = tmp_path / "ran"
    cfg = scripts_config(off=f"echo off >> {marker}; uhubctl -l 1-1 -a off >/dev/null")
    r = dashcamctl("--config", str(cfg), "mode", "off", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    assert marker.read_text() == "off\n"
    assert fake_hw.port_power() is False


def test_a_failing_script_is_a_clear_error(fake_hw, dashcamctl, scripts_config):
    cfg = scripts_config(data="echo 'cannot write /sys/bus/usb/devices/1-1/authorized' >&2; exit 4")
    r = dashcamctl("--config", str(cfg), "mode", "data", env=fake_hw.env)
    assert r.returncode == 1
    assert "the data script failed" in r.stderr and "status 4" in r.stderr
    assert "cannot write /sys/bus/usb/devices/1-1/authorized" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_missing_script_is_a_clear_error(fake_hw, make_config, tmp_path):
    cfg = config.load(
        str(
            make_config(
                {
                    "camera": {
                        "backend": "scripts",
                        "record_script": str(tmp_path / "nope.sh"),
                        "data_script": str(tmp_path / "nope.sh"),
                        "off_script": str(tmp_path / "nope.sh"),
                    }
                }
            )
        )
    )
    with pytest.raises(camera.CameraError, match="cannot run the record script"):
        camera.set_mode(cfg, "record")


def test_a_script_that_succeeds_without_switching_is_caught_by_the_readback(fake_hw, scripts_config):
    fake_hw.usb_device("1-1", authorized="1")
    cfg = config.load(str(scripts_config(off="exit 0")))
    with pytest.raises(camera.CameraError, match="reads back as data, expected off"):
        camera.set_mode(cfg, "off")


def test_scripts_backend_dry_run_runs_nothing(fake_hw, dashcamctl, scripts_config, tmp_path):
    marker = tmp_path / "ran"
    cfg = scripts_config(record=f"touch {marker}", data=f"touch {marker}", off=f"touch {marker}")
    for mode in ("record", "data", "off"):
        assert dashcamctl("--config", str(cfg), "--dry-run", "mode", mode, env=fake_hw.env).returncode == 0
    assert not marker.exists()


# ---------------------------------------------------------------- the fake itself replays the fixture


def test_the_fake_uhubctl_replays_the_fixture(fake_hw):
    import subprocess

    out = subprocess.run(
        ["uhubctl", "-l", "1-1", "-p", "1", "-a", "off"], capture_output=True, text=True, env=dict(fake_hw.env), check=True
    ).stdout
    assert out == SEED_OFF
    assert json.loads(fake_hw.uhubctl_state.read_text())["1-1"]["1"] is False


def config_with_uhubctl(fake_hw, make_config, path, script):
    """A config whose tools.uhubctl is a shell script of these lines (the camera 1-1 present)."""
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    fake_hw.usb_device("1-1")
    return config.load(str(make_config({"tools": {"uhubctl": str(path)}})))


def test_uhubctl_output_without_a_new_status_is_not_taken_as_success(fake_hw, make_config, tmp_path):
    cfg = config_with_uhubctl(fake_hw, make_config, tmp_path / "odd-uhubctl",
                              "echo 'Sent power off request'\necho 'something else entirely'")
    with pytest.raises(camera.CameraError, match="expected port 1 of hub 1-1 powered off, found no 'New status'"):
        camera.set_mode(cfg, "off")
    assert camera.current_mode(cfg) == "unknown"


def test_a_camera_on_a_root_hub_comes_up_unauthorized_for_record_and_the_default_is_restored(fake_hw, make_config,
                                                                                            monkeypatch):
    cfg = config.load(str(make_config({"camera": {"hub_location": "3", "data_device": "3-1"}})))
    root = fake_hw.usb_device("usb3").parent
    (root / "authorized_default").write_text("1\n")
    seen = {}

    def uhubctl(cfg_, action, dry_run=False):  # power on: the camera enumerates under the bus default
        seen["default_at_power_on"] = (root / "authorized_default").read_text().strip()
        fake_hw.usb_device("3-1", authorized=seen["default_at_power_on"])
        out = "New status for hub 3 [1d6b:0002 dummy_hcd]\n  Port 1: 0503 power highspeed enable connect\n"
        return camera.runner.Result(["uhubctl"], 0, out, "")

    monkeypatch.setattr(camera, "_uhubctl", uhubctl)
    camera.set_mode(cfg, "record")
    assert seen["default_at_power_on"] == "0"  # its storage never bound
    assert (root / "authorized_default").read_text().strip() == "1"
    assert fake_hw.authorized("3-1") == "0"


# ---------------------------------------------------------------- the kernel's own port switch (Linux 6.0+)


def port_switch(fake_hw, hub_dir="usb3", interface="3-0:1.0", port="usb3-port1", disabled="0"):
    """The port's ``disable`` attribute in the fake sysfs: it reads "1" while the port is unpowered."""
    d = fake_hw.sysfs / "bus" / "usb" / "devices" / hub_dir / interface / port
    d.mkdir(parents=True, exist_ok=True)
    (d / "disable").write_text(disabled + "\n")
    return d / "disable"


@pytest.fixture
def root_hub_camera(fake_hw, make_config, monkeypatch):
    """The camera on port 1 of root hub 3, as the VM's gadget camera on dummy_hcd (uhubctl -l 3 -p 1)."""
    monkeypatch.setenv("UHUBCTL_FAKE_HUBS", "3")
    return config.load(str(make_config({"camera": {"hub_location": "3", "data_device": "3-1"}})))


def test_mode_off_switches_the_port_off_through_the_kernel_so_the_camera_leaves_the_bus(fake_hw, root_hub_camera):
    # In the VM, `uhubctl -l 3 -p 1 -a off` printed "Port 1: 0000 off" and the camera stayed in
    # /sys/bus/usb/devices/3-1 for good: uhubctl 2.5 switched the root hub's port with a control
    # transfer the kernel's hub driver never heard of. The port's disable attribute disconnects it.
    fake_hw.usb_device("3-1", authorized="0")
    disable = port_switch(fake_hw)
    camera.set_mode(root_hub_camera, "off")
    assert disable.read_text() == "1"
    assert fake_hw.uhubctl_argvs() == [["-l", "3", "-p", "1", "-a", "off"]]  # still the confirmation
    assert fake_hw.port_power("3", 1) is False


def test_mode_off_disconnects_a_camera_the_kernel_still_lists_on_an_unpowered_port(fake_hw, root_hub_camera):
    fake_hw.usb_device("3-1", authorized="0")
    disable = port_switch(fake_hw, disabled="1")  # switched off behind the hub driver's back before
    camera.set_mode(root_hub_camera, "off")
    assert disable.read_text() == "1"  # written again: the kernel disconnects the stale camera


def test_mode_record_powers_an_unpowered_port_through_the_kernel(fake_hw, root_hub_camera):
    disable = port_switch(fake_hw, disabled="1")
    fake_hw.usb_device("usb3", authorized="1")
    (fake_hw.sysfs / "bus/usb/devices/usb3/authorized_default").write_text("1\n")
    fake_hw.usb_device("3-1", authorized="0")  # the camera enumerates once powered
    camera.set_mode(root_hub_camera, "record")
    assert disable.read_text() == "0"
    assert fake_hw.uhubctl_argvs()[-1] == ["-l", "3", "-p", "1", "-a", "on"]
    assert camera.current_mode(root_hub_camera) == "record"


def test_a_powered_port_is_not_switched_again_through_the_kernel(fake_hw, root_hub_camera):
    fake_hw.usb_device("3-1", authorized="1")
    disable = port_switch(fake_hw, disabled="0")
    camera.set_mode(root_hub_camera, "record")
    assert disable.read_text() == "0\n"  # untouched (a write leaves no newline)
    assert fake_hw.authorized("3-1") == "0"


def test_a_port_switch_that_cannot_be_written_leaves_it_to_uhubctl(fake_hw, root_hub_camera, caplog):
    fake_hw.usb_device("3-1", authorized="0")
    disable = port_switch(fake_hw)
    disable.unlink()
    disable.mkdir()  # open() for writing fails, as on a read-only sysfs
    with caplog.at_level("WARNING", logger="dashcam.camera"):
        camera.set_mode(root_hub_camera, "off")
    assert fake_hw.port_power("3", 1) is False
    assert "uhubctl alone switches it" in caplog.text


def test_a_hub_port_switch_is_found_under_the_hubs_interface(fake_hw, make_config):
    disable = port_switch(fake_hw, hub_dir="1-1", interface="1-1:1.0", port="1-1-port2")
    cfg = config.load(str(make_config({"camera": {"hub_location": "1-1", "port_number": 2}})))
    assert camera.port_disable_path(cfg) == str(disable)
    assert camera.port_disable_path(config.load(str(make_config()))) is None  # port 1: no switch there


def test_dry_run_does_not_touch_the_port_switch(fake_hw, root_hub_camera, caplog):
    disable = port_switch(fake_hw)
    with caplog.at_level("INFO", logger="dashcam.camera"):
        camera.set_mode(root_hub_camera, "off", dry_run=True)
    assert disable.read_text() == "0\n"
    assert "dry run, not writing 1 to" in caplog.text


def test_a_uhubctl_that_floods_its_output_is_a_clear_failure_not_a_full_memory(fake_hw, make_config, tmp_path):
    # 2 MB and then a hang (a wedged USB stack printing in a loop): stopped at once, not read for
    # UHUBCTL_TIMEOUT seconds into memory
    cfg = config_with_uhubctl(fake_hw, make_config, tmp_path / "uhubctl", "head -c 2000000 /dev/zero\nsleep 60")
    with pytest.raises(camera.CameraError, match="printed more than"):
        camera.set_mode(cfg, "record")
