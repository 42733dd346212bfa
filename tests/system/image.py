#!/usr/bin/python3
"""The guest images for the system tests: Debian built with debootstrap, cached outside the repo.

    /usr/bin/python3 tests/system/image.py            # build (or reuse) bookworm, print its cache directory
    /usr/bin/python3 tests/system/image.py trixie     # the same for Debian 13

One recipe per suite (SUITES): Debian 12 "bookworm", the default, and Debian 13 "trixie", what
Raspberry Pi OS is now based on. The cache key is a hash of the suite's recipe, so editing a recipe
rebuilds that suite's image and nothing else does. The result is a raw ext4 root file system plus the kernel and initrd for a
direct boot (`-kernel -initrd -append root=/dev/vda`); tests boot throw-away qcow2 overlays of it.
Needs root (debootstrap, chroot) and the Debian mirror that apt on this host already uses.
"""
import copy
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

CACHE_ROOT = os.environ.get("DASHCAM_VM_CACHE", "/var/cache/dashcam-vm")

# Everything that decides what the image contains. Change any of it and the image rebuilds.
# (bookworm's recipe, the default; SUITES derives the others from it)
RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "packages": [
        # boot, init, devices, the guest agent that runs the tests' commands
        "systemd", "systemd-sysv", "udev", "dbus", "kmod", "linux-image-amd64",
        "initramfs-tools", "qemu-guest-agent", "iproute2", "procps",
        # the package's runtime Depends and Recommends, so `apt install ./x.deb` needs no network
        "python3", "python3-yaml", "python3-pyudev", "python3-systemd", "python3-paho-mqtt",
        "rsync", "openssh-client", "uhubctl",
        # cameras and cards: vfat/exfat tools, mount, lsusb, sqlite for reading the ledger
        "dosfstools", "mtools", "exfatprogs", "util-linux", "mount", "usbutils", "sqlite3",
    ],
    "image_mib": 3072,
    # networkd on the user-mode NIC: the guest is 10.0.2.15, the host's 127.0.0.1 is 10.0.2.2
    "files": {
        "/etc/hostname": "dashcam-vm\n",
        "/etc/hosts": "127.0.0.1 localhost\n127.0.1.1 dashcam-vm\n",
        "/etc/fstab": "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
        "/etc/systemd/network/50-user.network": "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
        # the modules a test needs are on the initrd-independent root; load the gadget stack on demand
        "/etc/initramfs-tools/modules": "virtio_pci\nvirtio_blk\nvirtio_net\nvirtio_console\next4\n",
        # journald keeps the journal on disk so a test can read it after a power cut
        "/etc/systemd/journald.conf.d/persistent.conf": "[Journal]\nStorage=persistent\n",
        # a test boots often: no waiting for network-online, no timesyncd chatter
        "/etc/systemd/system/systemd-networkd-wait-online.service.d/fast.conf":
            "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=5\n",
    },
    "enable": ["systemd-networkd.service"],
    "disable": ["apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"],
}


DEFAULT_SUITE = "bookworm"
# Debian 13 takes the same packages and files (networkd is still part of systemd there)
SUITES = {
    "bookworm": RECIPE,
    "trixie": dict(RECIPE, suite="trixie"),
}


def recipe(suite=DEFAULT_SUITE):
    try:
        return copy.deepcopy(SUITES[suite])
    except KeyError:
        raise SystemExit("image: no recipe for %r (known: %s)" % (suite, ", ".join(SUITES))) from None


def mirror():
    """The Debian mirror apt on this host already uses (the only network the build touches)."""
    found = []
    for d, names in (("/etc/apt", ["sources.list"]), ("/etc/apt/sources.list.d", None)):
        try:
            names = names or sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        for name in names:
            try:
                text = open(os.path.join(d, name)).read()
            except (FileNotFoundError, IsADirectoryError):
                continue
            found += re.findall(r"^URIs:\s*(\S+/debian)\s*$", text, re.M)
            found += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+\S+", text, re.M)
    return found[0] if found else "http://deb.debian.org/debian"


def recipe_key(suite=DEFAULT_SUITE):
    blob = json.dumps(recipe(suite), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir(suite=DEFAULT_SUITE):
    return os.path.join(CACHE_ROOT, "%s-%s" % (suite, recipe_key(suite)))


def say(text):
    print("image: " + text, file=sys.stderr, flush=True)


def _run(argv, log, **kw):
    """Run a build tool with its output in the build log, not on the terminal; on failure, show the
    log's last lines and say where the whole log is."""
    with open(log, "ab") as f:
        f.write(("+ " + " ".join(argv) + "\n").encode())
        f.flush()
        done = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, **kw)
    if done.returncode != 0:
        with open(log, "rb") as f:
            tail = f.read()[-4000:].decode(errors="replace")
        sys.stderr.write(tail)
        raise SystemExit("image: %s failed (exit %d); the whole log: %s" % (argv[0], done.returncode, log))


def build(dest, suite=DEFAULT_SUITE):
    """debootstrap into a tree, configure it, pack it into dest/rootfs.img (ext4) + kernel + initrd."""
    rec = recipe(suite)
    work = dest + ".work"
    shutil.rmtree(work, ignore_errors=True)
    tree = os.path.join(work, "root")
    os.makedirs(tree)
    log = dest + ".log"
    open(log, "w").close()
    t0 = time.monotonic()
    say("building the guest image once (Debian %s, a few minutes); the tools' output goes to %s"
        % (rec["suite"], log))
    say("debootstrap: fetching and installing %d packages and what they need from %s"
        % (len(rec["packages"]), mirror()))
    _run(["debootstrap", "--variant=" + rec["variant"], "--include=" + ",".join(rec["packages"]),
          rec["suite"], tree, mirror()], log)
    say("configuring the guest (%.0f s so far)" % (time.monotonic() - t0))
    for path, text in rec["files"].items():
        full = tree + path
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    for unit in rec["enable"]:
        _run(["chroot", tree, "systemctl", "enable", unit], log)
    for unit in rec["disable"]:
        subprocess.run(["chroot", tree, "systemctl", "disable", unit], check=False,
                       stderr=subprocess.DEVNULL)
    # root without a password: the image is only ever reached through the guest agent
    _run(["chroot", tree, "passwd", "-d", "root"], log)
    say("building the initramfs (%.0f s so far)" % (time.monotonic() - t0))
    _run(["chroot", tree, "update-initramfs", "-u", "-k", "all"], log)
    boot = os.path.join(tree, "boot")
    kernel = sorted(n for n in os.listdir(boot) if n.startswith("vmlinuz-"))[-1]
    initrd = "initrd.img-" + kernel[len("vmlinuz-"):]
    shutil.copy(os.path.join(boot, kernel), os.path.join(work, "vmlinuz"))
    shutil.copy(os.path.join(boot, initrd), os.path.join(work, "initrd.img"))
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for n in os.listdir(os.path.join(tree, d)):
            p = os.path.join(tree, d, n)
            if os.path.isfile(p) and n.endswith((".deb", "_Packages", "_InRelease")):
                os.unlink(p)
    img = os.path.join(work, "rootfs.img")
    say("packing the root file system into %d MiB of ext4 (%.0f s so far)" % (rec["image_mib"], time.monotonic() - t0))
    _run(["mkfs.ext4", "-q", "-F", "-L", "dashcam-root", "-d", tree, img, "%dM" % rec["image_mib"]], log)
    shutil.rmtree(tree)
    with open(os.path.join(work, "recipe.json"), "w") as f:
        json.dump({"recipe": rec, "kernel": kernel, "build_seconds": round(time.monotonic() - t0, 1)},
                  f, indent=1)
    os.rename(work, dest)
    say("built in %.0f s: %s" % (time.monotonic() - t0, dest))


def ensure_image(suite=DEFAULT_SUITE):
    """Path of the suite's cached image directory (rootfs.img, vmlinuz, initrd.img), building it if needed."""
    dest = cache_dir(suite)
    if os.path.exists(os.path.join(dest, "rootfs.img")):
        return dest
    os.makedirs(CACHE_ROOT, exist_ok=True)
    with open(os.path.join(CACHE_ROOT, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # parallel test runs build it once
        if not os.path.exists(os.path.join(dest, "rootfs.img")):
            build(dest, suite)
    return dest


if __name__ == "__main__":
    print(ensure_image(*sys.argv[1:2]))
