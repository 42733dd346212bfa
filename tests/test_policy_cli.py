"""dashcamctl --dry-run policy --json as a real subprocess: fake lifepo4wered-cli, uhubctl and systemctl
on PATH, a fake sysfs tree, a server on 127.0.0.1 that a test opens and closes.
"""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from conftest import FIXTURES

LIFEPO = """#!/bin/sh
# fake lifepo4wered-cli: "get" prints every register, "get NAME" one value
values="$(cat {values})"
if [ "$#" -ge 2 ]; then
    printf '%s\\n' "$values" | sed -n "s/^$2 = //p"
else
    printf '%s\\n' "$values"
fi
"""

UHUBCTL = """#!/bin/sh
# fake uhubctl for hub 1-1, camera on port 1: status only (a dry run never switches)
echo "Current status for hub 1-1 [2109:3431 USB2.0 Hub, USB 2.10, 4 ports, ppps]"
if [ "$(cat {power})" = on ]; then
    echo "  Port 1: 0503 power highspeed enable connect [0603:8612 NOVATEKN vt-DSC 96680-00000-001]"
else
    echo "  Port 1: 0000 off"
fi
"""

SYSTEMCTL = """#!/bin/sh
# fake systemctl: no unit running; anything else is logged (a dry run must log nothing here)
case "$1" in list-units) exit 0 ;; esac
echo "$*" >> {log}
"""


def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def world(tmp_path, make_config, dashcamctl):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    values = tmp_path / "lifepo4wered-values"
    power = tmp_path / "port-power"
    power.write_text("off")
    executable(bindir / "lifepo4wered-cli", LIFEPO.format(values=values))
    executable(bindir / "uhubctl", UHUBCTL.format(power=power))
    executable(bindir / "systemctl", SYSTEMCTL.format(log=tmp_path / "systemctl.log"))
    sysfs = tmp_path / "sys"
    (sysfs / "bus/usb/devices/1-1").mkdir(parents=True)
    (sysfs / "bus/usb/devices/1-1/authorized").write_text("0\n")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]

    cfg = make_config({"upload": {"port": port, "connect_timeout": 1}})

    class World:
        def battery(self, vbat, vin):
            text = (FIXTURES / "lifepo4wered-get.txt").read_text()
            text = text.replace("VBAT = 3611", f"VBAT = {vbat}").replace("VIN = 5208", f"VIN = {vin}")
            values.write_text(text)

        def home(self, yes=True):
            if yes:
                server.listen(8)

        def run(self, **env):
            r = dashcamctl(
                "--config", str(cfg), "--dry-run", "policy", "--json",
                env={"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "DASHCAM_SYSFS": str(sysfs),
                     "CACHE_DIRECTORY": str(tmp_path / "cache"), **env},
            )
            assert r.returncode == 0, r.stderr
            return r

        def tick(self):
            return json.loads(self.run().stdout)

        systemctl_log = tmp_path / "systemctl.log"

    yield World()
    server.close()


def test_a_no_network_on_battery_the_camera_records(world):
    world.battery(vbat=3400, vin=0)
    out = world.tick()
    assert out["saw"]["camera"] == "off" and out["saw"]["reachable"] is False
    assert out["decision"]["camera"] == "record"
    assert "server unreachable" in out["decision"]["reason"]


def test_b_the_server_answers_the_camera_goes_to_data(world):
    world.battery(vbat=3400, vin=0)
    world.home()
    out = world.tick()
    assert out["saw"]["reachable"] is True
    assert out["decision"]["camera"] == "data"


def test_c_below_disconnect_off_and_below_shutdown_three_times_power_off(world):
    world.battery(vbat=3260, vin=0)  # 40 %
    assert world.tick()["decision"]["camera"] is None  # the camera is already off: it stays off
    world.battery(vbat=3150, vin=0)  # 10 %
    decisions = [world.tick()["decision"] for _ in range(3)]
    # the 40 % reading is still among the last three at the 2nd tick; the 3rd has 3 readings below 25 %
    assert [d["shutdown"] for d in decisions] == [False, False, True]
    assert not world.systemctl_log.exists()  # --dry-run: nothing stopped, nothing powered off


def test_on_external_power_a_low_battery_changes_nothing(world):
    world.battery(vbat=3150, vin=5208)
    for _ in range(3):
        out = world.tick()
        assert out["decision"]["shutdown"] is False
    assert out["decision"]["camera"] == "record"


def test_a_tick_keeps_the_heavy_modules_out(world):
    """The timer runs a tick every 30 s on battery: what it imports is what it costs. These are
    the modules it was built to do without (bench/policy measures the CPU)."""
    world.battery(vbat=3400, vin=0)
    world.run()                                    # the config is cached as JSON from here on
    r = world.run(PYTHONPROFILEIMPORTTIME="1")     # python -X importtime: one line per module
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "dashcam_helpers.policy" in imported and "sqlite3" in imported
    heavy = {"logging", "subprocess", "socket", "argparse", "typing", "yaml", "dataclasses", "threading",
             "importlib.metadata", "site", "contextlib", "systemd", "tempfile", "shutil"}
    assert heavy & imported == set()
