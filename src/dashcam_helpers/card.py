"""The camera's card: what filesystem it holds (udev, else blkid) and mount(8) / umount(8) of it,
read-only, for the ingest.

    with card.mounted(cfg, devnode, reader, dry_run=False) as mountpoint:
        ...  # read the clips below mountpoint (as ``reader``, the owner of staging)

The ingest's copy engine never mounts anything; this is the one place that does.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from .errors import DashcamError, TryLater
from .log import get as get_logger

log = get_logger("dashcam.ingest")

# nosymfollow (Linux >= 5.10): a symlink on the card leads nowhere, whoever reads it
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec,noatime,nosymfollow"
# the card's timestamps are the camera's wall clock without a zone: read them as UTC, so the
# mtime broken down in UTC is what the camera showed (footage.clip_date), whatever the Pi's time zone.
# vfat: tz=UTC (else the kernel's sys_tz applies), utf8 names; exFAT: time_offset=0 (minutes;
# a timestamp the camera marked with its own UTC offset is converted with that offset instead)
FS_OPTIONS = {"vfat": "tz=UTC,utf8", "exfat": "time_offset=0"}
FILESYSTEMS = tuple(FS_OPTIONS)


def _udev_or_blkid(devnode: str, prop: str, tag: str, timeout: float) -> str:
    """udev's ``prop`` of the block device; blkid's ``tag`` when udev has none ('' if neither)."""
    try:
        import pyudev

        value = pyudev.Devices.from_device_file(pyudev.Context(), devnode).properties.get(prop)
        if value:
            return str(value)
    except Exception as e:  # not a block device udev knows (a test, a chroot): ask blkid
        log.debug("udev has no %s for %s (%s); asking blkid", prop, devnode, e)
    from . import runner

    out = runner.run(["blkid", "-o", "value", "-s", tag, devnode], timeout=timeout, changes_state=False, check=False)
    return out.stdout.strip()


def fs_type(devnode: str, timeout: float) -> str:
    """The filesystem type udev found (ID_FS_TYPE), or blkid's answer when udev has none."""
    return _udev_or_blkid(devnode, "ID_FS_TYPE", "TYPE", timeout)


def fs_uuid(devnode: str, timeout: float) -> Optional[str]:
    """The card's filesystem UUID (ID_FS_UUID, else blkid), or None: a new one means a formatted card."""
    from . import runner

    try:
        return _udev_or_blkid(devnode, "ID_FS_UUID", "UUID", timeout)[:64] or None
    except runner.CommandError as e:
        log.warning("cannot read the filesystem UUID of %s: %s", devnode, e)
        return None


def mount_argv(devnode: str, fstype: str, mountpoint: str, reader: Optional[Tuple[int, int]] = None) -> List[str]:
    """mount(8) of the card read-only; with ``reader`` (uid, gid) its files are that user's alone
    (vfat and exfat have no owners of their own: the options give them one)."""
    owner = f"uid={reader[0]},gid={reader[1]},umask=0077" if reader else None
    options = ",".join(o for o in (MOUNT_OPTIONS, FS_OPTIONS.get(fstype), owner) if o)
    return ["mount", "-t", fstype, "-o", options, devnode, mountpoint]


class mounted:
    """``with mounted(cfg, devnode, reader, dry_run=...) as mountpoint``: the card mounted read-only
    on <camera.mount_base>/<device name> for ``reader`` (None: whoever runs), unmounted on the way out.

    Raises TryLater when the device is gone or does not mount, DashcamError for a filesystem that
    is not one a camera writes. A dry run mounts nothing and creates no mount point."""

    def __init__(self, cfg, devnode: str, reader: Optional[Tuple[int, int]] = None, *, dry_run: bool = False):
        self.cfg, self.devnode, self.reader, self.dry_run = cfg, devnode, reader, dry_run
        self.timeout = cfg.poll.mount_timeout_seconds
        self.mountpoint = os.path.join(cfg.camera.mount_base, os.path.basename(devnode))

    def __enter__(self) -> str:
        from . import runner

        devnode, mount_base = self.devnode, self.cfg.camera.mount_base
        if not os.path.exists(devnode):
            raise TryLater(f"{devnode} is not there (camera unplugged?)")
        fstype = fs_type(devnode, self.timeout)
        if fstype not in FILESYSTEMS:
            raise DashcamError(f"{devnode}: filesystem {fstype or 'unknown'!r}, expected one of {', '.join(FILESYSTEMS)}")
        if not self.dry_run:
            os.makedirs(self.mountpoint, mode=0o700, exist_ok=True)
            if self.reader:  # the reader passes through mount_base (it may not list it)
                os.chmod(mount_base, os.stat(mount_base).st_mode | 0o001)
        try:
            runner.run(mount_argv(devnode, fstype, self.mountpoint, self.reader), timeout=self.timeout,
                       dry_run=self.dry_run)
        except runner.CommandError as e:
            raise TryLater(f"cannot mount {devnode}: {e}") from e
        log.info("mounted %s (%s) read-only on %s", devnode, fstype, self.mountpoint)
        return self.mountpoint

    def __exit__(self, *exc) -> bool:
        from . import runner

        try:
            runner.run(["umount", self.mountpoint], timeout=self.timeout, dry_run=self.dry_run)
        except runner.CommandError as e:
            # under PrivateMounts= the mount goes with the unit's namespace anyway
            log.error("cannot unmount %s: %s", self.mountpoint, e)
        return False
