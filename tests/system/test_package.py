"""The package in a real Debian guest: installs, reinstalls, upgrades over itself, purges cleanly."""
import glob
import os
import shutil
import subprocess

import pytest

from guest import REPO, install_package
from vm import wait_for

pytestmark = pytest.mark.system

UNITS_ENABLED = ["dashcam-policy.timer", "dashcam-upload.path"]
BUMP = "+systemtest1"


def start_bumped_build(deb_path, tmp_path):
    """Build the same tree as version <current>+systemtest1 in a temporary copy (runs while the VM boots)."""
    src = tmp_path / "src" / "dashcam-manager"
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for rel in filter(None, files):
        if rel.startswith("dist/") or not os.path.isfile(os.path.join(REPO, rel)):
            continue
        os.makedirs(os.path.dirname(str(src / rel)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, rel), str(src / rel))
    version = os.path.basename(deb_path).split("_")[1]
    changelog = src / "debian" / "changelog"
    old = changelog.read_text()
    stamp = old.split("\n -- ", 1)[1].split("\n", 1)[0]
    changelog.write_text("dashcam-manager (%s%s) unstable; urgency=medium\n\n"
                         "  * System test: the same tree, a higher version, to upgrade over itself.\n\n"
                         " -- %s\n\n%s" % (version, BUMP, stamp, old))
    log = open(str(tmp_path / "bumped-build.log"), "wb")
    proc = subprocess.Popen(["dpkg-buildpackage", "-b", "-us", "-uc", "-rfakeroot", "--build-profiles=nocheck"],
                            cwd=str(src), stdout=log, stderr=subprocess.STDOUT)
    return proc, str(src.parent), version + BUMP


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
    build, build_dir, bumped_version = start_bumped_build(deb_path, tmp_path)
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
    assert build.wait(timeout=600) == 0, open(str(tmp_path / "bumped-build.log")).read()[-3000:]
    bumped = glob.glob(os.path.join(build_dir, "dashcam-manager_%s_all.deb" % bumped_version))
    assert bumped, os.listdir(build_dir)
    install_package(vm, bumped[0])
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
