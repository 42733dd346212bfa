"""The footage ledger: one SQLite database (WAL) holding every clip the camera ever offered.

A row is keyed by (camera, path on the card, size, mtime): a loop-recording camera that
reuses a name writes a new size or mtime, hence a new row. States only move forward:

    staged -> uploaded -> verified -> pruned        (failed: a read error, retried later)

Every transition is a committed transaction made *after* the bytes it describes are
durable, so a crash anywhere restarts from the ledger with nothing lost or done twice.
The same database keeps the small state the policy needs between ticks (battery
readings, last transitions): nothing is kept in ad-hoc text files.

This module is the schema (MIGRATIONS) and every SQL statement the program runs. The file
on disk (no links followed, its owner and mode, a damaged one set aside) is ledger_file.py;
the policy tick's ledger that survives a broken database is tick_ledger.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .strictjson import dumps  # strict JSON: a NaN from a tool is stored as null, never as NaN
from .ledger_file import (
    LedgerDamaged,
    LedgerError,
    damage_marker,
    damage_message,
    directory_owner,
    give_fd_to,
    is_damage,
    lchown_to,
    open_or_create,
    refuse_link,
    set_aside,
)
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
STATES = ("staged", "uploaded", "verified", "pruned", "failed")

# which state may follow which: forward only; a failed read may be retried. (The schema's CHECK
# still allows 'seen', a state no release ever wrote: the first migration stays as it shipped.)
TRANSITIONS = {
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
                refuse_link(name)
            owner = directory_owner(directory)
            fd = open_or_create(path)
            self._fds.append(fd)
            # the database first: SQLite running as root gives the -wal/-shm files it creates the
            # database's owner
            give_fd_to(fd, owner)
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
                refuse_link(name)
                lchown_to(name, owner)
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
        refuse_link(path)
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

    def staged_path_taken(self, staged_path: str) -> bool:
        """Some clip has (or had, before it was pruned) this name in ready/: the server may hold it."""
        row = self.db.execute("SELECT 1 FROM footage WHERE staged_path = ? LIMIT 1", (staged_path,)).fetchone()
        return row is not None

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

    def refused_count(self) -> int:
        """Clips the ingest refused to stage (a name or a time staging cannot hold): failed rows
        whose reason starts with ``refused:``."""
        return int(self.db.execute("SELECT COUNT(*) FROM footage WHERE state = 'failed' AND reason LIKE 'refused:%'")
                   .fetchone()[0])

    def staged_event_ids(self) -> Set[int]:
        """Ids of the event/locked clips staged and not yet sent."""
        return {row[0] for row in self.db.execute("SELECT id FROM footage WHERE state = 'staged' AND event != 0")}

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
