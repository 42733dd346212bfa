"""The battery policy: one pure decision per tick, then the actions it asks for.

``decide(history, facts, cfg)`` is a pure function of the recent battery readings and the
facts gathered this tick; it returns a :class:`Decision` that always says why.
``tick(cfg, facts_source, actions, ledger=..., clock=...)`` is one run of
``dashcamctl policy``: it gathers the facts (through ``facts_source``), records the
reading and the small state that must survive between ticks in the ledger, calls
``decide``, applies the decision (through ``actions``) and logs one line.

Time: every duration is measured with CLOCK_MONOTONIC (``time.monotonic()``), and two
monotonic values are compared only when they carry the same kernel boot id
(/proc/sys/kernel/random/boot_id). The wall clock (the Pi has no RTC; NTP may jump it by
years at boot) is stored for people and never used to decide anything.

This module imports only what a tick needs, and the modules of other concerns (battery,
camera, device, upload) only when the real gatherers call them: the timer runs it every
30 s on battery.
"""

from __future__ import annotations

import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import budget as power_budget
from .record import Record
from .staging import space as staging_space
from .log import ERROR, INFO, WARNING, get as get_logger

log = get_logger("dashcam.policy")

INGEST_UNITS = "dashcam-ingest@*.service"
UPLOAD_UNIT = "dashcam-upload.service"
WATCH_UNIT = "dashcam-watch.service"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
FALLBACK_DIR = "/run/dashcam"  # the last place for the tick's state when the ledger fails (tmpfs, root's)

# the ledger keeps this many readings (about a day at one tick every 30 s); the tick reads
# only the last HISTORY of them, enough for the debounce and the noise filter
KEEP_READINGS = 3000
HISTORY = 20
# the camera latch looks at the median of this many consecutive readings: one spike is no trend
MEDIAN_WINDOW = 3
# in data mode, the camera's storage that has not appeared after this many mount timeouts
# will not appear: the camera goes back to recording
STORAGE_GRACE_TIMEOUTS = 3

# after an upload that failed (not "unreachable": a refused key, a full server disk), the
# policy waits this long before starting another, so a broken setup does not loop
UPLOAD_FAILURE_PAUSE = 15 * 60

STATE_KEY = "policy"  # ledger state between ticks (see Tick state below)
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


def _return_mode(power: Power, cfg) -> str:
    """Where the camera goes after data mode: record on external power, else camera.after_ingest."""
    return "record" if power.state == "external" else cfg.camera.after_ingest


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
    stop_ingest = (INGEST_UNITS,) if facts.ingest_running else ()
    external = power.state == "external"

    if power.state in ("low", "critical") and power.camera_allowed is False:
        if mode == "off":
            return None, f"camera stays off: {power.why}", (), ""
        return "off", f"camera off: {power.why}", stop_ingest, ""

    if mode == "data":
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
        if facts.ingested_since_data:
            back = _return_mode(power, cfg)
            return back, f"ingest finished but left the camera in data: back to {back}", (), ""
        grace = cfg.poll.mount_timeout_seconds * STORAGE_GRACE_TIMEOUTS
        if facts.camera_attached is False and held >= grace:
            return "record", f"the camera's storage did not appear within {held:.0f} s of data mode: back to record", (), ""
        return None, f"camera in data for {held:.0f} s, waiting for its storage and the ingest", (), ""

    if power.state == "unknown":
        return None, f"camera stays {mode}: {power.why} (an unknown reading changes nothing by itself)", (), ""

    # data mode: at home, battery allowing, room in staging, and new footage to expect
    allowed = external or power.camera_allowed is True
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
    if facts.reachable and allowed:
        why_not = None
        if not parked:
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
            return "data", f"data: server reachable, {power.why}, staging has room, {expect}{note}", (), ""
    else:
        why_not = None

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
        target = mode if mode in ("record", "off") else cfg.camera.after_ingest
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


# --- gathering and acting (injectable: tests pass fakes, dashcamctl passes the System ones) -----


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


class SystemFacts:
    """The real gatherers, against the modules of the other concerns (imported on use)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.reading = None  # the last battery reading

    def battery(self):
        from . import battery

        self.reading = battery.read(self.cfg)  # never raises: an unknown reading carries its reason
        return self.reading

    def camera_mode(self) -> str:
        from . import camera

        try:
            return camera.current_mode(self.cfg)
        except Exception as e:  # a broken hub or a missing tool: the mode is unknown, the tick goes on
            log.debug("camera mode unknown: %s", e)
            return "unknown"

    def camera_attached(self) -> Optional[bool]:
        from . import device

        try:
            return device.camera_attached(self.cfg) is not None
        except Exception as e:
            log.debug("camera attachment unknown: %s", e)
            return None

    def server_reachable(self) -> bool:
        from . import server  # not the uploader: a tick must not pay for importing it

        try:
            return bool(server.reachable(self.cfg, None))  # upload.connect_timeout
        except Exception as e:
            log.debug("reachability probe failed: %s", e)
            return False

    def units_running(self) -> Tuple[bool, bool]:
        """(an ingest unit is running, the upload unit is running), from one systemctl call."""
        from . import runner

        try:
            result = runner.run(
                [
                    "systemctl",
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                "--no-pager",
                    "--type=service",
                    INGEST_UNITS,
                    UPLOAD_UNIT,
                ],
                timeout=10,
                changes_state=False,
                check=False,
            )
        except runner.CommandError as e:  # no systemctl (not a systemd system): nothing of ours runs
            log.debug("cannot list units: %s", e)
            return False, False
        return units_running_from(result.stdout)

    def staging_space(self) -> Tuple[int, int]:
        return staging_space(self.cfg)


def units_running_from(listing: str) -> Tuple[bool, bool]:
    """Parse ``systemctl list-units --plain --no-legend``: UNIT LOAD ACTIVE SUB DESCRIPTION."""
    ingest = upload = False
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        unit, active = parts[0], parts[2]
        if active not in ("active", "activating", "deactivating", "reloading"):
            continue
        if unit.startswith("dashcam-ingest@"):
            ingest = True
        elif unit == UPLOAD_UNIT:
            upload = True
    return ingest, upload



class SystemActions:
    """The real actors: systemctl through the runner, the camera through camera.set_mode."""

    def __init__(self, cfg, dry_run: bool = False, facts: Optional[SystemFacts] = None):
        self.cfg = cfg
        self.dry_run = dry_run
        self.facts = facts  # what the tick read the battery with: checked again before leaving record

    def stop_units(self, units: Sequence[str]) -> None:
        from . import runner

        # blocks until they have stopped: ingest deletes its .part and unmounts, upload ends rsync
        runner.run(["systemctl", "stop", *units], timeout=150, dry_run=self.dry_run)

    def set_camera(self, mode: str) -> Optional[bool]:
        """Switch the camera; False when it was already recording (nothing done)."""
        from . import camera
        from .ignition import LOCK_PATH, PolicyLock

        if self.facts is None or (mode != "record" and self.facts.reading is None):
            camera.set_mode(self.cfg, mode, dry_run=self.dry_run)
            return None
        if mode == "record":
            # under the watcher's lock: it may have put the camera back (and counted the return)
            # since this tick read the mode
            with PolicyLock(None if self.dry_run else LOCK_PATH):
                if not self.dry_run and self.facts.camera_mode() == "record":
                    return False
                camera.set_mode(self.cfg, mode, dry_run=self.dry_run)
            return None
        # leaving record: under the lock the ignition watcher acts with, one more battery read. The
        # engine may have started since this tick's reading (a tick takes seconds); the watcher, or
        # the next tick, has the camera then.
        seen = self.facts.reading.external
        with PolicyLock(None if self.dry_run else LOCK_PATH):
            if seen is not True and self.facts.battery().external is True:
                raise camera.CameraError(
                    f"camera {mode}: not switched: external power since this tick's reading (the engine started)"
                )
            camera.set_mode(self.cfg, mode, dry_run=self.dry_run)
        return None

    def start_upload(self) -> None:
        from . import runner

        runner.run(["systemctl", "start", "--no-block", UPLOAD_UNIT], timeout=30, dry_run=self.dry_run)

    def poweroff(self) -> None:
        from . import runner

        runner.run(["systemctl", "poweroff"], timeout=30, dry_run=self.dry_run)

    def start_watch(self) -> None:
        from . import runner

        runner.run(["systemctl", "start", "--no-block", WATCH_UNIT], timeout=30, dry_run=self.dry_run)


# --- the tick -----------------------------------------------------------------------------------


class Outcome:
    """What a tick did: the actions done, and the ones that failed with their error."""

    def __init__(self) -> None:
        self.done: List[str] = []
        self.failed: List[str] = []


def _sample(row) -> Sample:
    return Sample(
        monotonic=row["monotonic"],
        boot_id=row["boot_id"],
        percent=row["percent"],
        external=None if row["external"] is None else bool(row["external"]),
        millivolts=row["millivolts"],
        wall=row["wall"],
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value - value == 0


def _samples(rows) -> List[Sample]:
    """The stored readings the tick can use: the ledger on disk is input like any other, and a row
    a person or a fault changed (text for a number, NaN) is left out rather than crash the tick."""
    out = []
    for row in rows:
        try:
            sample = _sample(row)
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if (
            _finite(sample.monotonic)
            and (sample.percent is None or (type(sample.percent) is int and 0 <= sample.percent <= 100))
            and (sample.millivolts is None or type(sample.millivolts) is int)
        ):
            out.append(sample)
    return out


def _number_or_0(value: Any) -> float:
    return float(value) if _finite(value) else 0.0


# the tick's state keys that hold a number (monotonic seconds); anything else there is dropped
_STATE_NUMBERS = ("last_tick", "data_since", "recorded_seconds", "unknown_since", "recording_since")


def _state(value: Any) -> Dict[str, Any]:
    """The tick state as stored, with what cannot be used dropped (see _samples)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if k not in _STATE_NUMBERS or v is None or _finite(v)}


def _try(outcome: Outcome, what: str, fn, *args) -> bool:
    try:
        fn(*args)
    except Exception as e:  # one failed action must not keep the others (above all a shutdown) from running
        outcome.failed.append(f"{what}: {e}")
        return False
    outcome.done.append(what)
    return True


def _same_marker(a: Any, b: Any) -> bool:
    return a == b


def tick(cfg, facts_source, actions, *, ledger, clock=None, dry_run: bool = False) -> Dict[str, Any]:
    """One policy tick. Returns the record stored as ledger state "last_policy".

    ``facts_source``: battery(), camera_mode(), camera_attached(), server_reachable(),
    units_running(), staging_space() -- see SystemFacts. ``actions``: stop_units(units),
    set_camera(mode), start_upload(), poweroff() -- see SystemActions. ``clock``:
    monotonic(), time(), boot_id() -- see SystemClock.
    Under ``dry_run`` the actions log instead of acting (the System actions pass it to the
    runner); the reading and what was observed are still recorded: they are facts, not actions.
    """
    clock = clock or SystemClock()
    now, wall, boot = clock.monotonic(), clock.time(), clock.boot_id()
    st = _state(ledger.get_state(STATE_KEY))
    same_boot = st.get("boot_id") == boot

    # the battery: record this reading, read back the recent ones
    reading = facts_source.battery()
    history = _samples(ledger.recent_readings(HISTORY - 1))
    history.append(
        Sample(
            monotonic=now,
            boot_id=boot,
            percent=reading.percent,
            external=reading.external,
            millivolts=reading.millivolts,
            wall=wall,
        )
    )
    known = reading.percent is not None or reading.external is True
    if known:
        unknown_since = None
    elif same_boot and st.get("unknown_since") is not None:
        unknown_since = st["unknown_since"]
    else:
        unknown_since = now
    last_external = reading.external if reading.external is not None else st.get("last_external")
    # the current streak on external power (this boot): an unknown reading neither starts nor ends it
    external_since = st.get("external_since") if same_boot else None
    if reading.external is True:
        external_since = external_since if external_since is not None else now
    elif reading.external is False or not same_boot:
        external_since = None

    # the camera
    mode = facts_source.camera_mode()
    data_since = st.get("data_since") if (same_boot and st.get("last_mode") == "data" and mode == "data") else None
    last_ingest = ledger.get_state("last_ingest")
    if mode == "data" and data_since is None:
        data_since = now  # first seen in data mode (this boot)
        data_ingest = last_ingest
    else:
        data_ingest = st.get("data_ingest")
    ingested_since_data = mode == "data" and not _same_marker(last_ingest, data_ingest)
    recorded = float(st.get("recorded_seconds", 0.0))
    recorded_before = 0.0  # the recording an ingest that just ended took (the budget learns from it)
    recording_since = st.get("recording_since")  # wall clock, for people: the oldest footage on the camera
    card = ledger.get_state(power_budget.CARD_KEY)  # what the last ingest left on the card
    if not _same_marker(last_ingest, st.get("seen_ingest")):
        recorded_before, recorded = recorded, 0.0  # an ingest took what the camera had recorded
        if not (isinstance(card, dict) and card.get("bytes")):
            recording_since = None  # ... all of it: else the oldest footage is still on the card
    elif same_boot and st.get("last_mode") == "record" and mode == "record" and st.get("last_tick") is not None:
        recorded += max(0.0, now - st["last_tick"])
        if recording_since is None:
            recording_since = wall - max(0.0, now - st["last_tick"])
    attached = facts_source.camera_attached() if mode == "data" else None

    # the world around it
    reachable = facts_source.server_reachable()
    was_reachable = st.get("reachable") if same_boot else None
    reachable_since = (st.get("reachable_since") if same_boot and was_reachable else None) if reachable else None
    if reachable and reachable_since is None:
        reachable_since = now
    free, reserve = facts_source.staging_space()
    backlog_files, backlog_bytes, backlog_event_bytes, oldest_staged = ledger.backlog_detail()
    last_upload = ledger.get_state("last_upload")
    # the power budget (budget.py): what the ingests and uploads taught, what waits, the runtime left
    rates, estimate = {}, None
    try:  # what the ledger holds is input: a case the parsers missed costs the budget, never the tick
        watts = power_budget.load_watts(reading.raw)
        rates = power_budget.learn(ledger.get_state(power_budget.RATES_KEY), cfg.camera.name, last_ingest=last_ingest,
                                   last_upload=last_upload, recorded_seconds=recorded_before, watts=watts, card=card)
        if cfg.budget.enabled:
            estimate = power_budget.estimate(
                history, boot, cfg, rates=rates, camera=cfg.camera.name, watts=watts, recorded_seconds=recorded,
                card=card, staged=(backlog_files, backlog_bytes, backlog_event_bytes), last_ingest=last_ingest,
                oldest_staged_wall=oldest_staged, recording_since_wall=recording_since, wall=wall)
    except Exception as e:
        log.error("policy: no power budget this tick (no limit): %s: %s", type(e).__name__, e)
    # the wall clock, as ingest and upload record it: a jump back only ends the pause early
    upload_failed_recently = (
        isinstance(last_upload, dict)
        and last_upload.get("result") == "failed"
        and 0 <= wall - _number_or_0(last_upload.get("wall")) < UPLOAD_FAILURE_PAUSE
    )
    # the last run had nothing to send but clips held for a session cut earlier (new clips
    # start an upload through the path unit, not through this)
    upload_held = (
        isinstance(last_upload, dict)
        and last_upload.get("result") == "held"
        and wall < _number_or_0(last_upload.get("held_until"))
    )
    # which units run matters only at home or in data mode (data mode, upload, an ingest to stop);
    # away from home, recording, the systemctl call is saved
    if reachable or mode == "data":
        ingest_running, upload_running = facts_source.units_running()
    else:
        ingest_running = upload_running = None

    facts = Facts(
        now=now,
        boot_id=boot,
        reachable=reachable,
        was_reachable=was_reachable,
        reachable_since=reachable_since,
        external_since=external_since,
        previous_tick=st.get("last_tick") if same_boot else None,
        camera_mode=mode,
        camera_attached=attached,
        data_since=data_since,
        ingested_since_data=ingested_since_data,
        recorded_seconds=recorded,
        ingested_before=last_ingest is not None,
        left_on_card=_left_on_card(card, cfg.camera.name),
        unknown_since=unknown_since,
        last_external=last_external,
        battery_low=st.get("battery_low"),
        staging_free=free,
        staging_reserve=reserve,
        backlog_files=backlog_files,
        backlog_bytes=backlog_bytes,
        ingest_running=ingest_running,
        upload_running=upload_running,
        upload_failed_recently=upload_failed_recently,
        upload_held=upload_held,
        budget=estimate,
    )
    decision = decide(history, facts, cfg)
    verdict = decision.verdict or power_budget.Verdict()

    # act: stop units first (a shutdown, or the camera going away under an ingest), then the camera
    outcome = Outcome()
    back = decision.back_to_record
    stopping_ingest = back and INGEST_UNITS in decision.stop_units
    if decision.stop_units:
        _try(outcome, "stop " + " ".join(decision.stop_units), actions.stop_units, list(decision.stop_units))
    new_mode = mode
    already = []  # the camera was found recording under the lock: the watcher put it back first

    def set_camera(target: str) -> None:
        if actions.set_camera(target) is False:
            already.append(target)

    if decision.camera is not None:
        if _try(outcome, f"camera {decision.camera}", set_camera, decision.camera):
            if not dry_run:
                new_mode = decision.camera
            if already:
                outcome.done[-1] += " (already recording: the ignition watcher switched it)"
    if decision.start_upload:
        _try(outcome, "start " + UPLOAD_UNIT, actions.start_upload)
    if decision.camera == "data" and verdict.ingest == "events" and new_mode == "data":
        outcome.done.append("copy events only")  # ingest learns it from the budget state at each clip
    # the camera leaves record (or a boot finds it out of record): the watcher puts it back within
    # about a second of the engine starting or the car leaving, the tick only every 30 s
    if new_mode in ("data", "off") and not decision.shutdown and not dry_run and (
        new_mode != mode or not same_boot or st.get("last_mode") not in ("data", "off")
    ):
        _try(outcome, "start " + WATCH_UNIT, actions.start_watch)
    back_message = None
    if back and new_mode == "record" and mode != "record" and not already:
        from .ignition import describe

        after = ledger.get_state("last_ingest") if stopping_ingest else None
        stopped = (after if isinstance(after, dict) and after != last_ingest else {}) if stopping_ingest else None
        since = now - external_since if back == "engine_started" and external_since is not None else None
        back_message = describe(back, stopped, since)
    if new_mode == "data" and mode != "data":
        data_since, data_ingest = now, last_ingest
    elif new_mode != "data":
        data_since, data_ingest = None, None

    state = (
        STATE_KEY,
        {
            "boot_id": boot,
            "last_tick": now,
            "last_mode": new_mode,
            "reachable": reachable,
            "reachable_since": reachable_since,
            "external_since": external_since,
            "data_since": data_since,
            "data_ingest": data_ingest,
            "recorded_seconds": recorded,
            "recording_since": recording_since,
            "seen_ingest": last_ingest,
            "unknown_since": unknown_since,
            "last_external": last_external,
            "battery_low": decision.battery_low,
        },
    )
    record = {
        "wall": wall,
        "boot_id": boot,
        "monotonic": now,
        "dry_run": dry_run,
        "saw": {
            "battery": {
                "source": reading.source,
                "percent": reading.percent,
                "millivolts": reading.millivolts,
                "external": reading.external,
                "reason": reading.reason,
                "judged": decision.battery,
                "raw": dict(reading.raw),
            },
            "camera": mode,
            "camera_attached": attached,
            "data_seconds": None if facts.data_since is None else round(now - facts.data_since, 1),
            "recorded_seconds": round(recorded, 1),
            "reachable": reachable,
            "was_reachable": was_reachable,
            "staging_free": free,
            "staging_reserve": reserve,
            "backlog_files": backlog_files,
            "backlog_bytes": backlog_bytes,
            "ingest_running": ingest_running,
            "upload_running": upload_running,
            "budget": power_budget.report(estimate, verdict),
        },
        "decision": decision.asdict(),
        "back_to_record": back_message,
        "done": outcome.done,
        "failed": outcome.failed,
    }
    record["decision"]["stop_units"] = list(decision.stop_units)
    record["decision"]["verdict"] = verdict.asdict()
    if decision.shutdown:
        record["done"] = outcome.done + ["poweroff"]
    with ledger.transaction():  # one commit per tick: the reading, the state, the record
        ledger.add_reading(
            wall=wall,
            boot_id=boot,
            monotonic=now,
            millivolts=reading.millivolts,
            percent=reading.percent,
            external=reading.external,
            source=reading.source,
            reason=reading.reason,
            keep=KEEP_READINGS,
        )
        ledger.put_state(*state)
        ledger.put_state(LAST_KEY, record)
        # for ingest and upload, read at each clip boundary (budget.IngestGate, budget.upload_fit)
        if not dry_run:  # an instruction to the ingest and the upload: a dry run gives none
            ledger.put_state(power_budget.BUDGET_KEY, power_budget.budget_state(verdict, estimate, boot, now, wall))
        ledger.put_state(power_budget.RATES_KEY, rates)
        # when the camera was recording, for the check of footage lost before it was copied
        from .coverage import note_tick

        note_tick(ledger, clock, boot=boot, now=now, wall=wall, seen=mode, after=new_mode,
                  since=st.get("last_tick") if same_boot and st.get("last_mode") == "record" else None,
                  external=reading.external)
        if back_message:
            from .ignition import note

            note(ledger, back, back_message, wall)
    _log_line(record, decision, dry_run)
    if decision.shutdown:
        # last: the log line and the state are written before systemd starts stopping everything
        if not _try(outcome, "poweroff", actions.poweroff):
            record["done"].remove("poweroff")
            record["failed"] = outcome.failed
            ledger.put_state(LAST_KEY, record)
            log.error("policy: power off failed: %s", outcome.failed[-1])
    return record


def _left_on_card(card: Any, camera: str) -> int:
    """Bytes the last ingest of ``camera`` left on its card (ledger state card_left, input: any shape; 0 when unreadable)."""
    if not isinstance(card, dict) or card.get("camera") != camera:
        return 0
    left = card.get("bytes")
    return int(left) if isinstance(left, int) and not isinstance(left, bool) and 0 < left < 10**15 else 0


def _describe_battery(b: Dict[str, Any]) -> str:
    if b["percent"] is None:
        text = "battery unknown" + (f" ({b['reason']})" if b.get("reason") else "")
    else:
        text = f"battery {b['percent']}%" + (f" {b['millivolts']} mV" if b["millivolts"] is not None else "")
    power = {True: "external power", False: "on battery", None: "power source unknown"}[b["external"]]
    return f"{text}, {power}"


def _running(flag: Optional[bool]) -> str:
    return {True: "running", False: "idle", None: "not checked (away)"}[flag]


def _log_line(record: Dict[str, Any], decision: Decision, dry_run: bool) -> None:
    saw = record["saw"]
    seen = (
        f"{_describe_battery(saw['battery'])}; camera {saw['camera']}; "
        f"server {'reachable' if saw['reachable'] else 'unreachable'}; "
        f"backlog {saw['backlog_files']} files; "
        f"ingest {_running(saw['ingest_running'])}, upload {_running(saw['upload_running'])}"
    )
    did = ", ".join(record["done"]) or "nothing"
    if record["failed"]:
        did += "; FAILED: " + "; ".join(record["failed"])
    line = f"policy{' (dry run)' if dry_run else ''}: saw {seen} -> did {did} -- why: {decision.reason}"
    if record.get("back_to_record"):
        line += f" -- {record['back_to_record']}"
    level = ERROR if record["failed"] else WARNING if decision.shutdown else INFO
    log.log(
        level,
        line,
        extra={
            "DASHCAM_CAMERA": saw["camera"],
            "DASHCAM_CAMERA_TARGET": decision.camera or "",
            "DASHCAM_BATTERY_PERCENT": "" if saw["battery"]["percent"] is None else saw["battery"]["percent"],
            "DASHCAM_SHUTDOWN": int(decision.shutdown),
        },
    )


def status_facts(record: Dict[str, Any], ledger, cfg=None) -> Dict[str, Any]:
    """What this tick saw, as the status facts (status.seen_by_tick) for MQTT: no second battery read."""
    from .status import seen_by_tick

    saw, decision = record["saw"], record["decision"]
    mode = saw["camera"]
    if decision["camera"] and f"camera {decision['camera']}" in record["done"] and not record["dry_run"]:
        mode = decision["camera"]
    return seen_by_tick(ledger, cfg, battery=saw["battery"], camera_mode=mode, camera_attached=saw["camera_attached"],
                        backlog_files=saw["backlog_files"], backlog_bytes=saw["backlog_bytes"],
                        staging_free=saw["staging_free"], reachable=saw["reachable"], budget=saw.get("budget"),
                        wall=record["wall"])


# --- dashcamctl policy ------------------------------------------------------------------------------


def command(args, cfg) -> Tuple[int, dict]:
    """dashcamctl [--dry-run] policy [--json]: one tick with the real gatherers and actors. The
    configuration comes through the JSON cache in $CACHE_DIRECTORY (CacheDirectory=dashcam of the
    unit): a tick parses no YAML (see config.load_cached)."""
    from .ledger import TickLedger

    # a damaged, locked or read-only ledger must not stop a low-battery shutdown: the tick then
    # keeps this boot's readings and state in a fallback file, in the first of these that takes it
    fallback_dirs = [os.environ.get("RUNTIME_DIRECTORY"), cfg.paths.state_dir, os.environ.get("CACHE_DIRECTORY"), FALLBACK_DIR]
    with TickLedger(cfg.paths.ledger, fallback_dirs, SystemClock().boot_id()) as ledger:
        facts = SystemFacts(cfg)
        record = tick(cfg, facts, SystemActions(cfg, args.dry_run, facts), ledger=ledger, dry_run=args.dry_run)
        if cfg.mqtt is not None:
            if args.dry_run:
                log.info("dry run, not publishing to MQTT")
            else:
                from . import mqtt  # only with an mqtt section: bounded (< 1 s), never raises

                mqtt.publish_state(cfg, status_facts(record, ledger, cfg))
                if record["back_to_record"]:
                    from .ignition import publish

                    publish(cfg, record["decision"]["back_to_record"], record["back_to_record"], None)
    return (1 if record["failed"] else 0), record
