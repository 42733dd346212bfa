"""The package in a real Debian guest: installs, reinstalls, upgrades over itself, purges cleanly."""
import os
import re
import subprocess

import pytest

from guest import install_package
from vm import wait_for

pytestmark = pytest.mark.system

UNITS_ENABLED = ["dashcam-policy.timer", "dashcam-upload.path"]
BUMP = "+systemtest1"


def bumped(deb_path, tmp_path):
    """The same package as version <v>+systemtest1: unpacked, its Version raised, packed again.

    Same files, higher version: dpkg runs the whole upgrade path (prerm upgrade, unpack over the old
    files, postinst configure <old version>) and the shipped conffile is unchanged, so a local edit
    is kept without a prompt, as it would be on an upgrade that does not touch the shipped config.
    """
    tree = tmp_path / "bumped"
    subprocess.run(["dpkg-deb", "-R", deb_path, str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (.*)$", text, re.M).group(1)
    control.write_text(text.replace("Version: " + version, "Version: " + version + BUMP))
    out = str(tmp_path / ("dashcam-manager_%s%s_all.deb" % (version, BUMP)))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), out], check=True, stdout=subprocess.DEVNULL)
    return out, version + BUMP


def units_state(vm):
    return {u: vm.run(["/bin/systemctl", "is-enabled", u], check=False).out.strip() for u in UNITS_ENABLED}


def settled(vm):
    """systemd has finished starting what the install started (running or degraded, not starting)."""
    state = vm.run(["/bin/systemctl", "is-system-running", "--wait"], timeout=300, check=False).out.strip()
    wait_for(lambda: not vm.run(["/bin/systemctl", "list-jobs", "--no-legend"]).out.strip(), 120,
             "systemd's job queue to drain")
    return state


def failed(vm):
    return vm.run(["/bin/systemctl", "--failed", "--no-legend", "--plain"]).out.strip()


def dpkg_status(vm):
    r = vm.run(["/usr/bin/dpkg-query", "-W", "-f", "${Status} ${Version}", "dashcam-manager"], check=False)
    return r.out.strip() if r.rc == 0 else ""


def test_installs_reinstalls_upgrades_over_itself_and_purges_cleanly(make_vm, deb_path, tmp_path):
    bumped_deb, bumped_version = bumped(deb_path, tmp_path)
    vm = make_vm()
    vm.start()

    # install: apt resolves the Depends from what the image holds (offline)
    install_package(vm, deb_path)
    version = os.path.basename(deb_path).split("_")[1]
    assert dpkg_status(vm) == "install ok installed " + version
    settled(vm)
    assert units_state(vm) == {u: "enabled" for u in UNITS_ENABLED}
    assert vm.run(["/bin/systemctl", "is-active", "dashcam-policy.timer"], check=False).out.strip() == "active"
    assert failed(vm) == ""
    assert vm.run(["/usr/bin/dashcamctl", "--help"]).rc == 0
    assert vm.run(["/usr/bin/stat", "-c", "%a %U %G", "/etc/dashcam/config.yaml"]).out.split() == \
        ["640", "root", "dashcam"]
    assert vm.run(["/usr/bin/id", "dashcam"]).rc == 0

    # the user edits the conffile; every later step must keep the edit
    vm.sh("sed -i 's/^  host: homeserver.lan$/  host: nas.example/' /etc/dashcam/config.yaml")
    assert "host: nas.example" in vm.read_file("/etc/dashcam/config.yaml").decode()

    # the same version again, twice, with dpkg -i: a re-run of the maintainer scripts over themselves
    inside = vm.put(deb_path)
    for _ in range(2):
        vm.run(["/usr/bin/dpkg", "-i", inside], timeout=300)
    assert dpkg_status(vm) == "install ok installed " + version
    settled(vm)
    assert units_state(vm) == {u: "enabled" for u in UNITS_ENABLED}
    assert failed(vm) == ""

    # upgrade to a higher version of the same tree
    install_package(vm, bumped_deb)
    assert dpkg_status(vm) == "install ok installed " + bumped_version
    settled(vm)
    assert units_state(vm) == {u: "enabled" for u in UNITS_ENABLED}
    assert failed(vm) == ""
    config = vm.read_file("/etc/dashcam/config.yaml").decode()
    assert "host: nas.example" in config
    assert vm.run(["/usr/bin/stat", "-c", "%a %U %G", "/etc/dashcam/config.yaml"]).out.split() == \
        ["640", "root", "dashcam"]

    # purge: nothing of ours is left, nothing failed on the way out
    vm.run(["/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", "/usr/bin/apt-get", "purge", "-y", "-q",
            "dashcam-manager"], timeout=300)
    assert dpkg_status(vm) in ("", "unknown ok not-installed ")
    for gone in ["/etc/dashcam", "/var/lib/dashcam", "/usr/bin/dashcamctl",
                 "/lib/systemd/system/dashcam-policy.timer", "/lib/systemd/system/dashcam-upload.path"]:
        assert not vm.exists(gone), gone
    assert "dashcam" not in vm.run(["/bin/systemctl", "list-timers", "--all", "--no-legend"]).out
    settled(vm)
    assert failed(vm) == ""
