"""The ingest's copy engine: each clip read once from the card, hashed and written to staging,
durably, never partial.

    per clip: free-space reserve -> read + SHA-256 + write incoming/<n>.part, with the clip's mtime
      -> [finisher thread] fsync -> rename into ready/<camera>/<camera's date>/<folder on the card>/
      -> fsync dir
      -> ledger.record_staged

The reading thread (the caller's) and a finisher thread overlap: while the finisher waits for
the durable write of one clip, the next is already being read. Only one clip is in each stage,
so memory stays at a few MiB whatever the clip size. A clip in ready/ therefore always matches
the hash its ledger row records; a crash leaves at most a .part (deleted by the next run) or a
renamed file not yet in the ledger (recognised by its hash on the next run, never duplicated).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import queue
import stat
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from . import notify
from .footage import Candidate, ledger_key, name_variant, shown, staged_name
from .config import Config
from .errors import DashcamError
from .ledger import Ledger
from .log import get as get_logger
from .staging import Owner, free_space, fsync_dir, reserve_bytes

log = get_logger("dashcam.ingest")

BLOCK = 1 << 20  # bytes per read: large enough for hashlib to release the GIL, small enough for RSS
WRITEBACK_CHUNK = 8 << 20  # start writeback of every 8 MiB written, so the final fsync has little left
STATUS_EVERY = 1.0  # seconds between sd_notify STATUS updates


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

    def to_json(self) -> dict:
        """As JSON, for the unprivileged copy's answer to root (privilege.run_as)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "IngestResult":
        data = dict(data)
        data["failed"] = [(str(f), str(r)) for f, r in data.get("failed") or []]
        return cls(**data)


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
            if ledger.staged_path_taken(candidate):  # another clip's name (the server may hold it)
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



def copy_all(cfg: Config, source_dir: str, todo: Sequence[Candidate], total: int, ledger: Ledger,
             result: IngestResult, should_stop: Callable[[], bool], owner: Owner, gate=None) -> None:
    """Copy ``todo`` (in that order, ``total`` bytes) from ``source_dir`` into staging, keeping the
    free-space reserve and asking ``gate`` (the power budget on battery) before each clip; what
    happened goes into ``result``. Never raises for one clip; DashcamError when the finisher fails."""
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
