"""`dashcamctl doctor` in the guest, the way a new user meets it: on the package as installed (the
shipped configuration, no key, no UPS tool), then after the README's setup (config, `keygen`, the
line on the server, `trust-host`) with the test camera and the test home server, then with the
camera unplugged and with the server gone. One guest, one install.

The figures are doctor's own output before and after the setup, as a user sees it.
"""
import json
import re

import pytest

import cards
import guest

pytestmark = pytest.mark.system

# The guest runs under TCG, many times slower than a Pi: one ssh session to the test server takes
# seconds, and the server's probes need more than doctor's default 8 s (seen: "cannot tell: ...
# timed out"). --server-timeout is the option a slow link or a slow machine uses.
DOCTOR = ["/usr/bin/dashcamctl", "doctor", "--server-timeout", "40"]

# Where the guest truly differs from a Pi in a car, and so may warn after a complete setup:
# - clock: the test network has no NTP server (QEMU's user-mode NIC reaches the host only), and
#   the image has no time sync daemon; on a Pi, systemd-timesyncd sets the clock once online.
VM_ONLY_WARNINGS = {"clock"}


def doctor(vm, *args):
    """(exit status, {check name: [check, ...]}) of `dashcamctl doctor --json`."""
    r = vm.run(DOCTOR + ["--json"] + list(args), timeout=120, check=False)
    assert r.rc in (0, 1), r
    report = json.loads(r.out)
    by_name = {}
    for c in report["checks"]:
        by_name.setdefault(c["name"], []).append(c)
    assert r.rc == (1 if report["fail"] else 0), r
    return r.rc, by_name


def as_user_sees_it(vm):
    """doctor's text output, verbatim, and its exit status."""
    r = vm.run(DOCTOR, timeout=120, check=False)
    return r.rc, r.out


def statuses(by_name):
    return {name: sorted({c["status"] for c in checks}) for name, checks in by_name.items()}


def not_ok_names(by_name):
    return [name for name, s in statuses(by_name).items() if s != ["ok"]]


def failing(by_name):
    return [c for checks in by_name.values() for c in checks if c["status"] == "FAIL"]


def test_doctor_before_and_after_the_readme_setup_then_without_camera_then_without_server(
        make_vm, deb_path, server, tmp_path, figure):
    vm = make_vm()
    vm.start()
    figure("guest", vm.sh(". /etc/os-release; echo $PRETTY_NAME, $(python3 --version), Linux $(uname -r)").out.strip())
    guest.install_package(vm, deb_path)

    # the package as installed: its configuration says what to set, doctor FAILs and names it
    rc, text = as_user_sees_it(vm)
    figure("doctor right after install", "\n" + text)
    assert rc == 1, text
    rc, checks = doctor(vm)
    assert rc == 1
    fixes = " ".join(c["fix"] or "" for c in failing(checks))
    for key in ("upload.host", "camera.hub_location", "camera.port_number", "tools.lifepo4wered_cli"):
        assert key in fixes, (key, failing(checks))
    assert "dashcamctl keygen" in fixes, failing(checks)

    # the README's setup: the UPS tool, the configuration, the key on the server, the pinned host key
    guest.install_tools(vm)
    bus = guest.camera_bus(vm)
    # the policy waits 30 min before it fetches footage (the scenarios' settle_minutes 0 would
    # switch the camera to data under doctor's feet)
    cfg = guest.scenario_config(vm, bus=bus, server=server, camera={"settle_minutes": 30})
    guest.write_config(vm, cfg)
    line = vm.run(["/usr/bin/dashcamctl", "keygen", "--server-dir", server.root]).out.splitlines()[-1]
    assert line.startswith('command="/usr/bin/rrsync -wo -no-del -no-lock %s",restrict ' % server.root), line
    with open(server.authorized_keys, "a") as f:       # "On the server, append that line, unchanged"
        f.write(line + "\n")
    vm.run(["/usr/bin/dashcamctl", "trust-host", "--yes"])
    card = str(tmp_path / "card.img")
    cards.make_card(card, cards.user_layout(normal=1, size=1 << 20))
    guest.camera_up(vm, card)                          # plugged in, recording (data off)
    # "Run one tick with the finished configuration first": a timer tick that ran halfway through
    # the setup failed its unit (seen: uhubctl found no hub yet). A start while a timer tick runs
    # joins that tick, so the README's command is run once more for a tick that surely began after
    # the setup; that one must succeed.
    vm.run(["/bin/systemctl", "start", "dashcam-policy.service"], check=False)
    vm.run(["/bin/systemctl", "start", "dashcam-policy.service"])

    rc, text = as_user_sees_it(vm)
    figure("doctor after the README's setup", "\n" + text)
    rc, checks = doctor(vm)
    not_ok = {n: s for n, s in statuses(checks).items() if s != ["ok"]}
    assert set(not_ok) <= VM_ONLY_WARNINGS and all(s == ["warn"] for s in not_ok.values()), not_ok
    assert rc == 0
    assert re.search(r"camera on hub %d port 1" % bus, checks["camera"][0]["found"]), checks["camera"]
    assert checks["ssh key restricted"][0]["status"] == "ok"

    # the camera unplugged: the camera check says nothing is on its port. The test's
    # camera.data_device is the camera itself (<bus>-1), so its data switch goes with it and that
    # check FAILs too; a policy tick meanwhile cannot switch the camera and may fail its unit.
    vm.run(["/usr/local/sbin/vcam-gadget", "down"])
    rc, unplugged = doctor(vm)
    assert rc == 1
    assert unplugged["camera"][0]["status"] == "FAIL", unplugged["camera"]
    assert "nothing on hub %d port 1" % bus in unplugged["camera"][0]["found"], unplugged["camera"]
    assert set(not_ok_names(unplugged)) <= set(not_ok) | {"camera", "usb data switch", "failed units"}, \
        not_ok_names(unplugged)

    # the server gone: the server check says it does not answer, and the probes through it are left out
    server.stop()
    rc, away = doctor(vm)
    assert away["server"][0]["status"] == "warn" and "does not answer" in away["server"][0]["found"], away["server"]
    for gone in ("host key", "ssh key accepted", "ssh key restricted"):
        assert gone not in away, away.get(gone)
    assert set(not_ok_names(away)) <= set(not_ok_names(unplugged)) | {"server"}, not_ok_names(away)
