"""The battery policy: what it sees, and one pure decision per tick.

``decide(history, facts, cfg)`` is a pure function of the recent battery readings and the
facts gathered this tick; it returns a :class:`Decision` that always says why. The tick
that gathers the facts, applies the decision and records it (``dashcamctl policy``) is
tick.py; this module holds the records it passes (Sample, Facts, Decision, and TickState,
the ledger state a tick leaves for the next) and the rules (where the camera goes after an
ingest, which of our units run).

Time: every duration is measured with CLOCK_MONOTONIC (``time.monotonic()``), and two
monotonic values are compared only when they carry the same kernel boot id
(/proc/sys/kernel/random/boot_id). The wall clock (the Pi has no RTC; NTP may jump it by
years at boot) is stored for people and never used to decide anything.

This module imports only what a tick needs: the timer runs it every 30 s on battery.
"""

from __future__ import annotations

import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, List, Optional, Sequence, Tuple

from . import budget as power_budget
from .record import Record
from .log import get as get_logger

log = get_logger("dashcam.policy")

INGEST_UNITS = "dashcam-ingest@*.service"
UPLOAD_UNIT = "dashcam-upload.service"
WATCH_UNIT = "dashcam-watch.service"
# why nothing is copied nor uploaded while the tick runs on the last good configuration
BROKEN = "the configuration file is broken (the last good one is used): no copy or upload until it is fixed"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

# the tick reads the last HISTORY battery readings, enough for the debounce and the noise filter
HISTORY = 20
# the camera latch looks at the median of this many consecutive readings: one spike is no trend
MEDIAN_WINDOW = 3
# in data mode, the camera's storage that has not appeared after this many mount timeouts
# will not appear: the camera goes back to recording
STORAGE_GRACE_TIMEOUTS = 3

STATE_KEY = "policy"  # ledger state between ticks (TickState)
LAST_KEY = "last_policy"  # contract: the last decision, what it saw and what it did


# --- what decide() sees -----------------------------------------------------------------------


class Sample(Record):
    """One battery reading as the policy remembers it (a row of the ledger's readings table).

    monotonic, boot_id, percent (None: unknown), external (None: unknown), millivolts,
    wall (for people; never used to decide).
    """

    monotonic: float
    boot_id: str
    percent: Optional[int]
    external: Optional[bool]
    millivolts: Optional[int] = None
    wall: Optional[float] = None

    @property
    def known(self) -> bool:
        return self.percent is not None


class Facts(Record):
    """Everything else decide() needs, gathered by the tick. Times are this boot's monotonic seconds.

    now, boot_id: this tick
    reachable: the server answers; was_reachable: at the previous tick of this boot (None: first)
    reachable_since: when the server began answering, every probe since (this boot; None: not now)
    external_since: first reading of the current streak on external power (this boot; None: not
      on external power; an unknown reading neither starts nor ends a streak)
    previous_tick: when the previous tick of this boot ran (None: this is the first)
    camera_mode: record | data | off | unknown
    camera_attached: the camera's storage is visible (probed in data mode only, else None)
    data_since: when the camera entered (or was first seen in) data mode
    ingested_since_data: an ingest finished since the camera entered data mode
    recorded_seconds: how long the camera was seen recording since the last ingest
    ingested_before: an ingest has been recorded (ledger state last_ingest) at least once
    left_on_card: bytes the last ingest's scan found on the camera and left there (the power
      budget on battery stopped it before them; ledger state card_left): footage to expect
    unknown_since: first unknown reading of the current unknown streak, this boot
    last_external: the last known "on external power", from any reading
    battery_low: the camera latch as the previous tick left it (None: no previous tick)
    staging_free, staging_reserve: bytes
    backlog_files, backlog_bytes: staged, not yet verified on the server
    ingest_running, upload_running: the units are active (None: not asked, it did not matter)
    config_broken: the configuration file does not load; the tick runs on the last good one
      (config.load_cached): no copy nor upload starts (they would refuse the file), the camera
      records and the battery is watched
    """

    now: float
    boot_id: str
    reachable: bool
    was_reachable: Optional[bool] = None
    reachable_since: Optional[float] = None
    external_since: Optional[float] = None
    previous_tick: Optional[float] = None
    camera_mode: str = "unknown"
    camera_attached: Optional[bool] = None
    data_since: Optional[float] = None
    ingested_since_data: bool = False
    recorded_seconds: float = 0.0
    ingested_before: bool = False
    left_on_card: int = 0
    unknown_since: Optional[float] = None
    last_external: Optional[bool] = None
    battery_low: Optional[bool] = None
    staging_free: int = 0
    staging_reserve: int = 0
    backlog_files: int = 0
    backlog_bytes: int = 0
    ingest_running: Optional[bool] = False
    upload_running: Optional[bool] = False
    upload_failed_recently: bool = False
    upload_held: bool = False  # the last upload found only clips held for a cut session, still held
    budget: Any = None  # budget.Estimate: the runtime left on battery, the rates, the footage waiting (None: none)
    config_broken: bool = False

    @property
    def staging_has_room(self) -> bool:
        return self.staging_free > self.staging_reserve


class Decision(Record):
    """camera: the mode to switch the camera to (None: leave it); start_upload; shutdown;
    stop_units: units to stop first; reason: why, in one line (the camera part; the upload part);
    battery: how the battery was judged (external | ok | low | critical | unknown);
    battery_low: the camera latch for the next tick (True: low, camera off);
    back_to_record: why the camera goes back to record because the car can move (one of
    BACK_TO_RECORD; "": it does not, or for another reason)."""

    camera: Optional[str]
    start_upload: bool
    shutdown: bool
    stop_units: Tuple[str, ...]
    reason: str
    battery: str = ""
    battery_low: Optional[bool] = None
    back_to_record: str = ""
    verdict: Any = None  # budget.Verdict: what ingest and upload may start on battery (the tick writes it)


# the camera goes back to record because the car can move: the engine started (external power
# after battery), the car is leaving (the server stopped answering on external power), or data
# mode lasted longer than camera.max_data_minutes_external on external power
BACK_TO_RECORD = ("engine_started", "leaving_home", "watchdog_external")


class Power(Record):
    """How decide() judged the battery: state (external | ok | low | critical | unknown),
    camera_allowed (on battery: may the camera be on? None: no opinion, hold), why."""

    state: str
    camera_allowed: Optional[bool]
    why: str


# --- the decision -------------------------------------------------------------------------------


def _median(values: Sequence[int]) -> int:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def assess(history: Sequence[Sample], facts: Facts, cfg) -> Power:
    """Judge the battery from the readings of this boot (the last one is this tick's)."""
    t = cfg.thresholds
    if not history:
        return Power("unknown", None, "no battery reading")
    current = history[-1]
    if current.external is True:
        return Power("external", True, "on external power: battery thresholds ignored")
    this_boot = [s for s in history if s.boot_id == facts.boot_id]
    if not current.known:
        on_battery = current.external is False or (current.external is None and facts.last_external is False)
        if on_battery and facts.unknown_since is not None:
            minutes = max(0.0, facts.now - facts.unknown_since) / 60
            if minutes >= t.unknown_low_minutes:
                return Power(
                    "critical",
                    False,
                    f"on battery and no battery reading for {minutes:.0f} min (>= {t.unknown_low_minutes}): counts as low",
                )
        return Power("unknown", None, "battery reading unknown")
    pct = current.percent
    level = f"{pct}%" + (f" ({current.millivolts} mV)" if current.millivolts is not None else "")
    # shutdown: the last N readings of this boot all known, on battery, below the threshold
    tail = this_boot[-t.shutdown_debounce :]
    if len(tail) == t.shutdown_debounce and all(
        s.known and s.external is not True and s.percent < t.shutdown_percent for s in tail
    ):
        return Power(
            "critical",
            False,
            f"battery {level} below shutdown_percent {t.shutdown_percent} for {t.shutdown_debounce} readings",
        )
    # the camera latch, with hysteresis: off below disconnect, on again only at disconnect + hysteresis,
    # judged on the median of the last MEDIAN_WINDOW battery readings of this boot (one spike is no
    # trend). In the band between the two, the latch stays as the previous tick left it
    # (facts.battery_low); with none, the camera's present state holds.
    on_batt = [s.percent for s in this_boot if s.known and s.external is not True][-MEDIAN_WINDOW:]
    back_on = t.disconnect_percent + t.hysteresis_percent
    m = _median(on_batt) if on_batt else pct
    shown = level if m == pct else f"{level}, median of the last {len(on_batt)} readings {m}%"
    if m < t.disconnect_percent:
        return Power("low", False, f"battery {shown} below disconnect_percent {t.disconnect_percent}")
    if m >= back_on:
        return Power("ok", True, f"battery {shown} on battery")
    band = f"battery {shown} between disconnect_percent {t.disconnect_percent} and {back_on}%"
    if facts.battery_low is True:
        return Power("low", False, f"{band}, low since it fell below {t.disconnect_percent}%")
    if facts.battery_low is False:
        return Power("ok", True, f"{band}, ok since it was last at or above {back_on}%")
    if facts.camera_mode in ("record", "data"):
        return Power("ok", True, f"{band}: camera stays on")
    if facts.camera_mode == "off":
        return Power("low", False, band)
    return Power("unknown", None, f"{band} and the camera mode unknown")


def mode_after_ingest(cfg, external: Optional[bool]) -> str:
    """Where the camera goes after an ingest (the ingest's own last step, and the policy when an
    ingest left it in data): record on external power (the car is running), else
    camera.after_ingest (power unknown counts as battery)."""
    return "record" if external is True else cfg.camera.after_ingest


def settled(facts: Facts, cfg, at: float) -> bool:
    """At monotonic time ``at``: has the server answered, on external power, for camera.settle_minutes?"""
    if facts.reachable_since is None or facts.external_since is None:
        return False
    return at - max(facts.reachable_since, facts.external_since) >= cfg.camera.settle_minutes * 60


def _budget_note(verdict, external: bool) -> str:
    """The power budget's word on a data cycle, with its numbers ("" on external power or without one)."""
    if external or verdict is None or not verdict.ingest:
        return ""
    word = {"all": "copy all", "events": "copy events only", "none": "copy nothing"}.get(verdict.ingest, "no budget")
    return f"; {word}: {verdict.why}"


def _camera(power: Power, facts: Facts, cfg, verdict=None) -> Tuple[Optional[str], str, Tuple[str, ...], str]:
    """(target mode or None, why, units to stop first, back_to_record). ``verdict``: budget.Verdict."""
    mode = facts.camera_mode
    if power.state in ("low", "critical") and power.camera_allowed is False:
        if mode == "off":
            return None, f"camera stays off: {power.why}", (), ""
        return "off", f"camera off: {power.why}", (INGEST_UNITS,) if facts.ingest_running else (), ""
    if mode == "data":
        return _in_data(power, facts, cfg, verdict)
    if power.state == "unknown":
        return None, f"camera stays {mode}: {power.why} (an unknown reading changes nothing by itself)", (), ""
    data, why_not = _to_data(power, facts, cfg, verdict)
    return data or _elsewhere(power, facts, cfg, why_not)


def _in_data(power: Power, facts: Facts, cfg, verdict) -> Tuple[Optional[str], str, Tuple[str, ...], str]:
    """The camera in data mode: back to record when the car can move or the watchdog fires, back
    after the ingest, or it stays for the ingest."""
    stop_ingest = (INGEST_UNITS,) if facts.ingest_running else ()
    external = power.state == "external"
    held = facts.now - facts.data_since if facts.data_since is not None else 0.0
    # the car can move: the road wins over the copy (an ingest stopped is resumed next time)
    if external and facts.external_since is not None and facts.data_since is not None \
            and facts.external_since > facts.data_since:
        return (
            "record",
            f"engine started: external power since {facts.now - facts.external_since:.0f} s, data mode began"
            f" on battery {held:.0f} s ago: back to record",
            stop_ingest,
            "engine_started",
        )
    if external and not facts.reachable:
        return (
            "record",
            f"leaving home: the server stopped answering on external power after {held:.0f} s of data mode:"
            " back to record",
            stop_ingest,
            "leaving_home",
        )
    minutes = cfg.camera.max_data_minutes_external if external else cfg.camera.max_data_minutes
    if held >= minutes * 60:
        key = "max_data_minutes_external" if external else "max_data_minutes"
        return (
            "record",
            f"watchdog: data mode for {held / 60:.0f} min ({key} {minutes}): back to record",
            stop_ingest,
            "watchdog_external" if external else "",
        )
    if facts.ingest_running:
        note = _budget_note(verdict, external)
        return None, f"ingest running: camera stays in data ({held:.0f} s){note}", (), ""
    if facts.config_broken:
        back = mode_after_ingest(cfg, power.state == "external")
        return back, f"{BROKEN}: no ingest can start, back to {back}", (), ""
    if facts.ingested_since_data:
        back = mode_after_ingest(cfg, power.state == "external")
        return back, f"ingest finished but left the camera in data: back to {back}", (), ""
    grace = cfg.poll.mount_timeout_seconds * STORAGE_GRACE_TIMEOUTS
    if facts.camera_attached is False and held >= grace:
        return "record", f"the camera's storage did not appear within {held:.0f} s of data mode: back to record", (), ""
    return None, f"camera in data for {held:.0f} s, waiting for its storage and the ingest", (), ""


def _to_data(power: Power, facts: Facts, cfg, verdict) -> Tuple[Optional[Tuple[str, str, Tuple[str, ...], str]], Optional[str]]:
    """(the switch to data mode, None) when it is time to fetch footage: at home, battery allowing,
    room in staging, new footage to expect; else (None, why not, or None when out of reach)."""
    external = power.state == "external"
    if not (facts.reachable and (external or power.camera_allowed is True)):
        return None, None
    # clips an ingest left on the card (the budget on battery copied the events only) wait for external
    # power, even when the camera has recorded nothing since (a boot at home with camera.settle_minutes 0);
    # on battery they wait for the next arrival after a drive: the cell has not charged meanwhile
    new_footage = (facts.recorded_seconds > 0 or not facts.ingested_before
                   or (external and facts.left_on_card > 0))
    settle = cfg.camera.settle_minutes
    if external and settle > 0:
        # on external power the engine may be running: the car is parked only once the server has
        # answered (and the power stayed external) for settle_minutes -- a drive-by or a drop-off
        # never gets there. "Arriving" is the tick that first finds it so.
        parked = settled(facts, cfg, facts.now)
        just_reachable = (
            parked
            and (facts.previous_tick is None or not settled(facts, cfg, facts.previous_tick))
            and new_footage
        )
        arrived = f"the server has answered on external power for settle_minutes {settle}"
    else:
        # on battery (ignition off), arriving home fetches at once -- if the camera recorded anything
        # since the last ingest (or nothing was ever ingested): a WiFi blip at home after an ingest
        # brings no new footage
        parked = True
        just_reachable = facts.reachable and facts.was_reachable is not True and new_footage
        arrived = "the server just became reachable"
    recorded = facts.recorded_seconds >= cfg.camera.min_record_minutes * 60
    why_not = None
    if facts.config_broken:
        why_not = BROKEN
    elif not parked:
        answering = facts.now - facts.reachable_since if facts.reachable_since is not None else 0.0
        external_for = facts.now - facts.external_since if facts.external_since is not None else 0.0
        why_not = (
            f"on external power (the car may move): the server answered for {min(answering, external_for):.0f} s,"
            f" settle_minutes {settle}"
        )
    elif not facts.staging_has_room:
        why_not = f"staging has no room ({facts.staging_free} bytes free, reserve {facts.staging_reserve})"
    elif facts.ingest_running:
        why_not = "an ingest is running"
    elif not (just_reachable or recorded):
        why_not = (
            f"no new footage expected (recorded {facts.recorded_seconds / 60:.0f} min since the last ingest,"
            f" min_record_minutes {cfg.camera.min_record_minutes})"
        )
    elif not external and verdict is not None and verdict.ingest == "none":
        # not even the event clips fit in the runtime left: they wait for external power or the next arrival
        why_not = f"power budget: {verdict.why}"
    if why_not is None:
        expect = arrived if just_reachable else (
            f"the camera recorded {facts.recorded_seconds / 60:.0f} min since the last ingest"
        )
        if facts.left_on_card:
            expect += f", {power_budget.size(facts.left_on_card)} left on the card by the last ingest"
        note = _budget_note(verdict, external)
        return ("data", f"data: server reachable, {power.why}, staging has room, {expect}{note}", (), ""), None
    return None, why_not


def _elsewhere(power: Power, facts: Facts, cfg, why_not: Optional[str]) -> Tuple[Optional[str], str, Tuple[str, ...], str]:
    """No data mode: record on external power or away from home, else as the ingest left it."""
    mode = facts.camera_mode
    external = power.state == "external"
    event = ""
    if external:
        target, why = "record", power.why
        if mode == "off":
            event = "engine_started"  # the camera was off on battery; external power now
    elif not facts.reachable and facts.was_reachable is True and mode == "off":
        # parked at home on battery, camera off after an ingest: one missed probe (a WiFi blip)
        # is not leaving home; the next tick decides
        target, why = mode, f"server stopped answering this tick, not yet counted as away; {power.why}"
    elif not facts.reachable:
        target, why = "record", f"server unreachable (away from home), {power.why}"
    else:
        # at home on battery and nothing to fetch: the camera stays as ingest left it
        target = mode if mode in ("record", "off") else mode_after_ingest(cfg, False)
        why = f"at home on battery, {power.why}"
    if why_not:
        why += f"; no data mode: {why_not}"
    if target == mode:
        return None, f"camera stays {mode}: {why}", (), ""
    return target, f"camera {target}: {why}", (), event


def _upload(facts: Facts, verdict=None) -> Tuple[bool, str]:
    if facts.backlog_files == 0:
        return False, "nothing to upload"
    waiting = f"{facts.backlog_files} files ({facts.backlog_bytes} bytes) to upload"
    if not facts.reachable:
        return False, f"{waiting}, server unreachable"
    if facts.upload_running:
        return False, f"{waiting}, upload running"
    if facts.config_broken:
        return False, f"{waiting}, {BROKEN}"
    if facts.upload_failed_recently:
        return False, f"{waiting}, the last upload failed: next try after a pause"
    if facts.upload_held:
        return False, f"{waiting}, each waits for a session cut earlier to end on the server"
    on_budget = verdict is not None and verdict.upload and verdict.upload != "unknown"
    if on_budget and verdict.upload == "none":
        return False, f"{waiting}, power budget: {verdict.upload_why}; they wait for external power or the next arrival"
    note = f" ({verdict.upload_why})" if on_budget else ""
    return True, f"{waiting} and the server is reachable: start upload{note}"


def decide(history: Sequence[Sample], facts: Facts, cfg) -> Decision:
    """The policy for one tick: pure, every branch with its reason.

    ``history``: the recent battery readings, oldest first; the last one is this tick's.
    """
    power = assess(history, facts, cfg)
    # the budget never touches a shutdown nor a return to record: only what a data cycle and an upload start
    try:  # an estimate the verdict cannot weigh is no budget: never a reason to skip a shutdown
        verdict = power_budget.verdict(facts.budget, cfg) if facts.budget is not None else None
    except (ArithmeticError, TypeError, ValueError) as e:
        log.error("policy: no power budget this tick (no limit): %s: %s", type(e).__name__, e)
        verdict = None
    if power.state == "critical":
        camera = "off" if facts.camera_mode != "off" else None
        return Decision(
            camera=camera,
            start_upload=False,
            shutdown=True,
            stop_units=(INGEST_UNITS, UPLOAD_UNIT),
            reason=f"shutdown: {power.why}; stop ingest and upload, camera off, power off",
            battery=power.state,
            battery_low=True,
            verdict=verdict,
        )
    camera, why, stop, back = _camera(power, facts, cfg, verdict)
    upload, upload_why = _upload(facts, verdict)
    return Decision(
        camera=camera,
        start_upload=upload,
        shutdown=False,
        stop_units=stop,
        reason=f"{why}; {upload_why}",
        battery=power.state,
        battery_low=_latch(power, facts),
        back_to_record=back if camera == "record" else "",
        verdict=verdict,
    )


def _latch(power: Power, facts: Facts) -> Optional[bool]:
    if power.state == "external":
        return False  # charged meanwhile: the thresholds start afresh when the power goes
    if power.state in ("ok", "low"):
        return power.state == "low"
    return facts.battery_low  # unknown: the latch stays

# --- time ---------------------------------------------------------------------------------------


class SystemClock:
    """Monotonic time for durations, the wall clock for people, the boot id that scopes them."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def boot_id(self) -> str:
        return boot_id()


BOOT_ID_ENV = "DASHCAM_BOOT_ID"  # set by the units whose /proc hides /proc/sys (ProcSubset=pid): systemd's %b


def boot_id(path: str = BOOT_ID_PATH, environ=os.environ) -> str:
    """This boot's id as the kernel writes it (8-4-4-4-12 lowercase hex), "unknown" when neither the
    kernel's file nor the unit's DASHCAM_BOOT_ID (systemd's %b: 32 hex digits) gives one. The
    ingest and the upload need it to follow the power budget the policy wrote for this boot."""
    try:
        with open(path, encoding="utf-8") as f:  # hex and dashes; utf-8 is loaded already, ascii not
            return f.read().strip()
    except OSError:
        pass
    given = environ.get(BOOT_ID_ENV, "").strip().lower().replace("-", "")
    if len(given) != 32 or any(c not in "0123456789abcdef" for c in given):
        return "unknown"
    return "-".join((given[:8], given[8:12], given[12:16], given[16:20], given[20:]))


# --- our units ----------------------------------------------------------------------------------


def ours_running(units: Sequence[str]) -> Tuple[bool, bool]:
    """(an ingest runs, the upload runs) among the running ``units`` (systemd.Systemctl.units)."""
    return any(u.startswith("dashcam-ingest@") for u in units), UPLOAD_UNIT in units


def units_running_from(listing: str) -> Tuple[bool, bool]:
    """(an ingest runs, the upload runs), from ``systemctl list-units --plain --no-legend``."""
    from .systemd import running_units

    return ours_running(running_units(listing))


# --- what the ledger keeps between ticks --------------------------------------------------------


def finite(value: Any) -> bool:
    """A number arithmetic can use: int or float, not bool, not NaN or ±Infinity."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value - value == 0


def _number(value: Any) -> Optional[float]:
    return value if finite(value) else None


def _flag(value: Any) -> Optional[bool]:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


class TickState(Record):
    """The ledger state "policy": what a tick leaves for the next. Monotonic seconds of the boot
    ``boot_id`` (a tick of another boot uses none of them; see Facts for their meaning).

    last_tick, last_mode: when the previous tick ran, the camera mode it left
    reachable, reachable_since: the server answered at the previous tick, and since when
    external_since, unknown_since, last_external, battery_low: the power streaks and the camera latch
    data_since, data_ingest: when data mode began, and the last_ingest state then (a marker)
    recorded_seconds: how long the camera recorded since the last ingest
    recording_since: wall clock, for people: the oldest footage on the camera
    seen_ingest: the last_ingest state the previous tick saw (a marker: a new one is an ingest)
    watch_failed: the previous tick's start of the ignition watcher failed (the next tries again)
    """

    boot_id: Optional[str] = None
    last_tick: Optional[float] = None
    last_mode: Optional[str] = None
    reachable: Optional[bool] = None
    reachable_since: Optional[float] = None
    external_since: Optional[float] = None
    data_since: Optional[float] = None
    data_ingest: Any = None
    recorded_seconds: float = 0.0
    recording_since: Optional[float] = None
    seen_ingest: Any = None
    unknown_since: Optional[float] = None
    last_external: Optional[bool] = None
    battery_low: Optional[bool] = None
    watch_failed: bool = False

    @classmethod
    def parse(cls, value: Any) -> "TickState":
        """The state as stored: the ledger on disk is input like any other, and a value a person or a
        fault changed (text for a number, a list for the state) is left out rather than crash the tick."""
        if not isinstance(value, dict):
            return cls()
        recorded = value.get("recorded_seconds")
        return cls(
            boot_id=_text(value.get("boot_id")),
            last_tick=_number(value.get("last_tick")),
            last_mode=_text(value.get("last_mode")),
            reachable=_flag(value.get("reachable")),
            reachable_since=_number(value.get("reachable_since")),
            external_since=_number(value.get("external_since")),
            data_since=_number(value.get("data_since")),
            data_ingest=value.get("data_ingest"),
            recorded_seconds=float(recorded) if finite(recorded) else 0.0,
            recording_since=_number(value.get("recording_since")),
            seen_ingest=value.get("seen_ingest"),
            unknown_since=_number(value.get("unknown_since")),
            last_external=_flag(value.get("last_external")),
            battery_low=_flag(value.get("battery_low")),
            watch_failed=value.get("watch_failed") is True,
        )


def read_state(ledger) -> TickState:
    """What the last tick left in the ledger (TickState(): none, or none that can be read)."""
    return TickState.parse(ledger.get_state(STATE_KEY))


def _sample(row) -> Sample:
    return Sample(
        monotonic=row["monotonic"],
        boot_id=row["boot_id"],
        percent=row["percent"],
        external=None if row["external"] is None else bool(row["external"]),
        millivolts=row["millivolts"],
        wall=row["wall"],
    )


def samples(rows) -> List[Sample]:
    """The stored readings the tick can use: a row a person or a fault changed (text for a
    number, NaN) is left out rather than crash the tick."""
    out = []
    for row in rows:
        try:
            sample = _sample(row)
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if (
            finite(sample.monotonic)
            and (sample.percent is None or (type(sample.percent) is int and 0 <= sample.percent <= 100))
            and (sample.millivolts is None or type(sample.millivolts) is int)
        ):
            out.append(sample)
    return out
