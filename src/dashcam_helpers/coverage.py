"""Footage lost before it was copied, damaged clips, and how full the camera's card is.

Dashcams loop: when the card is full the oldest clip is overwritten. The Pi knows when the
camera was recording -- the camera records whenever it is powered in record mode, and the
policy tick sees (and sets) the camera's mode every tick -- so at each ingest it can compare
the card's clips with the recording windows since the previous ingest:

    policy tick: camera seen in record -> a row of the ledger's ``recording`` table is
      started or stretched to this tick (boot id, monotonic times, the wall clock and whether
      it was set)
    ingest (the camera's own card, after the scan):
      windows not yet judged -> placed on one timeline (place)
      card's clips -> their times on the camera's clock (clip_times)
      the camera's clock matched to the Pi's (the newest clip ends when the newest window ends)
      -> every stretch of a window no clip covers is a loss (compare): the ledger's ``loss``
         table, one warning line, ``dashcamctl status``, a Home Assistant event

What a window means: from the first tick that saw the camera in record (or switched it
there) to the last tick that saw it in record (or switched it away). Both ends are
conservative: the camera recorded at least that long. A gap while the camera was off or in
data mode (the car parked, the copy) is in no window, so it is never a loss. The first
``camera.record_start_seconds`` of a window are not judged (a camera needs tens of seconds
after power-on before it records), nor is a stretch shorter than ``camera.loss_min_seconds``.

Causes: ``overwritten`` (older than the oldest clip on the card: loop recording), ``missing``
(a hole between clips: not recorded, or deleted), ``formatted`` (the card has a new
filesystem UUID since the previous ingest -- the camera is the same, matched by its serial:
the card was formatted, and what it held that the Pi had not copied went with it).

Clocks: the Pi has no RTC; before NTP its wall clock may read 1970 (or the time of the last
shutdown). A window is placed on the wall clock only through a boot whose clock was set
(systemd-timesyncd's flag) at some tick: wall = monotonic + (wall - monotonic)
of that tick. When the ingest's own clock is not set, only the windows of the ingest's boot
are judged, on the monotonic clock. The windows that cannot be placed are not judged: their
minutes are counted (``unplaced_minutes``), never reported as lost. The camera's clock is its
own (local time, drift, a time zone): it is matched at each ingest, never assumed.
"""

from __future__ import annotations

import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the policy tick imports this module
    from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .record import Record
from .records import LastUpload
from .log import get as get_logger

log = get_logger("dashcam.coverage")

STATE_KEY = "coverage"  # {"judged_id", "offset", "fs_uuid", "bytes_per_minute", "card", "last"}
KEEP_WINDOWS = 2000  # recording rows kept (a window per drive or parked stretch: months)
KEEP_LOSSES = 1000
KEEP_DAMAGED = 1000
RECENT_DAYS = 7  # status and Home Assistant count losses and damaged clips over this many days
PLAUSIBLE_WALL = 1577836800.0  # 2020-01-01: a wall clock before this was never set
MAX_CLIP_SECONDS = 3600.0  # a clip longer than this is no clip: its mtime says nothing of its end
DEFAULT_CLIP_SECONDS = 60.0  # when nothing on the card says how long a clip is
VIDEO_EXTENSIONS = {"mp4", "mov", "m4v", "3gp", "ts", "avi", "mkv"}
ISO_BMFF_EXTENSIONS = {"mp4", "mov", "m4v", "3gp"}
MAX_BYTES_PER_MINUTE = 1e11  # a camera's bytes per recording minute above this is a damaged state, not a rate
MAX_BOXES = 256  # top-level boxes read per file: a real clip has a handful
TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"  # systemd-timesyncd: the clock was synchronised


# --- the policy tick: record when the camera was recording ------------------------------------


def clock_synced(wall: float, flag: str = TIMESYNC_FLAG) -> bool:
    """Was the wall clock set (by NTP)? A time before 2020 never was; else systemd-timesyncd's
    flag file says so. (The kernel's adjtimex(2) would say it for any NTP client, but the units'
    ProtectClock= denies that call, and the tick's MemoryDenyWriteExecute= the ctypes to make it.)"""
    return wall >= PLAUSIBLE_WALL and os.path.exists(flag)


def note_tick(ledger, clock, *, boot: str, now: float, wall: float, seen: str, after: str,
              since: Optional[float], external: Optional[bool]) -> None:
    """Called by the policy tick inside its transaction: the camera was seen in ``seen`` mode and
    left in ``after``; ``since`` is the previous tick of this boot when the camera was in record
    then (the window goes on), else None."""
    if seen != "record" and after != "record":
        return
    synced = getattr(clock, "synced", None)
    ok = synced() if callable(synced) else clock_synced(wall)
    ledger.note_recording(boot_id=boot, since=since if seen == "record" else None, now=now, wall=wall,
                          synced=bool(ok), external=external, keep=KEEP_WINDOWS)


# --- windows and clips on one timeline ---------------------------------------------------------


class Window(Record):
    """A row of the recording table: monotonic times of one boot, the wall clock at the last update."""

    id: int
    boot_id: str
    start_mono: float
    end_mono: float
    wall_end: float
    synced: bool


class Now(Record):
    """The ingest's own clock: its boot, monotonic and wall time, and whether the wall is set."""

    boot_id: str
    mono: float
    wall: float
    synced: bool


class ClipTime(Record):
    path: str
    start: float  # the camera's clock, seconds since 1970 as if the camera's time were UTC
    end: float


class Loss(Record):
    start: float  # the camera's clock (clock == "camera") or the Pi's (clock == "pi")
    end: float
    cause: str  # overwritten | missing | formatted
    clock: str = "camera"

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Verdict(Record):
    losses: Tuple[Loss, ...]
    judged_seconds: float  # recording time compared with the card
    unplaced_seconds: float  # recording time that could not be placed in time (clock unset)
    offset: Optional[float]  # camera clock - Pi timeline (wall), when the timeline is the wall clock
    timeline: str  # wall | mono


def place(windows: Sequence[Window], now: Now) -> Tuple[List[Tuple[float, float]], float, str]:
    """(start, end) of each window on one timeline, the seconds that could not be placed, and the
    timeline: ``wall`` (the Pi's wall clock, through boots whose clock was set) when the ingest's
    clock is set, else ``mono`` (the ingest's boot only, on its monotonic clock)."""
    if not now.synced:
        placed = [(w.start_mono, w.end_mono) for w in windows if w.boot_id == now.boot_id]
        unplaced = sum(w.end_mono - w.start_mono for w in windows if w.boot_id != now.boot_id)
        return placed, unplaced, "mono"
    base: Dict[str, float] = {now.boot_id: now.wall - now.mono}
    for w in windows:  # oldest first: the newest set clock of each boot wins
        if w.synced and w.wall_end >= PLAUSIBLE_WALL and w.boot_id != now.boot_id:
            base[w.boot_id] = w.wall_end - w.end_mono
    placed, unplaced = [], 0.0
    for w in windows:
        if w.boot_id in base:
            placed.append((w.start_mono + base[w.boot_id], w.end_mono + base[w.boot_id]))
        else:
            unplaced += w.end_mono - w.start_mono
    return placed, unplaced, "wall"


def name_time(name: str) -> Optional[float]:
    """The recording start in a camera's file name (2026_1129_053712_013F.MP4, the ingest's
    NAME_STAMP), as seconds since 1970 on the camera's clock; None when there is none or it is no time."""
    from .footage import EPOCH, name_stamp  # only ever called by an ingest: no cost to the policy tick

    stamp = name_stamp(name)
    return None if stamp is None else (stamp - EPOCH).total_seconds()


def _median(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def clip_times(files: Iterable[Tuple[str, int, int]]) -> Tuple[List[ClipTime], int]:
    """The video clips' (start, end) on the camera's clock, and how many had no time that parses.

    The start is the time in the name; the end is the mtime (the camera closes a clip when it
    ends: vfat keeps that time) when it falls within the hour after the start, else the start plus
    the usual clip length (the median of the measured ones, or of the gaps between consecutive
    starts). A clip without a time in its name ends at its mtime and lasts the usual length."""
    parsed = []
    skipped = 0
    for path, size, mtime_ns in files:
        if path.rpartition(".")[2].lower() not in VIDEO_EXTENSIONS:
            continue
        start = name_time(path)
        try:
            mtime = mtime_ns / 1e9
        except (TypeError, OverflowError):
            mtime = None
        if mtime is not None and not (PLAUSIBLE_WALL - 30 * 365 * 86400 <= mtime <= PLAUSIBLE_WALL + 100 * 365 * 86400):
            mtime = None  # beyond 1990..2120: no time the camera wrote
        if start is None and mtime is None:
            skipped += 1
            continue
        parsed.append((path, start, mtime))
    measured = [m - s for _, s, m in parsed if s is not None and m is not None and 5 <= m - s <= MAX_CLIP_SECONDS]
    starts = sorted({s for _, s, _ in parsed if s is not None})
    gaps = [b - a for a, b in zip(starts, starts[1:]) if 5 <= b - a <= MAX_CLIP_SECONDS]
    usual = _median(measured) if measured else _median(gaps) if gaps else DEFAULT_CLIP_SECONDS
    out = []
    for path, start, mtime in parsed:
        if start is None:
            out.append(ClipTime(path, mtime - usual, mtime))
        elif mtime is not None and start <= mtime <= start + MAX_CLIP_SECONDS:
            out.append(ClipTime(path, start, max(mtime, start + 1)))
        else:
            out.append(ClipTime(path, start, start + usual))
    return out, skipped


def _union(intervals: Iterable[Tuple[float, float]], slack: float = 0.0) -> List[Tuple[float, float]]:
    """The intervals merged; two less than ``slack`` apart (one clip closed, the next opened) are one."""
    out: List[Tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1] + slack:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _uncovered(s: float, e: float, covered: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    pieces, at = [], s
    for cs, ce in covered:
        if ce <= at:
            continue
        if cs >= e:
            break
        if cs > at:
            pieces.append((at, cs))
        at = max(at, ce)
        if at >= e:
            break
    if at < e:
        pieces.append((at, e))
    return pieces


def compare(windows: Sequence[Window], clips: Sequence[ClipTime], now: Now, *, previous_offset: Optional[float],
            reformatted: bool, start_seconds: float, min_seconds: float) -> Verdict:
    """Which stretches of the recording windows have no clip on the card (pure).

    The camera's clock is matched to the Pi's timeline by the newest clip: it ended when the
    newest window did (the camera stops recording when it leaves record mode). The ends of the two
    stretches of clips before it are tried too (a clip with a wild time in its name), and the offset
    learned at the previous ingest (the newest window may be one the camera did not record in); the
    one under which the card covers the most wins, the newest clip on a tie."""
    placed, unplaced, timeline = place(windows, now)
    placed = [(s, e) for s, e in placed if e > s]
    judged = sum(e - s for s, e in placed)
    if not placed:
        return Verdict((), 0.0, unplaced, previous_offset if timeline == "wall" else None, timeline)
    covered = _union(((c.start, c.end) for c in clips), min(min_seconds / 2, 30.0))
    newest = max(e for _, e in placed)
    candidates = [e - newest for _, e in reversed(covered[-3:])]
    if timeline == "wall" and previous_offset is not None:
        candidates.append(previous_offset)
    oldest = covered[0][0] if covered else None

    def losses_at(offset: float, clock: str) -> List[Loss]:
        out = []
        for s, e in placed:
            s = min(s + start_seconds, e)
            for ps, pe in _uncovered(s + offset, e + offset, covered):
                if pe - ps < min_seconds:
                    continue
                if oldest is not None and pe > oldest:
                    cause = "missing"
                elif reformatted:
                    cause = "formatted"
                else:
                    cause = "overwritten" if oldest is not None else "missing"
                out.append(Loss(ps, pe, cause, clock))
        return out

    if not candidates:  # nothing on the card, no clock to match: the Pi's times
        return Verdict(tuple(losses_at(0.0, "pi")), judged, unplaced, None, timeline)
    best = min(candidates, key=lambda off: sum(x.seconds for x in losses_at(off, "camera")))
    return Verdict(tuple(losses_at(best, "camera")), judged, unplaced, best if timeline == "wall" else previous_offset,
                   timeline)


def describe(loss: Loss) -> str:
    """``lost: from T1 to T2, about N minutes (why)`` -- T1, T2 as the camera showed them."""
    import datetime

    def show(t: float) -> str:
        try:
            return (datetime.datetime(1970, 1, 1) + datetime.timedelta(minutes=round(t / 60))).strftime("%Y-%m-%d %H:%M")
        except (OverflowError, ValueError):
            return "?"

    clock = " (the Pi's clock, UTC)" if loss.clock == "pi" else ""
    why = {
        "overwritten": "overwritten by loop recording before it was copied",
        "formatted": "the card was formatted before it was copied",
        "missing": "the camera was recording but no clip covers it",
    }.get(loss.cause, loss.cause)
    return (f"lost: from {show(loss.start)} to {show(loss.end)}{clock}, about {max(1, round(loss.seconds / 60))} "
            f"minutes ({why})")


# --- damaged clips ---------------------------------------------------------------------------


def iso_bmff_damage(f, size: int) -> Optional[str]:
    """Why an MP4/MOV is damaged, or None. Reads only the top-level box headers (16 bytes each, at
    most MAX_BOXES), whatever the file holds.

    Damaged: zero bytes; a file that begins as ISO-BMFF but has no ``moov`` box (the camera lost
    power before it finished the clip) or whose boxes run past its end (cut short). A file that
    does not begin with a box is no MP4 this can judge (None), nor is one with more boxes than
    MAX_BOXES before its moov (fragmented); bytes that follow a moov do not stop a clip playing."""
    if size <= 0:
        return "zero bytes"
    pos, seen = 0, set()
    for _ in range(MAX_BOXES):
        if pos >= size:
            break
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            problem = f"{size - pos} stray bytes at offset {pos}, no whole box"
            break
        length, kind, header = int.from_bytes(head[:4], "big"), head[4:8], 8
        if length == 1:
            length, header = (int.from_bytes(head[8:16], "big"), 16) if len(head) == 16 else (0, 16)
        elif length == 0:
            length = size - pos  # the box runs to the end of the file
        if not all(0x20 <= b < 0x7F for b in kind) or length < header:
            if pos == 0:
                return None  # no box at all: not ISO-BMFF
            problem = f"no box at offset {pos}"
            break
        if pos + length > size:
            return (f"cut short: box {kind.decode('ascii')!r} at offset {pos} needs {length} bytes, "
                    f"the file has {size - pos} from there")
        seen.add(kind.decode("ascii"))
        pos += length
    else:
        return None if "moov" in seen or pos < size else "cut short: no moov box (the camera did not finish the clip)"
    if "moov" in seen:
        return None
    if pos >= size:
        return "cut short: no moov box (the camera did not finish the clip)"
    return f"cut short: no moov box, {problem}"


def clip_damage(root: str, path: str, size: int) -> Optional[str]:
    """Why a clip on the card is damaged, or None. Zero bytes for any footage; an MP4/MOV is
    read for its boxes (never through a link; a read error is the copy's business, not this)."""
    if size == 0:
        return "zero bytes"
    if path.rpartition(".")[2].lower() not in ISO_BMFF_EXTENSIONS:
        return None
    try:
        fd = os.open(os.path.join(root, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb", buffering=0) as f:
        try:
            return iso_bmff_damage(f, size)
        except OSError:
            return None


# --- at each ingest ------------------------------------------------------------------------------


class Card(Record):
    """What the ingest knows of the camera's card: its filesystem UUID (None: unknown)."""

    fs_uuid: Optional[str] = None


def card_space(root: str) -> Optional[Tuple[int, int]]:
    """(bytes used, bytes in all) of the filesystem mounted at ``root``, or None."""
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    return max(0, total - st.f_bfree * st.f_frsize), total


def _learned_rate(clips: Sequence[ClipTime], sizes: Dict[str, int], previous: Optional[float]) -> Optional[float]:
    """Bytes the camera writes per minute of recording (all its channels), smoothed."""
    covered = _union((c.start, c.end) for c in clips)
    seconds = sum(e - s for s, e in covered)
    total = sum(sizes.get(c.path, 0) for c in clips)
    if seconds < 600 or total <= 0:  # under ten minutes on the card: no rate worth learning
        return previous
    rate = total / (seconds / 60)
    return rate if not previous or previous <= 0 else 0.7 * previous + 0.3 * rate


def check_card(cfg, ledger, root: str, files: Sequence[Tuple[str, int, int]], new: Sequence[Tuple[str, int, int]],
               card: Optional[Card], now: Optional[Now] = None) -> Dict[str, Any]:
    """After the card scan: flag damaged new clips; with ``card`` (the camera's own card, in data
    mode) judge the recording windows since the previous ingest and measure the card. Returns
    {"damaged": n, "lost_seconds": s, ...} for the ingest's summary. Never raises for what the
    card holds; the caller guards against the rest."""
    camera = cfg.camera.name
    out: Dict[str, Any] = {"damaged": 0}
    for path, size, mtime_ns in new:
        why = clip_damage(root, path, size)
        if why is None:
            continue
        out["damaged"] += 1
        if ledger.note_damaged(camera, path, size, mtime_ns, why, keep=KEEP_DAMAGED):
            log.warning("%s is damaged: %s; copied and uploaded all the same, left on the card", path, why,
                        extra={"DASHCAM_FILE": path, "DASHCAM_DAMAGE": why})
    if card is None:
        return out
    now = now or Now(_boot_id(), time.monotonic(), time.time(), clock_synced(time.time()))
    state = ledger.get_state(STATE_KEY)
    state = dict(state) if isinstance(state, dict) else {}
    previous_uuid = state.get("fs_uuid") if isinstance(state.get("fs_uuid"), str) else None
    reformatted = bool(card.fs_uuid and previous_uuid and card.fs_uuid != previous_uuid)
    if reformatted:
        log.warning("the camera's card has a new filesystem (UUID %s, was %s): it was formatted since the last copy",
                    card.fs_uuid, previous_uuid)
    judged_id = _judged_id(state)
    windows = ledger.recording_windows(after_id=judged_id)
    clips, skipped = clip_times(files)
    offset = _number(state.get("offset"))
    verdict = compare(windows, clips, now, previous_offset=offset, reformatted=reformatted,
                      start_seconds=cfg.camera.record_start_seconds, min_seconds=cfg.camera.loss_min_seconds)
    if skipped:
        log.warning("%d clips on the card have no time that parses (name nor mtime): left out of the check for "
                    "lost footage", skipped)
    if verdict.unplaced_seconds >= 60:
        log.info("%.0f minutes of recording not checked for lost footage: the Pi's clock was not set then",
                 verdict.unplaced_seconds / 60)
    sizes = {p: s for p, s, _ in files}
    rate = _learned_rate(clips, sizes, _number(state.get("bytes_per_minute"), 0.0, MAX_BYTES_PER_MINUTE))
    space = card_space(root)
    card_facts: Dict[str, Any] = {"wall": now.wall}
    if space is not None:
        card_facts.update(used_bytes=space[0], total_bytes=space[1])
        if rate:
            card_facts["holds_hours"] = round(space[1] / rate / 60, 1)
    covered = _union((c.start, c.end) for c in clips)
    if covered:
        card_facts["oldest"], card_facts["newest"] = covered[0][0], covered[-1][1]
    state.update(
        judged_id=max([judged_id] + [w.id for w in windows]),
        offset=verdict.offset,
        fs_uuid=card.fs_uuid or previous_uuid,
        bytes_per_minute=rate,
        card=card_facts,
        last={"wall": now.wall, "judged_seconds": round(verdict.judged_seconds), "lost_seconds":
              round(sum(x.seconds for x in verdict.losses)), "unplaced_seconds": round(verdict.unplaced_seconds),
              "untimed_clips": skipped, "timeline": verdict.timeline, "reformatted": reformatted},
    )
    with ledger.transaction():  # the losses and the windows judged: together, or judged again next time
        for loss in verdict.losses:
            ledger.record_loss(camera, loss.cause, loss.start, loss.end, describe(loss), keep=KEEP_LOSSES)
        ledger.put_state(STATE_KEY, state)
    for loss in verdict.losses:
        log.warning("%s", describe(loss), extra={"DASHCAM_LOST_SECONDS": round(loss.seconds), "DASHCAM_CAUSE": loss.cause})
    out["lost_seconds"] = state["last"]["lost_seconds"]
    return out


def _number(value: Any, low: float = float("-inf"), high: float = float("inf")) -> Optional[float]:
    """A number of the stored state as a float, or None: not a bool, NaN, infinite, beyond any float
    (JSON's integers have no bound) or outside [low, high]. A bad value is as good as none."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if value - value == 0 and low <= value <= high else None


def _judged_id(state: Dict[str, Any]) -> int:
    """The last recording row judged (0: none), as SQLite can hold it."""
    value = state.get("judged_id")
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else 0


def _boot_id() -> str:
    # the policy's reader: it falls back to the unit's DASHCAM_BOOT_ID where ProcSubset=pid hides
    # /proc/sys (the ingest unit); "unknown" would make every window of this boot another boot's
    from .policy import boot_id
    return boot_id()


def on_camera(ledger) -> Tuple[float, Optional[int]]:
    """(seconds the camera recorded since the last check of its card, the bytes that makes at the
    learned bytes per minute -- None until a card was measured): footage waiting on the camera."""
    db = _real(ledger)
    if db is None:
        return 0.0, None
    state = db.get_state(STATE_KEY)
    state = state if isinstance(state, dict) else {}
    seconds = sum(max(0.0, w.end_mono - w.start_mono) for w in db.recording_windows(after_id=_judged_id(state)))
    rate = _number(state.get("bytes_per_minute"), 0.0, MAX_BYTES_PER_MINUTE)
    if not rate:
        return seconds, None
    return seconds, int(seconds / 60 * rate)


# --- status and Home Assistant ---------------------------------------------------------------------


def _real(ledger):
    """The Ledger behind a policy tick's TickLedger (None when it is unusable), or the ledger itself."""
    return getattr(ledger, "ledger", ledger)


def facts(ledger, cfg, wall: Optional[float] = None) -> Dict[str, Any]:
    """The ``footage`` and ``problem`` sections of ``dashcamctl status`` (and the MQTT state)."""
    wall = time.time() if wall is None else wall
    db = _real(ledger)
    if db is None:  # the tick's ledger failed: that is the problem to show
        return {"problem": {"problem": True, "reasons": [f"the ledger is unusable: {getattr(ledger, 'problem', '?')}"]}}
    since = wall - RECENT_DAYS * 86400
    state = db.get_state(STATE_KEY)
    state = state if isinstance(state, dict) else {}
    # what was found while the clock was not set has no time: recent until a check with a set clock
    last_check = state.get("last") if isinstance(state.get("last"), dict) else {}
    checked = last_check.get("wall")
    unknown = not (isinstance(checked, (int, float)) and checked >= PLAUSIBLE_WALL)
    lost = db.losses_since(since, unknown)
    damaged = db.damaged_since(since, unknown)
    refused = db.refused_count()
    footage: Dict[str, Any] = {
        "lost_minutes_7d": round(sum(r["seconds"] for r in lost) / 60),
        "losses_7d": len(lost),
        "damaged_7d": len(damaged),
        "refused_files": int(refused),
        "card": state.get("card") if isinstance(state.get("card"), dict) else {},
        "bytes_per_minute": state.get("bytes_per_minute"),
    }
    if lost:
        footage["last_loss"] = {"wall": lost[-1]["found_at"], "message": lost[-1]["message"]}
    if isinstance(state.get("last"), dict):
        footage["last_check"] = state["last"]
    reasons = []
    failing = _upload_failing(db, cfg, wall)
    if failing:
        reasons.append(failing)
    if refused:
        reasons.append(f"{_clips(refused)} refused (dashcamctl files --state failed)")
    if lost:
        reasons.append(f"footage lost: about {max(1, footage['lost_minutes_7d'])} minutes in the last {RECENT_DAYS} days")
    if damaged:
        reasons.append(f"{_clips(len(damaged), 'damaged clip')} in the last {RECENT_DAYS} days")
    return {"footage": footage, "problem": {"problem": bool(reasons), "reasons": reasons}}


def _clips(n: int, what: str = "clip") -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _upload_failing(db, cfg, wall: float) -> Optional[str]:
    """The last upload failed and a clip has waited for the server longer than upload.alert_hours."""
    last = LastUpload.read(db)
    if last is None or last.result != "failed":
        return None
    oldest = db.backlog_detail()[3]  # the earliest staged_at not yet verified
    hours = cfg.upload.alert_hours
    if oldest is None or wall - oldest < hours * 3600:
        return None
    return f"upload failing, clips waiting for more than {hours} h: {last.reason or 'see journalctl -t dashcam'}"
