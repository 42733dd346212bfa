"""The ledger's file on disk: opened without following links, owned and moded in one place,
and, when SQLite finds it damaged, set aside and never replaced.

Root (the policy, the ingest) opens the ledger in a directory the dashcam user can write: a
ledger file that is a symlink there would point root's writes and chowns at any file, so
none is followed. Whoever creates the ledger gives it (and SQLite's -wal/-shm) to the owner
of its directory with mode 0640 (directory_owner, LEDGER_MODE): the package makes no ledger
file of its own, wherever paths.state_dir points.

A damaged ledger (SQLite says "not a database" or "malformed") is never replaced by a
fresh empty one: that would forget every clip and ingest, upload and duplicate them all
again. It is moved aside as ``ledger.sqlite3.damaged-<UTC time>`` and a marker file
``ledger.sqlite3.DAMAGED`` says where and why; while the marker exists, opening the
ledger raises LedgerDamaged, so ingest and upload refuse with that message (they are
the ones that would duplicate clips) and ``dashcamctl status`` shows it. A person
restores the ledger (README, Troubleshooting: `LEDGER DAMAGED`) and deletes the marker.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, Optional, Tuple

from .strictjson import dumps
from .errors import DashcamError
from .log import get as get_logger

log = get_logger("dashcam.ledger")


class LedgerError(DashcamError):
    """A ledger that cannot be opened or a transition it forbids: one line, no traceback."""


class LedgerDamaged(LedgerError):
    """The ledger is damaged (moved aside, see the marker): nothing may ingest or upload."""


# SQLite's primary result codes for a damaged file
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
MARKER_SUFFIX = ".DAMAGED"  # beside the ledger while it is damaged: {"moved_to", "wall", "reason"}
MARKER_MAX_BYTES = 64 * 1024


def is_damage(e: BaseException) -> bool:
    """SQLite says the file is no database or a damaged one (not: locked, read-only, I/O, full)."""
    if not isinstance(e, sqlite3.DatabaseError):
        return False
    code = getattr(e, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(e)
    return "not a database" in text or "malformed" in text


def marker_path(path: str) -> str:
    return path + MARKER_SUFFIX


def damage_marker(path: str) -> Optional[Dict[str, Any]]:
    """What the marker beside the ledger says ({"moved_to", "wall", "reason"}), or None: not damaged."""
    try:
        with open(marker_path(path), "rb") as f:
            data = f.read(MARKER_MAX_BYTES)
    except FileNotFoundError:
        return None
    except OSError as e:
        return {"reason": f"the marker {marker_path(path)} exists but cannot be read: {e.strerror}"}
    try:
        value = json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else {"reason": f"the marker {marker_path(path)} exists"}


def damage_message(path: str, marker: Dict[str, Any]) -> str:
    where = f"moved aside to {marker['moved_to']}" if marker.get("moved_to") else "not moved aside"
    when = ""
    if isinstance(marker.get("wall"), (int, float)):
        when = time.strftime(" on %Y-%m-%d %H:%M:%S UTC", time.gmtime(marker["wall"]))
    return (
        f"the ledger {path} is damaged ({marker.get('reason') or 'unknown cause'}), {where}{when}: "
        f"ingest and upload stay stopped so that no clip is copied or sent twice; restore the ledger "
        f"(README: A damaged ledger), then delete {marker_path(path)}"
    )


def set_aside(path: str, reason: str, clock=time.time) -> str:
    """Move a damaged ledger (and its -wal, -shm) aside, leave the marker, log it loudly. Returns
    the new name. Raises OSError when the directory does not let it (the marker is still tried)."""
    wall = clock()
    aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(wall))}"
    moved: Optional[str] = None
    error: Optional[OSError] = None
    try:
        for suffix in ("", "-wal", "-shm"):
            if os.path.lexists(path + suffix):
                os.rename(path + suffix, aside + suffix)
                if not suffix:
                    moved = aside
    except OSError as e:
        error = e
    marker = {"moved_to": moved, "wall": wall, "reason": reason[:300]}
    try:
        tmp = marker_path(path) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps(marker))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, marker_path(path))
    except OSError as e:
        error = error or e
    log.error("%s", damage_message(path, marker))
    if error is not None:
        raise error
    return aside


def refuse_link(name: str) -> None:
    """Root opens the ledger in a directory another user (dashcam) can write: a ledger file that is
    a symlink there would let that user point root's writes and chowns at any file. Refuse it."""
    try:
        st = os.lstat(name)
    except FileNotFoundError:
        return
    except OSError as e:
        raise LedgerError(f"cannot open the ledger: {name}: {e.strerror or e}") from e
    if stat.S_ISLNK(st.st_mode):
        raise LedgerError(f"refusing to open the ledger: {name} is a symbolic link (a ledger file never is; remove it)")
    if not stat.S_ISREG(st.st_mode):
        raise LedgerError(f"refusing to open the ledger: {name} is not a regular file")


def open_nofollow(name: str, flags: int = os.O_RDONLY, mode: int = 0o640) -> int:
    """An fd on the regular file ``name``, never through a symlink (LedgerError when it is one)."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LedgerError(f"refusing {name}: it is a symbolic link (root follows no links here; remove it)") from e
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LedgerError(f"refusing {name}: not a regular file")
    return fd


def give_fd_to(fd: int, owner: Optional[Tuple[int, int]]) -> None:
    if owner is None:
        return
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != owner:
        try:
            os.fchown(fd, *owner)
        except PermissionError:
            pass  # without CAP_CHOWN the file stays ours; the uploader's open says so


def lchown_to(name: str, owner: Optional[Tuple[int, int]]) -> None:
    if owner is None:
        return
    try:
        st = os.lstat(name)
        if stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) != owner:
            os.chown(name, *owner, follow_symlinks=False)
    except FileNotFoundError:
        pass
    except PermissionError:
        pass  # without CAP_CHOWN the file stays ours; the uploader's open says so


LEDGER_MODE = 0o640  # the dashcam group reads it (dashcamctl files, status); SQLite gives -wal/-shm the same


def open_or_create(path: str) -> int:
    """An fd on the ledger, read-write (read-only for a reader in its group); a ledger this creates
    gets LEDGER_MODE whatever the umask of the process that happens to be first."""
    try:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, LEDGER_MODE)
    except FileExistsError:
        pass
    except PermissionError:
        return open_nofollow(path)
    else:
        os.fchmod(fd, LEDGER_MODE)
        return fd
    try:
        return open_nofollow(path, os.O_RDWR)
    except PermissionError:
        return open_nofollow(path)  # a reader in the ledger's group (dashcamctl files)


def directory_owner(directory: str) -> Optional[Tuple[int, int]]:
    """Root (the policy, the ingest) opening a ledger in a directory that belongs to another user
    (/var/lib/dashcam, user dashcam) gives the database files to that user, so the unprivileged
    uploader can still write them. With LEDGER_MODE, the one place that decides the ledger files'
    owner and mode; the package makes no ledger file of its own."""
    from .staging import owner_of

    try:
        return owner_of(directory)
    except OSError:
        return None
