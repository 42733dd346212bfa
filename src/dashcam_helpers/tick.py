"""One run of ``dashcamctl policy``: gather -> decide -> act -> record.

``tick(cfg, facts_source, actions, ledger=..., clock=...)``: ``gather`` reads the facts
(through ``facts_source``) and what the previous tick left (policy.TickState), the pure
``policy.decide`` decides, ``act`` applies the decision (through ``actions``), and
``record`` writes the reading, the state for the next tick and what was done (ledger state
"last_policy") in one commit, then logs one line. A shutdown comes last, once all of that
is written.

The real gatherers and actors, ``SystemFacts`` and ``SystemActions``, are world.py's;
``command`` passes them, tests pass fakes.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, List, Optional, Tuple

from . import budget as power_budget
from .log import ERROR, INFO, WARNING, get as get_logger
from .policy import (
    HISTORY, INGEST_UNITS, LAST_KEY, STATE_KEY, UPLOAD_UNIT, WATCH_UNIT, Decision, Facts, Sample, SystemClock,
    TickState, decide, read_state, samples,
)
from .record import Record
from .records import LastUpload

log = get_logger("dashcam.policy")

FALLBACK_DIR = "/run/dashcam"  # the last place for the tick's state when the ledger fails (tmpfs, root's)
# the ledger keeps this many readings (about a day at one tick every 30 s); a tick reads the last HISTORY
KEEP_READINGS = 3000
# after an upload that failed (not "unreachable": a refused key, a full server disk), the
# policy waits this long before starting another, so a broken setup does not loop
UPLOAD_FAILURE_PAUSE = 15 * 60


def tick(cfg, facts_source, actions, *, ledger, clock=None, dry_run: bool = False) -> Dict[str, Any]:
    """One policy tick. Returns the record stored as ledger state "last_policy".

    ``facts_source``: battery(), camera_mode(), camera_attached(), server_reachable(),
    units_running(), staging_space() -- see world.SystemFacts. ``actions``: stop_units(units),
    set_camera(mode), start_upload(), start_watch(), poweroff() -- see world.SystemActions.
    ``clock``: monotonic(), time(), boot_id() -- see policy.SystemClock.
    Under ``dry_run`` the actions log instead of acting (the System actions pass it to the
    runner); the reading and what was observed are still recorded: they are facts, not actions.
    """
    clock = clock or SystemClock()
    seen = gather(cfg, facts_source, ledger, clock)
    decision = decide(seen.history, seen.facts, cfg)
    acted = act(decision, seen, actions, ledger, dry_run)
    written = record(seen, decision, acted, ledger, clock, dry_run)
    if decision.shutdown:
        power_off(written, acted.outcome, actions, ledger)
    return written


# --- gather ---------------------------------------------------------------------------------------


class Gathered(Record):
    """What a tick found: the facts decide() sees, and what acting and recording need besides."""

    now: float  # monotonic
    wall: float  # for people
    boot: str
    state: TickState  # as the previous tick left it
    reading: Any  # battery.Reading
    history: List[Sample]  # the last HISTORY readings, this tick's last
    facts: Facts
    last_ingest: Any  # ledger state last_ingest (a marker: compared, never read)
    data_ingest: Any  # last_ingest as it was when data mode began
    recording_since: Optional[float]  # wall clock: the oldest footage on the camera
    rates: Any  # the budget's rates, as learned this tick
    estimate: Any  # budget.Estimate (None: no budget)

    @property
    def same_boot(self) -> bool:
        return self.state.boot_id == self.boot


def gather(cfg, source, ledger, clock) -> Gathered:
    """The battery, the camera, the server, staging, the budget and the units, as this tick finds them."""
    now, wall, boot = clock.monotonic(), clock.time(), clock.boot_id()
    st = read_state(ledger)
    same_boot = st.boot_id == boot
    if same_boot:
        st = _not_after(st, now)
    reading = source.battery()
    history = samples(ledger.recent_readings(HISTORY - 1))
    history.append(Sample(monotonic=now, boot_id=boot, percent=reading.percent, external=reading.external,
                          millivolts=reading.millivolts, wall=wall))
    unknown_since, last_external, external_since = _power_streaks(st, same_boot, reading, now)
    mode = source.camera_mode()
    last_ingest = ledger.get_state("last_ingest")
    data_since, data_ingest = _data_mode(st, same_boot, mode, last_ingest, now)
    card = ledger.get_state(power_budget.CARD_KEY)  # what the last ingest left on the card
    recorded, recorded_before, recording_since = _recording(st, same_boot, mode, last_ingest, card, now, wall)
    attached = source.camera_attached() if mode == "data" else None
    reachable = source.server_reachable()
    was_reachable, reachable_since = _reach(st, same_boot, reachable, now)
    free, reserve = source.staging_space()
    backlog = ledger.backlog_detail()  # files, bytes, event bytes, the oldest staged (wall)
    last_upload = ledger.get_state("last_upload")
    rates, estimate = _budget(cfg, ledger, reading, history, boot, wall, last_ingest=last_ingest, last_upload=last_upload,
                              recorded=recorded, recorded_before=recorded_before, recording_since=recording_since,
                              card=card, backlog=backlog)
    upload_failed_recently, upload_held = _upload_paused(last_upload, wall)
    # which units run matters only at home or in data mode (data mode, upload, an ingest to stop);
    # away from home, recording, the systemctl call is saved
    ingest_running, upload_running = source.units_running() if reachable or mode == "data" else (None, None)
    facts = Facts(
        now=now, boot_id=boot, reachable=reachable, was_reachable=was_reachable, reachable_since=reachable_since,
        external_since=external_since, previous_tick=st.last_tick if same_boot else None, camera_mode=mode,
        camera_attached=attached, data_since=data_since, ingested_since_data=mode == "data" and last_ingest != data_ingest,
        recorded_seconds=recorded, ingested_before=last_ingest is not None, left_on_card=_left_on_card(card, cfg.camera.name),
        unknown_since=unknown_since, last_external=last_external, battery_low=st.battery_low, staging_free=free,
        staging_reserve=reserve, backlog_files=backlog[0], backlog_bytes=backlog[1], ingest_running=ingest_running,
        upload_running=upload_running, upload_failed_recently=upload_failed_recently, upload_held=upload_held,
        budget=estimate, config_broken=bool(cfg.broken),
    )
    return Gathered(now=now, wall=wall, boot=boot, state=st, reading=reading, history=history, facts=facts,
                    last_ingest=last_ingest, data_ingest=data_ingest, recording_since=recording_since, rates=rates,
                    estimate=estimate)


# the tick state's monotonic times of this boot (a time of another boot is never used)
STATE_TIMES = ("last_tick", "reachable_since", "external_since", "data_since", "unknown_since")


def _not_after(st: TickState, now: float) -> TickState:
    """The state of this boot with every time later than ``now`` dropped: such a time cannot be (the
    ledger is input: a user that may write it, a bit flipped), and kept it would hold data mode or the
    window of unknown readings open for ever. A dropped time starts afresh with this tick."""
    late = {key: None for key in STATE_TIMES if getattr(st, key) is not None and getattr(st, key) > now}
    if not late:
        return st
    log.warning("policy: the ledger's state holds times of this boot after now (%s): taken as starting now",
                ", ".join(f"{key} {getattr(st, key):.0f} s > {now:.0f} s" for key in late))
    return st.replace(**late)


def _power_streaks(st: TickState, same_boot: bool, reading, now: float) -> Tuple[Optional[float], Optional[bool], Optional[float]]:
    """(unknown_since, last_external, external_since) with this reading: the streak of unknown
    readings, the last known power source, the streak on external power (this boot)."""
    if reading.percent is not None or reading.external is True:
        unknown_since = None
    elif same_boot and st.unknown_since is not None:
        unknown_since = st.unknown_since
    else:
        unknown_since = now
    last_external = reading.external if reading.external is not None else st.last_external
    # an unknown reading neither starts nor ends the streak on external power
    external_since = st.external_since if same_boot else None
    if reading.external is True:
        external_since = external_since if external_since is not None else now
    elif reading.external is False or not same_boot:
        external_since = None
    return unknown_since, last_external, external_since


def _data_mode(st: TickState, same_boot: bool, mode: str, last_ingest: Any, now: float) -> Tuple[Optional[float], Any]:
    """(data_since, data_ingest): when the camera entered data mode (this boot), and the last ingest then."""
    if same_boot and st.last_mode == "data" and mode == "data" and st.data_since is not None:
        return st.data_since, st.data_ingest
    if mode == "data":
        return now, last_ingest  # first seen in data mode (this boot)
    return None, st.data_ingest


def _recording(st: TickState, same_boot: bool, mode: str, last_ingest: Any, card: Any, now: float,
               wall: float) -> Tuple[float, float, Optional[float]]:
    """(recorded, recorded_before, recording_since): how long the camera recorded since the last
    ingest, the recording an ingest that just ended took (the budget learns from it), and the
    wall clock of the oldest footage on the camera (for people)."""
    recorded, recording_since = st.recorded_seconds, st.recording_since
    if last_ingest != st.seen_ingest:  # an ingest took what the camera had recorded
        if not (isinstance(card, dict) and card.get("bytes")):
            recording_since = None  # ... all of it: else the oldest footage is still on the card
        return 0.0, recorded, recording_since
    if same_boot and st.last_mode == "record" and mode == "record" and st.last_tick is not None:
        since = max(0.0, now - st.last_tick)
        return recorded + since, 0.0, wall - since if recording_since is None else recording_since
    return recorded, 0.0, recording_since


def _reach(st: TickState, same_boot: bool, reachable: bool, now: float) -> Tuple[Optional[bool], Optional[float]]:
    """(was_reachable, reachable_since): the server at the previous tick of this boot (None: first
    tick), and since when it has answered at every tick (None: not now)."""
    was_reachable = st.reachable if same_boot else None
    if not reachable:
        return was_reachable, None
    since = st.reachable_since if same_boot and was_reachable else None
    return was_reachable, now if since is None else since


def _budget(cfg, ledger, reading, history, boot, wall, *, last_ingest, last_upload, recorded, recorded_before,
            recording_since, card, backlog) -> Tuple[Any, Any]:
    """(rates, estimate) of the power budget (budget.py): what the ingests and uploads taught, what
    waits, the runtime left. ({}, None) when the ledger holds a case the parsers missed: it costs
    the budget, never the tick."""
    try:
        watts = power_budget.load_watts(reading.raw)
        rates = power_budget.learn(ledger.get_state(power_budget.RATES_KEY), cfg.camera.name, last_ingest=last_ingest,
                                   last_upload=last_upload, recorded_seconds=recorded_before, watts=watts, card=card)
        estimate = None
        if cfg.budget.enabled:
            estimate = power_budget.estimate(
                history, boot, cfg, rates=rates, camera=cfg.camera.name, watts=watts, recorded_seconds=recorded,
                card=card, staged=tuple(backlog[:3]), last_ingest=last_ingest, oldest_staged_wall=backlog[3],
                recording_since_wall=recording_since, wall=wall)
        return rates, estimate
    except Exception as e:
        log.error("policy: no power budget this tick (no limit): %s: %s", type(e).__name__, e)
        return {}, None


def _upload_paused(last_upload: Any, wall: float) -> Tuple[bool, bool]:
    """(the last upload failed within UPLOAD_FAILURE_PAUSE, it found only clips held for a session cut
    earlier and they are still held). The wall clock, as the upload records it: a jump back only ends
    the pause early; new clips start an upload through the path unit, not through this."""
    last = LastUpload.parse(last_upload)
    if last is None:
        return False, False
    failed = last.result == "failed" and 0 <= wall - last.wall < UPLOAD_FAILURE_PAUSE
    held = last.result == "held" and wall < last.held_until
    return failed, held


def _left_on_card(card: Any, camera: str) -> int:
    """Bytes the last ingest of ``camera`` left on its card (ledger state card_left, input: any shape; 0 when unreadable)."""
    if not isinstance(card, dict) or card.get("camera") != camera:
        return 0
    left = card.get("bytes")
    return int(left) if isinstance(left, int) and not isinstance(left, bool) and 0 < left < 10**15 else 0


# --- act ------------------------------------------------------------------------------------------


class Outcome:
    """What a tick did: the actions done, and the ones that failed with their error."""

    def __init__(self) -> None:
        self.done: List[str] = []
        self.failed: List[str] = []


class Acted(Record):
    """What a tick did: outcome (done, failed), the camera's mode after it, the message of a return
    to record because the car can move (None: none), the start of the watcher failed."""

    outcome: Outcome
    mode: str
    back_message: Optional[str]
    watch_failed: bool = False


def _try(outcome: Outcome, what: str, fn, *args) -> bool:
    try:
        fn(*args)
    except Exception as e:  # one failed action must not keep the others (above all a shutdown) from running
        outcome.failed.append(f"{what}: {e}")
        return False
    outcome.done.append(what)
    return True


def act(decision: Decision, seen: Gathered, actions, ledger, dry_run: bool) -> Acted:
    """Stop units first (a shutdown, or the camera going away under an ingest), then the camera, the
    upload, the watcher. The power off is left to power_off(), once the tick is recorded."""
    outcome = Outcome()
    if decision.stop_units:
        _try(outcome, "stop " + " ".join(decision.stop_units), actions.stop_units, list(decision.stop_units))
    mode = seen.facts.camera_mode
    new_mode, already = _switch_camera(decision, mode, actions, outcome, dry_run)
    if decision.start_upload:
        _try(outcome, "start " + UPLOAD_UNIT, actions.start_upload)
    verdict = decision.verdict or power_budget.Verdict()
    if decision.camera == "data" and verdict.ingest == "events" and new_mode == "data":
        outcome.done.append("copy events only")  # ingest learns it from the budget state at each clip
    # the camera leaves record (data, off, or a mode that reads unknown), a boot finds it out of
    # record, or the last tick's start of the watcher failed (nothing else would try again while
    # the mode stays): the watcher puts it back within about a second of the engine starting or the
    # car leaving, the tick only every 30 s
    watch_failed = False
    away = ("data", "off", "unknown")
    if new_mode in away and not decision.shutdown and not dry_run and (
        new_mode != mode or not seen.same_boot or seen.state.last_mode not in away or seen.state.watch_failed
    ):
        watch_failed = not _try(outcome, "start " + WATCH_UNIT, actions.start_watch)
    back_message = None
    if decision.back_to_record and new_mode == "record" and mode != "record" and not already:
        back_message = _back_to_record(decision, seen, ledger)
    return Acted(outcome=outcome, mode=new_mode, back_message=back_message, watch_failed=watch_failed)


def _switch_camera(decision: Decision, mode: str, actions, outcome: Outcome, dry_run: bool) -> Tuple[str, bool]:
    """(the camera's mode after the switch, it was found recording already: the watcher put it back first)."""
    if decision.camera is None:
        return mode, False
    already = []

    def set_camera(target: str) -> None:
        if actions.set_camera(target) is False:
            already.append(target)

    if _try(outcome, f"camera {decision.camera}", set_camera, decision.camera):
        if not dry_run:
            mode = decision.camera
        if already:
            outcome.done[-1] += " (already recording: the ignition watcher switched it)"
    return mode, bool(already)


def _back_to_record(decision: Decision, seen: Gathered, ledger) -> str:
    """The message of a return to record because the car can move (ignition.describe): with what an
    ingest stopped for it had copied, and how long ago the engine started."""
    from .ignition import describe

    back, facts = decision.back_to_record, seen.facts
    stopped = None
    if INGEST_UNITS in decision.stop_units:  # the ingest records how far it got as it stops
        after = ledger.get_state("last_ingest")
        stopped = after if isinstance(after, dict) and after != seen.last_ingest else {}
    since = facts.now - facts.external_since if back == "engine_started" and facts.external_since is not None else None
    return describe(back, stopped, since)


# --- record ---------------------------------------------------------------------------------------


def next_state(seen: Gathered, decision: Decision, new_mode: str, watch_failed: bool = False) -> TickState:
    """What this tick leaves for the next. ``watch_failed``: this tick's start of the watcher failed."""
    facts = seen.facts
    data_since, data_ingest = facts.data_since, seen.data_ingest
    if new_mode == "data" and facts.camera_mode != "data":
        data_since, data_ingest = facts.now, seen.last_ingest
    elif new_mode != "data":
        data_since, data_ingest = None, None
    return TickState(
        boot_id=seen.boot,
        last_tick=facts.now,
        last_mode=new_mode,
        reachable=facts.reachable,
        reachable_since=facts.reachable_since,
        external_since=facts.external_since,
        data_since=data_since,
        data_ingest=data_ingest,
        recorded_seconds=facts.recorded_seconds,
        recording_since=seen.recording_since,
        seen_ingest=seen.last_ingest,
        unknown_since=facts.unknown_since,
        last_external=facts.last_external,
        battery_low=decision.battery_low,
        watch_failed=watch_failed,
    )


def report(seen: Gathered, decision: Decision, acted: Acted, dry_run: bool) -> Dict[str, Any]:
    """The record of this tick (ledger state "last_policy", `dashcamctl policy --json`): what it saw,
    what it decided and why, what it did."""
    facts, reading, now = seen.facts, seen.reading, seen.now
    verdict = decision.verdict or power_budget.Verdict()
    outcome = acted.outcome
    written = {
        "wall": seen.wall,
        "boot_id": seen.boot,
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
            "camera": facts.camera_mode,
            "camera_attached": facts.camera_attached,
            "data_seconds": None if facts.data_since is None else round(now - facts.data_since, 1),
            "recorded_seconds": round(facts.recorded_seconds, 1),
            "reachable": facts.reachable,
            "was_reachable": facts.was_reachable,
            "staging_free": facts.staging_free,
            "staging_reserve": facts.staging_reserve,
            "backlog_files": facts.backlog_files,
            "backlog_bytes": facts.backlog_bytes,
            "ingest_running": facts.ingest_running,
            "upload_running": facts.upload_running,
            "budget": power_budget.report(seen.estimate, verdict),
        },
        "decision": decision.asdict(),
        "back_to_record": acted.back_message,
        "done": outcome.done,
        "failed": outcome.failed,
    }
    written["decision"]["stop_units"] = list(decision.stop_units)
    written["decision"]["verdict"] = verdict.asdict()
    if decision.shutdown:
        written["done"] = outcome.done + ["poweroff"]
    return written


def record(seen: Gathered, decision: Decision, acted: Acted, ledger, clock, dry_run: bool) -> Dict[str, Any]:
    """The reading, the state for the next tick, the record, the budget for ingest and upload, and the
    coverage note, in one commit; then the log line. Returns the record."""
    written = report(seen, decision, acted, dry_run)
    verdict = decision.verdict or power_budget.Verdict()
    reading, st, now, wall, boot = seen.reading, seen.state, seen.now, seen.wall, seen.boot
    with ledger.transaction():  # one commit per tick: the reading, the state, the record
        ledger.add_reading(wall=wall, boot_id=boot, monotonic=now, millivolts=reading.millivolts,
                           percent=reading.percent, external=reading.external, source=reading.source,
                           reason=reading.reason, keep=KEEP_READINGS)
        ledger.put_state(STATE_KEY, next_state(seen, decision, acted.mode, acted.watch_failed).asdict())
        ledger.put_state(LAST_KEY, written)
        # for ingest and upload, read at each clip boundary (budget.IngestGate, budget.upload_fit)
        if not dry_run:  # an instruction to the ingest and the upload: a dry run gives none
            ledger.put_state(power_budget.BUDGET_KEY, power_budget.budget_state(verdict, seen.estimate, boot, now, wall))
        ledger.put_state(power_budget.RATES_KEY, seen.rates)
        # when the camera was recording, for the check of footage lost before it was copied
        from .coverage import note_tick

        note_tick(ledger, clock, boot=boot, now=now, wall=wall, seen=seen.facts.camera_mode, after=acted.mode,
                  since=st.last_tick if seen.same_boot and st.last_mode == "record" else None,
                  external=reading.external)
        if acted.back_message:
            from .ignition import note

            note(ledger, decision.back_to_record, acted.back_message, wall)
    _log_line(written, decision, dry_run)
    return written


def last_budget(ledger) -> Dict[str, Any]:
    """The power budget as the last tick estimated it (budget.report), with that tick's wall clock
    ({}: no tick, or none with a budget). The record in the ledger is input: any shape."""
    last = ledger.get_state(LAST_KEY)
    saw = last.get("saw") if isinstance(last, dict) else None
    value = saw.get("budget") if isinstance(saw, dict) else None
    if not isinstance(value, dict) or not value:
        return {}
    return {**value, "wall": last.get("wall")}


def power_off(written: Dict[str, Any], outcome: Outcome, actions, ledger) -> None:
    """Last: the log line and the state are written before systemd starts stopping everything."""
    if not _try(outcome, "poweroff", actions.poweroff):
        written["done"].remove("poweroff")
        written["failed"] = outcome.failed
        ledger.put_state(LAST_KEY, written)
        log.error("policy: power off failed: %s", outcome.failed[-1])


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


def open_ledger(cfg, says: Optional[str] = None):
    """The ledger as the tick and the ignition watcher use it (tick_ledger.TickLedger): a damaged,
    locked or read-only ledger must not stop a low-battery shutdown, nor keep the camera off the
    road; they then keep this boot's readings and state in a fallback file, in the first of these
    directories that takes it."""
    from .tick_ledger import TickLedger

    fallback_dirs = [os.environ.get("RUNTIME_DIRECTORY"), cfg.paths.state_dir, os.environ.get("CACHE_DIRECTORY"), FALLBACK_DIR]
    return TickLedger(cfg.paths.ledger, fallback_dirs, SystemClock().boot_id(), says=says or TickLedger.SAYS)


def command(args, cfg) -> Tuple[int, dict]:
    """dashcamctl [--dry-run] policy [--json]: one tick with the real gatherers and actors. The
    configuration comes through the JSON cache in $CACHE_DIRECTORY (CacheDirectory=dashcam of the
    unit): a tick parses no YAML (see config.load_cached)."""
    from .world import SystemActions, SystemFacts

    with open_ledger(cfg) as ledger:
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
