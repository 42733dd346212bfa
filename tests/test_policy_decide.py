"""decide(): the battery policy as a table of situations, each with the decision and the reason it must give.

Defaults of the shipped config: disconnect 50 %, back on at 55 % (hysteresis 5), shutdown below
25 % after 3 consecutive readings, unknown readings count as low after 10 min on battery,
data mode watchdog 30 min, footage fetched again after 30 min of recording.
"""

from __future__ import annotations

import pytest

from conftest import MINIMAL, deep_merge
from dashcam_helpers import config
from dashcam_helpers.policy import INGEST_UNITS, UPLOAD_UNIT, Facts, Sample, decide, mode_after_ingest

BOOT = "boot-1"
STEP = 30.0  # seconds between ticks


def cfg_with(**sections):
    return config.validate(deep_merge(MINIMAL, sections), "test.yaml")


CFG = cfg_with()


def batt(*percents, external=False, boot=BOOT, start=1000.0):
    """Readings one tick apart; a percent of None is an unknown reading (power unknown too, unless external)."""
    return [
        Sample(
            monotonic=start + i * STEP,
            boot_id=boot,
            percent=p,
            external=external if (p is not None or external) else None,
            millivolts=None,
            wall=1.7e9 + i * STEP,
        )
        for i, p in enumerate(percents)
    ]


def now_of(history):
    return history[-1].monotonic if history else 1000.0


def facts(history, **kw):
    base = dict(
        now=now_of(history),
        boot_id=BOOT,
        reachable=False,
        was_reachable=False,
        camera_mode="record",
        staging_free=10 * 2**30,
        staging_reserve=2**30,
    )
    base.update(kw)
    return Facts(**base)


def minutes(m):
    return m * 60.0


H = batt(80, 80, 80)  # a healthy battery
T0 = now_of(H)
# parked at home on external power: the server has answered (and the power stayed external) for an hour
PARKED = dict(reachable_since=T0 - minutes(60), external_since=T0 - minutes(60))

# (id, history, facts overrides, camera target, start_upload, shutdown, a phrase the reason must contain)
CASES = [
    # --- scenario A: no network -> the camera records
    ("A away on battery, camera off at boot -> record", H, dict(camera_mode="off"), "record", False, False, "server unreachable"),
    ("A away on battery, recording -> stays", H, dict(), None, False, False, "camera stays record"),
    ("A away, camera mode unknown -> record", H, dict(camera_mode="unknown"), "record", False, False, "away from home"),
    ("A away with a backlog: no upload", H, dict(backlog_files=4, backlog_bytes=400), None, False, False, "server unreachable"),
    ("A away on external power -> record", batt(95, external=True), dict(camera_mode="off"), "record", False, False, "external power"),
    # --- scenario B: reachable -> data -> ingest -> back
    ("B arriving home -> data", H, dict(reachable=True, was_reachable=False), "data", False, False, "just became reachable"),
    ("B first tick of a boot at home -> data", H, dict(reachable=True, was_reachable=None, camera_mode="off"), "data", False, False, "just became reachable"),
    ("B in data, ingest running -> hold", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(5), ingest_running=True), None, False, False, "ingest running"),
    ("B in data, waiting for the storage", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - 20), None, False, False, "waiting for its storage"),
    ("B after ingest on battery: off, upload starts", H, dict(reachable=True, was_reachable=True, camera_mode="off", backlog_files=5, backlog_bytes=5000), None, True, False, "start upload"),
    ("B ingest left the camera in data, battery -> after_ingest", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - 60, ingested_since_data=True), "off", False, False, "ingest finished"),
    ("B ingest left the camera in data, external -> record", batt(95, external=True), dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - 60, ingested_since_data=True), "record", False, False, "back to record"),
    ("B arriving home after a drive, ingested before -> data", H, dict(reachable=True, recorded_seconds=600, ingested_before=True), "data", False, False, "just became reachable"),
    ("B a WiFi blip at home after an ingest: no data again", H, dict(reachable=True, camera_mode="off", ingested_before=True), None, False, False, "no new footage expected"),
    ("B clips left on the card by the budget, first tick of a boot, parked on external power -> data", batt(95, external=True), dict(reachable=True, was_reachable=None, camera_mode="record", ingested_before=True, left_on_card=200 * 10**6, **PARKED), "data", False, False, "200 MB left on the card"),
    ("B clips left on the card, the WiFi back at home on battery: no data (the cell has not charged)", H, dict(reachable=True, was_reachable=False, camera_mode="off", ingested_before=True, left_on_card=200 * 10**6), None, False, False, "no new footage expected"),
    ("B clips left on the card, a tick at home on battery after the ingest: no data again", H, dict(reachable=True, was_reachable=True, camera_mode="off", ingested_before=True, left_on_card=200 * 10**6), None, False, False, "no new footage expected"),
    ("B camera off at home, one missed probe: not yet away", H, dict(reachable=False, was_reachable=True, camera_mode="off"), None, False, False, "not yet counted as away"),
    ("B camera off at home, two missed probes: away -> record", H, dict(reachable=False, was_reachable=False, camera_mode="off"), "record", False, False, "away from home"),
    ("B no room in staging: no data", H, dict(reachable=True, staging_free=2**29), None, False, False, "staging has no room"),
    ("B an ingest (SD card) is running: no data", H, dict(reachable=True, ingest_running=True), None, False, False, "an ingest is running"),
    ("B at home, recorded 31 min -> data", H, dict(reachable=True, was_reachable=True, recorded_seconds=minutes(31)), "data", False, False, "recorded 31 min"),
    ("B at home, recorded 10 min -> stays", H, dict(reachable=True, was_reachable=True, recorded_seconds=minutes(10)), None, False, False, "no new footage expected"),
    ("B at home on external power, recorded 31 min -> data", batt(95, external=True), dict(reachable=True, was_reachable=True, recorded_seconds=minutes(31), **PARKED), "data", False, False, "data: server reachable"),
    ("B at home on external power, camera off -> record", batt(95, external=True), dict(reachable=True, was_reachable=True, camera_mode="off"), "record", False, False, "external power"),
    ("B upload already running: not started twice", H, dict(reachable=True, was_reachable=True, camera_mode="off", backlog_files=2, backlog_bytes=9, upload_running=True), None, False, False, "upload running"),
    ("B nothing to upload", H, dict(reachable=True, was_reachable=True, camera_mode="off"), None, False, False, "nothing to upload"),
    ("B the last upload failed: a pause before the next", H, dict(reachable=True, was_reachable=True, camera_mode="off", backlog_files=2, backlog_bytes=9, upload_failed_recently=True), None, False, False, "last upload failed"),
    ("B the last upload found only clips held for a cut session: wait", H, dict(reachable=True, was_reachable=True, camera_mode="off", backlog_files=2, backlog_bytes=9, upload_held=True), None, False, False, "cut earlier"),
    ("B arriving home with a low battery: no data, camera off", batt(40, 40, 40), dict(reachable=True), "off", False, False, "below disconnect_percent"),
    # --- scenario C: thresholds
    ("C below disconnect -> camera off", batt(80, 45, 45), dict(), "off", False, False, "below disconnect_percent 50"),
    ("C one low spike is no trend", batt(80, 80, 40), dict(), None, False, False, "camera stays record"),
    ("C low, already off -> stays off", batt(45, 45, 45), dict(camera_mode="off"), None, False, False, "camera stays off"),
    ("C back to 52 % after low: stays off (hysteresis)", batt(45, 45, 52, 52, 52), dict(camera_mode="off"), None, False, False, "camera stays off"),
    ("C 55 % after low: on again", batt(45, 45, 55, 55, 55), dict(camera_mode="off"), "record", False, False, "camera record"),
    ("C in the band after a good reading: stays on", batt(60, 52, 52), dict(), None, False, False, "camera stays record"),
    ("C in the band with no decisive reading, off: stays off", batt(52, 52), dict(camera_mode="off"), None, False, False, "camera stays off"),
    ("C below disconnect during an ingest: stop it, camera off", batt(45, 45, 45), dict(camera_mode="data", data_since=T0 - 60, ingest_running=True), "off", False, False, "camera off"),
    ("C in the band, latched low by an earlier tick: off", batt(52, 52, 52), dict(battery_low=True), "off", False, False, "low since it fell below 50%"),
    ("C in the band, latched ok by an earlier tick: on", batt(52, 52, 52), dict(battery_low=False, camera_mode="off"), "record", False, False, "ok since it was last at or above 55%"),
    ("C 3 readings below shutdown -> shutdown", batt(20, 20, 20), dict(), "off", False, True, "below shutdown_percent 25 for 3 readings"),
    ("C shutdown with the camera already off", batt(20, 20, 20), dict(camera_mode="off", backlog_files=3, reachable=True), None, False, True, "power off"),
    ("C 2 of 3 below shutdown: camera off, no shutdown", batt(30, 20, 20), dict(), "off", False, False, "below disconnect_percent"),
    ("C an unknown reading breaks the debounce", batt(20, None, 20, 20), dict(), "off", False, False, "below disconnect_percent"),
    ("C low readings of the previous boot do not count", batt(20, 20, boot="boot-0") + batt(20, start=5.0), dict(now=5.0), "off", False, False, "below disconnect_percent"),
    # --- external power: thresholds ignored
    ("E external power at 10 %: no shutdown", batt(10, 10, 10, external=True), dict(), None, False, False, "external power"),
    ("E power returns after two low readings: no shutdown", batt(20, 20) + batt(20, external=True, start=1060), dict(), None, False, False, "external power"),
    ("E external power, away, camera off -> record", batt(10, 10, 10, external=True), dict(camera_mode="off"), "record", False, False, "external power"),
    # --- unknown readings
    ("U unknown, away, recording: unchanged", batt(80, 80, None), dict(unknown_since=T0, last_external=False), None, False, False, "unknown reading changes nothing"),
    ("U unknown at home: no data mode", batt(80, None), dict(reachable=True, camera_mode="off", unknown_since=T0, last_external=False), None, False, False, "unknown"),
    ("U unknown, camera off away: stays off", batt(None, None), dict(camera_mode="off", unknown_since=T0 - 30), None, False, False, "unknown"),
    ("U unknown 9 min on battery: still nothing", batt(None, start=T0), dict(unknown_since=T0 - minutes(9), last_external=False), None, False, False, "unknown"),
    ("U unknown 10 min on battery: counts as low -> shutdown", batt(None, start=T0), dict(unknown_since=T0 - minutes(10), last_external=False), "off", False, True, "no battery reading for 10 min"),
    ("U unknown 60 min, last seen on external power: nothing", batt(None, start=T0), dict(unknown_since=T0 - minutes(60), last_external=True), None, False, False, "unknown"),
    ("U unknown 60 min, power never known: nothing", batt(None, start=T0), dict(unknown_since=T0 - minutes(60), last_external=None), None, False, False, "unknown"),
    ("U percent unknown on external power (source none) -> data", batt(None, external=True), dict(reachable=True, camera_mode="off", **PARKED), "data", False, False, "data: server reachable"),
    ("U no reading at all: nothing", [], dict(now=1000.0), None, False, False, "no battery reading"),
    # --- the data mode watchdog
    ("W data for 31 min with an ingest -> record, stop ingest", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(31), ingest_running=True), "record", False, False, "watchdog"),
    ("W data for 29 min -> hold", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(29), ingest_running=True), None, False, False, "ingest running"),
    ("W data but the storage never appeared -> record", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - 61, camera_attached=False), "record", False, False, "did not appear"),
    ("W watchdog also with unknown readings", batt(80, None), dict(camera_mode="data", data_since=T0 - minutes(45), unknown_since=T0, last_external=False), "record", False, False, "watchdog"),
    ("W data mode and the battery goes low -> off", batt(45, 45, 45), dict(camera_mode="data", data_since=T0 - 60), "off", False, False, "below disconnect_percent"),
    # --- the configuration file broken, the tick on the last good one: the camera records, the battery is watched,
    #     nothing is copied nor uploaded (the ingest and the upload refuse the file)
    ("K broken config: arriving home, no data mode", H, dict(reachable=True, was_reachable=False, config_broken=True), None, False, False, "configuration file is broken"),
    ("K broken config: parked on external power, no data mode", batt(95, external=True), dict(reachable=True, camera_mode="off", config_broken=True, **PARKED), "record", False, False, "configuration file is broken"),
    ("K broken config: a backlog at home, no upload", H, dict(reachable=True, was_reachable=True, backlog_files=3, backlog_bytes=300, config_broken=True), None, False, False, "configuration file is broken"),
    ("K broken config: data mode without an ingest -> back", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - 20, config_broken=True), "off", False, False, "no ingest can start"),
    ("K broken config: an ingest running goes on", H, dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - 20, ingest_running=True, config_broken=True), None, False, False, "ingest running"),
    ("K broken config: low battery -> shutdown", batt(20, 20, 20), dict(camera_mode="off", config_broken=True), None, False, True, "shutdown"),
    ("K broken config: away, camera off -> record", H, dict(camera_mode="off", config_broken=True), "record", False, False, "server unreachable"),
]


@pytest.mark.parametrize("name,history,overrides,camera,upload,shutdown,phrase", CASES, ids=[c[0] for c in CASES])
def test_decide(name, history, overrides, camera, upload, shutdown, phrase):
    d = decide(history, facts(history, **overrides), CFG)
    assert (d.camera, d.start_upload, d.shutdown) == (camera, upload, shutdown), d.reason
    assert phrase in d.reason, d.reason
    assert d.reason.strip()


def test_a_shutdown_stops_ingest_and_upload_first():
    d = decide(batt(20, 20, 20), facts(batt(20, 20, 20), ingest_running=True, upload_running=True), CFG)
    assert d.shutdown and d.stop_units == (INGEST_UNITS, UPLOAD_UNIT) and d.camera == "off"


def test_the_watchdog_stops_a_running_ingest_before_switching():
    h = H
    d = decide(h, facts(h, camera_mode="data", data_since=T0 - minutes(31), ingest_running=True), CFG)
    assert d.stop_units == (INGEST_UNITS,) and d.camera == "record"


def test_every_decision_has_a_reason_for_the_camera_and_for_the_upload():
    for name, history, overrides, *_ in CASES:
        d = decide(history, facts(history, **overrides), CFG)
        assert d.reason and (";" in d.reason), (name, d.reason)


def test_thresholds_come_from_the_config():
    cfg = cfg_with(thresholds={"disconnect_percent": 70, "shutdown_percent": 40, "shutdown_debounce": 1})
    assert decide(batt(65, 65, 65), facts(batt(65, 65, 65)), cfg).camera == "off"
    assert decide(batt(35), facts(batt(35)), cfg).shutdown
    assert not decide(batt(35), facts(batt(35)), CFG).shutdown


def test_after_ingest_record_keeps_the_camera_recording_at_home():
    cfg = cfg_with(camera={"after_ingest": "record"})
    f = facts(H, reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - 60, ingested_since_data=True)
    assert decide(H, f, cfg).camera == "record"


def test_camera_goes_back_to_record_on_external_power_else_to_after_ingest(make_config):
    cfg = config.load(str(make_config({"camera": {"after_ingest": "off"}})))
    assert mode_after_ingest(cfg, True) == "record"
    assert mode_after_ingest(cfg, False) == "off"
    assert mode_after_ingest(cfg, None) == "off"


# --- clock jumps: the wall clock (no RTC) never decides anything ---------------------------------

JUMPS = [0.0, 365 * 86400.0, -365 * 86400.0, -1.7e9, 3600.0]


@pytest.mark.parametrize("jump", JUMPS)
@pytest.mark.parametrize("name,history,overrides,camera,upload,shutdown,phrase", CASES, ids=[c[0] for c in CASES])
def test_a_wall_clock_jump_changes_no_decision(jump, name, history, overrides, camera, upload, shutdown, phrase):
    jumped = [s.replace(wall=(s.wall or 0) + jump * (i % 2)) for i, s in enumerate(history)]
    before = decide(history, facts(history, **overrides), CFG)
    after = decide(jumped, facts(jumped, **overrides), CFG)
    assert before == after


def test_monotonic_values_of_another_boot_are_never_compared():
    # the last boot ended with two low readings at large monotonic values; this boot starts near 0
    old = batt(20, 20, boot="boot-0", start=900000.0)
    new = batt(20, start=12.0)
    d = decide(old + new, facts(old + new, now=12.0), CFG)
    assert not d.shutdown  # one reading of this boot is not three


def test_the_latch_carried_to_the_next_tick():
    assert decide(batt(45, 45, 45), facts(batt(45, 45, 45)), CFG).battery_low is True
    assert decide(H, facts(H, battery_low=True), CFG).battery_low is False
    band = batt(52, 52, 52)
    assert decide(band, facts(band, battery_low=True), CFG).battery_low is True
    unknown = batt(None, start=T0)
    assert decide(unknown, facts(unknown, battery_low=True, unknown_since=T0), CFG).battery_low is True
    charging = batt(20, external=True)
    assert decide(charging, facts(charging, battery_low=True), CFG).battery_low is False


# --- the camera records whenever the car can move ---------------------------------------------------

EXT = batt(95, 95, 95, external=True)  # the engine runs (or permanent USB power)
ENGINE_ON = batt(80, 80) + batt(95, external=True, start=T0)  # on battery, then external power at T0

# (id, history, facts overrides, camera target, units stopped, back_to_record, a phrase the reason must contain)
CAR_CASES = [
    ("drive-by: reachable for one tick on external power -> keeps recording", EXT,
     dict(reachable=True, was_reachable=False, reachable_since=T0, external_since=T0 - minutes(20),
          previous_tick=T0 - STEP, recorded_seconds=minutes(20), ingested_before=True),
     None, (), "", "settle_minutes 3"),
    ("drive-by, first tick of a boot -> keeps recording", EXT,
     dict(reachable=True, was_reachable=None, reachable_since=T0, external_since=T0, camera_mode="off"),
     "record", (), "engine_started", "settle_minutes 3"),
    ("drop-off: two minutes in reach on external power -> keeps recording", EXT,
     dict(reachable=True, was_reachable=True, reachable_since=T0 - minutes(2), external_since=T0 - minutes(30),
          previous_tick=T0 - STEP, recorded_seconds=minutes(30), ingested_before=True),
     None, (), "", "answered for 120 s"),
    ("drop-off with the engine started at the door -> keeps recording", EXT,
     dict(reachable=True, was_reachable=True, reachable_since=T0 - minutes(60), external_since=T0 - minutes(1),
          previous_tick=T0 - STEP, recorded_seconds=minutes(40), ingested_before=True),
     None, (), "", "answered for 60 s"),
    ("parking, permanent USB power: settled this tick -> data", EXT,
     dict(reachable=True, was_reachable=True, reachable_since=T0 - minutes(3), external_since=T0 - minutes(40),
          previous_tick=T0 - STEP, recorded_seconds=minutes(40), ingested_before=True),
     "data", (), "", "answered on external power for settle_minutes 3"),
    ("parking, permanent USB power: settled earlier, nothing new -> keeps recording", EXT,
     dict(reachable=True, was_reachable=True, reachable_since=T0 - minutes(10), external_since=T0 - minutes(40),
          previous_tick=T0 - STEP, recorded_seconds=minutes(5), ingested_before=True),
     None, (), "", "no new footage expected"),
    ("engine start during an ingest on battery -> ingest stopped, record", ENGINE_ON,
     dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(5), ingest_running=True,
          external_since=T0, reachable_since=T0 - minutes(6)),
     "record", (INGEST_UNITS,), "engine_started", "engine started"),
    ("engine start with the camera off after an ingest on battery -> record", ENGINE_ON,
     dict(reachable=True, was_reachable=True, camera_mode="off", external_since=T0, reachable_since=T0 - minutes(60),
          ingested_before=True),
     "record", (), "engine_started", "external power"),
    ("Wi-Fi lost on external power during an ingest -> ingest stopped, record", EXT,
     dict(reachable=False, was_reachable=True, camera_mode="data", data_since=T0 - minutes(2), ingest_running=True,
          external_since=T0 - minutes(30)),
     "record", (INGEST_UNITS,), "leaving_home", "leaving home"),
    ("Wi-Fi blip while parked on battery during an ingest -> no change", H,
     dict(reachable=False, was_reachable=True, camera_mode="data", data_since=T0 - minutes(2), ingest_running=True),
     None, (), "", "ingest running"),
    ("Wi-Fi blip while parked on battery, camera off -> no change", H,
     dict(reachable=False, was_reachable=True, camera_mode="off", ingested_before=True),
     None, (), "", "not yet counted as away"),
    ("data on external power for 11 min -> watchdog, record", EXT,
     dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(11), ingest_running=True,
          external_since=T0 - minutes(60), reachable_since=T0 - minutes(15)),
     "record", (INGEST_UNITS,), "watchdog_external", "max_data_minutes_external 10"),
    ("data on external power for 9 min -> hold", EXT,
     dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(9), ingest_running=True,
          external_since=T0 - minutes(60), reachable_since=T0 - minutes(15)),
     None, (), "", "ingest running"),
    ("data on battery for 11 min -> hold (max_data_minutes 30)", H,
     dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(11), ingest_running=True),
     None, (), "", "ingest running"),
    ("an unknown power reading during an ingest on battery -> no change", batt(80, 80, None),
     dict(reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(2), ingest_running=True,
          unknown_since=T0, last_external=False),
     None, (), "", "ingest running"),
]


@pytest.mark.parametrize("name,history,overrides,camera,stop,back,phrase", CAR_CASES, ids=[c[0] for c in CAR_CASES])
def test_the_camera_records_whenever_the_car_can_move(name, history, overrides, camera, stop, back, phrase):
    d = decide(history, facts(history, **overrides), CFG)
    assert (d.camera, d.stop_units, d.back_to_record) == (camera, stop, back), d.reason
    assert phrase in d.reason, d.reason


def test_settle_minutes_0_keeps_fetching_at_once_on_external_power():
    f = facts(EXT, reachable=True, was_reachable=False, reachable_since=T0, external_since=T0 - minutes(20),
              previous_tick=T0 - STEP, recorded_seconds=minutes(20), ingested_before=True)
    assert decide(EXT, f, CFG).camera is None
    d = decide(EXT, f, cfg_with(camera={"settle_minutes": 0}))
    assert d.camera == "data" and "just became reachable" in d.reason


def test_settle_and_the_external_watchdog_come_from_the_config():
    cfg = cfg_with(camera={"settle_minutes": 1, "max_data_minutes_external": 20})
    drop_off = facts(EXT, reachable=True, was_reachable=True, reachable_since=T0 - minutes(2),
                     external_since=T0 - minutes(30), previous_tick=T0 - STEP, recorded_seconds=minutes(20),
                     ingested_before=True)
    assert decide(EXT, drop_off, CFG).camera is None
    assert decide(EXT, drop_off, cfg).camera is None  # settled a minute ago: arriving was then
    just = drop_off.replace(reachable_since=T0 - minutes(1))
    assert decide(EXT, just, cfg).camera == "data"
    copying = facts(EXT, reachable=True, was_reachable=True, camera_mode="data", data_since=T0 - minutes(11),
                    ingest_running=True, external_since=T0 - minutes(60), reachable_since=T0 - minutes(15))
    assert decide(EXT, copying, CFG).camera == "record"
    assert decide(EXT, copying, cfg).camera is None
