"""The power budget on battery: how long the charge lasts, what that time can carry, what waits.

Home on battery, the Pi and the camera run from the UPS cell while footage is copied and
sent. This module estimates, from what the policy tick already knows:

- the **runtime left** above thresholds.disconnect_percent (the camera may stay on: a copy
  from the card can run) and above thresholds.shutdown_percent (the Pi stays up: an upload
  can run). Two estimates, the smaller wins (a LiFePO4 cell is flat, then steep below about
  3.2 V: neither alone is safe):
    * energy: budget.capacity_wh x (percent - threshold) / 100 / the draw, where percent is
      the project's voltage table reading (not linear in volts; a threshold between two steps
      counts from the step above it, where the first reading below trips it) and the draw is the UPS's
      output (VOUT x IOUT of lifepo4wered-cli, output_power of battery-info.sh) divided by
      CONVERTER_EFFICIENCY, or budget.load_watts while the UPS reports none;
    * discharge: the fall of the percent over the readings of the current streak on
      battery (the tick's recent history), projected to the threshold. In the flat part
      of the curve the percent hardly moves and this one is unknown; below the knee it
      falls fast and this one takes over.
  Unknown when the battery reading is unknown, or on external power (no budget applies).
- the **rates**: card read bytes/s per camera and upload bytes/s, learned (smoothed,
  LEARN_WEIGHT) from the ingest's and the upload's own records (ledger state last_ingest:
  bytes and seconds; last_upload: bytes and seconds), budget.*_bytes_per_second until then;
  and the camera's bytes per recording minute and its share of event clips.
- the **footage waiting**: staged, not yet verified (ledger), and on the camera: what the
  last ingest left on the card (ledger state card_left, exact, written by the ingest) plus
  the minutes recorded since x bytes per minute.

``verdict()`` turns an estimate into what a data cycle and an upload may do now (pure).
The policy writes it to the ledger (state BUDGET_KEY) every tick; ingest and upload read
it at each clip boundary (IngestGate, upload_fit): a clip is started only when it fits,
events first, and a clip once started is always finished. A missing, stale (STALE_SECONDS)
or other-boot budget means no limit: the thresholds alone then stop the work, as before.

An unknown estimate never blocks anything: no limit, no refusal of data mode, and the
budget never touches a shutdown or a return to record.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, List, Optional, Sequence, Tuple

from .record import Record

BUDGET_KEY = "budget"  # written by the policy every tick, read by ingest and upload
RATES_KEY = "budget_rates"  # what was learned, kept by the policy between ticks
CARD_KEY = "card_left"  # written by the ingest: footage its last scan found and did not copy (yet)

# a budget older than this (monotonic seconds: two ticks at the longest policy interval,
# policy_timer.MAX_SECONDS, and a minute) is not followed: the policy is not running, the
# thresholds rule alone. Until then what it allowed shrinks with the time gone (allowance()).
STALE_SECONDS = 660.0
# the UPS's boost converter (3.2 V cell -> 5 V): the cell gives this fraction of what it loses
CONVERTER_EFFICIENCY = 0.85
# the discharge estimate needs the percent to fall over at least this long (seconds) ...
SLOPE_MIN_SPAN = 120.0
# ... and this many readings at each end (their median: one odd reading is no trend)
SLOPE_ENDS = 3
# weight of a new measurement in the smoothed rates (exponential moving average)
LEARN_WEIGHT = 0.3
# an ingest or upload run moving less than this says little about a rate: not learned from
LEARN_MIN_BYTES = 64 * 1000 * 1000
# recording minutes below this say little about the camera's bytes per minute
LEARN_MIN_MINUTES = 10.0
# plausible bounds of what is learned (a rate outside is a measuring fault, not a rate)
PLAUSIBLE_BPS = (50e3, 1e9)
PLAUSIBLE_PER_MINUTE = (1e6, 2e9)
PLAUSIBLE_WATTS = (0.2, 50.0)
PLAUSIBLE_WALL = 1577836800.0  # 2020-01-01: a wall clock before this was never set (coverage.PLAUSIBLE_WALL)


class Estimate(Record):
    """What the budget knows this tick. Seconds are runtime; None is unknown."""

    on_battery: Optional[bool]
    percent: Optional[int]
    load_watts: float  # output, as measured or budget.load_watts
    load_measured: bool
    runtime_disconnect: Optional[float]  # seconds left above thresholds.disconnect_percent
    runtime_shutdown: Optional[float]  # seconds left above thresholds.shutdown_percent
    runtime_why: str  # how the runtime was estimated, or why it is unknown
    read_bps: float
    read_learned: bool
    upload_bps: float
    upload_learned: bool
    card_event_bytes: int  # on the camera, not yet copied
    card_bytes: int  # all of it, events included
    card_exact: bool  # as the ingest's scan found it (else estimated from recording minutes)
    staged_files: int  # staged, not yet verified on the server
    staged_bytes: int
    staged_event_bytes: int
    oldest_unsent_seconds: Optional[float]  # age of the oldest footage not yet on the server

    @property
    def waiting_bytes(self) -> int:
        return self.card_bytes + self.staged_bytes

    @property
    def waiting_event_bytes(self) -> int:
        return self.card_event_bytes + self.staged_event_bytes


class Verdict(Record):
    """What the budget allows now.

    ingest: all | events | none (a data cycle: everything fits, the events only, not even
    they) | unknown (no estimate: no limit) | "" (external power, or no budget configured);
    ingest_bytes, upload_bytes: bytes that can be read / sent in the runtime left, margin
    kept (None: no limit); upload: the same words for the staged backlog; why, upload_why:
    the numbers, for the log line."""

    ingest: str = ""
    ingest_bytes: Optional[int] = None
    why: str = ""
    upload: str = ""
    upload_bytes: Optional[int] = None
    upload_why: str = ""
    all_safe_seconds: Optional[float] = None  # time until every clip waiting is verified on the server


# --- words with numbers -----------------------------------------------------------------------


def size(n: float) -> str:
    """640 MB, 7.9 GB: decimal units, as the camera's card and the server's disk count."""
    n = max(0.0, float(n))
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB"


def span(seconds: float) -> str:
    """14 min, 1 h 05 min."""
    minutes = int(max(0.0, seconds) // 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


# --- the runtime left ---------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    """A number a float holds (JSON's integers have no bound: 10**400 is none), not NaN nor infinite."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return value - value == 0


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def load_watts(raw: Any) -> Optional[float]:
    """The UPS's output power from a reading's raw values, or None: battery-info.sh's output_power
    (W) or output_voltage x output_current (V, A); lifepo4wered-cli's VOUT x IOUT (mV, mA). The
    first of them that is a plausible draw; a negative factor is no reading (-1 / -2: not read)."""
    if not isinstance(raw, dict):
        return None

    def product(volts: str, amps: str, scale: float) -> Optional[float]:
        v, a = raw.get(volts), raw.get(amps)
        if _finite(v) and _finite(a) and v >= 0 and a >= 0:
            return float(v) * float(a) / scale
        return None

    power = raw.get("output_power")
    for watts in (float(power) if _finite(power) else None, product("output_voltage", "output_current", 1.0),
                  product("VOUT", "IOUT", 1e6)):
        if watts is not None and PLAUSIBLE_WATTS[0] <= watts <= PLAUSIBLE_WATTS[1]:
            return watts
    return None


def _battery_streak(history: Sequence[Any], boot_id: str) -> List[Any]:
    """The known readings of the current streak on battery this boot, oldest first."""
    out: List[Any] = []
    for s in reversed(history):
        if s.boot_id != boot_id or s.external is True:
            break
        if s.percent is not None and s.external is False:
            out.append(s)
    out.reverse()
    return out


def discharge_rate(history: Sequence[Any], boot_id: str) -> Optional[float]:
    """Percent per second the battery lost over the current streak on battery (None: not measurable:
    too short, or the percent did not fall, as in the flat part of a LiFePO4 cell's curve)."""
    streak = _battery_streak(history, boot_id)
    if len(streak) < 2 * SLOPE_ENDS:
        return None
    first, last = streak[:SLOPE_ENDS], streak[-SLOPE_ENDS:]
    seconds = _median([s.monotonic for s in last]) - _median([s.monotonic for s in first])
    fall = _median([s.percent for s in first]) - _median([s.percent for s in last])
    if seconds < SLOPE_MIN_SPAN or fall <= 0:
        return None
    return fall / seconds


def effective_threshold(threshold: int, table: Sequence[Tuple[int, int]]) -> int:
    """The percent at which a threshold trips with the voltage table's steps: the first reading below
    the lowest step at or above it (shutdown_percent 25 with steps 30 and 20: the cell leaving 30 %)."""
    steps = [p for _, p in table if p >= threshold]
    return min(steps) if steps else threshold


def runtime(percent: int, threshold: int, capacity_wh: float, watts: float,
            rate: Optional[float]) -> float:
    """Seconds until ``percent`` falls to ``threshold``: the smaller of the energy left at ``watts``
    (output, through the converter) and the measured fall ``rate`` (percent/s) when there is one."""
    if percent <= threshold:
        return 0.0
    left = capacity_wh * (percent - threshold) / 100.0 * CONVERTER_EFFICIENCY / watts * 3600.0
    if rate:
        left = min(left, (percent - threshold) / rate)
    return left


# --- what was learned -------------------------------------------------------------------------------


def _smooth(old: Any, new: float) -> float:
    return new if not _finite(old) else (1 - LEARN_WEIGHT) * float(old) + LEARN_WEIGHT * new


def _rate_of(run: Any, low: float, high: float) -> Optional[float]:
    """bytes / seconds of an ingest's or upload's record, when it moved enough to say something."""
    if not isinstance(run, dict) or run.get("result") not in ("ok", "interrupted", "failed"):
        return None
    nbytes, seconds = run.get("bytes"), run.get("seconds")
    if not (_finite(nbytes) and _finite(seconds)) or nbytes < LEARN_MIN_BYTES or seconds <= 0:
        return None
    rate = nbytes / seconds
    return rate if low <= rate <= high else None


def learn(rates: Any, camera: str, *, last_ingest: Any, last_upload: Any, recorded_seconds: float,
          watts: Optional[float], card: Any = None) -> Dict[str, Any]:
    """The learned rates after this tick (a new dict; ``rates`` as stored, any shape, is input).

    A run is learned from once: its record is kept as the marker. The read rate includes the
    scan and the fsyncs (what a data cycle really costs); the bytes per recording minute are
    learned from an ingest that left nothing on the card, over the minutes the policy saw the
    camera record since the one before (``recorded_seconds``, before this ingest resets it); the
    event share from the ingest's scan (``card``)."""
    old = rates if isinstance(rates, dict) else {}
    out: Dict[str, Any] = {k: v for k, v in old.items() if k in ("cameras", "upload_bps", "watts", "seen_upload")}
    cams = out["cameras"] = {k: dict(v) for k, v in (old.get("cameras") or {}).items() if isinstance(v, dict)} \
        if isinstance(old.get("cameras"), dict) else {}
    cam = cams.setdefault(camera, {})
    if watts is not None:
        out["watts"] = _smooth(out.get("watts"), watts)
    if last_ingest is not None and last_ingest != cam.get("seen_ingest"):
        cam["seen_ingest"] = last_ingest
        read = _rate_of(last_ingest, *PLAUSIBLE_BPS)
        if read is not None:
            cam["read_bps"] = _smooth(cam.get("read_bps"), read)
        minutes = recorded_seconds / 60.0
        if (isinstance(last_ingest, dict) and last_ingest.get("result") == "ok" and last_ingest.get("pending") == 0
                and _finite(last_ingest.get("bytes")) and minutes >= LEARN_MIN_MINUTES):
            per_minute = last_ingest["bytes"] / minutes
            if PLAUSIBLE_PER_MINUTE[0] <= per_minute <= PLAUSIBLE_PER_MINUTE[1]:
                cam["bytes_per_minute"] = _smooth(cam.get("bytes_per_minute"), per_minute)
        scan = card.get("scan") if isinstance(card, dict) else None
        if isinstance(scan, dict) and _finite(scan.get("bytes")) and _finite(scan.get("event_bytes")) \
                and scan["bytes"] >= LEARN_MIN_BYTES and 0 <= scan["event_bytes"] <= scan["bytes"]:
            cam["event_share"] = _smooth(cam.get("event_share"), scan["event_bytes"] / scan["bytes"])
    if last_upload is not None and last_upload != out.get("seen_upload"):
        out["seen_upload"] = last_upload
        up = _rate_of(last_upload, *PLAUSIBLE_BPS)
        if up is not None:
            out["upload_bps"] = _smooth(out.get("upload_bps"), up)
    return out


def _learned(value: Any, low: float, high: float) -> Optional[float]:
    return float(value) if _finite(value) and low <= value <= high else None


# --- the estimate ---------------------------------------------------------------------------------


def estimate(history: Sequence[Any], boot_id: str, cfg, *, rates: Any, camera: str, watts: Optional[float],
             recorded_seconds: float, card: Any, staged: Tuple[int, int, int], last_ingest: Any = None,
             oldest_staged_wall: Optional[float], recording_since_wall: Optional[float], wall: float) -> Estimate:
    """Pure: everything the budget knows this tick (see the module's doc). ``history``: the tick's
    battery samples, the last one is this tick's; ``staged``: (files, bytes, event bytes) staged and
    not yet verified; ``card``: the ledger's card_left state; ``rates``: what learn() returned;
    ``last_ingest``: the ledger's state of that name (a card_left written after it, by an ingest
    still running, already holds what was recorded since)."""
    b, t = cfg.budget, cfg.thresholds
    cams = rates.get("cameras") if isinstance(rates, dict) else None
    cam = cams.get(camera) if isinstance(cams, dict) and isinstance(cams.get(camera), dict) else {}
    read = _learned(cam.get("read_bps"), *PLAUSIBLE_BPS)
    up = _learned(rates.get("upload_bps") if isinstance(rates, dict) else None, *PLAUSIBLE_BPS)
    per_minute = _learned(cam.get("bytes_per_minute"), *PLAUSIBLE_PER_MINUTE) or float(b.bytes_per_minute)
    share = _learned(cam.get("event_share"), 0.0, 1.0)
    share = b.event_percent / 100.0 if share is None else share
    smoothed = _learned(rates.get("watts") if isinstance(rates, dict) else None, *PLAUSIBLE_WATTS)
    # the draw: the larger of this reading and the smoothed one (a copy starting now draws more)
    measured = [w for w in (watts, smoothed) if w is not None]
    load = max(measured) if measured else float(b.load_watts)

    current = history[-1] if history else None
    on_battery = None if current is None or current.external is None else current.external is False
    percent = current.percent if current is not None else None
    run_off = run_down = None
    if current is None or current.percent is None:
        why = "battery reading unknown"
    elif current.external is not False:
        why = "on external power" if current.external else "power source unknown"
    else:
        streak = _battery_streak(history, boot_id)
        # one reading above the others is no reason to hope: the lowest of the recent median and this one
        pct = min(current.percent, int(_median([s.percent for s in streak[-SLOPE_ENDS:]]))) if streak else current.percent
        rate = discharge_rate(history, boot_id)
        table = cfg.battery.voltage_table
        run_off = runtime(pct, effective_threshold(t.disconnect_percent, table), b.capacity_wh, load, rate)
        run_down = runtime(pct, effective_threshold(t.shutdown_percent, table), b.capacity_wh, load, rate)
        why = (f"{pct} % of {b.capacity_wh:g} Wh at {load:.1f} W" + ("" if measured else " (assumed, budget.load_watts)")
               + (f", falling {rate * 6000:.1f} %/10 min" if rate else ""))
        percent = pct

    # on the camera: what the last ingest left there, plus what was recorded since
    left_events = left_all = 0
    exact = False
    if isinstance(card, dict) and card.get("camera") == camera and _finite(card.get("bytes")) \
            and _finite(card.get("event_bytes")) and 0 <= card["event_bytes"] <= card["bytes"]:
        left_events, left_all, exact = int(card["event_bytes"]), int(card["bytes"]), True
    running = exact and "after" in card and card.get("after") == last_ingest
    recorded = 0.0 if running else max(0.0, recorded_seconds) / 60.0 * per_minute
    card_all = left_all + int(recorded)
    card_events = left_events + int(recorded * share)
    exact = exact and recorded == 0

    files, staged_bytes, staged_events = staged
    # ages on the wall clock: only between two readings of a clock that was set (no RTC: 1970 before NTP)
    ages = [wall - w for w in (oldest_staged_wall, recording_since_wall if recorded_seconds > 0 else None)
            if _finite(w) and w >= PLAUSIBLE_WALL] if _finite(wall) and wall >= PLAUSIBLE_WALL else []
    return Estimate(
        on_battery=on_battery,
        percent=percent,
        load_watts=load,
        load_measured=bool(measured),
        runtime_disconnect=run_off,
        runtime_shutdown=run_down,
        runtime_why=why,
        read_bps=read or float(b.read_bytes_per_second),
        read_learned=read is not None,
        upload_bps=up or float(b.upload_bytes_per_second),
        upload_learned=up is not None,
        card_event_bytes=card_events,
        card_bytes=card_all,
        card_exact=exact,
        staged_files=files,
        staged_bytes=staged_bytes,
        staged_event_bytes=staged_events,
        oldest_unsent_seconds=max(0.0, max(ages)) if ages else None,
    )


# --- the verdict ------------------------------------------------------------------------------------


def verdict(est: Optional[Estimate], cfg) -> Verdict:
    """Pure: what a data cycle and an upload may do with the runtime ``est`` leaves (see Verdict)."""
    b, t = cfg.budget, cfg.thresholds
    if est is None or not b.enabled:
        return Verdict()
    read_s = est.card_bytes / est.read_bps + (b.overhead_seconds if est.card_bytes else 0)
    send_s = est.waiting_bytes / est.upload_bps
    if est.on_battery is not True:
        # on external power no budget applies: all is safe once the work is done (unknown power: unknown)
        return Verdict(all_safe_seconds=read_s + send_s if est.on_battery is False else None)
    keep = 1.0 - b.margin_percent / 100.0
    out: Dict[str, Any] = {}
    if est.runtime_disconnect is None:
        out.update(ingest="unknown", why=f"runtime unknown ({est.runtime_why}): the thresholds decide alone")
    else:
        usable = est.runtime_disconnect * keep
        out["ingest_bytes"] = int(max(0.0, usable - b.overhead_seconds) * est.read_bps)
        left = f"~{span(est.runtime_disconnect)} left above {t.disconnect_percent} %"
        events, normal = est.card_event_bytes, est.card_bytes - est.card_event_bytes
        guess = "" if est.card_exact else " (estimated)"
        if read_s <= usable:
            out.update(ingest="all", why=f"~{size(est.card_bytes)}{guess} on the camera fit in {left}")
        elif events / est.read_bps + b.overhead_seconds <= usable:
            out.update(ingest="events", why=f"~{size(events)} of events{guess} fit in {left},"
                                            f" {size(normal)} of normal clips do not")
        else:
            need = events / est.read_bps + b.overhead_seconds
            out.update(ingest="none", why=f"~{size(events)} of events{guess} need ~{span(need)} of copying,"
                                          f" more than {left} ({b.margin_percent} % kept in reserve)")
    if est.runtime_shutdown is None:
        out.update(upload="unknown", upload_why=f"runtime unknown ({est.runtime_why})")
    else:
        usable = est.runtime_shutdown * keep
        out["upload_bytes"] = allowed = int(usable * est.upload_bps)
        left = f"~{span(est.runtime_shutdown)} left above {t.shutdown_percent} %"
        events, normal = est.staged_event_bytes, est.staged_bytes - est.staged_event_bytes
        if est.staged_bytes <= allowed:
            out.update(upload="all", upload_why=f"{size(est.staged_bytes)} staged fit in {left}")
        elif events and events <= allowed:
            out.update(upload="events", upload_why=f"events first: ~{size(events)} of events fit in {left},"
                                                   f" ~{size(allowed - events)} of {size(normal)} of normal clips after them")
        elif est.staged_files and allowed >= est.staged_bytes / est.staged_files:
            first = (f"~{size(events)} of events do not all fit: the event clips that fit first, the others wait for"
                     " external power or the next arrival") if events else "events first"
            out.update(upload="some", upload_why=f"~{size(allowed)} of {size(est.staged_bytes)} staged fit in {left},"
                                                 f" {first}")
        else:
            out.update(upload="none", upload_why=f"nothing more fits in {left} ({b.margin_percent} % kept in reserve)")
    if out.get("ingest") == "all" and out.get("upload") == "all" and est.runtime_shutdown is not None \
            and read_s + send_s <= est.runtime_shutdown * keep:
        out["all_safe_seconds"] = read_s + send_s
    return Verdict(**out)


def _minutes(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds / 60.0, 1)


def report(est: Optional[Estimate], verdict_: Optional[Verdict]) -> Dict[str, Any]:
    """The budget as `dashcamctl status --json` and MQTT show it (plain data; {} without a budget)."""
    if est is None:
        return {}
    v = verdict_ or Verdict()
    return {
        "on_battery": est.on_battery,
        "percent": est.percent,
        "runtime_minutes": _minutes(est.runtime_shutdown),
        "camera_runtime_minutes": _minutes(est.runtime_disconnect),
        "runtime_why": est.runtime_why,
        "load_watts": round(est.load_watts, 2),
        "load_measured": est.load_measured,
        "waiting_bytes": est.waiting_bytes,
        "waiting_event_bytes": est.waiting_event_bytes,
        "staged_bytes": est.staged_bytes,
        "camera_bytes": est.card_bytes,
        "camera_exact": est.card_exact,
        "all_safe_minutes": _minutes(v.all_safe_seconds),
        "oldest_unsent_minutes": _minutes(est.oldest_unsent_seconds),
        "read_bytes_per_second": int(est.read_bps),
        "read_learned": est.read_learned,
        "upload_bytes_per_second": int(est.upload_bps),
        "upload_learned": est.upload_learned,
        "ingest": v.ingest,
        "why": v.why,
        "upload": v.upload,
        "upload_why": v.upload_why,
    }


# --- the gates at each clip boundary (ingest, upload) ---------------------------------------------------


def budget_state(verdict_: Verdict, est: Optional[Estimate], boot_id: str, monotonic: float,
                 wall: float) -> Dict[str, Any]:
    """The ledger state BUDGET_KEY the policy writes each tick for ingest and upload."""
    return {
        "boot_id": boot_id,
        "monotonic": monotonic,
        "wall": wall,
        "ingest": verdict_.ingest,
        "ingest_bytes": verdict_.ingest_bytes,
        "ingest_rate": est.read_bps if est is not None else None,
        "upload": verdict_.upload,
        "upload_bytes": verdict_.upload_bytes,
        "upload_rate": est.upload_bps if est is not None else None,
        "why": verdict_.why,
        "upload_why": verdict_.upload_why,
    }


def allowance(state: Any, which: str, boot_id: str, now: float, log=None) -> Optional[float]:
    """Bytes ``which`` (ingest | upload) may still start now, from the policy's BUDGET_KEY state:
    what it allowed, less what the time since then has used (at the rate it counted with).
    None (no limit) when there is no such state, it is of another boot, stale or unreadable
    (said on ``log``: a budget this boot wrote that cannot be read is a fault to see)."""
    if not isinstance(state, dict) or state.get("boot_id") != boot_id:
        return None
    written, allowed, rate = state.get("monotonic"), state.get(f"{which}_bytes"), state.get(f"{which}_rate")
    if allowed is None:  # no limit: external power, no estimate
        return None
    if not (_finite(written) and _finite(allowed) and _finite(rate) and allowed >= 0 and rate >= 0):
        if log is not None:
            log.warning("power budget: the policy's %s allowance cannot be read (%s bytes at %s bytes/s, written at"
                        " %s): no limit", which, str(allowed)[:40], str(rate)[:40], str(written)[:40])
        return None
    age = now - written
    if not -5.0 <= age <= STALE_SECONDS:
        return None
    return max(0.0, allowed - rate * max(0.0, age))


def may_copy(clip_bytes: int, event: bool, remaining_bytes: int, allowed: Optional[float]) -> bool:
    """At a clip boundary of an ingest (clips in order, events first): start this clip? Everything
    left fits: yes; else an event clip that fits: yes (events only); else no: the rest waits on the card."""
    if allowed is None or remaining_bytes <= allowed:
        return True
    return event and clip_bytes <= allowed


def upload_fit(items: Sequence[Tuple[int, bool]], allowed: Optional[float]) -> List[int]:
    """At a round boundary of an upload: the indexes of ``items`` ((bytes, event), in upload order)
    to send within ``allowed`` bytes: all when they fit (or no limit), else every event clip that fits,
    in their order (one too large for what is left waits, a smaller one after it still goes), then
    ordinary clips in their order up to the first that does not fit: no ordinary clip takes the
    charge an event clip could have had. Whole clips only."""
    if allowed is None or sum(n for n, _ in items) <= allowed:
        return list(range(len(items)))
    chosen: List[int] = []
    used = 0
    for i, (n, event) in enumerate(items):
        if event and used + n <= allowed:
            chosen.append(i)
            used += n
    for i, (n, event) in enumerate(items):
        if event:
            continue
        if used + n > allowed:
            break
        chosen.append(i)
        used += n
    return chosen


class IngestGate:
    """The ingest's side: asked before each clip is started; keeps the ledger's card_left up to date.

    ``get_state``/``put_state``: the ledger's; ``boot_id``, ``clock``: this boot's id and
    time.monotonic. ``clips``: (bytes, event) in copy order."""

    def __init__(self, get_state, put_state, camera: str, clips: Sequence[Tuple[int, bool]], boot_id: str,
                 clock, log=None):
        self.get_state, self.put_state, self.camera = get_state, put_state, camera
        self.clips = list(clips)
        self.boot_id, self.clock, self.log = boot_id, clock, log
        self.stopped = False  # once the budget has said stop, this run starts no other clip
        self.waiting: List[int] = []  # event clips too large for the runtime left: passed over, on the card
        self.told = False  # an unreadable budget is said once a run, not before every clip
        total = sum(n for n, _ in self.clips)
        events = sum(n for n, e in self.clips if e)
        self.scan = {"bytes": total, "event_bytes": events, "files": len(self.clips)}
        try:  # the last ingest before this one: while it is still the last, this scan holds all there is
            self.after = get_state("last_ingest")
        except Exception:
            self.after = None
        self._left(0)

    def _left(self, start: int) -> None:
        rest = [self.clips[i] for i in self.waiting] + self.clips[start:]
        try:
            self.put_state(CARD_KEY, {"camera": self.camera, "bytes": sum(n for n, _ in rest),
                                      "event_bytes": sum(n for n, e in rest if e), "files": len(rest),
                                      "scan": self.scan, "after": self.after})
        except Exception as e:  # a busy ledger: the estimate is then older, the copy goes on
            if self.log is not None:
                self.log.debug("cannot record what is left on the card: %s", e)

    def may_start(self, index: int) -> bool:
        """Clip ``index`` (of ``clips``) is next: may it start? Records what is left either way. An
        event clip too large for the runtime left is passed over (``waiting``: the ingest goes on
        with the next, a smaller event clip may fit); any other refusal stops this run (``stopped``)."""
        if self.stopped:
            return False
        self._left(index)
        nbytes, event = self.clips[index]
        remaining = sum(n for n, _ in self.clips[index:])
        try:
            state = self.get_state(BUDGET_KEY)
        except Exception:  # an unreadable budget is no budget: never a reason to stop
            state = None
        allowed = allowance(state, "ingest", self.boot_id, self.clock(), None if self.told else self.log)
        self.told = self.told or (allowed is None and isinstance(state, dict) and state.get("boot_id") == self.boot_id)
        ok = may_copy(nbytes, event, remaining, allowed)
        if not ok and event:
            self.waiting.append(index)
            if self.log is not None:
                self.log.warning("budget on battery: an event clip (%s) does not fit in the ~%s that can be copied in"
                                 " the runtime left: it stays on the card for external power or the next arrival,"
                                 " the next clips are tried", size(nbytes), size(allowed or 0))
            return False
        self.stopped = not ok
        if not ok and self.log is not None:
            events_left = sum(n for n, e in self.clips[index:] if e)
            self.log.warning(
                "budget on battery: stopping before the next clip (%s%s): ~%s can be copied in the runtime left,"
                " %d clips (%s, %s of events) stay on the card for external power or the next arrival",
                size(nbytes), ", event" if event else "", size(allowed or 0), len(self.clips) - index,
                size(remaining), size(events_left))
        return ok

    def finished(self, left_from: Optional[int] = None) -> None:
        """The copy ended; ``left_from``: the first clip not copied (None: all were)."""
        self._left(len(self.clips) if left_from is None else left_from)
