"""The footage ledger: one SQLite database (WAL) holding every clip the camera ever offered.

A row is keyed by (camera, path on the card, size, mtime): a loop-recording camera that
reuses a name writes a new size or mtime, hence a new row. States only move forward:

    seen -> staged -> uploaded -> verified -> pruned        (failed: a read error, retried later)

Every transition is a committed transaction made *after* the bytes it describes are
durable, so a crash anywhere restarts from the ledger with nothing lost or done twice.
The same database keeps the small state the policy needs between ticks (battery
readings, last transitions): nothing is kept in ad-hoc text files.

A damaged ledger (SQLite says "not a database" or "malformed") is never replaced by a
fresh empty one: that would forget every clip and ingest, upload and duplicate them all
again. It is moved aside as ``ledger.sqlite3.damaged-<UTC time>`` and a marker file
``ledger.sqlite3.DAMAGED`` says where and why; while the marker exists, opening the
ledger raises LedgerDamaged, so ingest and upload refuse with that message (they are
the ones that would duplicate clips) and ``dashcamctl status`` shows it. A person
restores the ledger (README, "A damaged ledger") and deletes the marker.

The policy tick must power the Pi off before the battery is empty whatever the ledger
does, so it opens the ledger through TickLedger: when the database cannot be read or
written (damaged, locked, a read-only directory), the tick's readings and state go to a
small fallback file for this boot (FALLBACK_NAME) and the tick goes on.
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
    from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .strictjson import dumps  # strict JSON: a NaN from a tool is stored as null, never as NaN
from .errors import DashcamError
from .log import get as get_logger
from .record import Record

log = get_logger("dashcam.ledger")

class _Transaction:
    # a class, not contextlib.contextmanager: importing contextlib costs every policy tick
    __slots__ = ("db", "joined")

    def __init__(self, db: sqlite3.Connection):
        self.db, self.joined = db, False

    def __enter__(self) -> sqlite3.Connection:
        self.joined = self.db.in_transaction
        if not self.joined:
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.joined:
            self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        return False


# ledger state the upload writes ({"until": the last end, "names": {name: end}}) and status
# reads: names a cut session on the server may still write, and until when (upload.py, "A cut send")
UPLOAD_HOLD_KEY = "upload_hold"
STATES = ("seen", "staged", "uploaded", "verified", "pruned", "failed")

# which state may follow which: forward only; a failed read may be retried
TRANSITIONS = {
    "seen": {"staged", "failed"},
    "failed": {"staged", "failed"},
    "staged": {"uploaded", "verified"},
    "uploaded": {"verified"},
    "verified": {"pruned"},
    "pruned": set(),
}

MIGRATIONS: Sequence[str] = (
    # 1: the first schema
    """
    CREATE TABLE footage (
        id          INTEGER PRIMARY KEY,
        camera      TEXT    NOT NULL,
        source_path TEXT    NOT NULL,          -- relative to the card's root
        size        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        event       INTEGER NOT NULL DEFAULT 0, -- event/locked clip
        sha256      TEXT,
        staged_path TEXT,                       -- relative to <local_staging>/ready
        remote_path TEXT,                       -- relative to upload.dest_path
        state       TEXT    NOT NULL CHECK (state IN ('seen','staged','uploaded','verified','pruned','failed')),
        reason      TEXT,                       -- why the last attempt failed
        retries     INTEGER NOT NULL DEFAULT 0,
        seen_at     REAL,
        staged_at   REAL,
        uploaded_at REAL,
        verified_at REAL,
        pruned_at   REAL,
        updated_at  REAL    NOT NULL,
        UNIQUE (camera, source_path, size, mtime_ns)
    );
    CREATE INDEX footage_state ON footage (state);
    CREATE TABLE readings (
        id         INTEGER PRIMARY KEY,
        wall       REAL    NOT NULL,  -- time.time(), for people
        boot_id    TEXT,              -- monotonic times compare only within one boot
        monotonic  REAL    NOT NULL,  -- time.monotonic() (CLOCK_MONOTONIC), for durations
        millivolts INTEGER,           -- NULL: unknown reading
        percent    INTEGER,
        external   INTEGER,           -- 1 on external power, 0 on battery, NULL unknown
        source     TEXT    NOT NULL,
        reason     TEXT               -- why a reading is unknown
    );
    CREATE TABLE state (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,      -- JSON
        updated_at REAL NOT NULL
    );
    """,
    # 2: when the camera was recording, footage lost before it was copied, damaged clips (coverage.py)
    """
    CREATE TABLE recording (
        id         INTEGER PRIMARY KEY,
        boot_id    TEXT    NOT NULL,
        start_mono REAL    NOT NULL,  -- the first tick that saw the camera in record (or put it there)
        end_mono   REAL    NOT NULL,  -- the last tick that saw it in record (or took it away)
        wall_start REAL    NOT NULL,  -- the wall clock at those ticks, for people (may be 1970: no RTC)
        wall_end   REAL    NOT NULL,
        synced     INTEGER NOT NULL,  -- the wall clock was set (NTP) at the last update
        external   INTEGER            -- on external power at the last update (NULL: unknown)
    );
    CREATE TABLE loss (
        id           INTEGER PRIMARY KEY,
        camera       TEXT NOT NULL,
        cause        TEXT NOT NULL,   -- overwritten | missing | formatted
        start_camera REAL NOT NULL,   -- the camera's clock, seconds since 1970 read as UTC
        end_camera   REAL NOT NULL,
        seconds      REAL NOT NULL,
        found_at     REAL NOT NULL,   -- the Pi's wall clock at the ingest that found it
        message      TEXT NOT NULL
    );
    CREATE TABLE damaged (
        id          INTEGER PRIMARY KEY,
        camera      TEXT    NOT NULL,
        source_path TEXT    NOT NULL, -- the footage key: the clip is still copied and uploaded
        size        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        reason      TEXT    NOT NULL,
        found_at    REAL    NOT NULL,
        UNIQUE (camera, source_path, size, mtime_ns)
    );
    """,
)


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


def _refuse_link(name: str) -> None:
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


def _give_fd_to(fd: int, owner: Optional[Tuple[int, int]]) -> None:
    if owner is None:
        return
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != owner:
        try:
            os.fchown(fd, *owner)
        except PermissionError:
            pass  # without CAP_CHOWN the file stays ours; the uploader's open says so


def _lchown_to(name: str, owner: Optional[Tuple[int, int]]) -> None:
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


def chown_nofollow(name: str, owner: Tuple[int, int]) -> None:
    """chown ``name`` through an O_NOFOLLOW fd: a symlink is refused (LedgerError), never followed."""
    fd = open_nofollow(name)
    try:
        _give_fd_to(fd, owner)
    finally:
        os.close(fd)


def _directory_owner(directory: str) -> Optional[Tuple[int, int]]:
    """Root (the policy, the ingest) opening a ledger in a directory that belongs to another user
    (/var/lib/dashcam, user dashcam) gives the database files to that user, so the unprivileged
    uploader can still write them."""
    from .staging import owner_of

    try:
        return owner_of(directory)
    except OSError:
        return None


class Clip(Record):
    id: int
    camera: str
    source_path: str
    size: int
    mtime_ns: int
    event: bool
    sha256: Optional[str]
    staged_path: Optional[str]
    remote_path: Optional[str]
    state: str
    reason: Optional[str]
    retries: int
    seen_at: Optional[float]
    staged_at: Optional[float]
    uploaded_at: Optional[float]
    verified_at: Optional[float]
    pruned_at: Optional[float]
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Clip":
        d = dict(row)
        d["event"] = bool(d["event"])
        return cls(**d)


class Ledger:
    """A connection to the ledger. Use as a context manager; one per process is enough."""

    def __init__(self, path: str, *, clock=time.time, timeout: float = 30):
        """``timeout``: how long a statement waits for another writer's lock (seconds)."""
        self.path = path
        self.clock = clock
        marker = damage_marker(path)
        if marker is not None:
            raise LedgerDamaged(damage_message(path, marker))
        directory = os.path.dirname(path) or "."
        # fds held on the ledger's files while the connection lives (closing an fd of a file drops
        # every POSIX lock this process holds on it, SQLite's included)
        self._fds: List[int] = []
        try:
            os.makedirs(directory, exist_ok=True)
            for name in (path, path + "-wal", path + "-shm"):
                _refuse_link(name)
            owner = _directory_owner(directory)
            try:
                fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
            except PermissionError:
                fd = open_nofollow(path)  # a reader in the ledger's group (dashcamctl files)
            self._fds.append(fd)
            # the database first: SQLite running as root gives the -wal/-shm files it creates the
            # database's owner
            _give_fd_to(fd, owner)
            self.db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            self._close_fds()
            raise LedgerError(f"cannot open the ledger {path}: {e}") from e
        except LedgerError:
            self._close_fds()
            raise
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self._same_file(path, fd)
            # FULL: a committed transition survives a power cut (NORMAL may lose the last ones in WAL mode)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            # the -wal and -shm exist by now: SQLite gives them the database's owner only when it
            # creates them after the database already belongs to that user
            # Changed by name without following a link (lchown), not through an fd of ours: closing
            # any fd of the -shm drops every POSIX lock this process holds on it, SQLite's too, and
            # a connection that sees no other then truncates the -shm that the others have mapped
            # (SIGBUS in them). A link planted here is refused; one swapped in after the check is
            # changed itself, never its target.
            for name in (path + "-wal", path + "-shm"):
                _refuse_link(name)
                _lchown_to(name, owner)
        except sqlite3.Error as e:
            self.close()
            if not is_damage(e):
                raise LedgerError(f"cannot open the ledger {path}: {e}") from e
            try:
                set_aside(path, str(e), clock)
            except OSError as oe:
                log.error("the damaged ledger %s could not be moved aside: %s", path, oe)
            raise LedgerDamaged(damage_message(path, damage_marker(path) or {"reason": str(e)})) from e
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _same_file(path: str, fd: int) -> None:
        """SQLite opened ``path`` by name: it must still be the file our O_NOFOLLOW fd holds."""
        _refuse_link(path)
        held, now = os.fstat(fd), os.lstat(path)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            raise LedgerError(f"refusing the ledger {path}: it was replaced while being opened")

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        self._close_fds()

    def transaction(self) -> _Transaction:
        """``with ledger.transaction() as db:`` -- one BEGIN IMMEDIATE ... COMMIT, rolled back
        on any exception; inside another transaction() it joins that one and commits with it."""
        return _Transaction(self.db)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise LedgerError(
                f"{self.path} has schema version {version}, newer than this dashcam-manager knows "
                f"({len(MIGRATIONS)}); was the package downgraded?"
            )
        for number in range(version, len(MIGRATIONS)):
            with self.transaction() as db:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    # --- footage ---------------------------------------------------------------------------

    def known_keys(self, camera: str) -> Set[Tuple[str, int, int]]:
        """(source_path, size, mtime_ns) of every clip of ``camera`` that needs no copy.

        One query for a whole scan, so a rescan of a card with thousands of known clips
        costs one index walk, not a query per file. Failed clips are not in it: they are retried.
        """
        rows = self.db.execute(
            "SELECT source_path, size, mtime_ns FROM footage WHERE camera = ? AND state != 'failed'", (camera,)
        )
        return {(r[0], r[1], r[2]) for r in rows}

    @staticmethod
    def _row(db: sqlite3.Connection, camera: str, source_path: str, size: int, mtime_ns: int):
        """The (id, state) of the clip with this key, or None."""
        return db.execute(
            "SELECT id, state FROM footage WHERE camera = ? AND source_path = ? AND size = ? AND mtime_ns = ?",
            (camera, source_path, size, mtime_ns),
        ).fetchone()

    def find(self, camera: str, source_path: str, size: int, mtime_ns: int) -> Optional[Clip]:
        row = self.db.execute(
            "SELECT * FROM footage WHERE camera = ? AND source_path = ? AND size = ? AND mtime_ns = ?",
            (camera, source_path, size, mtime_ns),
        ).fetchone()
        return Clip.from_row(row) if row else None

    def get(self, clip_id: int) -> Clip:
        row = self.db.execute("SELECT * FROM footage WHERE id = ?", (clip_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no clip with id {clip_id}")
        return Clip.from_row(row)

    def record_staged(
        self,
        camera: str,
        source_path: str,
        size: int,
        mtime_ns: int,
        *,
        event: bool,
        sha256: str,
        staged_path: str,
    ) -> int:
        """Record a clip whose bytes are already durable in staging. Returns its id."""
        now = self.clock()
        with self.transaction() as db:
            existing = self._row(db, camera, source_path, size, mtime_ns)
            if existing is not None:
                self._check_transition(existing["state"], "staged", existing["id"])
                db.execute(
                    "UPDATE footage SET state = 'staged', sha256 = ?, staged_path = ?, event = ?, reason = NULL,"
                    " staged_at = ?, updated_at = ? WHERE id = ?",
                    (sha256, staged_path, int(event), now, now, existing["id"]),
                )
                return int(existing["id"])
            cur = db.execute(
                "INSERT INTO footage (camera, source_path, size, mtime_ns, event, sha256, staged_path, state,"
                " seen_at, staged_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'staged', ?, ?, ?)",
                (camera, source_path, size, mtime_ns, int(event), sha256, staged_path, now, now, now),
            )
            return int(cur.lastrowid)

    def record_failed(self, camera: str, source_path: str, size: int, mtime_ns: int, *, event: bool, reason: str) -> int:
        """A clip could not be read from the card: keep the reason, count the attempt."""
        now = self.clock()
        with self.transaction() as db:
            existing = self._row(db, camera, source_path, size, mtime_ns)
            if existing is not None:
                self._check_transition(existing["state"], "failed", existing["id"])
                db.execute(
                    "UPDATE footage SET state = 'failed', reason = ?, retries = retries + 1, updated_at = ? WHERE id = ?",
                    (reason, now, existing["id"]),
                )
                return int(existing["id"])
            cur = db.execute(
                "INSERT INTO footage (camera, source_path, size, mtime_ns, event, state, reason, retries,"
                " seen_at, updated_at) VALUES (?, ?, ?, ?, ?, 'failed', ?, 1, ?, ?)",
                (camera, source_path, size, mtime_ns, int(event), reason, now, now),
            )
            return int(cur.lastrowid)

    def advance(self, clip_id: int, state: str, **fields: Any) -> None:
        """Move a clip forward to ``state`` (uploaded, verified, pruned), setting extra columns."""
        allowed = {"remote_path", "reason", "staged_path"}
        bad = set(fields) - allowed
        if bad:
            raise LedgerError(f"advance() cannot set {', '.join(sorted(bad))}")
        now = self.clock()
        with self.transaction() as db:
            row = db.execute("SELECT state FROM footage WHERE id = ?", (clip_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no clip with id {clip_id}")
            self._check_transition(row["state"], state, clip_id)
            sets = ["state = ?", "updated_at = ?"]
            values: List[Any] = [state, now]
            if state in ("uploaded", "verified", "pruned"):
                sets.append(f"{state}_at = ?")
                values.append(now)
            for key, value in fields.items():
                sets.append(f"{key} = ?")
                values.append(value)
            values.append(clip_id)
            db.execute(f"UPDATE footage SET {', '.join(sets)} WHERE id = ?", values)

    def note_problem(self, clip_id: int, reason: str) -> None:
        """Record why an attempt on a clip failed (e.g. an upload) without changing its state."""
        with self.transaction() as db:
            db.execute(
                "UPDATE footage SET reason = ?, retries = retries + 1, updated_at = ? WHERE id = ?",
                (reason, self.clock(), clip_id),
            )

    @staticmethod
    def _check_transition(old: str, new: str, clip_id: int) -> None:
        if new not in TRANSITIONS[old]:
            raise LedgerError(f"clip {clip_id}: a clip cannot go from {old} to {new}")

    def files(self, state: Optional[str] = None) -> List[Clip]:
        if state is not None and state not in STATES:
            raise LedgerError(f"unknown state {state!r} (one of {', '.join(STATES)})")
        if state is None:
            rows = self.db.execute("SELECT * FROM footage ORDER BY id")
        else:
            rows = self.db.execute("SELECT * FROM footage WHERE state = ? ORDER BY id", (state,))
        return [Clip.from_row(r) for r in rows]

    def backlog(self) -> Tuple[int, int]:
        """(files, bytes) staged but not yet verified on the server."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM footage WHERE state IN ('staged', 'uploaded')"
        ).fetchone()
        return int(row[0]), int(row[1])

    def backlog_detail(self) -> Tuple[int, int, int, Optional[float]]:
        """(files, bytes, bytes of event clips, earliest staged_at) staged but not yet verified."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(CASE WHEN event THEN size ELSE 0 END), 0),"
            " MIN(staged_at) FROM footage WHERE state IN ('staged', 'uploaded')"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), row[3]

    def counts(self) -> Dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) FROM footage GROUP BY state")
        out = {s: 0 for s in STATES}
        out.update({r[0]: r[1] for r in rows})
        return out

    # --- small state between runs ----------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put_state(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, dumps(value), self.clock()),
            )

    def upload_holds(self, now: float, longest: float = float("inf")) -> Dict[str, float]:
        """{name: end} of the upload's holds still on at ``now``; no end later than ``longest``."""
        hold = self.get_state(UPLOAD_HOLD_KEY) or {}
        ends = {name: min(float(end), longest) for name, end in (hold.get("names") or {}).items()}
        return {name: end for name, end in ends.items() if end > now}

    def delete_state(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM state WHERE key = ?", (key,))

    # --- battery readings (written by the policy tick, one per tick) ----------------------------

    def add_reading(
        self,
        *,
        wall: float,
        boot_id: Optional[str],
        monotonic: float,
        millivolts: Optional[int],
        percent: Optional[int],
        external: Optional[bool],
        source: str,
        reason: Optional[str] = None,
        keep: Optional[int] = None,
    ) -> None:
        """Record one battery reading; with ``keep``, drop all but the newest ``keep`` readings.

        Pruning goes by row id, not by time: a wall clock that jumps (no RTC) prunes nothing wrongly.
        """
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO readings (wall, boot_id, monotonic, millivolts, percent, external, source, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (wall, boot_id, monotonic, millivolts, percent, None if external is None else int(external), source, reason),
            )
            if keep is not None:
                db.execute("DELETE FROM readings WHERE id <= ?", (cur.lastrowid - keep,))

    def recent_readings(self, limit: int) -> List[sqlite3.Row]:
        """The newest ``limit`` readings, oldest first."""
        rows = self.db.execute("SELECT * FROM readings ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        rows.reverse()
        return rows

    # --- recording windows, losses and damaged clips (coverage.py) -------------------------------

    def note_recording(self, *, boot_id: str, since: Optional[float], now: float, wall: float, synced: bool,
                       external: Optional[bool], keep: int) -> None:
        """The camera records at ``now``: stretch the newest window when it ended at ``since`` (the
        previous tick, same boot), else start one. Keeps the newest ``keep`` windows."""
        ext = None if external is None else int(external)
        with self.transaction() as db:
            cur = None
            if since is not None:
                cur = db.execute(
                    "UPDATE recording SET end_mono = ?, wall_end = ?, synced = ?, external = ?"
                    " WHERE id = (SELECT MAX(id) FROM recording) AND boot_id = ? AND end_mono = ?",
                    (now, wall, int(synced), ext, boot_id, since),
                )
            if cur is None or cur.rowcount == 0:
                cur = db.execute(
                    "INSERT INTO recording (boot_id, start_mono, end_mono, wall_start, wall_end, synced, external)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (boot_id, now, now, wall, wall, int(synced), ext),
                )
                db.execute("DELETE FROM recording WHERE id <= ?", (cur.lastrowid - keep,))

    def recording_windows(self, after_id: int = 0) -> List[Any]:
        """The recording windows after row ``after_id``, oldest first, as coverage.Window."""
        from .coverage import Window

        rows = self.db.execute(
            "SELECT id, boot_id, start_mono, end_mono, wall_end, synced FROM recording WHERE id > ? ORDER BY id",
            (after_id,),
        )
        return [Window(r[0], r[1], float(r[2]), float(r[3]), float(r[4]), bool(r[5])) for r in rows]

    def record_loss(self, camera: str, cause: str, start: float, end: float, message: str, *, keep: int) -> None:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO loss (camera, cause, start_camera, end_camera, seconds, found_at, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (camera, cause, start, end, end - start, self.clock(), message),
            )
            db.execute("DELETE FROM loss WHERE id <= ?", (cur.lastrowid - keep,))

    def losses_since(self, wall: float, unknown: bool = False) -> List[sqlite3.Row]:
        """Losses found at or after ``wall``, oldest first; with ``unknown``, those found while the
        clock read before 2020 (time unknown) too."""
        return self.db.execute(
            "SELECT * FROM loss WHERE found_at >= ? OR (? AND found_at < 1577836800) ORDER BY id", (wall, unknown)
        ).fetchall()

    def note_damaged(self, camera: str, source_path: str, size: int, mtime_ns: int, reason: str, *, keep: int) -> bool:
        """Flag a clip damaged (it is still copied and uploaded). False when it was flagged before."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO damaged (camera, source_path, size, mtime_ns, reason, found_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (camera, source_path, size, mtime_ns, reason, self.clock()),
            )
            if cur.rowcount == 0:
                return False
            db.execute("DELETE FROM damaged WHERE id <= ?", (cur.lastrowid - keep,))
            return True

    def damaged_since(self, wall: float, unknown: bool = False) -> List[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM damaged WHERE found_at >= ? OR (? AND found_at < 1577836800) ORDER BY id", (wall, unknown)
        ).fetchall()


# --- the policy tick's ledger: keeps working when the database does not -------------------------

FALLBACK_NAME = "policy-fallback.json"
FALLBACK_READINGS = 50  # more than the tick's history (policy.HISTORY)
FALLBACK_MAX_BYTES = 1024 * 1024


class TickLedger:
    """The part of the ledger a policy tick uses (get_state, recent_readings, backlog, transaction,
    add_reading, put_state), that never raises.

    While the database works it is used as it is. When it cannot be opened, read or written
    (damaged: then moved aside, see set_aside; locked longer than ``timeout``; a read-only
    directory; a full disk), ``problem`` says why, the journal says so at ERROR on every tick,
    and what the tick writes goes to a small JSON file of this boot (its readings and state, so
    the debounce and the unknown-reading window keep counting) in the first of ``fallback_dirs``
    that takes it. A state key the fallback holds wins over the database's (it is newer); once
    the database takes a tick's writes again, the fallback forgets those keys.
    """

    def __init__(self, path: str, fallback_dirs: Sequence[str], boot_id: str, *, timeout: float = 5):
        self.path = path
        self.boot_id = boot_id
        self.fallback_dirs = [d for d in fallback_dirs if d]
        self.problem: Optional[str] = None
        self.ledger: Optional[Ledger] = None
        self._tx = False
        self._readings: List[Dict[str, Any]] = []
        self._state: Dict[str, Any] = {}
        self.fallback = self._load_fallback()
        try:
            self.ledger = Ledger(path, timeout=timeout)
        except Exception as e:  # noqa: B902 - whatever it is, the tick goes on without it
            self._broken(e)

    def __enter__(self) -> "TickLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.ledger is not None:
            try:
                self.ledger.close()
            except sqlite3.Error:
                pass

    def _broken(self, e: BaseException) -> None:
        if self.ledger is not None:
            try:
                if self.ledger.db.in_transaction:
                    self.ledger.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if is_damage(e) and damage_marker(self.path) is None:
                self.close()
                try:
                    set_aside(self.path, str(e))
                except OSError as oe:
                    log.error("the damaged ledger %s could not be moved aside: %s", self.path, oe)
            self.close()
            self.ledger = None
        if self.problem is None:
            self.problem = str(e) if isinstance(e, LedgerError) else f"the ledger {self.path}: {type(e).__name__}: {e}"
            log.error("policy: ledger unusable, this tick keeps its readings and state in a fallback file "
                      "(the shutdown still works): %s", self.problem)

    def _use(self, fn, default):
        if self.ledger is None:
            return default
        try:
            return fn(self.ledger)
        except Exception as e:  # noqa: B902
            self._broken(e)
            return default

    # --- reads ---------------------------------------------------------------------------------

    def get_state(self, key: str, default: Any = None) -> Any:
        if key in self.fallback["state"]:
            return self.fallback["state"][key]

        def read(ledger: Ledger) -> Any:
            try:
                return ledger.get_state(key, default)
            except ValueError as e:  # one value that is not JSON: that state is lost, not the ledger
                log.error("policy: the ledger's state %r is not JSON (%s): read as none, written anew", key, e)
                return default

        return self._use(read, default)

    def recent_readings(self, limit: int) -> List[Any]:
        """The database's newest readings and the fallback's (this boot), oldest first: other boots
        in the database's order, then this boot's by monotonic time."""
        rows = [dict(r) for r in self._use(lambda ledger: ledger.recent_readings(limit), [])]
        rows += self.fallback["readings"]
        def order(row: Dict[str, Any]) -> Tuple[bool, float]:
            m = row.get("monotonic")
            this_boot = row.get("boot_id") == self.boot_id
            usable = isinstance(m, (int, float)) and not isinstance(m, bool) and m - m == 0
            return this_boot, float(m) if this_boot and usable else 0.0

        rows.sort(key=order)
        return rows[-limit:] if limit > 0 else []

    def backlog(self) -> Tuple[int, int]:
        return self._use(lambda ledger: ledger.backlog(), (0, 0))

    def backlog_detail(self) -> Tuple[int, int, int, Optional[float]]:
        return self._use(lambda ledger: ledger.backlog_detail(), (0, 0, 0, None))

    # --- writes --------------------------------------------------------------------------------

    def transaction(self) -> "_TickTransaction":
        return _TickTransaction(self)

    def add_reading(self, **reading: Any) -> None:
        self._readings.append({k: v for k, v in reading.items() if k != "keep"})
        self._use(lambda ledger: ledger.add_reading(**reading), None)
        if not self._tx:
            self._settle()

    def note_recording(self, **window: Any) -> None:
        """The camera's recording window (Ledger.note_recording); lost with the ledger, never the tick."""
        self._use(lambda ledger: ledger.note_recording(**window), None)

    def put_state(self, key: str, value: Any) -> None:
        self._state[key] = value
        self._use(lambda ledger: ledger.put_state(key, value), None)
        if not self._tx:
            self._settle()

    def _settle(self) -> None:
        """After the writes of a transaction (or one write outside any): to the fallback when the
        database did not take them, else the fallback forgets the state keys it held."""
        readings, state = self._readings, self._state
        self._readings, self._state = [], {}
        if self.ledger is None:
            fb = self.fallback
            fb["readings"] = (fb["readings"] + [{**r, "external": None if r.get("external") is None else int(r["external"])}
                                                for r in readings])[-FALLBACK_READINGS:]
            fb["state"].update(state)
            self._save_fallback()
        elif any(k in self.fallback["state"] for k in state):
            for k in state:
                self.fallback["state"].pop(k, None)
            self._save_fallback()

    # --- the fallback file ---------------------------------------------------------------------

    def _load_fallback(self) -> Dict[str, Any]:
        empty: Dict[str, Any] = {"boot_id": self.boot_id, "readings": [], "state": {}}
        for d in self.fallback_dirs:
            name = os.path.join(d, FALLBACK_NAME)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                data = os.read(fd, FALLBACK_MAX_BYTES + 1) if _is_regular(fd) else b""
            except OSError:
                data = b""
            finally:
                os.close(fd)
            try:
                value = json.loads(data.decode("utf-8", "replace")) if len(data) <= FALLBACK_MAX_BYTES else None
            except (ValueError, RecursionError):
                value = None
            if (
                isinstance(value, dict)
                and value.get("boot_id") == self.boot_id
                and isinstance(value.get("readings"), list)
                and isinstance(value.get("state"), dict)
                and all(isinstance(r, dict) for r in value["readings"])
            ):
                log.warning("policy: using the readings and state of %s (the ledger failed earlier this boot)", name)
                return value
        return empty

    def _save_fallback(self) -> None:
        text = dumps(self.fallback)
        for d in self.fallback_dirs:
            name = os.path.join(d, FALLBACK_NAME)
            tmp = f"{name}.{os.getpid()}.tmp"
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    os.write(fd, text.encode("utf-8"))
                finally:
                    os.close(fd)
                os.rename(tmp, name)
            except OSError as e:
                log.debug("fallback %s: %s", name, e)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                continue
            for other in self.fallback_dirs[self.fallback_dirs.index(d) + 1:]:
                try:  # one fallback file: a later one would be read first next time
                    os.unlink(os.path.join(other, FALLBACK_NAME))
                except OSError:
                    pass
            return
        log.error("policy: no fallback file could be written (%s): this tick's reading is kept nowhere",
                  ", ".join(self.fallback_dirs) or "no directory")


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


class _TickTransaction:
    __slots__ = ("tl",)

    def __init__(self, tl: TickLedger):
        self.tl = tl

    def __enter__(self) -> None:
        self.tl._tx = True
        self.tl._use(lambda ledger: ledger.db.execute("BEGIN IMMEDIATE"), None)

    def __exit__(self, exc_type, exc, tb) -> bool:
        tl = self.tl
        tl._tx = False
        if exc_type is not None:
            tl._use(lambda ledger: ledger.db.execute("ROLLBACK"), None)
            tl._readings, tl._state = [], {}
            return False
        tl._use(lambda ledger: ledger.db.execute("COMMIT"), None)
        tl._settle()
        return False
