"""rsync to the home server through its rrsync-restricted key: argv, retries, rrsync's quirks, parsing.

The upload (upload.py) decides what goes and when; this module knows how rsync does it:

- a tree of symlinks ``<state_dir>/upload-tree/<path on the server>`` points at the staged
  files, so each rsync (``--files-from``, ``--copy-links``) writes the server's layout in one go;
  every list goes to rsync NUL-separated (``--from0``): a name may hold any byte but "/" and NUL;
- one shared ssh connection (ControlMaster, ssh.ssh_argv) for all sessions of an upload; every
  rsync still is its own rrsync session;
- a failure that may pass is retried with exponential backoff (poll.upload_retries); one that
  cannot (host key, a refused key, rrsync refusing an option, a server that cannot write) is
  raised at once, explained (classify);
- rrsync's one-session lock (a key without -no-lock refuses a second session, "Another instance
  of rrsync"): from the first refusal on, a session starts only when none of ours runs; a lock
  that none of ours holds (the server side of a session cut earlier, until its --timeout) is
  waited out for a while, then the upload is ServerBusy;
- ``--itemize-changes`` answers (names unescaped byte-exact) and ``--stats``;
- the progress of a send, read from rsync's --log-file while it runs.

Why ``--partial`` and not ``--partial-dir``: an ``rrsync -wo`` key rewrites ``--partial-dir``
to a ``/proc/self/fd/N`` path, and rsync's receiver, finding a symlink there when the
connection dies, drops the partial file (checked on this machine: the partial is kept
without rrsync and lost with it). ``--partial`` keeps it under the final name, which is safe
only because the upload remembers which names hold its own partial files (upload.py).

A cut send can outlive its client on the server (rsync's --timeout does not end the server's
side): every send reports the names it is writing (``sending``) and, when it fails, the names
a session on the server may still write (``cut``), so the upload can hold them.

Works through a key restricted with ``command="/usr/bin/rrsync -wo -no-del -no-lock DIR",restrict``
(as keygen prints it, ssh.authorized_keys_line): only transfers to the server, no remote shell
command, no option rrsync refuses (never --delete* or --remove-*).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import notify, runner, ssh
from .config import Config
from .errors import DashcamError, TryLater
from .log import get as get_logger
from .record import Record

# a child of the upload's logger: its lines are the upload's story in the journal
log = get_logger("dashcam.upload.rsync")

BACKOFF_MAX = 60.0
# rrsync refusing a session while none of ours runs: the server side of a session cut
# earlier holds its lock until that rsync's --timeout (io_timeout) ends it
LOCK_GRACE = 10.0
LOCK_RETRY_MAX = 5.0
# A round's checksum pass runs as this many rsync sessions at once, split by bytes. One
# --checksum rsync hashes all of its files on the Pi while building its file list, and only
# then does the server hash its copies: two sessions keep both ends (and both of a Pi's
# cores) busy at once. A key without -no-lock takes one session at a time: then one part.
VERIFY_PARTS = 2

RRSYNC_BUSY = "Another instance of rrsync"       # its one-session lock (a key without -no-lock)
PARTIAL_TRANSFER = (23, 24)  # rsync: some files were not transferred / vanished; the session ended in order
SENT_MARK = "dashcam-sent"
_SENT = re.compile(SENT_MARK + r" (\d+) (.+)$")


# --- reading rsync's output -------------------------------------------------------------------


ESCAPE = re.compile(rb"\\#([0-7]{3})")
NEW = "+" * 9  # the attributes of an item the receiver does not have at all
UNCLEAR = "?" * 11  # a name the answer gave twice, differently: proves nothing


def unescape(name: str) -> Optional[str]:
    """A name as rsync printed it -> the name (as os.fsdecode gives it), or None if it is no
    name rsync could have printed.

    rsync prints every byte below 0x20 but tab, every byte that is not a printable character
    in its locale (the tools' C.UTF-8 here: invalid UTF-8), and the backslash of any ``\\#``
    followed by three digits, as ``\\#ooo`` (octal): so every ``\\#ooo`` it prints is an
    escape, and undoing them gives the name's bytes exactly.
    """
    raw = name.encode("utf-8", "surrogateescape")

    def byte(m: "re.Match[bytes]") -> bytes:
        value = int(m.group(1), 8)
        if value > 0xFF:
            raise ValueError(m.group(0))
        return bytes((value,))

    try:
        return os.fsdecode(ESCAPE.sub(byte, raw))
    except ValueError:
        return None


def parse_itemized(stdout: str) -> Dict[str, str]:
    """``--itemize-changes`` output -> {name: code} for the regular files it names (directories
    and other lines ignored), names unescaped (see unescape). Given twice (``-ii``), rsync names
    unchanged files too, with a code such as ``.f`` and nine spaces."""
    out: Dict[str, str] = {}
    for line in stdout.split("\n"):
        code, sep, name = line[:11], line[11:12], line[12:]
        if len(code) != 11 or sep != " " or not name or code[0] not in "<>ch.*" or code[1] != "f":
            continue
        decoded = unescape(name)
        if decoded is None:
            continue
        out[decoded] = code if out.get(decoded, code) == code else UNCLEAR
    return out


def identical(code: Optional[str]) -> bool:
    """The code of a ``--checksum --itemize-changes`` line says the server's copy is identical:
    nothing to transfer (``.f``), no checksum (``c``) or size (``s``) difference, not new."""
    return (code is not None and len(code) == 11 and code[:2] == ".f" and code[2] != "c" and code[3] != "s"
            and "+" not in code and "?" not in code)


_STAT = re.compile(r"^(Total bytes sent|Literal data|Matched data): ([\d,.]+)", re.MULTILINE)


def parse_stats(stdout: str) -> Dict[str, int]:
    """rsync --stats -> {"sent": .., "literal": .., "matched": ..} (bytes)."""
    names = {"Total bytes sent": "sent", "Literal data": "literal", "Matched data": "matched"}
    out = {v: 0 for v in names.values()}
    for m in _STAT.finditer(stdout):
        out[names[m.group(1)]] = int(re.sub(r"\D", "", m.group(2)))
    return out


def explain(stderr: str) -> str:
    """The lines of rsync's/ssh's stderr that say what happened, without rsync's generic trailer."""
    lines = [l.strip() for l in (stderr or "").splitlines() if l.strip()]
    useful = [l for l in lines if not l.startswith("rsync error:")] or lines
    return " / ".join(useful[-2:])


def split_by_bytes(files: Sequence, parts: int) -> List[list]:
    """``files`` (each with a ``size``) in at most ``parts`` runs of consecutive files with about
    equal bytes (none empty)."""
    parts = max(1, min(parts, len(files)))
    total = sum(i.size for i in files)
    out: List[list] = [[]]
    size = 0
    for n, item in enumerate(files):
        left = len(files) - n          # files not yet placed, this one included
        # a new part when this file's middle lies past the current part's share
        if out[-1] and len(out) < parts and (size + item.size / 2 > total * len(out) / parts
                                             or left <= parts - len(out)):
            out.append([])
        out[-1].append(item)
        size += item.size
    return out


# --- rsync's failures -------------------------------------------------------------------------


class ServerRefused(DashcamError):
    """The server's rrsync refused the request: a setup problem, never retried."""


class ServerCannotWrite(DashcamError):
    """The key was accepted, but the server's rsync could not write there (permissions, a full
    disk, a read-only filesystem): the server needs fixing, retrying now does not help."""


class UploadFailed(DashcamError):
    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


class ServerBusy(TryLater):
    """A key without -no-lock, and its one session is not ours: try again later, not a failure."""


# errors of the server's rsync (receiver or generator), by the errno it prints after the message
RECEIVER_ERROR = re.compile(r"^rsync: .*\((13|28|30|122)\)\s*$", re.MULTILINE)
RRSYNC_LOCKED = re.compile(r"Another instance of rrsync is already accessing", re.IGNORECASE)


def classify(cfg: Config, returncode: int, stderr: str) -> Optional[DashcamError]:
    """A fatal, explained error for failures that retrying cannot fix; None when the failure may pass."""
    fatal = ssh.refused(cfg, stderr)
    if fatal is not None:
        return fatal
    if ("rrsync error" in stderr or "rrsync:" in stderr) and RRSYNC_BUSY not in stderr:
        line = next((l for l in stderr.splitlines() if "rrsync" in l), stderr.strip())
        return ServerRefused(f"the server's rrsync refused the upload: {line.strip()}")
    return ssh.key_missing(cfg, stderr) or cannot_write(cfg, stderr)


def cannot_write(cfg: Config, stderr: str, then: str = "; the clips stay in staging and go with the next upload"
                 ) -> Optional[ServerCannotWrite]:
    """The server's rsync failed to write (the key itself was accepted): which cause, its fix, ``then``."""
    m = RECEIVER_ERROR.search(stderr or "")
    if m is None:
        return None
    up = cfg.upload
    # rrsync runs rsync on /proc/self/fd/N, a descriptor of a directory under the key's: drop it
    said = re.sub(r"/proc/self/fd/\d+/?", "", m.group(0).strip())
    where = f"{up.dest_path} in the directory the key is restricted to"
    errno_ = m.group(1)
    if errno_ == "13":
        return ServerCannotWrite(
            f"the server accepted the key, but its user {up.user} may not write in {where} ({said}). "
            f"On the server, give {up.user} write access there (e.g. chown -R {up.user} on that directory)" + then
        )
    if errno_ in ("28", "122"):
        return ServerCannotWrite(
            f"the server's disk (or {up.user}'s quota) holding {where} is full ({said}). "
            "Free space on the server" + then
        )
    return ServerCannotWrite(
        f"the server's filesystem holding {where} is read-only ({said}). On the server, find out why "
        "(mounted read-only, or remounted so after a disk error: dmesg, findmnt) and make it writable" + then
    )


def is_transient(returncode: int, stderr: str) -> bool:
    if returncode in (10, 12, 30, 35):
        return True
    if returncode == 255 and (ssh.TRANSIENT.search(stderr or "") or RRSYNC_LOCKED.search(stderr or "")):
        return True
    return False


def probe(cfg: Config, options: List[str], dest: str, timeout: float) -> runner.Result:
    """A dry-run rsync of an empty folder to ``dest`` on the server, connected as the upload
    connects (doctor: is the key accepted, is it restricted?). Its failure is returned, not raised."""
    with tempfile.TemporaryDirectory(prefix="dashcam-doctor-") as empty:
        argv = [cfg.tools.rsync, "-e", shlex.join(ssh.ssh_argv(cfg)), "--dry-run", "-r", *options,
                empty + "/", f"{ssh.remote_host(cfg)}:{dest}"]
        return runner.run(argv, timeout=timeout, changes_state=False, check=False)


def refuses_delete(stderr: str) -> bool:
    """rrsync's answer to --delete through a key with -no-del: the option "is disabled"."""
    return "rrsync" in stderr and "disabled" in stderr


# --- sessions and progress --------------------------------------------------------------------


class Sessions:
    """Our rsync sessions to the server. Any number at once, until rrsync refuses one for its
    one-session lock (a key without -no-lock): from then on a session starts only when none
    of ours runs. A thread waiting here holds no session, so waiting cannot deadlock."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.single = False

    def enter(self) -> None:
        with self.cond:
            while self.single and self.active:
                self.cond.wait()
            self.active += 1

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def refused(self) -> Tuple[bool, int]:
        """A session was refused (and has left): (first refusal, how many of ours still run)."""
        with self.cond:
            first, self.single = not self.single, True
            return first, self.active


class SendProgress(threading.Thread):
    """Follows rsync's --log-file while a send runs and reports (files, bytes) every few seconds."""

    def __init__(self, path: str, report: Callable[[int, int], None], interval: float = 5.0):
        super().__init__(name="upload-progress", daemon=True)
        self.path = path
        self.report = report
        self.interval = interval
        self.done = threading.Event()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def run(self) -> None:
        while not self.done.wait(self.interval):
            files, size = 0, 0
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        m = _SENT.search(line.rstrip("\n"))
                        if m and not m.group(2).endswith("/"):  # directories are logged too
                            files += 1
                            size += int(m.group(1))
            except FileNotFoundError:
                continue
            self.report(files, size)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _nothing(*args) -> None:
    pass


class Sent(Record):
    """What a send did: ``failure`` why not every file was taken (None: all were), rsync's --stats."""

    failure: Optional[str]
    stats: dict  # parse_stats


# --- the tool ---------------------------------------------------------------------------------


class Rsync:
    """rsync to upload.host through its rrsync key, over one shared ssh connection.

    ``files`` in every call: objects with ``remote`` (the name below upload.dest_path), ``local``
    (the staged file) and ``size``. ``run``: how a command runs (runner.run); ``sleep`` and
    ``backoff_base``: the waits between retries."""

    def __init__(self, cfg: Config, *, sleep: Callable[[float], None] = time.sleep, backoff_base: float = 2.0,
                 run: Callable[..., runner.Result] = runner.run):
        self.cfg = cfg
        self.sleep = sleep
        self.backoff_base = backoff_base
        self.execute = run
        self.tree = os.path.join(cfg.paths.state_dir, "upload-tree")
        self.list_dir = os.path.join(cfg.paths.state_dir, "upload-lists")
        self.control_dir: Optional[str] = None
        # a round's verification runs beside the next round's send: two sessions of one key at
        # once, which an rrsync key without -no-lock refuses ("Another instance of rrsync");
        # then the rounds go one session at a time
        self.sessions = Sessions()

    @property
    def single_session(self) -> bool:
        return self.sessions.single

    # --- the tree and the connection --------------------------------------------------------

    def link(self, files: Iterable) -> None:
        """Symlinks in the server's layout; each rsync picks its files with --files-from."""
        for item in files:
            link = os.path.join(self.tree, item.remote)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            os.symlink(item.local, link)

    def control_path(self) -> str:
        """A short private socket path (sun_path holds 108 bytes) for the shared ssh connection."""
        if self.control_dir is None:
            self.control_dir = tempfile.mkdtemp(prefix="dashcam-ssh-")
        return os.path.join(self.control_dir, "cm")

    def clean(self) -> None:
        """End the shared connection; remove the tree and the lists (a killed run's too)."""
        if self.control_dir is not None:
            ssh.close_shared(self.cfg, self.control_path())
            shutil.rmtree(self.control_dir, ignore_errors=True)
            self.control_dir = None
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.rmtree(self.list_dir, ignore_errors=True)

    def base(self) -> List[str]:
        return [self.cfg.tools.rsync, "-e", shlex.join(ssh.ssh_argv(self.cfg, self.control_path()))]

    def destination(self) -> str:
        dest = self.cfg.upload.dest_path.rstrip("/") or "."
        return f"{ssh.remote_host(self.cfg)}:{dest}/"

    def common_options(self) -> List[str]:
        opts = ["--recursive", "--copy-links", f"--timeout={self.cfg.upload.io_timeout}"]
        if self.cfg.upload.bwlimit:
            opts.append(f"--bwlimit={self.cfg.upload.bwlimit}")
        return opts

    # --- what the upload asks ---------------------------------------------------------------

    def listing(self, files: Sequence) -> Dict[str, str]:
        """{name: itemize code} of a dry run that names every file (``-ii``: unchanged ones too)
        and moves no data: a code ending in NEW says the server lacks it."""
        res = self.rsync(
            self.common_options() + ["--dry-run", "--itemize-changes", "--itemize-changes"],
            files,
            "checking which files the server lacks",
            timeout=300,
        )
        return parse_itemized(res.stdout)

    def send(self, files: Sequence, *, resume: bool, progress: Callable[[int, int], None] = _nothing,
             sending: Callable[[List[str]], None] = _nothing, cut: Callable[[List[str], str], None] = _nothing) -> Sent:
        """Send ``files``; ``resume``: these names hold our own partial files and may be rewritten.

        ``progress(files, bytes)``: what this send finished so far, every few seconds;
        ``sending(names)``: the names a session is writing now (empty: none); ``cut(names, why)``:
        a session that failed may live on at the server, writing these names."""
        opts = self.common_options() + ["--times", "--omit-dir-times", "--mkpath", "--partial", "--stats"]
        size = sum(i.size for i in files)
        # each file rsync finishes is logged here, read by a thread for the progress line
        progress_log = os.path.join(self.control_path() + "-sent.log")
        opts += [f"--log-file={progress_log}", f"--log-file-format={SENT_MARK} %l %n"]
        watcher = SendProgress(progress_log, progress)
        watcher.start()
        try:
            # --ignore-existing: never touch a file already on the server. A retry after a cut
            # drops it: these names now hold our own partial files, to be completed.
            res = self.rsync(
                opts if resume else opts + ["--ignore-existing"],
                files,
                "resuming" if resume else "sending",
                timeout=600 + size / 16384,
                retry_options=opts,
                partial_ok=True,
                sending=sending,
                cut=cut,
            )
        finally:
            watcher.stop()
        failure = None
        if res.returncode:
            # one file the server could not take must not hold back the others: each is
            # proven (or not) by the checksum pass, and what failed keeps this reason
            cause = cannot_write(self.cfg, res.stderr, then="")
            failure = str(cause) if cause else (
                f"rsync exited with {runner.describe_returncode(res.returncode)}: {explain(res.stderr) or 'no message'}")
        return Sent(failure, parse_stats(res.stdout))

    def checksums(self, files: Sequence) -> Dict[str, str]:
        """The verification: {name: itemize code} of every file the server's answer names; a
        name is proven identical only by a code for which ``identical`` holds.

        Up to VERIFY_PARTS rsync sessions at once, each over a part of ``files`` (one part once
        the server takes one session at a time; a part it refuses waits for the others)."""
        parts = split_by_bytes(files, 1 if self.single_session else VERIFY_PARTS)
        results: List[Optional[Dict[str, str]]] = [None] * len(parts)
        errors: List[Optional[BaseException]] = [None] * len(parts)

        def one(n: int) -> None:
            try:
                results[n] = self.checksum_pass(parts[n])
            except BaseException as e:  # handed on below, after every part has ended
                errors[n] = e

        helpers = [threading.Thread(target=one, args=(n,), name="upload-verify-part", daemon=True)
                   for n in range(1, len(parts))]
        for t in helpers:
            t.start()
        one(0)
        for t in helpers:
            t.join()
        answer: Dict[str, str] = {}
        for result, error in zip(results, errors):
            if error is not None:
                raise error
            answer.update(result or {})
        return answer

    def checksum_pass(self, files: Sequence) -> Dict[str, str]:
        size = sum(i.size for i in files)
        res = self.rsync(
            # -ii: an identical file is named too (".f"), so it is proven, not inferred from silence
            self.common_options() + ["--checksum", "--dry-run", "--itemize-changes", "--itemize-changes"],
            files,
            "verifying checksums",
            timeout=600 + size / 5_000_000,
        )
        return parse_itemized(res.stdout)

    # --- one rsync, retried -----------------------------------------------------------------

    def rsync(
        self,
        options: List[str],
        files: Sequence,
        what: str,
        timeout: float,
        retry_options: Optional[List[str]] = None,
        partial_ok: bool = False,
        sending: Callable[[List[str]], None] = _nothing,
        cut: Callable[[List[str], str], None] = _nothing,
    ) -> runner.Result:
        """One rsync over the tree, retried with exponential backoff when the failure may pass.

        ``retry_options``: the options of a retry, when they differ (a cut transfer resumes).
        ``partial_ok``: rsync's "some files could not be transferred" (status 23, 24) is returned,
        not raised: the session ended in order, and the checksum pass tells which files made it.
        """
        # a list of its own: a round's verification runs beside the next round's send
        os.makedirs(self.list_dir, exist_ok=True)
        # NUL-separated (--from0): a name may hold any byte but NUL and "/", newlines included
        fd, list_file = tempfile.mkstemp(dir=self.list_dir, suffix=".lst")
        with open(fd, "wb") as f:
            f.write(b"".join(os.fsencode(i.remote) + b"\0" for i in files))
        # a send that fails may leave its server side running on: what it was writing is held
        writes = [] if "--dry-run" in options else [i.remote for i in files]
        try:
            return self._rsync(options, list_file, what, timeout, retry_options, writes, partial_ok, sending, cut)
        finally:
            os.unlink(list_file)

    def _rsync(self, options, list_file, what, timeout, retry_options, writes, partial_ok, sending, cut
               ) -> runner.Result:
        retries = self.cfg.poll.upload_retries
        attempt = 0
        locked_out, lock_waits = 0.0, 0  # for an rrsync lock that none of our sessions holds
        while True:
            opts = retry_options if attempt and retry_options is not None else options
            argv = self.base() + opts + ["--from0", f"--files-from={list_file}", self.tree + "/", self.destination()]
            self.sessions.enter()
            try:
                if writes:  # sends run on the thread that owns the ledger, checksum passes do not
                    sending(writes)
                result = self.execute(argv, timeout=timeout, changes_state=False)
                if writes:
                    sending([])
                return result
            except runner.CommandFailed as e:
                failed: Optional[runner.CommandFailed] = e
            except runner.CommandTimeout:
                failed = None
            except runner.CommandNotFound as e:
                raise DashcamError(str(e))
            finally:
                self.sessions.leave()
            if partial_ok and failed is not None and failed.returncode in PARTIAL_TRANSFER:
                if writes:  # it ended in order: its server side is done, nothing to hold
                    sending([])
                return runner.Result(argv, failed.returncode, failed.stdout, failed.stderr)
            if writes and (failed is None or RRSYNC_BUSY not in failed.stderr):
                cut(writes, f"{what} was cut off")
            if failed is None:
                transient, reason = True, f"{what} did not finish within {timeout:.0f} s"
            else:
                if RRSYNC_BUSY in failed.stderr:
                    if writes:  # refused before it began: it wrote nothing
                        sending([])
                    first, ours = self.sessions.refused()
                    if first:
                        log.info("the server's rrsync takes one session at a time (its key has no -no-lock): "
                                 "each round is verified before the next is sent")
                    if ours:
                        continue  # sessions.enter() waits for our other session(s) to end
                    # none of ours holds the lock: the server's side of a session cut earlier
                    # (it ends at its --timeout) or another client of the same key
                    if locked_out < self.cfg.upload.io_timeout + LOCK_GRACE:
                        delay = min(LOCK_RETRY_MAX, self.backoff_base * 2 ** lock_waits)
                        log.info("the server's rrsync is busy with a session that is not ours; %s again in %.0f s",
                                 what, delay)
                        self.sleep(delay)
                        lock_waits += 1
                        locked_out += max(delay, 1.0)
                        continue
                    raise ServerBusy(
                        f"{what}: the server's rrsync is still busy with a session that is not ours "
                        "(one cut earlier lasts until the server notices it); the next policy tick tries again"
                    )
                fatal = classify(self.cfg, failed.returncode, failed.stderr)
                if fatal is not None:
                    raise fatal
                transient = is_transient(failed.returncode, failed.stderr)
                reason = f"{what} failed: rsync exited with {runner.describe_returncode(failed.returncode)}: " + (
                    explain(failed.stderr) or "no message"
                )
            if not transient or attempt >= retries:
                raise UploadFailed(reason + ("" if not transient else f" (after {attempt} retries)"), transient)
            attempt += 1
            delay = min(BACKOFF_MAX, self.backoff_base * 2 ** (attempt - 1))
            log.warning("%s; retry %d of %d in %.0f s", reason, attempt, retries, delay)
            notify.status(f"upload: {what} failed, retry {attempt}/{retries} in {delay:.0f} s")
            self.sleep(delay)
