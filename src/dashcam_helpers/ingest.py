"""Ingest: copy every new clip from the camera's card to staging, once, verified, never partial.

    scan (globs, known keys skipped unread) -> order (event/locked first, then newest: layout.order)
      -> per clip: free-space reserve -> read + SHA-256 + write incoming/<n>.part, with the clip's mtime
         -> [finisher thread] fsync -> rename into ready/<camera>/<camera's date>/<folder on the card>/
         -> fsync dir
         -> ledger.record_staged

The reading thread (the caller's) and a finisher thread overlap: while the finisher waits for
the durable write of one clip, the next is already being read. Only one clip is in each stage,
so memory stays at a few MiB whatever the clip size. A clip in ready/ therefore always matches
the hash its ledger row records; a crash leaves at most a .part (deleted by the next run) or a
renamed file not yet in the ledger (recognised by its hash on the next run, never duplicated).

``ingest_source`` works on any directory (an SD card in a reader, a test tree);
``ingest_device`` mounts the camera read-only around it and puts the camera back afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import os
import queue
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from . import coverage, layout, notify
from .config import Config
from .errors import DashcamError, TryLater
from .ledger import Ledger, LedgerError, chown_nofollow
from .staging import Owner, free_space, fsync_dir, owner_of, reserve_bytes
from .log import get as get_logger

log = get_logger("dashcam.ingest")

BLOCK = 1 << 20  # bytes per read: large enough for hashlib to release the GIL, small enough for RSS
WRITEBACK_CHUNK = 8 << 20  # start writeback of every 8 MiB written, so the final fsync has little left
STATUS_EVERY = 1.0  # seconds between sd_notify STATUS updates

EVENT_FOLDERS = {"event", "events", "emr", "ro", "locked", "lock", "protected", "protect", "sos"}
EVENT_SUFFIX = re.compile(r"_E[A-Z0-9]{0,2}$", re.IGNORECASE)
MAX_DEPTH = 32  # folders below the card's root; cameras use two or three
NAME_MAX = 255  # bytes in one file name (ext4, vfat, exFAT)

# the recording time in a camera's file name: Novatek 2026_1125_233000_001F.MP4,
# NO20261125-233000-000123F.MP4, and the like (date, then time, with _ or - or nothing between)
NAME_STAMP = re.compile(r"(?<!\d)((?:19|20)\d\d)[_-]?(\d\d)[_-]?(\d\d)[_-](\d\d)[_-]?(\d\d)[_-]?(\d\d)(?!\d)")
INT64 = (-(1 << 63), (1 << 63) - 1)  # what an SQLite INTEGER holds (mtime_ns beyond: years 1677, 2262)


# --- what there is to copy ------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    source_path: str  # relative to the card's root, '/'-separated
    size: int
    mtime_ns: int
    event: bool


@dataclass
class IngestResult:
    files: int = 0  # staged in this run
    bytes: int = 0
    known: int = 0  # on the card and already in the ledger: not read
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (source_path, reason)
    pending: int = 0  # new clips left on the card (space refused or interrupted)
    refused: Optional[str] = None  # why copying stopped early for lack of space
    interrupted: bool = False
    damaged: int = 0  # new clips flagged damaged (zero bytes, cut short): copied all the same

    @property
    def result(self) -> str:
        if self.interrupted:
            return "interrupted"
        return "failed" if self.failed else "ok"


def glob_regex(pattern: str) -> "re.Pattern[str]":
    """A case-insensitive regex for a footage glob: ``*`` within a folder, ``**`` across folders."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    # DOTALL: a name may hold a newline, and ** must still match it
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


def is_event(source_path: str, patterns: Sequence["re.Pattern[str]"] = ()) -> bool:
    """Event/locked clips: in a folder like Event, RO, Locked, Protected, or named ..._E / _EF, or
    matching one of ``patterns`` (ingest.event_globs, compiled by glob_regex)."""
    if any(p.match(source_path) for p in patterns):
        return True
    parts = source_path.split("/")
    if any(p.lower() in EVENT_FOLDERS for p in parts[:-1]):
        return True
    stem = os.path.splitext(parts[-1])[0]
    return bool(EVENT_SUFFIX.search(stem))


def shown(name: str) -> str:
    """A name as one printable line: control characters and undecodable bytes as \\xNN escapes.

    For text the ledger keeps (a failed clip's reason): SQLite holds UTF-8 only, and a reason is
    one line. Log messages need none of this: the log escapes what a person reads (log.printable)."""
    return _UNPRINTABLE.sub(_escape_char, name)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def _escape_char(m: "re.Match[str]") -> str:
    o = ord(m.group())
    if 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8, carried by os.fsdecode's surrogateescape
        return "\\x%02x" % (o - 0xDC00)
    return "\\x%02x" % o if o < 0x100 else "\\u%04x" % o


def _walk(root: str, max_depth: int = MAX_DEPTH) -> Iterable[Tuple[str, os.stat_result]]:
    """(relative path, lstat) of every regular file below root; symlinks are never followed.

    Iterative (a card's tree may be any depth): folders deeper than ``max_depth`` are skipped,
    each with a message. Folders are listed in name order, so runs see clips in the same order."""
    stack: List[Tuple[str, int]] = [("", 0)]
    while stack:
        rel, depth = stack.pop()
        here = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s: %s", here, e.strerror or e)
            continue
        subdirs = []
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if depth + 1 > max_depth:
                        log.warning("not looking into %s: deeper than %d folders", path, max_depth)
                        continue
                    subdirs.append((path, depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    yield path, entry.stat(follow_symlinks=False)
            except OSError as e:
                log.warning("cannot stat %s: %s", path, e.strerror or e)
        stack.extend(reversed(subdirs))


def footage_files(
    root: str, globs: Sequence[str], extensions: Sequence[str], after_date: Optional[str] = None
) -> Iterator[Tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every footage file below ``root``: a glob and an extension
    match (case-insensitive). Kept lean: a rescan walks every clip on the card.

    ``after_date`` compares with the mtime read as the camera's wall-clock time (see clip_date)."""
    patterns = [glob_regex(g) for g in globs]
    exts = {e.lower().lstrip(".") for e in extensions}
    not_before = None
    if after_date:
        day = datetime.date.fromisoformat(after_date)
        not_before = (day - EPOCH.date()).days * 86400 * 10**9
    for rel, st in _walk(root):
        if rel.rpartition(".")[2].lower() not in exts:
            continue
        if not any(p.match(rel) for p in patterns):
            continue
        if not_before is not None and st.st_mtime_ns < not_before:
            continue
        yield rel, st.st_size, st.st_mtime_ns


EPOCH = datetime.datetime(1970, 1, 1)


def name_stamp(name: str) -> Optional[datetime.datetime]:
    """The recording time in a camera's file name (Novatek and the like), on the camera's clock, or None."""
    m = NAME_STAMP.search(os.path.basename(name))
    if m is None:
        return None
    try:
        return datetime.datetime(*(int(g) for g in m.groups()))
    except ValueError:  # 2026_1340_...: digits, not a time
        return None


def name_date(name: str) -> Optional[datetime.date]:
    """The recording date in a camera's file name, or None."""
    stamp = name_stamp(name)
    return None if stamp is None else stamp.date()


def clip_date(source_path: str, mtime_ns: int) -> datetime.date:
    """The date the camera showed when it recorded the clip, whatever the Pi's time zone.

    The timestamp in the file name when there is one; else the mtime as wall-clock time. vfat and
    exFAT keep the camera's wall clock without a zone, and the card is mounted so that the kernel
    adds none (vfat ``tz=UTC``, exFAT ``time_offset=0``): that mtime broken down in UTC is what the
    camera's clock said. Raises OverflowError for an mtime no calendar date holds."""
    day = name_date(source_path)
    if day is not None:
        return day
    try:
        return (EPOCH + datetime.timedelta(microseconds=mtime_ns // 1000)).date()
    except (OverflowError, ValueError) as e:
        raise OverflowError(f"its modification time ({mtime_ns} ns after 1970) is no calendar date") from e


def ledger_key(source_path: str, size: int, mtime_ns: int) -> Tuple[str, int, int]:
    """The clip's key as the ledger holds it: a name that is not UTF-8 as its bytes escaped
    (\\xNN, only ever in a refused clip's row), the mtime within what SQLite's INTEGER holds."""
    return ledger_path(source_path), size, min(max(mtime_ns, INT64[0]), INT64[1])


def ledger_path(source_path: str) -> str:
    try:
        source_path.encode("utf-8")
        return source_path
    except UnicodeEncodeError:
        return os.fsencode(source_path).decode("utf-8", "backslashreplace")


def refusal(clip: Candidate) -> Optional[str]:
    """Why a clip cannot be staged as it is (the reason kept in its ledger row), or None."""
    if ledger_path(clip.source_path) != clip.source_path:
        return "refused: the name is not valid UTF-8 (the ledger and the server's listings need text)"
    try:
        clip_date(clip.source_path, clip.mtime_ns)
    except OverflowError as e:
        return f"refused: {e}"
    return None


def candidate(rel: str, size: int, mtime_ns: int, event_patterns: Sequence["re.Pattern[str]"] = ()) -> Candidate:
    return Candidate(rel, size, mtime_ns, is_event(rel, event_patterns))


def scan(root: str, globs: Sequence[str], extensions: Sequence[str], after_date: Optional[str] = None,
         event_globs: Sequence[str] = ()) -> List[Candidate]:
    """Every footage file below ``root`` as a Candidate."""
    patterns = [glob_regex(g) for g in event_globs]
    return [candidate(*f, patterns) for f in footage_files(root, globs, extensions, after_date)]


# event/locked clips first, then newest first (or oldest first): the upload's order too
order = layout.order


def staged_name(camera: str, clip: Candidate) -> str:
    """ready/-relative path for a clip: <camera>/<YYYY-MM-DD the camera recorded it>/<its folder on
    the card>/<file>. The folder keeps apart two clips of one name in two folders of the card."""
    return layout.staged_path(camera, clip_date(clip.source_path, clip.mtime_ns), clip.source_path)


def name_variant(name: str, n: int) -> str:
    """``clip.MP4`` -> ``clip~n.MP4``; a long stem is shortened (at a character) so the name still
    fits NAME_MAX bytes."""
    stem, ext = os.path.splitext(name)
    tail = f"~{n}{ext}".encode("utf-8")
    if len(tail) >= NAME_MAX // 2:  # not a footage extension: the suffix goes at the very end
        stem, ext, tail = name, "", f"~{n}".encode("utf-8")
    room = NAME_MAX - len(tail)
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) > room:
        stem = raw[:room].decode("utf-8", "ignore")
    return stem + f"~{n}{ext}"


# --- durable writes ---------------------------------------------------------------------------

_libc = None


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """sync_file_range(SYNC_FILE_RANGE_WRITE): start writing a range now, without waiting for it."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.sync_file_range(fd, offset, length, 2)  # an advisory start; the fsync later is what counts


def _fadvise_dontneed(fd: int, offset: int = 0, length: int = 0) -> None:
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def makedirs_owned(path: str, owner: Owner) -> None:
    """os.makedirs, giving every directory it creates to ``owner``; a symlink on the way is refused."""
    if os.path.islink(path):
        raise DashcamError(f"refusing {path}: it is a symbolic link (staging holds none; remove it)")
    if os.path.isdir(path):
        return
    makedirs_owned(os.path.dirname(path), owner)
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        if not os.path.isdir(path):  # a file of that name (a clip's, from a folder that was a file)
            raise OSError(errno.ENOTDIR, f"{path} is a file, not a folder")
        return makedirs_owned(path, owner)  # made meanwhile: still no link
    if owner:
        # through an fd that is not a link: the name may have been swapped since the mkdir
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(fd, *owner)
        finally:
            os.close(fd)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


# a clip's own trouble while it is staged (its name, its time): the clip fails, the others go on
CLIP_ERRORS = (OSError, OverflowError, ValueError, UnicodeError)
CLIP_ERRNOS = (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EOVERFLOW, errno.ENOTDIR)


def describe(e: BaseException) -> str:
    """An exception as a one-line reason: ``strerror (ENAME)`` for an OSError."""
    if isinstance(e, OSError) and e.errno:
        return f"{e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)})"
    return shown(str(e)) or type(e).__name__


class Interrupted(Exception):
    """should_stop() said stop (SIGTERM): abandon the clip in hand."""


@dataclass
class _Copied:
    clip: Candidate
    fd: int
    part: str
    sha256: str


def clean_incoming(incoming: str) -> None:
    """Delete .part files a crashed run left behind (the lock says no other run owns them)."""
    for entry in os.scandir(incoming):
        if entry.name.endswith(".part"):
            log.info("removing %s, left by an interrupted run", entry.name)
            os.unlink(entry.path)


class _Finisher(threading.Thread):
    """fsync, rename into ready/, fsync the directory, commit the ledger row: one clip at a time."""

    def __init__(self, cfg: Config, result: IngestResult, progress: Callable[[int], None], should_stop, owner: Owner):
        super().__init__(name="ingest-finisher", daemon=True)
        self.cfg = cfg
        self.owner = owner
        self.result = result
        self.progress = progress
        self.should_stop = should_stop
        self.inbox: "queue.Queue[Optional[_Copied]]" = queue.Queue(maxsize=1)
        self.error: Optional[BaseException] = None
        self.lock = threading.Lock()

    def run(self) -> None:
        ledger = None
        try:
            ledger = Ledger(self.cfg.paths.ledger)
            while True:
                item = self.inbox.get()
                if item is None:
                    return
                if self.error is not None:
                    self._discard(item)
                    continue
                try:
                    self._finish(ledger, item)
                except CLIP_ERRORS as e:  # this clip's own problem: the next clips go on
                    self._discard(item)
                    if isinstance(e, OSError) and e.errno not in CLIP_ERRNOS:
                        self.error = e
                        continue
                    self._failed(ledger, item.clip, e)
                except BaseException as e:  # noqa: B902 - handed to the reading thread
                    self._discard(item)
                    self.error = e
        except BaseException as e:
            self.error = e
        finally:
            if ledger is not None:
                ledger.close()

    def _failed(self, ledger: Ledger, clip: Candidate, e: BaseException) -> None:
        reason = describe(e)
        log.error("cannot stage %s: %s; marked failed, going on with the others", clip.source_path, reason,
                  extra={"DASHCAM_FILE": clip.source_path})
        ledger.record_failed(self.cfg.camera.name, *ledger_key(clip.source_path, clip.size, clip.mtime_ns),
                             event=clip.event, reason=f"stage: {reason}")
        with self.lock:
            self.result.failed.append((clip.source_path, reason))

    @staticmethod
    def _discard(item: _Copied) -> None:
        try:
            os.close(item.fd)
        except OSError:
            pass
        try:
            os.unlink(item.part)
        except FileNotFoundError:
            pass

    def _finish(self, ledger: Ledger, item: _Copied) -> None:
        cfg = self.cfg
        clip = item.clip
        os.fsync(item.fd)
        _fadvise_dontneed(item.fd)  # the bytes are on disk: do not let staging fill the page cache
        os.close(item.fd)
        item.fd = -1
        if self.should_stop():
            # a stop during the fsync: leave the clip for next time rather than start a rename now
            os.unlink(item.part)
            raise Interrupted()
        rel = staged_name(cfg.camera.name, clip)
        rel = self._place(ledger, item, rel)
        try:
            path, size, mtime_ns = ledger_key(clip.source_path, clip.size, clip.mtime_ns)
            ledger.record_staged(cfg.camera.name, path, size, mtime_ns, event=clip.event, sha256=item.sha256,
                                 staged_path=rel)
        except BaseException:
            # no row, no file: a file in ready/ always has its ledger row
            target = os.path.join(cfg.paths.ready, rel)
            try:
                os.unlink(target)
                fsync_dir(os.path.dirname(target))
            except OSError as e:
                log.error("cannot remove %s after its ledger row failed: %s", rel, describe(e))
            raise
        with self.lock:
            self.result.files += 1
            self.result.bytes += clip.size
        log.info(
            "staged %s (%s%s) as %s",
            clip.source_path,
            notify.human_bytes(clip.size),
            ", event" if clip.event else "",
            rel,
            extra={"DASHCAM_FILE": clip.source_path, "DASHCAM_BYTES": clip.size, "DASHCAM_SHA256": item.sha256,
                   "DASHCAM_STAGED": rel},
        )
        self.progress(1)

    def _place(self, ledger: Ledger, item: _Copied, rel: str) -> str:
        """Rename the .part into ready/ under ``rel`` or a free variant of it (``name~1.MP4``: the same
        path on the card and the same day as an earlier clip, e.g. a camera that numbers its clips
        anew after a format); never overwrite. Logged: the server name comes from the card's."""
        ready = self.cfg.paths.ready
        directory, name = os.path.split(rel)
        makedirs_owned(os.path.join(ready, directory), self.owner)
        n = 0
        while True:
            candidate = rel if n == 0 else f"{directory}/{name_variant(name, n)}"
            target = os.path.join(ready, candidate)
            if self._taken(ledger, candidate):
                n += 1
                continue
            try:
                # link(2) fails if the name exists: an atomic "rename unless taken"
                os.link(item.part, target)
            except FileExistsError:
                if self._is_orphan_copy(ledger, candidate, target, item):
                    # the same bytes renamed by a run killed before its ledger commit: adopt them
                    log.info("adopting %s, staged by an interrupted run", candidate)
                    os.unlink(item.part)
                    fsync_dir(os.path.dirname(target))
                    return candidate
                n += 1
                continue
            os.unlink(item.part)
            fsync_dir(os.path.dirname(target))
            if n:
                log.info("%s: %s is taken by an earlier clip, staged as %s", item.clip.source_path, rel, candidate,
                         extra={"DASHCAM_FILE": item.clip.source_path})
            return candidate

    @staticmethod
    def _taken(ledger: Ledger, rel: str) -> bool:
        """Another clip has (or had, before it was pruned) this staged name: the server may hold it."""
        return ledger.db.execute("SELECT 1 FROM footage WHERE staged_path = ? LIMIT 1", (rel,)).fetchone() is not None

    def _is_orphan_copy(self, ledger: Ledger, rel: str, target: str, item: _Copied) -> bool:
        try:
            if os.stat(target).st_size != item.clip.size:
                return False
            return sha256_file(target) == item.sha256
        except OSError:
            return False


class _Progress:
    """Files and bytes done, sent as STATUS= at most once a second."""

    def __init__(self, total_files: int, total_bytes: int, clock=time.monotonic):
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self.clock = clock
        self.start = clock()
        self.last = 0.0
        self.lock = threading.Lock()

    def add(self, files: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            self.files += files
            self.bytes += nbytes
            now = self.clock()
            if now - self.last < STATUS_EVERY and self.files < self.total_files:
                return
            self.last = now
            line = notify.progress_line("ingest", self.files, self.total_files, self.bytes, self.total_bytes, now - self.start)
        notify.status(line)


class _Reader(threading.Thread):
    """Reads a clip into a few reusable buffers ahead of the hashing and writing thread.

    The card keeps streaming while the writer waits on the staging disk; memory stays at
    DEPTH blocks whatever the clip size.
    """

    DEPTH = 4

    def __init__(self, fd: int):
        super().__init__(name="ingest-reader", daemon=True)
        self.fd = fd
        self.free: "queue.Queue[bytearray]" = queue.Queue()
        for _ in range(self.DEPTH):
            self.free.put(bytearray(BLOCK))
        self.full: "queue.Queue[Tuple[Optional[bytearray], int, Optional[OSError]]]" = queue.Queue()
        self.cancelled = False

    def run(self) -> None:
        offset = 0
        while not self.cancelled:
            buf = self.free.get()
            if self.cancelled:
                break
            try:
                n = os.readv(self.fd, [buf])
            except OSError as e:
                self.full.put((None, 0, e))
                return
            if n == 0:
                self.full.put((None, 0, None))
                return
            if offset >= WRITEBACK_CHUNK:
                # what was read is never read again: do not let the card's pages crowd the cache
                _fadvise_dontneed(self.fd, 0, offset - WRITEBACK_CHUNK)
            offset += n
            self.full.put((buf, n, None))

    def cancel(self) -> bool:
        """Stop reading; False if a read is stuck (a dying card): the fd must then stay open."""
        self.cancelled = True
        self.free.put(bytearray(0))  # wake it if it waits for a buffer
        self.join(timeout=2)
        return not self.is_alive()


def _copy_one(src_root: str, clip: Candidate, incoming: str, seq: int, should_stop, progress: _Progress,
              owner: Owner = None) -> _Copied:
    """Read, hash and write one clip to incoming/<seq>.part; the fd stays open for the finisher.

    The temporary name is short whatever the clip's (a 255-byte name plus a suffix would not fit)."""
    src = os.path.join(src_root, clip.source_path)
    part = os.path.join(incoming, f"{seq:06d}.part")
    # O_NOFOLLOW: a name swapped for a symlink after the scan is not followed out of the card;
    # O_NONBLOCK: nor does a FIFO or a device swapped in make the open wait for a writer
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    reader = None
    try:
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file any more (replaced since the scan)")
        fcntl.fcntl(sfd, fcntl.F_SETFL, fcntl.fcntl(sfd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        try:
            os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
        dfd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            if owner:
                os.fchown(dfd, *owner)
            h = hashlib.sha256()
            written = 0
            synced = 0
            reader = _Reader(sfd)
            reader.start()
            while True:
                try:
                    buf, n, error = reader.full.get(timeout=0.5)
                except queue.Empty:
                    if should_stop():
                        raise Interrupted()
                    continue
                if error is not None:
                    raise error
                if buf is None:
                    break
                if should_stop():
                    raise Interrupted()
                chunk = memoryview(buf)[:n]
                h.update(chunk)
                off = 0
                while off < n:
                    off += os.write(dfd, chunk[off:])
                chunk.release()
                reader.free.put(buf)
                written += n
                if written - synced >= WRITEBACK_CHUNK:
                    _start_writeback(dfd, synced, written - synced)
                    synced = written
                progress.add(nbytes=n)
            reader.join()
            if written != clip.size:
                raise OSError(errno.EIO, f"read {written} bytes, the card said {clip.size} (changed while copying?)")
            keep_mtime(dfd, clip)
            return _Copied(clip, dfd, part, h.hexdigest())
        except BaseException:
            os.close(dfd)
            os.unlink(part)
            raise
    finally:
        # a reader stuck in read(2) keeps its fd: closing it could hand the number to the next clip
        if reader is None or not reader.is_alive() or reader.cancel():
            os.close(sfd)


def keep_mtime(fd: int, clip: Candidate) -> None:
    """Give the staged copy the clip's own modification time (upload's rsync --times carries it on)."""
    try:
        os.utime(fd, ns=(clip.mtime_ns, clip.mtime_ns))
    except (OSError, OverflowError, ValueError) as e:  # beyond what staging's filesystem holds
        log.warning("%s keeps the time of the copy: staging cannot hold its own (%s)", clip.source_path, e)


def _lock_staging(incoming: str) -> int:
    fd = os.open(os.path.join(incoming, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TryLater("another ingest is running (staging/incoming is locked)")
    return fd


def ingest_source(
    cfg: Config,
    source_dir: str,
    *,
    dry_run: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
    card: Optional["coverage.Card"] = None,
) -> IngestResult:
    """Copy every new clip below ``source_dir`` into staging. Never raises for one bad clip.

    With ``card`` (the camera's own card, mounted by ingest_device) the recording windows since
    the previous ingest are checked against the card's clips too (coverage.check_card)."""
    should_stop = should_stop or (lambda: False)
    if not os.path.isdir(source_dir):
        raise DashcamError(f"{source_dir}: not a directory")
    result = IngestResult()
    started = time.time()
    incoming = cfg.paths.incoming
    owner: Owner = None
    if not dry_run:
        os.makedirs(cfg.paths.local_staging, exist_ok=True)
        owner = owner_of(cfg.paths.local_staging)
        makedirs_owned(incoming, owner)
        makedirs_owned(cfg.paths.ready, owner)
    lock_fd = _lock_staging(incoming) if not dry_run else None
    try:
        if not dry_run:
            clean_incoming(incoming)
        new_ledger = not os.path.exists(cfg.paths.ledger)
        with Ledger(cfg.paths.ledger) as ledger:
            if new_ledger and not dry_run:
                # the uploader (dashcam user) writes the ledger too; SQLite gives its -wal/-shm the db's owner
                ledger_owner = owner_of(cfg.paths.state_dir)
                if ledger_owner:
                    chown_nofollow(cfg.paths.ledger, ledger_owner)
            known: Set[Tuple[str, int, int]] = ledger.known_keys(cfg.camera.name)
            event_patterns = [glob_regex(g) for g in cfg.ingest.event_globs]
            found = 0
            new = []
            on_card = []  # every footage file, for the check of lost footage
            for rel, size, mtime_ns in footage_files(source_dir, cfg.ingest.globs, cfg.ingest.extensions,
                                                     cfg.ingest.after_date):
                found += 1
                on_card.append((rel, size, mtime_ns))
                if ledger_key(rel, size, mtime_ns) in known:  # copied before: not read, not even looked at further
                    continue
                new.append(candidate(rel, size, mtime_ns, event_patterns))
            result.known = found - len(new)
            verdicts = [(c, refusal(c)) for c in new]
            refused = [(c, why) for c, why in verdicts if why]
            todo = order([c for c, why in verdicts if not why], cfg.ingest.newest_first)
            total = sum(c.size for c in todo)
            log.info(
                "%s: %d footage files, %d already in the ledger, %d new (%s)%s",
                source_dir, found, result.known, len(todo), notify.human_bytes(total),
                f", {len(refused)} refused" if refused else "",
                extra={"DASHCAM_FILES": len(todo), "DASHCAM_BYTES": total},
            )
            for clip, why in refused:
                log.error("%s: %s", clip.source_path, why, extra={"DASHCAM_FILE": ledger_path(clip.source_path)})
                result.failed.append((ledger_path(clip.source_path), why))
                if not dry_run:
                    _record_refused(ledger, cfg.camera.name, clip, why)
            if not dry_run:
                result.damaged = _check_card(cfg, ledger, source_dir, on_card, [(c.source_path, c.size, c.mtime_ns)
                                                                               for c, why in verdicts if not why], card)
            if dry_run:
                for c in todo:
                    log.info("dry run, would copy %s (%s%s)", c.source_path, notify.human_bytes(c.size),
                             ", event" if c.event else "")
                result.pending = len(todo)
                return result
            error = None
            try:
                _copy_all(cfg, source_dir, todo, total, ledger, result, should_stop, owner,
                          _budget_gate(cfg, ledger, todo))
            except DashcamError as e:
                error = str(e)
                raise
            finally:
                ledger.put_state(
                    "last_ingest",
                    {"wall": time.time(), "files": result.files, "bytes": result.bytes,
                     "result": "failed" if error else result.result, "reason": error,
                     "source": source_dir, "known": result.known, "failed": len(result.failed),
                     "pending": result.pending, "refused": result.refused, "seconds": round(time.time() - started, 3),
                     "damaged": result.damaged},
                )
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return result


def _check_card(cfg, ledger, source_dir, on_card, new, card) -> int:
    """Damaged clips and footage lost before it was copied (coverage.py); the number of damaged
    new clips. A failure of the check is one line: it never stops the copy."""
    try:
        return coverage.check_card(cfg, ledger, source_dir, on_card, new, card)["damaged"]
    except Exception as e:  # noqa: B902 - whatever the card or the ledger held, the copy goes on
        log.error("checking the card for damaged clips and lost footage failed: %s: %s", type(e).__name__, e)
        return 0


def _record_refused(ledger: Ledger, camera: str, clip: Candidate, why: str) -> None:
    """A ``failed`` row with the reason, so status and ``files --state failed`` show the clip."""
    try:
        ledger.record_failed(camera, *ledger_key(clip.source_path, clip.size, clip.mtime_ns), event=clip.event,
                             reason=why)
    except LedgerError as e:  # its escaped key names another clip's row: the message above stands
        log.error("%s: no ledger row for the refusal: %s", clip.source_path, e)


def _budget_gate(cfg, ledger: Ledger, todo: Sequence[Candidate]):
    """The power budget on battery (budget.py), asked before each clip starts; None if it cannot be."""
    from . import budget
    from .policy import SystemClock

    try:
        return budget.IngestGate(ledger.get_state, ledger.put_state, cfg.camera.name, [(c.size, c.event) for c in todo],
                                 SystemClock().boot_id(), time.monotonic, log)
    except Exception as e:  # never a reason not to copy
        log.warning("power budget unavailable, copying without it: %s", e)
        return None


def _copy_all(cfg, source_dir, todo, total, ledger, result, should_stop, owner, gate=None) -> None:
    progress = _Progress(len(todo), total)
    finisher = _Finisher(cfg, result, lambda n: progress.add(files=n), should_stop, owner)
    finisher.start()
    remaining = len(todo)
    skipped = 0  # too big for the space left: on the card for later
    waiting = 0  # event clips too large for the power budget: on the card for later, the next ones tried
    try:
        for seq, clip in enumerate(todo):
            if should_stop():
                result.interrupted = True
                break
            if finisher.error is not None:
                break
            if gate is not None and not gate.may_start(seq):  # on battery: the rest waits (events first)
                if gate.stopped:
                    break
                waiting += 1  # one event clip too large: the next may fit
                continue
            free, size_fs = free_space(cfg.paths.local_staging)
            keep = reserve_bytes(cfg, size_fs)
            # bytes already written but still in the finisher are counted by statvfs already
            if free - clip.size < keep:
                result.refused = (
                    f"staging has {notify.human_bytes(free)} free; copying {clip.source_path} "
                    f"({notify.human_bytes(clip.size)}) would leave less than the reserve of {notify.human_bytes(keep)}"
                )
                if free <= keep:  # nothing fits any more
                    log.warning("stopping the copy: %s; %d clips stay on the card for later", result.refused,
                                remaining, extra={"DASHCAM_FILE": clip.source_path})
                    break
                log.warning("skipping %s: %s; it stays on the card, going on with clips that fit",
                            clip.source_path, result.refused, extra={"DASHCAM_FILE": clip.source_path})
                skipped += 1
                continue
            try:
                copied = _copy_one(source_dir, clip, cfg.paths.incoming, seq, should_stop, progress, owner)
            except Interrupted:
                result.interrupted = True
                break
            except OSError as e:
                reason = describe(e)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    result.refused = f"staging is full ({reason})"
                    log.error("stopping the copy: %s", result.refused)
                    break
                log.error("cannot read %s: %s; marked failed, going on with the others", clip.source_path,
                          reason, extra={"DASHCAM_FILE": clip.source_path})
                ledger.record_failed(cfg.camera.name, *ledger_key(clip.source_path, clip.size, clip.mtime_ns),
                                     event=clip.event, reason=f"read: {reason}")
                result.failed.append((clip.source_path, reason))
                remaining -= 1
                continue
            while True:
                try:
                    finisher.inbox.put(copied, timeout=0.2)
                    break
                except queue.Full:
                    if finisher.error is not None or not finisher.is_alive():
                        _Finisher._discard(copied)
                        break
            remaining -= 1
    finally:
        while finisher.is_alive():
            try:
                finisher.inbox.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        finisher.join()
    if gate is not None and remaining == waiting:
        gate.finished()
    if isinstance(finisher.error, Interrupted):
        result.interrupted = True
        remaining += 1
    elif finisher.error is not None:
        err = finisher.error
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            result.refused = f"staging is full ({err.strerror})"
            log.error("stopping the copy: %s", result.refused)
        else:
            raise DashcamError(f"ingest stopped: {type(err).__name__}: {err}") from err
    if skipped:
        log.warning("%d clips too big for the space left above the reserve stay on the card for later", skipped)
    if result.interrupted:
        log.warning("interrupted: %d clips staged, the rest stay on the card for the next run", result.files)
    result.pending = max(0, remaining)
    notify.status(
        f"ingest {'interrupted' if result.interrupted else 'done'}: {result.files} files, "
        f"{notify.human_bytes(result.bytes)}" + (f", {len(result.failed)} failed" if result.failed else "")
    )


# --- the camera's card ----------------------------------------------------------------------

# nosymfollow (Linux >= 5.10): a symlink on the card leads nowhere, whoever reads it
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec,noatime,nosymfollow"
# the card's timestamps are the camera's wall clock without a zone: read them as UTC, so the
# mtime broken down in UTC is what the camera showed (clip_date), whatever the Pi's time zone.
# vfat: tz=UTC (else the kernel's sys_tz applies), utf8 names; exFAT: time_offset=0 (minutes;
# a timestamp the camera marked with its own UTC offset is converted with that offset instead)
FS_OPTIONS = {"vfat": "tz=UTC,utf8", "exfat": "time_offset=0"}
FILESYSTEMS = tuple(FS_OPTIONS)


def fs_type(devnode: str, timeout: float) -> str:
    """The filesystem type udev found (ID_FS_TYPE), or blkid's answer when udev has none."""
    try:
        import pyudev

        device = pyudev.Devices.from_device_file(pyudev.Context(), devnode)
        value = device.properties.get("ID_FS_TYPE")
        if value:
            return value
    except Exception as e:  # not a block device udev knows (a test, a chroot): ask blkid
        log.debug("udev has no ID_FS_TYPE for %s (%s); asking blkid", devnode, e)
    from . import runner

    out = runner.run(["blkid", "-o", "value", "-s", "TYPE", devnode], timeout=timeout, changes_state=False, check=False)
    return out.stdout.strip()


def fs_uuid(devnode: str, timeout: float) -> Optional[str]:
    """The card's filesystem UUID (ID_FS_UUID, else blkid), or None: a new one means a formatted card."""
    try:
        import pyudev

        value = pyudev.Devices.from_device_file(pyudev.Context(), devnode).properties.get("ID_FS_UUID")
        if value:
            return str(value)
    except Exception as e:  # not a block device udev knows: ask blkid
        log.debug("udev has no ID_FS_UUID for %s (%s); asking blkid", devnode, e)
    from . import runner

    try:
        out = runner.run(["blkid", "-o", "value", "-s", "UUID", devnode], timeout=timeout, changes_state=False,
                         check=False)
    except runner.CommandError as e:
        log.warning("cannot read the filesystem UUID of %s: %s", devnode, e)
        return None
    return out.stdout.strip()[:64] or None


def mount_argv(devnode: str, fstype: str, mountpoint: str, reader: Optional[Tuple[int, int]] = None) -> List[str]:
    """mount(8) of the card read-only; with ``reader`` (uid, gid) its files are that user's alone
    (vfat and exfat have no owners of their own: the options give them one)."""
    owner = f"uid={reader[0]},gid={reader[1]},umask=0077" if reader else None
    options = ",".join(o for o in (MOUNT_OPTIONS, FS_OPTIONS.get(fstype), owner) if o)
    return ["mount", "-t", fstype, "-o", options, devnode, mountpoint]


def _result_json(result: IngestResult) -> dict:
    return dataclasses.asdict(result)


def _result_from_json(data: dict) -> IngestResult:
    data = dict(data)
    data["failed"] = [(str(f), str(r)) for f, r in data.get("failed") or []]
    return IngestResult(**data)


def ingest_unprivileged(
    cfg: Config, source_dir: str, *, dry_run: bool = False, should_stop: Optional[Callable[[], bool]] = None,
    reader: Optional[Tuple[int, int]] = None, card: Optional[coverage.Card] = None,
) -> IngestResult:
    """ingest_source, run as ``reader`` (the owner of staging) with no capabilities when given:
    root mounts the card, but never reads it nor writes staging."""
    if reader is None:
        return ingest_source(cfg, source_dir, dry_run=dry_run, should_stop=should_stop, card=card)
    from . import privilege

    log.info("reading %s as uid %d, gid %d", source_dir, *reader)

    def copy() -> IngestResult:
        if os.path.isdir(source_dir) and not os.access(source_dir, os.R_OK | os.X_OK):
            raise DashcamError(f"{source_dir}: the copy runs as uid {reader[0]} (the owner of staging), which "
                               f"cannot read it; mount the card so that user can (mount -o ro,uid={reader[0]})")
        return ingest_source(cfg, source_dir, dry_run=dry_run, should_stop=should_stop, card=card)

    return privilege.run_as(
        reader, copy,
        encode=_result_json, decode=_result_from_json, should_stop=should_stop or (lambda: False),
    )


def mode_after_ingest(cfg: Config, external: Optional[bool]) -> str:
    """record on external power (the car is running), else camera.after_ingest (unknown = battery)."""
    return "record" if external is True else cfg.camera.after_ingest


def put_camera_back(cfg: Config, *, dry_run: bool = False) -> str:
    from . import battery, camera  # the camera helper's modules; imported only on the device path

    reading = battery.read(cfg)
    mode = mode_after_ingest(cfg, reading.external)
    log.info("camera back to %s (%s)", mode,
             "on external power" if reading.external else
             "on battery" if reading.external is False else f"power unknown: {reading.reason or 'no reading'}")
    camera.set_mode(cfg, mode, dry_run=dry_run)
    return mode


def ingest_device(
    cfg: Config,
    devname: str,
    *,
    dry_run: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
    camera_back: Optional[Callable[..., object]] = None,
) -> IngestResult:
    """Mount the camera's card read-only, ingest it, unmount, put the camera back (always)."""
    from . import privilege, runner

    camera_back = camera_back or put_camera_back
    devnode = devname if devname.startswith("/") else os.path.join("/dev", devname)
    timeout = cfg.poll.mount_timeout_seconds
    try:
        try:
            if not os.path.exists(devnode):
                raise TryLater(f"{devnode} is not there (camera unplugged?)")
            fstype = fs_type(devnode, timeout)
            if fstype not in FILESYSTEMS:
                raise DashcamError(f"{devnode}: filesystem {fstype or 'unknown'!r}, expected one of {', '.join(FILESYSTEMS)}")
            mountpoint = os.path.join(cfg.camera.mount_base, os.path.basename(devnode))
            reader = privilege.staging_user(cfg.paths.local_staging)
            if not dry_run:
                os.makedirs(mountpoint, mode=0o700, exist_ok=True)
                if reader:  # the reader passes through mount_base (it may not list it)
                    os.chmod(cfg.camera.mount_base, os.stat(cfg.camera.mount_base).st_mode | 0o001)
            try:
                runner.run(mount_argv(devnode, fstype, mountpoint, reader), timeout=timeout, dry_run=dry_run)
            except runner.CommandError as e:
                raise TryLater(f"cannot mount {devnode}: {e}") from e
            log.info("mounted %s (%s) read-only on %s", devnode, fstype, mountpoint)
            try:
                if dry_run and not os.path.isdir(mountpoint):
                    return IngestResult()
                card = coverage.Card(fs_uuid(devnode, timeout))
                return ingest_unprivileged(cfg, mountpoint, dry_run=dry_run, should_stop=should_stop, reader=reader,
                                           card=card)
            finally:
                try:
                    runner.run(["umount", mountpoint], timeout=timeout, dry_run=dry_run)
                except runner.CommandError as e:
                    # under PrivateMounts= the mount goes with the unit's namespace anyway
                    log.error("cannot unmount %s: %s", mountpoint, e)
        finally:
            if should_stop is not None and should_stop():
                # stopped (camera yanked, shutdown, low battery): whoever stopped us decides the
                # camera (the policy, or dashcam-boot at the next boot); end within the stop timeout
                log.info("stopped: leaving the camera as it is")
            else:
                camera_back(cfg, dry_run=dry_run)
    except runner.CommandError as e:
        raise DashcamError(str(e)) from e


# --- dashcamctl ingest ----------------------------------------------------------------------


class StopSignal:
    """SIGTERM / SIGINT for the ingest: mid-copy a stop is news (a warning: the camera was yanked,
    the battery is low, someone stopped the unit) and the copy ends at the next clip boundary;
    once the copy is done and the ingest itself ends the camera's data connection, the stop that
    follows is expected and logged as information."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._expected: Optional[str] = None

    def expect(self, why: str) -> None:
        """From now on a stop is part of the run: ``why`` says what causes it."""
        self._expected = why

    def is_set(self) -> bool:
        return self._event.is_set()

    def on_signal(self, signum: int, frame=None) -> None:
        import signal

        name = signal.Signals(signum).name
        if self._expected is None:
            log.warning("%s: stopping the ingest", name)
            self._event.set()
        else:
            # the copy is complete: finish putting the camera back (the unit's stop timeout bounds it)
            log.info("%s after the copy, as expected: %s", name, self._expected)


def command(args, cfg: Config) -> Tuple[int, dict]:
    import signal

    from .errors import EX_FAILURE, EX_OK, EX_TEMPFAIL

    stop = StopSignal()
    signal.signal(signal.SIGTERM, stop.on_signal)
    signal.signal(signal.SIGINT, stop.on_signal)
    notify.notify(READY="1", STATUS="ingest: scanning")
    if args.source:
        from .privilege import staging_user

        result = ingest_unprivileged(cfg, args.source, dry_run=args.dry_run, should_stop=stop.is_set,
                                     reader=staging_user(cfg.paths.local_staging))
    else:
        def camera_back(cfg: Config, *, dry_run: bool = False) -> str:
            # the unit is bound to the camera's block device (BindsTo=): switching the camera back
            # to record takes the device away, and systemd stops the unit. That stop is the end of
            # a normal run, not news.
            stop.expect("the camera is going back and takes its block device with it")
            return put_camera_back(cfg, dry_run=dry_run)

        result = ingest_device(cfg, args.devname, dry_run=args.dry_run, should_stop=stop.is_set,
                               camera_back=camera_back)
    summary = {
        "result": result.result, "files": result.files, "bytes": result.bytes, "known": result.known,
        "failed": [{"file": f, "reason": r} for f, r in result.failed], "pending": result.pending,
        "refused": result.refused,
    }
    log.info("ingest %s: %d staged (%s), %d known, %d failed, %d left on the card",
             result.result, result.files, notify.human_bytes(result.bytes), result.known, len(result.failed),
             result.pending)
    if result.interrupted:
        return EX_TEMPFAIL, summary
    if result.failed:
        return EX_FAILURE, summary
    return EX_OK, summary
