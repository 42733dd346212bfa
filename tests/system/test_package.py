"""The package in a real Debian guest: installs, reinstalls, upgrades over itself, purges cleanly."""
import os
import re
import subprocess

import pytest

from guest import install_package, ledger_rows
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


def active_since(vm, unit):
    """When the unit last became active (monotonic µs): a restart moves it forward."""
    return int(vm.run(["/bin/systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", unit]).out)


def purge(vm):
    vm.run(["/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", "/usr/bin/apt-get", "purge", "-y", "-q",
            "dashcam-manager"], timeout=300)
    assert dpkg_status(vm) in ("", "unknown ok not-installed ")
    settled(vm)
    assert failed(vm) == ""


def leftovers(vm, keep=()):
    """What of the package is still on the guest: files named *dashcam* on the root file system (the
    test's share and /tmp aside), files dpkg still knows of, the user and group, units systemd knows."""
    found = vm.run(["/usr/bin/find", "/", "-xdev", "(", "-path", "/mnt/host", "-o", "-path", "/tmp", "-o",
                    "-path", "/srv/card", ")", "-prune", "-o", "-name", "*dashcam*", "-print"]).out.split()
    found += vm.run(["/usr/bin/find", "/etc/dashcam", "/var/lib/dashcam", "-print"], check=False).out.split()
    found = sorted(set(f for f in found if not any(f == k or f.startswith(k + "/") for k in keep)))
    r = vm.run(["/usr/bin/dpkg", "-S", "dashcam"], check=False)
    if r.rc == 0:
        found.append("dpkg -S: " + r.out.strip())
    for db in ("passwd", "group"):
        r = vm.run(["/usr/bin/getent", db, "dashcam"], check=False)
        if r.rc == 0 and "user" not in keep:
            found.append("getent %s: %s" % (db, r.out.strip()))
    # exit status 1 when no unit file matches (systemd 246 and later)
    units = [ln for ln in vm.run(["/bin/systemctl", "list-unit-files", "--no-legend", "--plain", "dashcam*"],
                                 check=False).out.splitlines() if "dashcam" in ln]
    found += ["systemctl: " + ln for ln in units]
    # a unit still running once its file is gone (one dpkg never started, so never stopped)
    running = [ln for ln in vm.run(["/bin/systemctl", "list-units", "--no-legend", "--plain", "--state=active",
                                    "dashcam*"], check=False).out.splitlines() if "dashcam" in ln]
    found += ["running: " + ln for ln in running]
    return found


CARD_CLIP = "/srv/card/Normal/Front/2026_1125_233000_001F.MP4"


def test_install_purge_install_upgrade_purge_as_piuparts_does(make_vm, deb_path, tmp_path):
    """piuparts' sequence in a real guest: install on a clean system, purge (nothing left), install
    again, use it (a conffile edit, a ledger with a clip, the policy interval changed), the same
    version over itself, an upgrade to a higher version (all of that kept, the units restarted), and
    a purge of the used install (unsent footage is the user's: kept with its ledger, the rest gone)."""
    bumped_deb, bumped_version = bumped(deb_path, tmp_path)
    version = os.path.basename(deb_path).split("_")[1]
    vm = make_vm()
    vm.start()
    assert leftovers(vm) == []

    # install: apt resolves the Depends from what the image holds (offline)
    install_package(vm, deb_path)
    assert dpkg_status(vm) == "install ok installed " + version
    settled(vm)
    assert units_state(vm) == {u: "enabled" for u in UNITS_ENABLED}
    assert vm.run(["/bin/systemctl", "is-active", "dashcam-policy.timer"], check=False).out.strip() == "active"
    assert failed(vm) == ""
    assert vm.run(["/usr/bin/dashcamctl", "--help"]).rc == 0
    assert vm.run(["/usr/bin/stat", "-c", "%a %U %G", "/etc/dashcam/config.yaml"]).out.split() == \
        ["640", "root", "dashcam"]

    # purge a fresh install: nothing of it is left, not even the watcher the policy starts while the
    # camera is not recording (here: no camera, its mode unknown), which dpkg never started; nor one
    # started by a tick in flight during the removal: this tick waits (a runtime drop-in, gone with
    # the guest's /run) until the removal has stopped the watcher, then goes on and would start it again
    vm.run(["/bin/systemctl", "start", "dashcam-watch.service"])
    assert vm.run(["/bin/systemctl", "is-active", "dashcam-watch.service"], check=False).out.strip() == "active"
    vm.write_file("/run/systemd/system/dashcam-policy.service.d/wait-for-removal.conf",
                  "[Service]\nExecStartPre=+/bin/sh -c 'trap \"exit 0\" TERM;"
                  " while /bin/systemctl -q is-active dashcam-watch.service; do sleep 0.2; done'\n")
    vm.run(["/bin/systemctl", "daemon-reload"])
    vm.run(["/bin/systemctl", "start", "--no-block", "dashcam-policy.service"])
    wait_for(lambda: vm.run(["/bin/systemctl", "is-active", "dashcam-policy.service"], check=False).out.strip()
             == "activating", 60, "the policy tick to wait for the removal")
    purge(vm)
    vm.run(["/bin/rm", "-r", "/run/systemd/system/dashcam-policy.service.d"])
    vm.run(["/bin/systemctl", "daemon-reload"])
    assert leftovers(vm) == []

    # install again, and use it: the user edits the conffile, a clip reaches the ledger, the interval changes
    install_package(vm, deb_path)
    settled(vm)
    vm.sh("sed -i 's/^  host: homeserver.lan$/  host: nas.example/' /etc/dashcam/config.yaml")
    vm.sh("install -d -m 0755 %s && head -c 1048576 /dev/urandom > %s && chmod 0644 %s"
          % (os.path.dirname(CARD_CLIP), CARD_CLIP, CARD_CLIP))
    vm.run(["/usr/bin/dashcamctl", "ingest", "--source", "/srv/card"], timeout=300)
    ledger = ledger_rows(vm)
    assert [r["state"] for r in ledger] == ["staged"], ledger
    vm.run(["/usr/bin/dashcamctl", "policy-interval", "60"], timeout=300)

    # the same version again with dpkg -i: the maintainer scripts over themselves
    vm.run(["/usr/bin/dpkg", "-i", vm.put(deb_path)], timeout=300)
    assert dpkg_status(vm) == "install ok installed " + version
    settled(vm)
    assert failed(vm) == ""

    # upgrade to a higher version of the same tree: what the user made is kept, the units restarted
    since = {u: active_since(vm, u) for u in UNITS_ENABLED}
    install_package(vm, bumped_deb)
    assert dpkg_status(vm) == "install ok installed " + bumped_version
    settled(vm)
    assert units_state(vm) == {u: "enabled" for u in UNITS_ENABLED}
    assert failed(vm) == ""
    assert all(active_since(vm, u) > since[u] for u in UNITS_ENABLED), "units not restarted by the upgrade"
    assert "host: nas.example" in vm.read_file("/etc/dashcam/config.yaml").decode()
    assert vm.run(["/usr/bin/stat", "-c", "%a %U %G", "/etc/dashcam/config.yaml"]).out.split() == \
        ["640", "root", "dashcam"]
    assert ledger_rows(vm) == ledger
    shown = vm.run(["/usr/bin/dashcamctl", "policy-interval", "--show"]).out
    assert "every 60 s" in shown, shown

    # purge the used install: the staged clip is the user's (kept, with its ledger and their owner);
    # the configuration, the interval drop-in, the units and the rest are gone
    purge(vm)
    kept = ["/var/lib/dashcam", "user"]
    assert leftovers(vm, keep=kept) == []
    assert vm.run(["/usr/bin/find", "/var/lib/dashcam/staging/ready", "-type", "f"]).out.strip()
    assert ledger_rows(vm) == ledger
