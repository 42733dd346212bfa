"""Staging: the footage area on the Pi between the camera and the server.

    <local_staging>/incoming/<n>.part                  a clip being copied: never a whole file
    <local_staging>/ready/<camera>/<YYYY-MM-DD>/<folder on the card>/<file>
                                                       copied, hashed, in the ledger; waits for
                                                       the server to verify it (layout.py)

Ingest fills it (keeping a free-space reserve), upload empties it, the policy and status
measure it. The durable-write helper lives here because both writers need it.
"""

from __future__ import annotations

import os


def reserve_bytes(cfg, total: int) -> int:
    """Free space to keep on staging: the larger of ingest.reserve_bytes and ingest.reserve_percent."""
    return max(cfg.ingest.reserve_bytes, int(total * cfg.ingest.reserve_percent / 100))


def free_space(path: str):
    """(free bytes available to us, filesystem size) of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def space(cfg):
    """(free bytes on the staging filesystem, the reserve ingest keeps free there).

    Staging may not exist yet (before the first ingest): its nearest existing parent is on
    the filesystem it will be on."""
    path = cfg.paths.local_staging
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    free, total = free_space(path)
    return free, reserve_bytes(cfg, total)


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable (a file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Owner = "Optional[Tuple[int, int]]"  # (uid, gid), or None: leave it as created


def owner_of(path: str) -> Owner:
    """(uid, gid) new files below ``path`` should get: its own owner, when we run as root and differ.

    Ingest runs as root (to mount), staging and the ledger belong to the dashcam user who uploads
    and prunes: what root creates there is handed to that user, or the uploader could not delete it.
    """
    if os.geteuid() != 0:
        return None
    st = os.stat(path)
    if (st.st_uid, st.st_gid) == (0, 0):
        return None
    return st.st_uid, st.st_gid
