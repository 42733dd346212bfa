"""The power budget: decide() with budgets as a table, the runtime estimate, the gates at each clip boundary.

Defaults: disconnect 50 %, shutdown 25 %, budget.capacity_wh 4.8, margin 30 %, overhead 60 s,
read 10 MB/s, upload 2 MB/s until learned.
"""

from __future__ import annotations

import pytest

from conftest import FIXTURES, MINIMAL, deep_merge
from dashcam_helpers import battery, budget, config
from dashcam_helpers.budget import Estimate
from dashcam_helpers.policy import INGEST_UNITS, UPLOAD_UNIT, Facts, Sample, decide

CFG = config.validate(deep_merge(MINIMAL, {}), "test.yaml")
BOOT = "boot-1"
MB, GB, MIN = 10**6, 10**9, 60.0


def batt(*percents, external=False, start=1000.0):
    return [Sample(monotonic=start + 30 * i, boot_id=BOOT, percent=p, external=external, millivolts=None)
            for i, p in enumerate(percents)]


def est(*, runtime_off=14 * MIN, runtime_down=30 * MIN, card=(640 * MB, 8540 * MB), staged=(0, 0, 0),
        on_battery=True, exact=True):
    """An estimate: ``card`` (event bytes, all bytes) on the camera, ``staged`` (files, bytes, event bytes)."""
    return Estimate(
        on_battery=on_battery, percent=70, load_watts=5.0, load_measured=True,
        runtime_disconnect=runtime_off, runtime_shutdown=runtime_down, runtime_why="test",
        read_bps=10 * MB, read_learned=True, upload_bps=2 * MB, upload_learned=True,
        card_event_bytes=card[0], card_bytes=card[1], card_exact=exact,
        staged_files=staged[0], staged_bytes=staged[1], staged_event_bytes=staged[2],
        oldest_unsent_seconds=3600.0,
    )


H = batt(70, 70, 70)
T0 = H[-1].monotonic
HOME = dict(now=T0, boot_id=BOOT, reachable=True, was_reachable=False, camera_mode="record",
            recorded_seconds=90 * MIN, ingested_before=True, staging_free=100 * GB, staging_reserve=GB)

# (id, history, facts, camera target, start_upload, phrases the reason must contain, phrases it must not)
CASES = [
    ("plenty: 8.5 GB fit in 30 min -> data, copy all", H,
     dict(budget=est(runtime_off=30 * MIN, card=(640 * MB, 8 * GB))), "data", False,
     ["copy all: ~8.0 GB on the camera fit in ~30 min left above 50 %"], ["events only"]),
    ("events only: 640 MB fit in 14 min, 7.9 GB do not -> data, copy events only", H,
     dict(budget=est()), "data", False,
     ["copy events only: ~640 MB of events fit in ~14 min left above 50 %, 7.9 GB of normal clips do not"], []),
    ("nothing fits: 640 MB of events in 1 min -> no data, camera stays", H,
     dict(budget=est(runtime_off=1.5 * MIN)), None, False,
     ["no data mode: power budget: ~640 MB of events need ~2 min of copying, more than ~1 min left above 50 %"], []),
    ("nothing fits, camera off after an ingest: stays off", H,
     dict(budget=est(runtime_off=1.5 * MIN), camera_mode="off"), None, False, ["power budget"], []),
    ("external power: no budget, data after settling", batt(95, 95, 95, external=True),
     dict(budget=est(runtime_off=0.0, on_battery=False), reachable_since=T0 - 3600, external_since=T0 - 3600,
          was_reachable=True, recorded_seconds=40 * MIN), "data", False, ["data: server reachable"], ["budget", "copy"]),
    ("unknown runtime: no limit, data as without a budget", H,
     dict(budget=est(runtime_off=None, runtime_down=None)), "data", False, ["no budget: runtime unknown (test): the thresholds decide alone"], ["power budget"]),
    ("upload: events fit, normal clips after them -> start", H,
     dict(budget=est(staged=(30, 3 * GB, 600 * MB), runtime_down=20 * MIN), camera_mode="off", was_reachable=True,
          recorded_seconds=0, backlog_files=30, backlog_bytes=3 * GB), None, True,
     ["start upload (events first: ~600 MB of events fit in ~20 min left above 25 %"], []),
    ("upload: nothing more fits -> not started", H,
     dict(budget=est(staged=(30, 3 * GB, 600 * MB), runtime_down=0.5 * MIN), camera_mode="off", was_reachable=True,
          recorded_seconds=0, backlog_files=30, backlog_bytes=3 * GB), None, False,
     ["power budget: nothing more fits in ~0 min left above 25 %", "wait for external power or the next arrival"], []),
    ("upload: the events alone exceed what fits -> start, and the reason says which wait", H,
     dict(budget=est(staged=(30, 3 * GB, 2 * GB), runtime_down=10 * MIN), camera_mode="off", was_reachable=True,
          recorded_seconds=0, backlog_files=30, backlog_bytes=3 * GB), None, True,
     ["~840 MB of 3.0 GB staged fit in ~10 min left above 25 %, ~2.0 GB of events do not all fit",
      "the others wait for external power or the next arrival"], ["events first"]),
    ("upload with an unknown runtime: started, no limit", H,
     dict(budget=est(staged=(30, 3 * GB, 600 * MB), runtime_off=None, runtime_down=None), camera_mode="off",
          was_reachable=True, recorded_seconds=0, backlog_files=30, backlog_bytes=3 * GB), None, True,
     ["start upload"], ["power budget"]),
]


@pytest.mark.parametrize("name,history,kw,camera,upload,phrases,absent", CASES, ids=[c[0] for c in CASES])
def test_decide_with_a_budget(name, history, kw, camera, upload, phrases, absent):
    d = decide(history, Facts(**{**HOME, **kw}), CFG)
    assert (d.camera, d.start_upload, d.shutdown) == (camera, upload, False), d.reason
    for phrase in phrases:
        assert phrase in d.reason
    for phrase in absent:
        assert phrase not in d.reason


def test_a_budget_that_fits_nothing_never_stops_a_shutdown_nor_a_return_to_record():
    low = decide(batt(20, 20, 20), Facts(**{**HOME, "budget": est(runtime_off=0.0, runtime_down=0.0)}), CFG)
    assert low.shutdown and set(low.stop_units) == {INGEST_UNITS, UPLOAD_UNIT}
    away = decide(H, Facts(**{**HOME, "reachable": False, "camera_mode": "off", "budget": est(runtime_off=0.0)}), CFG)
    assert away.camera == "record"


def test_the_verdict_allows_bytes_for_the_runtime_left_less_the_margin_and_overhead():
    v = budget.verdict(est(runtime_off=10 * MIN, runtime_down=20 * MIN), CFG)
    assert v.ingest_bytes == int((10 * MIN * 0.7 - 60) * 10 * MB)
    assert v.upload_bytes == int(20 * MIN * 0.7 * 2 * MB)
    assert budget.verdict(est(on_battery=False), CFG).ingest_bytes is None


# --- the runtime left --------------------------------------------------------------------------------


def test_a_flat_battery_is_judged_by_its_energy_a_falling_one_by_its_fall_the_smaller_wins():
    flat = batt(*[70] * 10)
    e = budget.estimate(flat, BOOT, CFG, rates={}, camera="dashcam", watts=5.0, recorded_seconds=0, card=None,
                        staged=(0, 0, 0), oldest_staged_wall=None, recording_since_wall=None, wall=0)
    # 20 % of 4.8 Wh through the converter at 5 W
    assert e.runtime_disconnect == pytest.approx(4.8 * 0.20 * 0.85 / 5.0 * 3600)
    falling = batt(70, 70, 70, 60, 60, 60, 50, 50, 50, 40, 40)  # 10 % a minute and a half: steep below the knee
    e2 = budget.estimate(falling, BOOT, CFG, rates={}, camera="dashcam", watts=5.0, recorded_seconds=0, card=None,
                         staged=(0, 0, 0), oldest_staged_wall=None, recording_since_wall=None, wall=0)
    assert e2.percent == 40 and e2.runtime_disconnect == 0.0
    # 30 % in 240 s; shutdown_percent 25 trips when the reading leaves the 30 % step: 10 % left to fall
    assert e2.runtime_shutdown == pytest.approx(10 / (30 / 240), rel=0.01)
    assert budget.effective_threshold(25, CFG.battery.voltage_table) == 30
    assert budget.effective_threshold(50, CFG.battery.voltage_table) == 50
    assert budget.effective_threshold(101, CFG.battery.voltage_table) == 101


@pytest.mark.parametrize("history,why", [
    (batt(None), "battery reading unknown"),
    (batt(95, external=True), "on external power"),
    ([Sample(monotonic=1.0, boot_id=BOOT, percent=80, external=None)], "power source unknown"),
    ([], "battery reading unknown"),
])
def test_an_unknown_runtime_is_none_with_its_reason_never_an_error(history, why):
    e = budget.estimate(history, BOOT, CFG, rates={"cameras": "junk", "watts": float("nan")}, camera="dashcam",
                        watts=None, recorded_seconds=0, card={"camera": "dashcam", "bytes": "x"}, staged=(0, 0, 0),
                        oldest_staged_wall=None, recording_since_wall=None, wall=0)
    assert e.runtime_disconnect is None and e.runtime_shutdown is None and e.runtime_why == why
    assert budget.verdict(e, CFG).ingest_bytes is None


def test_the_ups_output_is_read_from_both_sources_fixtures():
    values = battery.parse_lifepo4wered((FIXTURES / "lifepo4wered-get.txt").read_text())
    assert budget.load_watts(values) == pytest.approx(4.979 * 0.857)
    import json

    assert budget.load_watts(json.loads((FIXTURES / "battery-info.json").read_text())) == 4.29
    assert budget.load_watts({"VOUT": -1, "IOUT": -2}) is None
    assert budget.load_watts({"output_power": 1e308}) is None


def test_footage_on_the_camera_is_what_the_last_ingest_left_plus_minutes_recorded_times_bytes_per_minute():
    card = {"camera": "dashcam", "bytes": 500 * MB, "event_bytes": 100 * MB}
    e = budget.estimate(H, BOOT, CFG, rates={}, camera="dashcam", watts=None, recorded_seconds=10 * MIN, card=card,
                        staged=(3, 300 * MB, 0), oldest_staged_wall=1.7644e9 + 1000,
                        recording_since_wall=1.7644e9 + 5000, wall=1.7644e9 + 9000)
    assert e.card_bytes == 500 * MB + 10 * 100 * MB and e.card_event_bytes == 100 * MB + 100 * MB  # 10 %
    assert e.waiting_bytes == e.card_bytes + 300 * MB and not e.card_exact
    assert e.oldest_unsent_seconds == 8000.0
    assert not e.load_measured and e.load_watts == CFG.budget.load_watts


def test_rates_are_learned_once_per_run_smoothed_and_implausible_ones_ignored():
    ingest = {"result": "ok", "bytes": 1200 * MB, "seconds": 100.0, "pending": 0, "wall": 1}
    r = budget.learn({}, "dashcam", last_ingest=ingest, last_upload=None, recorded_seconds=12 * MIN, watts=4.0)
    assert r["cameras"]["dashcam"]["read_bps"] == 12 * MB
    assert r["cameras"]["dashcam"]["bytes_per_minute"] == 100 * MB
    again = budget.learn(r, "dashcam", last_ingest=ingest, last_upload=None, recorded_seconds=0, watts=None)
    assert again["cameras"]["dashcam"]["read_bps"] == 12 * MB  # the same run is not learned twice
    slower = dict(ingest, seconds=200.0, wall=2)
    r2 = budget.learn(again, "dashcam", last_ingest=slower, last_upload=None, recorded_seconds=0, watts=None)
    assert r2["cameras"]["dashcam"]["read_bps"] == pytest.approx(0.7 * 12 * MB + 0.3 * 6 * MB)
    absurd = dict(ingest, seconds=1e-9, wall=3)
    r3 = budget.learn(r2, "dashcam", last_ingest=absurd, last_upload={"result": "ok", "bytes": 600 * MB, "seconds": 300},
                      recorded_seconds=0, watts=None)
    assert r3["cameras"]["dashcam"]["read_bps"] == r2["cameras"]["dashcam"]["read_bps"]
    assert r3["upload_bps"] == 2 * MB
    assert budget.learn("garbage", "dashcam", last_ingest=[1], last_upload=7, recorded_seconds=0, watts=None)


# --- the gates at each clip boundary -------------------------------------------------------------------


def test_the_allowance_shrinks_with_time_and_is_no_limit_when_stale_or_of_another_boot():
    state = {"boot_id": BOOT, "monotonic": 100.0, "ingest_bytes": 1000 * MB, "ingest_rate": 10 * MB}
    assert budget.allowance(state, "ingest", BOOT, 100.0) == 1000 * MB
    assert budget.allowance(state, "ingest", BOOT, 130.0) == 700 * MB
    assert budget.allowance(state, "ingest", BOOT, 300.0) == 0
    assert budget.allowance(state, "ingest", BOOT, 100.0 + budget.STALE_SECONDS + 1) is None
    assert budget.allowance(state, "ingest", "boot-2", 100.0) is None
    assert budget.allowance(dict(state, ingest_bytes=None), "ingest", BOOT, 100.0) is None
    assert budget.allowance({"boot_id": BOOT, "monotonic": "x"}, "ingest", BOOT, 100.0) is None
    assert budget.allowance(None, "upload", BOOT, 100.0) is None


def test_an_ingest_copies_events_only_when_not_everything_fits_and_never_starts_a_clip_that_does_not():
    clips = [(100 * MB, True)] * 6 + [(100 * MB, False)] * 20  # events first, as ingest orders them
    stored = {}
    state = {"boot_id": BOOT, "monotonic": 0.0, "ingest_bytes": 650 * MB, "ingest_rate": 0.0}
    gate = budget.IngestGate(lambda k: state, stored.__setitem__, "dashcam", clips, BOOT, lambda: 0.0)
    started = [i for i in range(len(clips)) if gate.may_start(i)]
    assert started == list(range(6))  # once stopped, no later clip starts (the last 6 would fit)
    assert stored[budget.CARD_KEY]["bytes"] == 2000 * MB  # the normal clips stay on the card
    assert budget.may_copy(100 * MB, False, 300 * MB, 300 * MB)  # everything left fits
    assert not budget.may_copy(100 * MB, True, 300 * MB, 99 * MB)
    assert budget.may_copy(100 * MB, False, 10 * GB, None)  # no budget: no limit


def test_an_upload_sends_whole_clips_events_first_up_to_what_the_budget_allows():
    items = [(100 * MB, False), (100 * MB, True), (300 * MB, True), (100 * MB, False)]
    assert budget.upload_fit(items, None) == [0, 1, 2, 3]
    assert budget.upload_fit(items, 600 * MB) == [0, 1, 2, 3]
    assert budget.upload_fit(items, 450 * MB) == [1, 2]
    assert budget.upload_fit(items, 250 * MB) == [1, 0]  # the second event does not fit: stop there
    assert budget.upload_fit(items, 50 * MB) == []


# --- the tick writes the budget; ingest and upload follow it ------------------------------------------

import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

from dashcam_helpers import ingest, mqtt, status  # noqa: E402
from dashcam_helpers.ledger import Ledger  # noqa: E402
from dashcam_helpers.policy import SystemClock  # noqa: E402
from dashcam_helpers.tick import tick  # noqa: E402
from test_policy_tick import FakeActions, FakeClock, FakeReading, FakeWorld  # noqa: E402


def test_an_arrival_on_battery_copies_events_only_and_says_why_with_numbers(make_config, caplog):
    cfg = config.load(str(make_config()))
    world, clock = FakeWorld(), FakeClock()
    world.reachable = True
    # 80 % on battery; the UPS reports 5 V x 1000 mA
    world.reading = FakeReading(percent=80, millivolts=3413, external=False, raw={"VOUT": 5000, "IOUT": 1000})
    actions = FakeActions(world)
    with Ledger(cfg.paths.ledger) as ledger:
        ingested = {"wall": 1.0, "result": "ok", "files": 3, "bytes": 300 * MB, "pending": 0}
        ledger.put_state("last_ingest", ingested)
        # 90 minutes recorded since that ingest with this tick (this boot), the server out of reach until now
        ledger.put_state("policy", {"boot_id": clock.boot, "last_tick": clock.mono - 30, "last_mode": "record",
                                    "reachable": False, "recorded_seconds": 89.5 * MIN, "seen_ingest": ingested,
                                    "last_external": False})
        with caplog.at_level(logging.INFO, logger="dashcam.policy"):
            record = tick(cfg, world, actions, ledger=ledger, clock=clock)
        assert record["done"][:2] == ["camera data", "copy events only"]
        line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("policy:")][-1]
        # 30 % of 4.8 Wh through the converter at 5 W: 14 min; 90 min x 100 MB, 10 % of it events
        assert "-> did camera data, copy events only" in line
        assert "copy events only: ~900 MB of events (estimated) fit in ~14 min left above 50 %," \
               " 8.1 GB of normal clips do not" in line
        state = ledger.get_state(budget.BUDGET_KEY)
        assert state["boot_id"] == clock.boot and state["ingest"] == "events"
        assert state["ingest_bytes"] == pytest.approx((4.8 * 0.3 * 0.85 / 5 * 3600 * 0.7 - 60) * 10 * MB, abs=1)
        # the ingest's gate at its clip boundaries: the events, then the first normal clip is not started
        clips = [(100 * MB, True)] * 9 + [(100 * MB, False)] * 81
        gate = budget.IngestGate(ledger.get_state, ledger.put_state, "dashcam", clips, clock.boot, lambda: clock.mono)
        assert [gate.may_start(i) for i in range(10)] == [True] * 9 + [False]
        assert ledger.get_state(budget.CARD_KEY)["bytes"] == 81 * 100 * MB
        # status and Home Assistant show it
        section = status.budget_section(cfg)
        assert section["waiting_bytes"] == 9 * GB and section["waiting_event_bytes"] == 900 * MB
        text = status.render({"budget": section})
        assert text.startswith("budget:   ~24 min on battery (80 % of 4.8 Wh at 5.0 W); 9.0 GB waiting (900 MB of events;")
        assert "not all on this charge" in text
        doc = mqtt.state_document({"budget": section})
        assert doc["runtime_minutes"] == section["runtime_minutes"] and doc["waiting_event_bytes"] == 900 * MB
        assert doc["all_safe_minutes"] is None and doc["oldest_unsent_minutes"] is not None


def test_a_dry_run_gives_ingest_and_upload_no_budget(make_config):
    cfg = config.load(str(make_config()))
    world, clock = FakeWorld(), FakeClock()
    with Ledger(cfg.paths.ledger) as ledger:
        tick(cfg, world, FakeActions(world), ledger=ledger, clock=clock, dry_run=True)
        assert ledger.get_state(budget.BUDGET_KEY) is None
        tick(cfg, world, FakeActions(world), ledger=ledger, clock=clock)
        assert ledger.get_state(budget.BUDGET_KEY)["ingest_bytes"] is not None


def test_the_ingest_copies_the_events_and_leaves_the_rest_on_the_card_when_the_budget_says_so(make_config, tmp_path):
    cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})))
    card = tmp_path / "card"
    for n in range(3):
        for folder in ("Event/Front", "Normal/Front"):
            path = card / folder / f"2026_1130_12000{n}_00{n}F.MP4"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(random.Random(f"{folder}{n}").randbytes(100_000))
            os.utime(path, (1.7644e9 + n, 1.7644e9 + n))
    with Ledger(cfg.paths.ledger) as ledger:  # the policy's word: 250 kB may still be read, this boot
        ledger.put_state(budget.BUDGET_KEY, {"boot_id": SystemClock().boot_id(), "monotonic": time.monotonic(),
                                             "ingest_bytes": 250_000, "ingest_rate": 1.0})
    result = ingest.ingest_source(cfg, str(card))
    with Ledger(cfg.paths.ledger) as ledger:
        staged = [c.source_path for c in ledger.files("staged")]
        left = ledger.get_state(budget.CARD_KEY)
    assert sorted(staged) == sorted(f"Event/Front/2026_1130_12000{n}_00{n}F.MP4" for n in range(3))
    assert result.pending == 3 and not result.interrupted
    assert (left["bytes"], left["event_bytes"], left["files"]) == (300_000, 0, 3)
    # no budget (external power: none written; or stale): everything
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.put_state(budget.BUDGET_KEY, {"boot_id": "another boot", "monotonic": 0.0,
                                             "ingest_bytes": 0, "ingest_rate": 1.0})
    again = ingest.ingest_source(cfg, str(card))
    assert again.files == 3 and again.pending == 0


def test_the_upload_starts_only_whole_clips_that_fit_events_first(make_config):
    from dashcam_helpers import upload

    cfg = config.load(str(make_config()))
    with Ledger(cfg.paths.ledger) as ledger:
        for n, event in enumerate([False, True, False, True]):
            ledger.record_staged("dashcam", f"{'Event' if event else 'Normal'}/c{n}.MP4", 100 * MB, n, event=event,
                                 sha256=f"{n:064x}", staged_path=f"dashcam/2026-11-30/c{n}.MP4")
        uploader = upload.Uploader(cfg, ledger)
        items = upload.plan(ledger.files("staged"), cfg.paths.ready)
        assert uploader.within_budget(items) == items  # no budget: all, in the plan's order
        ledger.put_state(budget.BUDGET_KEY, {"boot_id": SystemClock().boot_id(), "monotonic": time.monotonic(),
                                             "upload_bytes": 250 * MB, "upload_rate": 1.0})
        chosen = uploader.within_budget(items)
        assert [i.clip.event for i in chosen] == [True, True]


def test_with_the_budget_switched_off_nothing_is_limited(make_config):
    cfg = config.load(str(make_config({"budget": {"enabled": False}})))
    world, clock = FakeWorld(), FakeClock()
    world.reading = FakeReading(percent=55, external=False)  # 5 % above disconnect: little runtime
    world.reachable = True
    with Ledger(cfg.paths.ledger) as ledger:
        record = tick(cfg, world, FakeActions(world), ledger=ledger, clock=clock)
        assert record["done"][0] == "camera data" and "copy" not in record["decision"]["reason"]
        assert record["saw"]["budget"] == {}
        state = ledger.get_state(budget.BUDGET_KEY)
        assert state["ingest_bytes"] is None and state["upload_bytes"] is None


JUNK = [None, "text", 7, [1, 2], {"cameras": {"dashcam": {"read_bps": "fast", "bytes_per_minute": -1}},
                                   "watts": 1e308, "upload_bps": float("inf")},
        {"camera": "dashcam", "bytes": 10, "event_bytes": 20, "after": {}}, {"bytes": [1], "camera": ["x"]}]


@pytest.mark.parametrize("junk", JUNK)
def test_whatever_the_ledger_holds_for_the_budget_a_low_battery_still_shuts_down(make_config, junk):
    cfg = config.load(str(make_config()))
    world, clock = FakeWorld(), FakeClock()
    world.reading = FakeReading(percent=20, millivolts=3200, external=False, raw={"VOUT": "x", "IOUT": 10**30})
    actions = FakeActions(world)
    with Ledger(cfg.paths.ledger) as ledger:
        for key in (budget.RATES_KEY, budget.CARD_KEY, budget.BUDGET_KEY):
            ledger.put_state(key, junk)
        ledger.put_state("last_ingest", junk)
        ledger.put_state("last_upload", junk)
        for _ in range(3):
            record = tick(cfg, world, actions, ledger=ledger, clock=clock)
            clock.advance()
        assert record["decision"]["shutdown"] and ("poweroff",) in actions.calls
        gate = budget.IngestGate(ledger.get_state, ledger.put_state, "dashcam", [(1, True)], "other", lambda: 0.0)
        assert gate.may_start(0)


# --- hostile numbers: what the ledger holds is any JSON, integers of any size included ------------------

HUGE = 10**400  # valid JSON, an int Python keeps exactly and no float can hold


@pytest.mark.parametrize("card", [
    {"camera": "dashcam", "bytes": HUGE, "event_bytes": HUGE // 10},
    {"camera": "dashcam", "bytes": 1e308, "event_bytes": 1e307},
])
def test_a_card_left_beyond_any_float_is_no_estimate_and_never_stops_a_shutdown(make_config, card):
    cfg = config.load(str(make_config()))
    world, clock = FakeWorld(), FakeClock()
    world.reading = FakeReading(percent=20, millivolts=3200, external=False)
    actions = FakeActions(world)
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.put_state(budget.CARD_KEY, card)
        for _ in range(3):  # a shutdown needs readings low on consecutive ticks
            record = tick(cfg, world, actions, ledger=ledger, clock=clock)
            clock.advance()
    assert record["decision"]["shutdown"] and ("poweroff",) in actions.calls


def test_learned_rates_and_times_beyond_any_float_are_not_learned():
    rates = {"cameras": {"dashcam": {"read_bps": HUGE, "bytes_per_minute": HUGE, "event_share": HUGE}},
             "watts": HUGE, "upload_bps": HUGE}
    run = {"result": "ok", "bytes": HUGE, "seconds": 1.0, "pending": 0}
    out = budget.learn(rates, "dashcam", last_ingest=run, last_upload=run, recorded_seconds=1e308, watts=None,
                       card={"scan": {"bytes": HUGE, "event_bytes": HUGE}})
    e = budget.estimate(batt(60, 60, 60), BOOT, CFG, rates=out, camera="dashcam", watts=None, recorded_seconds=0,
                        card=None, staged=(0, 0, 0), oldest_staged_wall=HUGE, recording_since_wall=None, wall=1e9)
    assert (e.read_learned, e.upload_learned, e.oldest_unsent_seconds) == (False, False, None)
    assert budget.verdict(e, CFG).ingest == "all"


@pytest.mark.parametrize("state", [
    {"upload_bytes": -5, "upload_rate": 1.0},  # a verdict never allows less than nothing
    {"upload_bytes": 100, "upload_rate": -1e9},  # nor counts with a negative rate
    {"upload_bytes": HUGE, "upload_rate": 1.0},
    {"upload_bytes": 100, "upload_rate": HUGE},
    {"upload_bytes": True, "upload_rate": 1.0},
    {"upload_bytes": 100, "upload_rate": 1.0, "monotonic": HUGE},
    {"upload_bytes": 100, "upload_rate": 1.0, "monotonic": float("nan")},
    {"upload_bytes": [100], "upload_rate": "1"},
])
def test_an_allowance_that_cannot_be_read_is_no_limit_and_says_so(state, caplog):
    state = {"boot_id": BOOT, "monotonic": 0.0, **state}
    with caplog.at_level(logging.WARNING, logger="dashcam.budget"):
        assert budget.allowance(state, "upload", BOOT, 10.0, log=logging.getLogger("dashcam.budget")) is None
    assert "power budget" in caplog.text and "no limit" in caplog.text


def test_an_ordinary_clip_is_never_sent_while_an_event_clip_that_fits_waits():
    # the newest event clip alone is larger than the budget; the older one fits: it goes, and no ordinary clip
    # spends the charge while an event clip waits
    items = [(500 * MB, True), (100 * MB, True), (250 * MB, False)]
    assert budget.upload_fit(items, 300 * MB) == [1]
    # an event clip larger than the whole budget waits (for external power) and holds nothing else back
    assert budget.upload_fit([(500 * MB, True), (100 * MB, False)], 300 * MB) == [1]


def test_an_upload_goes_on_without_a_limit_when_the_budget_state_is_not_json(make_config, caplog):
    from dashcam_helpers import upload

    cfg = config.load(str(make_config()))
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.record_staged("dashcam", "Event/c.MP4", 100 * MB, 1, event=True, sha256="1" * 64,
                             staged_path="dashcam/2026-11-30/Event/c.MP4")
        with ledger.transaction() as db:
            db.execute("INSERT INTO state (key, value, updated_at) VALUES (?, ?, 0)", (budget.BUDGET_KEY, "{not json"))
        items = upload.plan(ledger.files("staged"), cfg.paths.ready)
        with caplog.at_level(logging.WARNING):
            assert upload.Uploader(cfg, ledger).within_budget(items) == items
    assert "power budget" in caplog.text


def test_an_estimate_the_verdict_cannot_weigh_is_no_budget_and_a_low_battery_still_shuts_down(caplog):
    broken = est().replace(read_bps=0.0, upload_bps=0.0)  # no estimate() makes it; decide() is the last guard
    with caplog.at_level(logging.ERROR, logger="dashcam.policy"):
        low = decide(batt(20, 20, 20), Facts(**{**HOME, "budget": broken}), CFG)
    assert low.shutdown and low.verdict is None
    assert "no power budget this tick" in caplog.text


@pytest.mark.parametrize("staged_wall,wall", [
    (100.0, 1.7644e9),  # staged while the clock read 1970 (no RTC, before NTP); now set
    (1.7644e9, 100.0),  # staged in 2026; this boot's clock not set yet
])
def test_the_age_of_the_oldest_footage_is_unknown_across_a_clock_that_was_not_set(staged_wall, wall):
    e = budget.estimate(batt(60, 60, 60), BOOT, CFG, rates={}, camera="dashcam", watts=None, recorded_seconds=0,
                        card=None, staged=(1, MB, 0), oldest_staged_wall=staged_wall, recording_since_wall=None,
                        wall=wall)
    assert e.oldest_unsent_seconds is None
    set_clock = budget.estimate(batt(60, 60, 60), BOOT, CFG, rates={}, camera="dashcam", watts=None,
                                recorded_seconds=0, card=None, staged=(1, MB, 0), oldest_staged_wall=1.7644e9 - 3600,
                                recording_since_wall=None, wall=1.7644e9)
    assert set_clock.oldest_unsent_seconds == 3600


@pytest.mark.parametrize("raw,watts", [
    ({"output_voltage": -4.98, "output_current": -0.86}, None),  # two wrong signs make no draw
    ({"output_voltage": 4.98, "output_current": -0.86}, None),
    ({"output_power": -4.29, "output_voltage": 5.0, "output_current": 0.8}, 4.0),  # one bad field, the others read
    ({"output_power": float("nan"), "VOUT": 5000, "IOUT": 800}, 4.0),
    ({"output_power": True}, None),
    ({"VOUT": 10**400, "IOUT": 1}, None),
    ({"VOUT": 5000, "IOUT": 10**30}, None),
    ({"VOUT": -1, "IOUT": -2}, None),  # lifepo4wered-cli: not read
    ({"output_power": 4.29}, 4.29),
    ({}, None), ([], None), ("5 W", None),
])
def test_the_ups_output_of_any_shape_is_a_plausible_draw_or_unknown(raw, watts):
    assert budget.load_watts(raw) == (pytest.approx(watts) if watts is not None else None)


def test_an_event_clip_too_large_for_the_budget_is_passed_over_and_the_next_event_clips_still_copied():
    clips = [(500 * MB, True), (100 * MB, True), (100 * MB, True)] + [(100 * MB, False)] * 20
    stored = {}
    state = {"boot_id": BOOT, "monotonic": 0.0, "ingest_bytes": 300 * MB, "ingest_rate": 0.0}
    gate = budget.IngestGate(lambda k: state, stored.__setitem__, "dashcam", clips, BOOT, lambda: 0.0)
    started = [i for i in range(len(clips)) if gate.may_start(i)]
    assert started == [1, 2] and gate.waiting == [0] and gate.stopped
    # on the card: the large event clip and the ordinary clips
    assert (stored[budget.CARD_KEY]["bytes"], stored[budget.CARD_KEY]["event_bytes"]) == (2500 * MB, 500 * MB)


def test_the_ingest_passes_over_an_event_clip_too_large_for_the_budget_and_copies_the_other_events(make_config,
                                                                                                  tmp_path):
    cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})))
    card = tmp_path / "card"
    sizes = {"Event/Front/2026_1130_120009_009F.MP4": 400_000}  # the newest: copied first, were it to fit
    sizes.update({f"Event/Front/2026_1130_12000{n}_00{n}F.MP4": 100_000 for n in range(3)})
    sizes.update({f"Normal/Front/2026_1130_12000{n}_00{n}F.MP4": 100_000 for n in range(3)})
    for n, (rel, size_) in enumerate(sorted(sizes.items())):
        path = card / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(random.Random(rel).randbytes(size_))
        os.utime(path, (1.7644e9 + int(rel[-8:-5]), 1.7644e9 + int(rel[-8:-5])))
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.put_state(budget.BUDGET_KEY, {"boot_id": SystemClock().boot_id(), "monotonic": time.monotonic(),
                                             "ingest_bytes": 250_000, "ingest_rate": 1.0})
    result = ingest.ingest_source(cfg, str(card))
    with Ledger(cfg.paths.ledger) as ledger:
        staged = sorted(c.source_path for c in ledger.files("staged"))
        left = ledger.get_state(budget.CARD_KEY)
    assert staged == sorted(f"Event/Front/2026_1130_12000{n}_00{n}F.MP4" for n in range(3))
    assert result.pending == 4 and (left["bytes"], left["event_bytes"], left["files"]) == (700_000, 400_000, 4)


def test_an_unreadable_budget_is_said_once_per_ingest_and_every_clip_still_starts(caplog):
    state = {"boot_id": BOOT, "monotonic": 0.0, "ingest_bytes": -1, "ingest_rate": 1.0}
    gate = budget.IngestGate(lambda k: state, lambda k, v: None, "dashcam", [(MB, False)] * 50, BOOT, lambda: 0.0,
                             logging.getLogger("dashcam.ingest"))
    with caplog.at_level(logging.WARNING):
        assert all(gate.may_start(i) for i in range(50))
    assert caplog.text.count("cannot be read") == 1


def test_a_budget_state_that_is_not_json_costs_that_state_not_the_ledger(make_config, tmp_path, caplog):
    from dashcam_helpers.tick_ledger import TickLedger

    cfg = config.load(str(make_config()))
    world, clock = FakeWorld(), FakeClock()
    world.reading = FakeReading(percent=20, millivolts=3200, external=False)
    actions = FakeActions(world)
    with Ledger(cfg.paths.ledger) as ledger:
        with ledger.transaction() as db:
            for key in (budget.RATES_KEY, budget.CARD_KEY, budget.BUDGET_KEY):
                db.execute("INSERT INTO state (key, value, updated_at) VALUES (?, ?, 0)", (key, "{not json"))
    for _ in range(3):
        with TickLedger(cfg.paths.ledger, [str(tmp_path / "fallback")], clock.boot) as ledger:
            record = tick(cfg, world, actions, ledger=ledger, clock=clock)
            assert ledger.problem is None  # the readings and the state still go to the database
        clock.advance()
    assert record["decision"]["shutdown"] and ("poweroff",) in actions.calls
    assert "is not JSON" in caplog.text
    with Ledger(cfg.paths.ledger) as ledger:
        assert isinstance(ledger.get_state(budget.RATES_KEY), dict)  # written anew by the tick
