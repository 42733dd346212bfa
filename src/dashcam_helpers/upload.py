"""Upload: staged footage reaches the home server, is proven identical there, and only then leaves the Pi.

One run uploads the whole backlog (ledger states staged/uploaded) over one shared ssh
connection (ControlMaster; every rsync still is its own rrsync session). Event/locked clips go
first: they are sent and verified, in rounds of their own, before any other clip is sent; then
the rest, newest first or oldest first (upload.order; the same rule as the ingest's,
layout.order). An event clip staged while the rest is being sent goes before the next round.

1. each clip gets its name on the server (plan: upload.layout, by default
   ``DEST/<camera>/<YYYY>/<MM>/<DD>/<folder on the card>/<file>``), written in one go by each
   rsync (through rsync.py's tree of links);
2. one dry run asks the server which of those names it lacks (no data moves); the ones it
   names as lacking are remembered in the ledger ("upload_in_flight") before a byte is sent,
   and a name it does not name as there counts as lacking;
3. then, in rounds of about a minute of sending each (ROUND_SECONDS): the missing files are
   sent with ``--ignore-existing`` (a file already on the server is never touched) and
   ``--partial``; a name from the in-flight
   list that is now on the server holds our own partial file from a cut run and is completed
   (rsync's delta transfer uses it as basis: what arrived is not sent again);
4. verification: ``rsync --checksum --dry-run -ii`` over the round must name the file (its
   exact bytes, rsync's ``\\#ooo`` escapes undone) as identical (``.f``) before the ledger says
   ``verified``; silence, a line that names another file or no answer prove nothing;
   it runs in a thread while the next round is sent (only rsync runs there; the main thread
   writes the ledger), so the checksum pass costs time only for the last round; and it runs
   as two sessions over halves of the round, because one such rsync hashes all of the Pi's
   files before the server hashes any of its own;
5. a name the server already held with other content is a collision: the clip goes beside
   it as ``<name>.<sha8>.<ext>`` (logged), the other file stays as it was;
6. retention: verified clips leave staging (at once with keep_days 0), unverified never.

A cut send can outlive its client on the server. rsync's --timeout does not end the
server's side: its generator's keep-alives keep going into the socket buffers of a
connection whose other end is gone, so it runs until the server's sshd notices (TCP gives
up after about 15 minutes; ClientAliveInterval, when the server sets it, is sooner). When it
ends, --partial puts its partial file under the clip's name, over whatever a later session
completed there in the meantime (checked on this machine: a verified 8 MiB file became the
cut session's 2.5 MiB). So every name a failed send was writing is held
(``upload_hold``: names and an end time, ``upload.cut_session_seconds`` after the cut), and
so is what a run was sending when it stopped or died (``upload_run``, a marker a run that
ends removes). A held name is not sent again by a later run, and no checksum pass that
started while it was held marks it verified, so it stays in staging. Once the hold ends it
is resumed and verified like any other cut file.

How rsync does each step (the tree of links, argv, retries, rrsync's lock and refusals,
reading its answers, why ``--partial``) is rsync.py's; the Uploader gets that tool by
parameter (``rsync=``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from . import layout, notify, server, ssh
from .config import Config
from .errors import EX_FAILURE, EX_OK, DashcamError, TryLater
from .ledger import UPLOAD_HOLD_KEY, Clip, Ledger
from .record import Record
from .records import LastUpload  # light for its readers (the policy tick)
from .rsync import NEW, UNCLEAR, Rsync, ServerBusy, UploadFailed, identical
from .staging import fsync_dir
from .log import get as get_logger

log = get_logger("dashcam.upload")

# A round is sent, then verified (beside the next round's send), then leaves staging. It
# holds about ROUND_SECONDS of sending at the rate the round before it went. On a Pi's WiFi
# (a few MB/s) verified clips leave staging every minute or so, each checksum pass reads
# what the page cache still holds, and the last round's pass, the one nothing overlaps, is
# short. Over a fast link, where the CPU and not the link is what limits (a wired LAN), a
# checksum pass beside a send only competes with it for the CPU: there the rounds grow
# large and few. The first round, before any rate is known, holds ROUND_FIRST_BYTES.
ROUND_SECONDS = 60.0
ROUND_FIRST_BYTES = 256 * 1024 * 1024
ROUND_MIN_BYTES = 16 * 1024 * 1024
ROUND_MAX_BYTES = 4 * 1024 * 1024 * 1024
ROUND_FILES = 400
IN_FLIGHT_KEY = "upload_in_flight"
HOLD_KEY = UPLOAD_HOLD_KEY  # a Hold: see "A cut send" above
RUN_KEY = "upload_run"  # set while a run is on: found at the start of a run, the last one died


# --- the upload's state documents in the ledger -----------------------------------------------


class Hold(Record):
    """The ledger's "upload_hold": each name a cut session on the server may still write, with
    the end of its hold (wall clock); ``until``, the last of them, for readers that only ask
    whether a hold is on. Read back by Ledger.upload_holds."""

    until: float
    names: dict  # {name: end}

    def write(self, ledger: Ledger) -> None:
        ledger.put_state(HOLD_KEY, self.asdict())


# --- pure functions ---------------------------------------------------------------------------


STAGED_DAY = re.compile(r"(?:^|/)(\d{4})-(\d{2})-(\d{2})/[^/]+\Z")


def clip_day(clip: Clip) -> datetime.date:
    """The day the camera showed when it recorded ``clip``, whatever the Pi's time zone: the one
    the ingest chose for its staging folder; for a path without it, dated as the ingest dates."""
    day = layout.staged_day(clip.staged_path)
    if day is not None:
        return day
    from .footage import clip_date
    try:
        return clip_date(clip.source_path, clip.mtime_ns)
    except OverflowError:  # ingest refuses such a clip; never a reason to stop an upload
        return datetime.date(1970, 1, 1)


def remote_path(template: str, clip: Clip) -> str:
    """The clip's path below upload.dest_path: ``template`` (upload.layout) filled with its camera,
    its day (clip_day), its folders and name on the card and whether it is an event clip."""
    return layout.server_path(template, clip.camera, clip_day(clip), clip.source_path, clip.event)


def legacy_remote_path(camera: str, file_name: str, mtime_ns: int) -> str:
    """``<camera>/<YYYY>/<MM>/<DD>/<file>``: where a clip went before the card's folders were kept
    (layout.LEGACY_LAYOUT), on the day the camera showed when it recorded the clip.

    ``file_name`` is the staged path (``<camera>/<YYYY-MM-DD>/<name>``): its day is the one ingest
    chose (`footage.clip_date`: the timestamp in the clip's name, else its mtime read as the camera's
    wall clock), so staging and the server agree. A path without that day is dated the same way here.
    """
    found = STAGED_DAY.search(file_name)
    if found:
        year, month, day = found.groups()
    else:
        from .footage import clip_date
        try:
            when = clip_date(file_name, mtime_ns)
        except OverflowError:  # ingest refuses such a clip; never a reason to stop an upload
            when = datetime.date(1970, 1, 1)
        year, month, day = f"{when:%Y}", f"{when:%m}", f"{when:%d}"
    return f"{camera}/{year}/{month}/{day}/{os.path.basename(file_name)}"


def alternate_name(path: str, sha256: str) -> str:
    """``a/b/clip.mp4`` -> ``a/b/clip.<sha8>.mp4``: where a clip goes when its name is taken
    (a long name is shortened to fit the server's NAME_MAX bytes: layout.with_suffix)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, layout.with_suffix(base, f".{sha256[:8]}"))


@dataclass(frozen=True)
class Item:
    clip: Clip
    remote: str  # relative to upload.dest_path
    local: str  # the staged file

    @property
    def size(self) -> int:
        return self.clip.size


def plan(clips: Iterable[Clip], ready: str, template: str = layout.DEFAULT_LAYOUT, newest_first: bool = True,
         keep: Set[str] = frozenset()) -> List[Item]:
    """The backlog in upload order (event/locked clips first, then newest first or oldest first:
    layout.order) with each clip's name on the server (``template``: upload.layout).

    A clip that was already sent keeps the name it was sent under; so does a clip staged before
    the card's folders were kept whose old name (legacy_remote_path) is in ``keep``: our partial
    file on the server, or a name a cut session may still write. Two clips of one plan that
    would share a name (a camera reusing one on the same day) get distinct names: the first in
    the order keeps it.
    """
    ordered = layout.order(sorted(clips, key=lambda c: c.id), newest_first)
    taken: Dict[str, str] = {}
    items = []
    for clip in ordered:
        name = clip.remote_path
        if not name and keep and layout.is_legacy_staged(clip.staged_path):
            old = legacy_remote_path(clip.camera, clip.staged_path, clip.mtime_ns)
            name = old if old in keep else None
        name = name or remote_path(template, clip)
        if name in taken and taken[name] != clip.sha256:
            name = alternate_name(name, clip.sha256 or f"{clip.id:08d}")
        taken.setdefault(name, clip.sha256 or "")
        items.append(Item(clip, name, os.path.join(ready, clip.staged_path or "")))
    return items


def take_round(items: Sequence[Item], max_bytes: int, max_files: Optional[int] = None) -> Tuple[List[Item], List[Item]]:
    """(the next round, the rest): the first items up to ``max_bytes`` and ROUND_FILES, at least one."""
    max_files = ROUND_FILES if max_files is None else max_files
    size = 0
    for n, item in enumerate(items):
        if n and (size + item.size > max_bytes or n >= max_files):
            return list(items[:n]), list(items[n:])
        size += item.size
    return list(items), []


def next_round_bytes(sent: int, seconds: float, previous: int) -> int:
    """How much the next round holds: ROUND_SECONDS at the rate ``sent`` bytes took ``seconds``
    (within ROUND_MIN_BYTES..ROUND_MAX_BYTES); ``previous`` when nothing was sent."""
    if sent <= 0 or seconds <= 0:
        return previous
    return int(min(ROUND_MAX_BYTES, max(ROUND_MIN_BYTES, sent / seconds * ROUND_SECONDS)))


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Summary:
    files: int = 0  # clips verified on the server in this run
    bytes: int = 0
    sent: int = 0  # bytes rsync sent (data + protocol), from --stats
    literal: int = 0  # file data sent literally (not matched from a partial file already there)
    matched: int = 0
    collisions: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    pruned: int = 0
    held: int = 0  # clips a cut session on the server may still overwrite: checked again later


class Uploader:
    """One upload of the backlog. ``rsync``: the tool that talks to the server (rsync.Rsync, by
    default one made with ``sleep`` and ``backoff_base`` for its retries)."""

    def __init__(
        self,
        cfg: Config,
        ledger: Ledger,
        *,
        dry_run: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        backoff_base: float = 2.0,
        rsync: Optional[Rsync] = None,
    ):
        self.cfg = cfg
        self.ledger = ledger
        self.dry_run = dry_run
        self.clock = clock
        self.rsync = rsync if rsync is not None else Rsync(cfg, sleep=sleep, backoff_base=backoff_base)
        self.summary = Summary()
        self.started = time.monotonic()
        self.total_files = 0
        self.total_bytes = 0
        self.done_files = 0
        self.done_bytes = 0
        self.round_bytes = ROUND_FIRST_BYTES  # what the next round holds (next_round_bytes)
        self.sending: List[str] = []  # the names of the send session on (for a hold if it fails)
        self.send_failures: Dict[str, str] = {}  # name -> why the send that had it did not take every file

    # --- what rsync says ---------------------------------------------------------------------

    @property
    def single_session(self) -> bool:
        return self.rsync.single_session

    def missing_on_server(self, items: Sequence[Item]) -> Tuple[Set[str], Set[str]]:
        """(names the server lacks, those of them it said it lacks). A name is on the server only
        when the listing names it as there; one it does not name at all counts as missing (it is
        sent with --ignore-existing, which never touches a file that is there)."""
        answer = self.rsync.listing(items)
        said = {name for name, code in answer.items() if code[2:] == NEW}
        there = {name for name, code in answer.items() if code[2:] != NEW and code != UNCLEAR}
        unnamed = [i for i in items if i.remote not in answer]
        for item in unnamed:
            log.warning("the server's listing does not name %s; sending it as missing", item.remote,
                        extra={"DASHCAM_FILE": item.clip.source_path})
        return {i.remote for i in items if i.remote not in there}, said

    def send(self, items: Sequence[Item], *, resume: bool) -> None:
        """Send ``items``; ``resume``: these names hold our own partial files and may be rewritten."""
        sent = self.rsync.send(items, resume=resume, progress=self.progress, sending=self.mark_sending,
                               cut=self.hold)
        if sent.failure:
            self.send_failures.update(dict.fromkeys((i.remote for i in items), sent.failure))
            log.error("%s: %s; what arrived is verified, the rest stays in staging", "resuming" if resume else "sending",
                      sent.failure)
        stats = sent.stats
        self.summary.sent += stats["sent"]
        self.summary.literal += stats["literal"]
        self.summary.matched += stats["matched"]
        log.info(
            "sent %d file(s): %d bytes of file data, %d matched from partial files already on the server",
            len(items), stats["literal"], stats["matched"],
            extra={"DASHCAM_BYTES": stats["literal"], "DASHCAM_FILES": len(items)},
        )

    # --- one round --------------------------------------------------------------------------

    def usable(self, items: Sequence[Item]) -> List[Item]:
        out = []
        for item in items:
            try:
                st = os.stat(item.local)
            except OSError as e:
                self.problem(item, f"staged file {item.local} is unreadable: {e.strerror}")
                continue
            if st.st_size != item.clip.size:
                self.problem(item, f"staged file {item.local} has {st.st_size} bytes, the ledger says {item.clip.size}")
                continue
            out.append(item)
        return out

    def problem(self, item: Item, reason: str) -> None:
        log.error("%s", reason, extra={"DASHCAM_FILE": item.clip.source_path})
        self.summary.problems.append(reason)
        self.ledger.note_problem(item.clip.id, reason)

    def upload_in_order(self, items: Sequence[Item], tried: Set[int]) -> List[Item]:
        """Upload a plan: its event/locked clips first, in rounds of their own, each sent and
        verified (a collision's second name too) before any other clip is sent; then the rest,
        in the plan's order. Before each round of the rest, an event clip staged meanwhile (a
        clip not in ``tried``) goes first: the rounds not sent are returned, for the next plan."""
        events = [i for i in items if i.clip.event]
        rest = [i for i in items if not i.clip.event]
        if events:
            log.info("%d event/locked clip(s) first (%s)", len(events), notify.human_bytes(sum(i.size for i in events)))
            self.upload_items(events)
        if not rest:
            return []
        return self.upload_items(rest, stop_for=lambda: self.new_events(tried))

    def new_events(self, tried: Set[int]) -> bool:
        """An event/locked clip staged since this run planned (its id not in ``tried``)."""
        return bool(self.ledger.staged_event_ids() - tried)

    def upload_items(self, items: Sequence[Item], *, collision_pass: bool = False,
                     stop_for: Optional[Callable[[], bool]] = None) -> List[Item]:
        """Send and verify ``items`` in rounds; a name taken by other content goes beside it (once).

        ``stop_for``: asked before each round; True ends the sending there (the rounds before are
        still verified). Returns the items not sent for it."""
        items = self.usable(items)
        if not items:
            return []
        self.rsync.link(items)
        # one listing for the whole plan: which names does the server lack?
        missing, said_missing = self.missing_on_server(items)
        in_flight = set(self.ledger.get_state(IN_FLIGHT_KEY, []))
        # remembered before a byte moves: a name the server said it lacked and that is later
        # found there holds our (possibly partial) file, never someone else's. (A name its
        # answer did not mention is sent too, but never counted as ours before it is proven.)
        self.ledger.put_state(IN_FLIGHT_KEY, sorted(in_flight | said_missing))
        # round k is verified while round k+1 is sent: the checksum pass reads the disks of
        # both ends while the link (the bottleneck on a Pi's WiFi) carries the next round
        collisions: List[Item] = []
        verifying: Optional[Verification] = None
        pending, budget = list(items), self.round_bytes
        try:
            while pending:
                pending = self.within_budget(pending)
                if not pending:
                    break
                if stop_for is not None and stop_for():
                    log.info("event clip(s) staged meanwhile go first; %d other clip(s) wait for them", len(pending))
                    break
                batch, pending = take_round(pending, budget)
                if verifying is not None and self.single_session:
                    collisions += self.settle(verifying)
                    verifying = None
                started = time.monotonic()
                ours = self.send_round(batch, missing, in_flight)
                budget = next_round_bytes(sum(i.size for i in batch if i.remote in ours),
                                          time.monotonic() - started, budget)
                if verifying is not None:
                    collisions += self.settle(verifying)
                self.round_bytes = budget
                verifying = Verification(self, batch, ours, collision_pass)
                verifying.start()
        except Exception:
            # a send failed: what the round before it proved is still recorded
            if verifying is not None and not verifying.settled:
                try:
                    self.settle(verifying)
                except Exception as e:
                    log.warning("the verification of the previous round failed too: %s", e)
            raise
        if verifying is not None:
            collisions += self.settle(verifying)
        if collisions:
            self.upload_items(collisions, collision_pass=True)
        return pending

    def send_round(self, items: Sequence[Item], missing: Set[str], in_flight: Set[str]) -> Set[str]:
        """Send what of ``items`` is ours to send; returns those names (sent now or completed)."""
        fresh = [i for i in items if i.remote in missing]
        resume = [i for i in items if i.remote not in missing and i.remote in in_flight]
        if resume:
            log.info("resuming %d file(s) cut off in an earlier run", len(resume))
            self.send(resume, resume=True)
        if fresh:
            self.send(fresh, resume=False)
        with self.ledger.transaction():
            for item in fresh + resume:
                if item.clip.state == "staged":
                    self.ledger.advance(item.clip.id, "uploaded", remote_path=item.remote)
        return {i.remote for i in fresh + resume}

    def settle(self, verification: "Verification") -> List[Item]:
        """Wait for a round's verification and record it; returns the collisions to upload beside."""
        verification.settled = True
        answer = verification.result()
        return self.record_verification(verification.items, answer, verification.ours, verification.collision_pass,
                                        verification.held_at_start)

    def record_verification(self, items: Sequence[Item], answer: Dict[str, str], ours: Set[str],
                            collision_pass: bool, held_at_start: Set[str] = frozenset()) -> List[Item]:
        collisions: List[Item] = []
        verified: List[Item] = []
        held, until = self.held()
        held = held | set(held_at_start)
        with self.ledger.transaction():
            for item in items:
                code = answer.get(item.remote)
                if item.remote in held:
                    # identical now, but a cut session may yet put its partial copy there
                    self.summary.held += 1
                    ours.discard(item.remote)  # stays in flight: resumed when the hold ends
                    log.info(
                        "%s is on the server, but a cut session may still overwrite it there: checked again after %s",
                        item.remote, time.strftime("%H:%M:%S", time.localtime(until)),
                        extra={"DASHCAM_FILE": item.clip.source_path},
                    )
                elif code is None or code == UNCLEAR:
                    # silence proves nothing: the clip stays unverified, in staging, and is sent
                    # (or checked) again next run
                    self.problem(item, f"the server's checksum answer does not name {item.remote} "
                                       "clearly: not proven, kept in staging for the next run")
                elif identical(code):
                    self.ledger.advance(item.clip.id, "verified", remote_path=item.remote)
                    verified.append(item)
                    log.info(
                        "verified on the server: %s", item.remote,
                        extra={"DASHCAM_FILE": item.clip.source_path, "DASHCAM_BYTES": item.size},
                    )
                elif item.remote not in ours and "+++++++" not in code and not collision_pass:
                    other = alternate_name(item.remote, item.clip.sha256 or f"{item.clip.id:08d}")
                    log.warning(
                        "the server already has %s with other content; leaving it untouched and uploading %s beside it as %s",
                        item.remote, item.clip.source_path, other,
                        extra={"DASHCAM_FILE": item.clip.source_path},
                    )
                    self.summary.collisions.append(item.remote)
                    collisions.append(Item(item.clip, other, item.local))
                else:
                    self.problem(item, f"the server's copy of {item.remote} is not identical after the upload ({code}); "
                                       "kept in staging" + (f": {self.send_failures[item.remote]}"
                                                            if item.remote in self.send_failures else ""))
            # the names just sent hold whole files now, not partial ones
            done = ours | {i.remote for i in verified}
            self.ledger.put_state(IN_FLIGHT_KEY, sorted(set(self.ledger.get_state(IN_FLIGHT_KEY, [])) - done))
        self.done_files += len(verified)
        self.done_bytes += sum(i.size for i in verified)
        self.summary.files += len(verified)
        self.summary.bytes += sum(i.size for i in verified)
        if self.cfg.upload.keep_days == 0:
            self.prune([self.ledger.get(i.clip.id) for i in verified])
        self.progress()
        return collisions

    def progress(self, sending_files: int = 0, sending_bytes: int = 0) -> None:
        """STATUS= for systemctl status; ``sending_*``: sent in the current round, not yet verified."""
        line = notify.progress_line(
            "upload",
            self.done_files + sending_files,
            self.total_files,
            self.done_bytes + sending_bytes,
            self.total_bytes,
            time.monotonic() - self.started,
        )
        notify.status(line)
        log.debug("%s", line)

    # --- names a cut session on the server may still write ----------------------------------

    def mark_sending(self, names: List[str]) -> None:
        """Remember (in the ledger, for a run that dies) the names a send session is writing."""
        if self.dry_run:
            return
        self.sending = names
        self.ledger.put_state(RUN_KEY, {"wall": self.clock(), "sending": names})

    def holds(self) -> Dict[str, float]:
        """{name: until when} of the names held now. Each name has its own end: on a link
        that drops again and again, a name held by an early cut is not held by the later ones."""
        now = self.clock()
        # never further off than a hold can be (a wall clock set back, an absurd value)
        return self.ledger.upload_holds(now, now + self.cfg.upload.cut_session_seconds)

    def held(self) -> Tuple[Set[str], float]:
        """(names held now, the earliest end among them); empty once every hold has ended."""
        ends = self.holds()
        return set(ends), min(ends.values(), default=0.0)

    def hold(self, names: Iterable[str], why: str) -> None:
        """Hold ``names`` for upload.cut_session_seconds from now."""
        names = set(names)
        if not names or self.dry_run:
            return
        ends = self.holds()
        new = names - set(ends)
        until = self.clock() + self.cfg.upload.cut_session_seconds
        ends.update(dict.fromkeys(names, until))
        # "until": the last end, for readers that only need to know whether any hold is on
        Hold(until=max(ends.values()), names=ends).write(self.ledger)
        # said once per name (a retry that cannot connect extends the hold without a word)
        (log.info if new else log.debug)(
            "%s: %d file(s) it was writing are checked again after %s, when the server has ended its side of it",
            why, len(names), time.strftime("%H:%M:%S", time.localtime(until)),
        )

    # --- retention --------------------------------------------------------------------------

    def prune(self, clips: Iterable[Clip]) -> int:
        """Delete verified clips from staging (never any other), fsync, then mark them pruned."""
        removed: List[Clip] = []
        for clip in clips:
            if clip.state != "verified":
                continue
            path = os.path.join(self.cfg.paths.ready, clip.staged_path or "")
            if self.dry_run:
                log.info("dry run, not deleting %s", path)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                log.warning("%s was already gone from staging", path, extra={"DASHCAM_FILE": clip.source_path})
            except OSError as e:
                # e.g. a directory the uploader may not write: the clip stays verified, retried next run
                log.error("cannot remove verified %s from staging: %s", path, e.strerror, extra={"DASHCAM_FILE": clip.source_path})
                continue
            removed.append(clip)
        # the removals are durable before the ledger says so (a power cut in between leaves
        # verified rows whose files are gone: the next run marks them pruned)
        for directory in sorted({os.path.dirname(os.path.join(self.cfg.paths.ready, c.staged_path or "")) for c in removed}):
            fsync_dir(directory)
        with self.ledger.transaction():
            for clip in removed:
                self.ledger.advance(clip.id, "pruned")
        self.summary.pruned += len(removed)
        return len(removed)

    def prune_expired(self) -> int:
        keep = self.cfg.upload.keep_days * 86400
        now = self.clock()
        due = [c for c in self.ledger.files("verified") if keep == 0 or (c.verified_at or 0) + keep <= now]
        if due:
            log.info("retention: %d verified clip(s) leave staging", len(due))
        return self.prune(due)

    # --- the whole run ----------------------------------------------------------------------

    def within_budget(self, items: List[Item]) -> List[Item]:
        """On battery: the clips the power budget lets start now (budget.py), events first, whole
        clips only; all of them when no budget applies (external power, none known)."""
        from . import budget
        from .policy import SystemClock

        try:
            state = self.ledger.get_state(budget.BUDGET_KEY)
        except (ValueError, sqlite3.Error) as e:  # not JSON, a busy ledger: no budget, never a reason to stop
            log.warning("power budget: the policy's state cannot be read (%s): no limit", e)
            state = None
        allowed = budget.allowance(state, "upload", SystemClock().boot_id(), time.monotonic(), log)
        keep = budget.upload_fit([(i.size, i.clip.event) for i in items], allowed)
        if len(keep) < len(items):
            left = [i for n, i in enumerate(items) if n not in set(keep)]
            events = [i for i in left if i.clip.event]
            log.info("power budget on battery: ~%s can be sent in the runtime left; %d clip(s), %s (%d event clip(s),"
                     " %s), wait for external power or the next arrival", budget.size(allowed or 0), len(left),
                     budget.size(sum(i.size for i in left)), len(events), budget.size(sum(i.size for i in events)))
        return [items[n] for n in keep]

    def backlog(self, skip: Set[int]) -> List[Clip]:
        clips = self.ledger.files("staged") + self.ledger.files("uploaded")
        return [c for c in clips if c.id not in skip]

    def run(self) -> Summary:
        self.prune_expired()
        tried: Set[int] = set()
        clips = self.backlog(tried)
        if not clips:
            log.info("nothing to upload")
            return self.summary
        if not server.reachable(self.cfg):
            raise TryLater(f"the server {self.cfg.upload.host}:{self.cfg.upload.port} is not reachable; footage stays staged")
        if not self.dry_run:  # a dry run holds no lock: the tree may be a running upload's
            self.rsync.clean()  # the tree of a run that was killed
        keep_marker = False  # set when a cut send's names could not be held: the marker does it
        if not self.dry_run:
            last = self.ledger.get_state(RUN_KEY)
            if last is not None:
                # the last run died mid-way (power cut, SIGKILL): its send may live on at the server
                self.hold(last.get("sending") or [], "the last upload was cut off (it did not finish)")
            self.ledger.put_state(RUN_KEY, {"wall": self.clock(), "sending": []})
        try:
            while clips:  # footage staged while we upload is picked up before we finish
                keep = set(self.ledger.get_state(IN_FLIGHT_KEY, [])) | self.held()[0]
                items = plan(clips, self.cfg.paths.ready, self.cfg.upload.layout,
                             self.cfg.upload.order == "newest-first", keep)
                held, until = self.held()
                waiting = [i for i in items if i.remote in held]
                if waiting:
                    self.summary.held += len(waiting)
                    log.info(
                        "%d clip(s) wait until %s: a session cut earlier may still be writing them on the server",
                        len(waiting), time.strftime("%H:%M:%S", time.localtime(until)),
                    )
                    items = [i for i in items if i.remote not in held]
                tried |= {c.id for c in clips}
                items = self.within_budget(items)
                if not items:
                    break
                self.total_files += len(items)
                self.total_bytes += sum(i.size for i in items)
                log.info(
                    "uploading %d clip(s), %s, to %s:%s",
                    len(items), notify.human_bytes(sum(i.size for i in items)),
                    ssh.remote_host(self.cfg), self.cfg.upload.dest_path,
                )
                if self.dry_run:
                    for item in items:
                        log.info("dry run, would upload %s -> %s", item.local, item.remote)
                    return self.summary
                self.progress()
                left = self.upload_in_order(items, tried)
                if left:  # an event clip staged meanwhile: planned again, behind it
                    tried -= {i.clip.id for i in left}
                    self.total_files -= len(left)
                    self.total_bytes -= sum(i.size for i in left)
                clips = self.backlog(tried)
        except BaseException:
            # a send stopped here by an error or Ctrl-C may go on at the server. (SIGTERM ends
            # the process at once: the marker stays, and the next run holds what it was sending.)
            try:
                self.hold(self.sending, "the upload stopped in the middle of a send")
            except Exception as e:
                log.warning("could not hold the names of the cut send (%s); the next run holds them", e)
                keep_marker = True
            raise
        finally:
            if not self.dry_run:
                self.rsync.clean()
            if not self.dry_run and not keep_marker:
                self.ledger.delete_state(RUN_KEY)
        return self.summary


class Verification(threading.Thread):
    """One round's checksum pass (an rsync of its own over the shared connection), run beside
    the next round's send. Only rsync runs here; the ledger is written by the main thread."""

    def __init__(self, uploader: "Uploader", items: Sequence[Item], ours: Set[str], collision_pass: bool = False):
        super().__init__(name="upload-verify", daemon=True)
        self.uploader, self.items, self.ours, self.collision_pass = uploader, list(items), ours, collision_pass
        # made on the thread that owns the ledger: the names held when this pass starts. A
        # pass that ran while a name was held proves nothing about it, even if the hold has
        # ended by the time its result is recorded (the cut session may have ended between)
        self.held_at_start = uploader.held()[0]
        self._answer: Optional[Dict[str, str]] = None
        self._error: Optional[BaseException] = None
        self.settled = False                  # result() taken and recorded (or tried to be)

    def run(self) -> None:
        try:
            self._answer = self.uploader.rsync.checksums(self.items)
        except BaseException as e:          # handed to the main thread by result()
            self._error = e

    def result(self) -> Dict[str, str]:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer


# --- the lock ---------------------------------------------------------------------------------


class UploadLock:
    """fcntl.flock on <state_dir>/upload.lock: two uploads never run at once."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "upload.lock")
        self.fd: Optional[int] = None

    def __enter__(self) -> "UploadLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise TryLater("another dashcamctl upload is running")
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --- commands ---------------------------------------------------------------------------------


def upload(cfg: Config, *, dry_run: bool = False, sleep: Callable[[float], None] = time.sleep,
           rsync: Optional[Rsync] = None) -> Summary:
    """The upload of the whole backlog; records "last_upload" in the ledger. Raises TryLater / DashcamError.

    A dry run creates nothing: with no ledger yet no clip was ever staged (nothing to upload), and
    it takes no lock (it writes nothing, and removes no tree a running upload may be using)."""
    if dry_run and not os.path.exists(cfg.paths.ledger):
        log.info("nothing to upload (no ledger yet at %s: no clip was ever staged)", cfg.paths.ledger)
        return Summary()
    with (contextlib.nullcontext() if dry_run else UploadLock(cfg.paths.state_dir)), Ledger(cfg.paths.ledger) as ledger:
        started = time.monotonic()  # the power budget learns the upload rate from bytes / seconds
        uploader = Uploader(cfg, ledger, dry_run=dry_run, sleep=sleep, rsync=rsync)
        result, reason = "ok", None
        try:
            summary = uploader.run()
        except TryLater as e:
            result, reason = "busy" if isinstance(e, ServerBusy) else "unreachable", str(e)
            raise
        except UploadFailed as e:
            reason = str(e)
            if e.transient and not server.reachable(cfg):
                result = "unreachable"
                raise TryLater(f"{e}; the server is no longer reachable, footage stays staged")
            result = "failed"
            raise
        except DashcamError as e:
            result, reason = "failed", str(e)
            raise
        finally:
            s = uploader.summary
            held_until = uploader.held()[1] if s.held else 0.0
            if (result != "ok" or s.files or s.problems or s.held) and not dry_run:
                if result == "ok" and s.problems:
                    result, reason = "failed", s.problems[0]
                elif result == "ok" and not s.files and held_until:
                    # nothing to do but clips held for a cut session: the policy waits for the end
                    result, reason = "held", f"{s.held} clip(s) held for a session cut earlier"
                LastUpload(
                    wall=time.time(), files=s.files, bytes=s.bytes, result=result, reason=reason,
                    sent_bytes=s.sent, literal_bytes=s.literal, matched_bytes=s.matched, collisions=s.collisions,
                    held=s.held, held_until=held_until, seconds=round(time.monotonic() - started, 3),
                ).write(ledger)
        return summary


def cmd_upload(args: argparse.Namespace, cfg: Config) -> int:
    summary = upload(cfg, dry_run=args.dry_run)
    if summary.files or summary.pruned:
        log.info(
            "upload done: %d clip(s), %s verified on the server; %d left staging",
            summary.files, notify.human_bytes(summary.bytes), summary.pruned,
        )
    notify.status(f"upload done: {summary.files} clip(s) verified")
    if summary.problems:
        log.error("%d clip(s) could not be uploaded; they stay in staging (dashcamctl files --state staged)", len(summary.problems))
        return EX_FAILURE
    return EX_OK
