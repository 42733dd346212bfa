"""Ingest: copy every new clip from the camera's card to staging, once, verified, never partial.

    ingest_device   mount the card read-only (card.py) -> ingest_source -> unmount -> camera back
    ingest_source   lock staging -> scan the card (footage.py: globs, known keys skipped unread)
                      -> refusals and the loss check (coverage.py) -> order (events first, newest)
                      -> copy (copier.py: read + SHA-256 + durable write + ledger row, clip by clip)
                      -> LastIngest, the run's account, in the ledger

``ingest_source`` works on any directory (an SD card in a reader, a test tree);
``ingest_device`` mounts the camera read-only around it (card.py) and puts the camera back afterwards.
This module is the run; its account, LastIngest, is a record in records.py (re-exported here) so its
readers (status, the policy tick, MQTT) pay for neither this module nor the copy engine.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Callable, Optional, Sequence, Set, Tuple

from .errors import DashcamError, TryLater
from .log import get as get_logger
from .records import LastIngest  # the run's account (the ledger's "last_ingest"), light for its readers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import coverage
    from .config import Config
    from .ledger import Ledger
    from .footage import Candidate
    from .copier import IngestResult
    from .staging import Owner

log = get_logger("dashcam.ingest")


# --- one run ------------------------------------------------------------------------------------


def _lock_staging(incoming: str) -> int:
    import fcntl

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
) -> "IngestResult":
    """Copy every new clip below ``source_dir`` into staging. Never raises for one bad clip.

    With ``card`` (the camera's own card, mounted by ingest_device) the recording windows since
    the previous ingest are checked against the card's clips too (coverage.check_card)."""
    should_stop = should_stop or (lambda: False)
    try:
        st = os.stat(source_dir)
    except OSError as e:  # missing, or a directory on the way it may not enter: said as it is
        raise DashcamError(f"{source_dir}: {e.strerror or e}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise DashcamError(f"{source_dir}: not a directory")
    from . import copier, footage, notify
    from .ledger import Ledger
    from .staging import owner_of

    result = copier.IngestResult()
    started = time.time()
    incoming = cfg.paths.incoming
    owner: "Owner" = None
    if not dry_run:
        os.makedirs(cfg.paths.local_staging, exist_ok=True)
        owner = owner_of(cfg.paths.local_staging)
        copier.makedirs_owned(incoming, owner)
        copier.makedirs_owned(cfg.paths.ready, owner)
    lock_fd = _lock_staging(incoming) if not dry_run else None
    try:
        if not dry_run:
            copier.clean_incoming(incoming)
        if dry_run and not os.path.exists(cfg.paths.ledger):
            # no ledger yet: every clip is new, and a dry run creates no ledger (nor its folder)
            ledger_or_none: Optional[Ledger] = None
        else:
            ledger_or_none = Ledger(cfg.paths.ledger)
        with ledger_or_none or _NoLedger() as ledger:
            known: Set[Tuple[str, int, int]] = ledger.known_keys(cfg.camera.name)
            event_patterns = [footage.glob_regex(g) for g in cfg.ingest.event_globs]
            found = 0
            new = []
            on_card = []  # every footage file, for the check of lost footage
            for rel, size, mtime_ns in footage.footage_files(source_dir, cfg.ingest.globs, cfg.ingest.extensions,
                                                           cfg.ingest.after_date):
                found += 1
                on_card.append((rel, size, mtime_ns))
                if footage.ledger_key(rel, size, mtime_ns) in known:  # copied before: not read, not even looked at further
                    continue
                new.append(footage.candidate(rel, size, mtime_ns, event_patterns))
            result.known = found - len(new)
            verdicts = [(c, footage.refusal(c)) for c in new]
            refused = [(c, why) for c, why in verdicts if why]
            todo = footage.order([c for c, why in verdicts if not why], cfg.ingest.newest_first)
            total = sum(c.size for c in todo)
            log.info(
                "%s: %d footage files, %d already in the ledger, %d new (%s)%s",
                source_dir, found, result.known, len(todo), notify.human_bytes(total),
                f", {len(refused)} refused" if refused else "",
                extra={"DASHCAM_FILES": len(todo), "DASHCAM_BYTES": total},
            )
            for clip, why in refused:
                log.error("%s: %s", clip.source_path, why, extra={"DASHCAM_FILE": footage.ledger_path(clip.source_path)})
                result.failed.append((footage.ledger_path(clip.source_path), why))
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
                copier.copy_all(cfg, source_dir, todo, total, ledger, result, should_stop, owner,
                                _budget_gate(cfg, ledger, todo))
            except DashcamError as e:
                error = str(e)
                raise
            finally:
                LastIngest(
                    wall=time.time(), files=result.files, bytes=result.bytes,
                    result="failed" if error else result.result, reason=error,
                    source=source_dir, known=result.known, failed=len(result.failed),
                    pending=result.pending, refused=result.refused, seconds=round(time.time() - started, 3),
                    damaged=result.damaged,
                ).write(ledger)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return result


class _NoLedger:
    """What a dry run reads where there is no ledger yet: no clip is known."""

    def __enter__(self) -> "_NoLedger":
        return self

    def __exit__(self, *exc) -> None:
        pass

    @staticmethod
    def known_keys(camera: str) -> Set[Tuple[str, int, int]]:
        return set()


def _check_card(cfg, ledger, source_dir, on_card, new, card) -> int:
    """Damaged clips and footage lost before it was copied (coverage.py); the number of damaged
    new clips. A failure of the check is one line: it never stops the copy."""
    try:
        from . import coverage

        return coverage.check_card(cfg, ledger, source_dir, on_card, new, card)["damaged"]
    except Exception as e:  # noqa: B902 - whatever the card or the ledger held, the copy goes on
        log.error("checking the card for damaged clips and lost footage failed: %s: %s", type(e).__name__, e)
        return 0


def _record_refused(ledger: Ledger, camera: str, clip: "Candidate", why: str) -> None:
    """A ``failed`` row with the reason, so status and ``files --state failed`` show the clip."""
    from .footage import ledger_key
    from .ledger import LedgerError

    try:
        ledger.record_failed(camera, *ledger_key(clip.source_path, clip.size, clip.mtime_ns), event=clip.event,
                             reason=why)
    except LedgerError as e:  # its escaped key names another clip's row: the message above stands
        log.error("%s: no ledger row for the refusal: %s", clip.source_path, e)


def _budget_gate(cfg, ledger: Ledger, todo: Sequence["Candidate"]):
    """The power budget on battery (budget.py), asked before each clip starts; None if it cannot be."""
    from . import budget
    from .policy import SystemClock

    try:
        return budget.IngestGate(ledger.get_state, ledger.put_state, cfg.camera.name, [(c.size, c.event) for c in todo],
                                 SystemClock().boot_id(), time.monotonic, log)
    except Exception as e:  # never a reason not to copy
        log.warning("power budget unavailable, copying without it: %s", e)
        return None


def ingest_unprivileged(
    cfg: Config, source_dir: str, *, dry_run: bool = False, should_stop: Optional[Callable[[], bool]] = None,
    reader: Optional[Tuple[int, int]] = None, card: Optional["coverage.Card"] = None,
) -> "IngestResult":
    """ingest_source, run as ``reader`` (the owner of staging) with no capabilities when given:
    root mounts the card, but never reads it nor writes staging."""
    if reader is None:
        return ingest_source(cfg, source_dir, dry_run=dry_run, should_stop=should_stop, card=card)
    from . import privilege
    from .copier import IngestResult

    log.info("reading %s as uid %d, gid %d", source_dir, *reader)

    def copy() -> "IngestResult":
        if os.path.isdir(source_dir) and not os.access(source_dir, os.R_OK | os.X_OK):
            raise DashcamError(f"{source_dir}: the copy runs as uid {reader[0]} (the owner of staging), which "
                               f"cannot read it; mount the card so that user can (mount -o ro,uid={reader[0]})")
        return ingest_source(cfg, source_dir, dry_run=dry_run, should_stop=should_stop, card=card)

    return privilege.run_as(
        reader, copy,
        encode=IngestResult.to_json, decode=IngestResult.from_json, should_stop=should_stop or (lambda: False),
    )


def put_camera_back(cfg: Config, *, dry_run: bool = False) -> str:
    from . import battery, camera  # the camera helper's modules; imported only on the device path
    from .policy import mode_after_ingest  # the policy owns where the camera goes

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
) -> "IngestResult":
    """Mount the camera's card read-only, ingest it, unmount, put the camera back (always)."""
    from . import card, coverage, privilege, runner
    from .copier import IngestResult

    camera_back = camera_back or put_camera_back
    devnode = devname if devname.startswith("/") else os.path.join("/dev", devname)
    try:
        try:
            reader = privilege.staging_user(cfg.paths.local_staging)
            with card.mounted(cfg, devnode, reader, dry_run=dry_run) as mountpoint:
                if dry_run and not os.path.isdir(mountpoint):
                    return IngestResult()
                found = coverage.Card(card.fs_uuid(devnode, cfg.poll.mount_timeout_seconds))
                return ingest_unprivileged(cfg, mountpoint, dry_run=dry_run, should_stop=should_stop, reader=reader,
                                           card=found)
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
        import threading

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

    from . import notify
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
