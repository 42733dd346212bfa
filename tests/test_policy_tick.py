"""The policy tick with fake gatherers and actors, a fake clock and a real ledger: the field scenarios tick by tick."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import pytest

from conftest import MINIMAL, deep_merge
from dashcam_helpers import budget, config
from dashcam_helpers.ledger import Ledger
from dashcam_helpers.policy import INGEST_UNITS, LAST_KEY, UPLOAD_UNIT, units_running_from
from dashcam_helpers.staging import space as staging_space
from dashcam_helpers.tick import tick
from dashcam_helpers.world import SystemActions

STEP = 30.0


@dataclass
class FakeReading:  # the shape of battery.Reading (contract)
    source: str = "lifepo4wered"
    millivolts: Optional[int] = 3400
    percent: Optional[int] = 80
    external: Optional[bool] = False
    raw: Dict[str, Any] = field(default_factory=dict)
    reason: Optional[str] = None


class FakeWorld:
    """The facts source: a camera, a battery, a server and systemd, all set by the test."""

    def __init__(self):
        self.reading = FakeReading()
        self.mode = "record"
        self.attached = True
        self.reachable = False
        self.ingest_running = False
        self.upload_running = False
        self.free, self.reserve = 10 * 2**30, 2**30

    def battery(self):
        return self.reading

    def camera_mode(self):
        return self.mode

    def camera_attached(self):
        return self.attached

    def server_reachable(self):
        return self.reachable

    def units_running(self):
        return self.ingest_running, self.upload_running

    def staging_space(self):
        return self.free, self.reserve


class FakeActions:
    def __init__(self, world: FakeWorld, fail_camera: bool = False):
        self.world = world
        self.calls: List[tuple] = []
        self.fail_camera = fail_camera
        self.watches = 0  # the ignition watcher started (it runs while the camera is not recording)

    def stop_units(self, units):
        self.calls.append(("stop", tuple(units)))
        self.world.ingest_running = self.world.upload_running = False

    def set_camera(self, mode):
        self.calls.append(("camera", mode))
        if self.fail_camera:
            raise RuntimeError("uhubctl: expected port power off, found on")
        self.world.mode = mode

    def start_upload(self):
        self.calls.append(("start", UPLOAD_UNIT))
        self.world.upload_running = True

    def poweroff(self):
        self.calls.append(("poweroff",))

    def start_watch(self):
        self.watches += 1


class FakeClock:
    def __init__(self, mono=100.0, wall=1.76e9, boot="boot-1"):
        self.mono, self.wall, self.boot = mono, wall, boot

    def monotonic(self):
        return self.mono

    def time(self):
        return self.wall

    def boot_id(self):
        return self.boot

    def advance(self, seconds=STEP):
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def rig(tmp_path):
    cfg = config.validate(
        deep_merge(MINIMAL, {"paths": {"local_staging": str(tmp_path / "staging"), "state_dir": str(tmp_path / "state")}}),
        "test.yaml",
    )
    world = FakeWorld()
    actions = FakeActions(world)
    clock = FakeClock()
    with Ledger(cfg.paths.ledger) as ledger:

        def run(dry_run=False):
            record = tick(cfg, world, actions, ledger=ledger, clock=clock, dry_run=dry_run)
            clock.advance()
            return record

        yield cfg, world, actions, clock, ledger, run


def policy_lines(caplog):
    return [r for r in caplog.records if r.name == "dashcam.policy"]


def test_scenario_a_no_network_the_camera_records(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.mode = "off"  # as dashcam-boot.service leaves it
    record = run()
    assert actions.calls == [("camera", "record")]
    assert "server unreachable" in record["decision"]["reason"]
    for _ in range(10):
        run()
    assert actions.calls == [("camera", "record")]  # and it stays so, without switching again


def test_scenario_b_home_data_ingest_back_then_upload(rig):
    cfg, world, actions, clock, ledger, run = rig
    run()  # away, recording
    world.reachable = True  # home
    record = run()
    assert actions.calls[-1] == ("camera", "data")
    assert "just became reachable" in record["decision"]["reason"]
    world.ingest_running = True  # udev started the ingest
    for _ in range(4):
        assert run()["decision"]["camera"] is None
    # the ingest finishes: footage staged, camera put back to after_ingest (off), last_ingest written
    ledger.record_staged("dashcam", "Normal/A.MP4", 100, 1, event=False, sha256="00" * 32, staged_path="dashcam/A.MP4")
    ledger.put_state("last_ingest", {"wall": clock.wall, "files": 1, "bytes": 100, "result": "ok"})
    world.ingest_running, world.mode = False, "off"
    record = run()
    assert record["decision"]["camera"] is None  # stays off: nothing new to fetch
    assert actions.calls[-1] == ("start", UPLOAD_UNIT)
    n = len(actions.calls)
    for _ in range(10):
        run()
    assert len(actions.calls) == n  # upload running, camera off: nothing more to do


def test_a_wifi_blip_at_home_after_an_ingest_does_not_start_another_cycle(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True
    run()  # arriving: data
    ledger.put_state("last_ingest", {"wall": clock.wall, "files": 2, "bytes": 200, "result": "ok"})
    world.mode = "off"  # the ingest put it back (after_ingest: off)
    run()
    calls = len(actions.calls)
    for reachable in (False, True, True, False, True):
        world.reachable = reachable
        run()
    assert len(actions.calls) == calls and world.mode == "off"
    world.reachable = False  # gone for two ticks: away, record
    run()
    run()
    assert world.mode == "record"


def test_a_failed_upload_is_not_restarted_until_a_pause_has_passed(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.mode, world.reachable = "off", True
    ledger.record_staged("dashcam", "Normal/A.MP4", 10, 1, event=False, sha256="ab" * 32, staged_path="a")
    ledger.put_state("last_upload", {"wall": clock.wall, "files": 0, "bytes": 0, "result": "failed", "reason": "key refused"})
    record = run()
    assert ("start", UPLOAD_UNIT) not in actions.calls
    assert "the last upload failed" in record["decision"]["reason"]
    clock.advance(15 * 60)
    run()
    assert ("start", UPLOAD_UNIT) in actions.calls


def test_a_backlog_held_for_a_cut_session_on_the_server_starts_no_upload_until_the_hold_ends(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.mode, world.reachable = "off", True
    ledger.record_staged("dashcam", "Normal/A.MP4", 10, 1, event=False, sha256="ab" * 32, staged_path="a")
    # the last run had nothing to send but a clip held for a session cut earlier
    ledger.put_state("last_upload", {"wall": clock.wall, "files": 0, "bytes": 0, "result": "held",
                                     "reason": "1 clip(s) held", "held": 1, "held_until": clock.wall + 600})
    record = run()
    assert ("start", UPLOAD_UNIT) not in actions.calls
    assert "cut earlier" in record["decision"]["reason"]
    clock.advance(600)
    record = run()
    assert ("start", UPLOAD_UNIT) in actions.calls, record["decision"]["reason"]


def test_an_ingest_that_leaves_the_camera_in_data_is_corrected(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True
    run()
    assert world.mode == "data"
    ledger.put_state("last_ingest", {"wall": clock.wall, "files": 0, "bytes": 0, "result": "failed"})
    record = run()
    assert world.mode == "off" and "ingest finished" in record["decision"]["reason"]


def test_scenario_c_disconnect_then_clean_shutdown_in_order(rig, caplog):
    cfg, world, actions, clock, ledger, run = rig
    caplog.set_level(logging.INFO, logger="dashcam")
    world.upload_running = True
    for pct in (60, 45, 45):
        world.reading = FakeReading(percent=pct)
        run()
    assert actions.calls == [("camera", "off")]
    world.ingest_running = True
    for i, pct in enumerate((20, 20)):
        world.reading = FakeReading(percent=pct)
        assert not run()["decision"]["shutdown"]
    world.reading = FakeReading(percent=20)
    record = run()
    assert record["decision"]["shutdown"]
    assert actions.calls[1:] == [("stop", (INGEST_UNITS, UPLOAD_UNIT)), ("poweroff",)]
    assert ledger.get_state(LAST_KEY)["decision"]["shutdown"] is True
    assert len(policy_lines(caplog)) == 6  # one line per tick
    assert policy_lines(caplog)[-1].levelno == logging.WARNING


def test_a_camera_that_does_not_switch_is_reported_and_the_shutdown_still_happens(rig, caplog):
    cfg, world, _, clock, ledger, _ = rig
    actions = FakeActions(world, fail_camera=True)
    world.reading = FakeReading(percent=10)
    for _ in range(3):
        record = tick(cfg, world, actions, ledger=ledger, clock=clock)
        clock.advance()
    assert actions.calls[-1] == ("poweroff",)
    assert record["failed"] and "expected port power off" in record["failed"][0]
    assert [r.levelno for r in policy_lines(caplog)][-1] == logging.ERROR


def test_every_tick_logs_exactly_one_line_saying_what_it_saw_did_and_why(rig, caplog):
    cfg, world, actions, clock, ledger, run = rig
    caplog.set_level(logging.INFO, logger="dashcam")
    world.mode, world.reachable = "off", False
    run()
    [line] = policy_lines(caplog)
    msg = line.getMessage()
    assert "saw battery 80% 3400 mV, on battery; camera off; server unreachable" in msg
    assert "did camera record" in msg and "why: camera record: server unreachable" in msg
    assert line.DASHCAM_CAMERA_TARGET == "record"


def test_the_watchdog_ends_data_mode_after_max_data_minutes(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True
    run()
    assert world.mode == "data"
    world.ingest_running = True
    ticks = 0
    while world.mode == "data":
        run()
        ticks += 1
    # 30 min at one tick per 30 s
    assert ticks == 60
    assert actions.calls[-2:] == [("stop", (INGEST_UNITS,)), ("camera", "record")]


def test_a_wall_clock_jump_during_data_mode_triggers_nothing(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True
    run()
    world.ingest_running = True
    for jump in (365 * 86400, -2 * 365 * 86400, 1.7e9):  # NTP sets the clock; no RTC on the Pi
        clock.wall += jump
        assert run()["decision"]["camera"] is None
    assert world.mode == "data" and actions.calls == [("camera", "data")]


def test_a_reboot_never_compares_monotonic_times_of_two_boots(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable, world.ingest_running = True, True
    world.mode = "data"
    clock.mono = 1_000_000.0  # a long first boot
    run()
    # reboot: monotonic starts again near 0, the wall clock is back in 1970 until NTP
    clock.boot, clock.mono, clock.wall = "boot-2", 8.0, 20.0
    record = run()
    assert record["decision"]["camera"] is None  # not "data for -11 days" nor a watchdog
    assert record["saw"]["data_seconds"] == 0.0
    assert record["saw"]["was_reachable"] is None


def test_low_readings_before_a_reboot_need_a_new_debounce(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(percent=20)
    run()
    run()
    clock.boot, clock.mono = "boot-2", 5.0
    assert not run()["decision"]["shutdown"]
    assert not run()["decision"]["shutdown"]
    assert run()["decision"]["shutdown"]


def test_readings_unknown_for_unknown_low_minutes_on_battery_shut_down_even_across_a_clock_jump(rig):
    cfg, world, actions, clock, ledger, run = rig
    run()  # a known reading: on battery
    world.reading = FakeReading(percent=None, millivolts=None, external=None, reason="I2C failed")
    shut = []
    for i in range(25):
        if i == 5:
            clock.wall -= 10 * 365 * 86400
        shut.append(run()["decision"]["shutdown"])
    # unknown from the 2nd tick on; 10 min = 20 ticks later it counts as low
    assert shut.index(True) == 20


def test_unknown_readings_after_external_power_never_shut_down(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(percent=95, external=True)
    run()
    world.reading = FakeReading(percent=None, millivolts=None, external=None, reason="I2C failed")
    assert not any(run()["decision"]["shutdown"] for _ in range(60))


def test_recording_time_accumulates_and_an_ingest_resets_it(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(percent=95, external=True)
    world.reachable = True
    while world.mode != "data":  # on external power: after camera.settle_minutes
        run()
    ledger.put_state("last_ingest", {"wall": 1, "files": 3, "bytes": 3, "result": "ok"})
    world.mode = "record"  # ingest put it back (external power)
    modes = []
    for _ in range(62):
        run()
        modes.append(world.mode)
    # the first tick after the ingest starts the count; 60 ticks of 30 s later it is 30 min -> data
    assert modes.index("data") == 60
    assert ledger.get_state("policy")["recorded_seconds"] >= 30 * 60


def test_a_dry_run_decides_and_records_but_remembers_the_mode_it_saw(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.mode = "off"
    record = run(dry_run=True)
    assert record["dry_run"] is True and record["decision"]["camera"] == "record"
    assert ledger.get_state("policy")["last_mode"] == "off"


def test_readings_are_kept_in_the_ledger_and_pruned_by_count(tmp_path):
    with Ledger(str(tmp_path / "l.sqlite3"), clock=lambda: 0.0) as ledger:
        for i in range(12):
            ledger.add_reading(
                wall=i * 1e9, boot_id="b", monotonic=i, millivolts=3300, percent=60, external=False, source="x", keep=5
            )
        rows = ledger.recent_readings(100)
        assert [r["monotonic"] for r in rows] == [7, 8, 9, 10, 11]
        assert [r["monotonic"] for r in ledger.recent_readings(2)] == [10, 11]


# --- the real gatherers and actors that do not need the other concerns' modules -------------------


def test_systemctl_listing_tells_running_ingest_and_upload():
    listing = (
        "dashcam-ingest@sda1.service loaded activating start dashcam ingest of sda1\n"
        "dashcam-upload.service loaded inactive dead dashcam upload\n"
    )
    assert units_running_from(listing) == (True, False)
    assert units_running_from("dashcam-upload.service loaded activating start x\n") == (False, True)
    assert units_running_from("dashcam-ingest@sdb1.service loaded failed failed x\n") == (False, False)
    assert units_running_from("") == (False, False)


def test_staging_space_keeps_the_larger_reserve(rig):
    cfg = rig[0]
    free, reserve = staging_space(cfg)  # staging does not exist yet: its filesystem is measured
    st = os.statvfs(os.path.dirname(cfg.paths.local_staging))
    assert abs(free - st.f_bavail * st.f_frsize) < 64 * 2**20
    assert reserve == max(2**30, int(st.f_blocks * st.f_frsize * 0.05))


@pytest.fixture
def fake_systemctl(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemctl.log"
    script = bindir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_system_actions_run_systemctl(rig, fake_systemctl):
    actions = SystemActions(rig[0], dry_run=False)
    actions.stop_units([INGEST_UNITS, UPLOAD_UNIT])
    actions.start_upload()
    actions.poweroff()
    assert fake_systemctl.read_text().splitlines() == [
        "stop dashcam-ingest@*.service dashcam-upload.service",
        "start --no-block dashcam-upload.service",
        "poweroff",
    ]


def test_system_actions_in_a_dry_run_only_log(rig, fake_systemctl, caplog):
    caplog.set_level(logging.INFO, logger="dashcam")
    actions = SystemActions(rig[0], dry_run=True)
    actions.stop_units([INGEST_UNITS])
    actions.start_upload()
    actions.poweroff()
    assert not fake_systemctl.exists()
    assert sum("dry run, not running: systemctl" in r.getMessage() for r in caplog.records) == 3


class FakeSystemctl:  # systemd.Systemctl's methods: records what it is asked, runs nothing
    def __init__(self, running=(), error=None):
        self.calls, self.running, self.error = [], list(running), error

    def start(self, unit, check=True):
        self.calls.append(("start", unit))

    def stop(self, units, check=True):
        self.calls.append(("stop", tuple(units)))

    def poweroff(self):
        self.calls.append(("poweroff",))

    def units(self, *patterns, timeout=10):
        self.calls.append(("units",) + patterns)
        if self.error:
            raise self.error
        return self.running


def test_system_actions_and_facts_reach_systemd_through_the_systemctl_they_are_given(rig):
    from dashcam_helpers.world import SystemFacts
    from dashcam_helpers.runner import CommandNotFound

    systemctl = FakeSystemctl(running=["dashcam-upload.service"])
    actions = SystemActions(rig[0], dry_run=False, systemctl=systemctl)
    actions.stop_units([INGEST_UNITS])
    actions.start_upload()
    actions.start_watch()
    actions.poweroff()
    assert SystemFacts(rig[0], systemctl=systemctl).units_running() == (False, True)
    assert systemctl.calls == [("stop", (INGEST_UNITS,)), ("start", UPLOAD_UNIT), ("start", "dashcam-watch.service"),
                               ("poweroff",), ("units", INGEST_UNITS, UPLOAD_UNIT)]
    gone = FakeSystemctl(error=CommandNotFound(["systemctl"], "systemctl: command not found"))
    assert SystemFacts(rig[0], systemctl=gone).units_running() == (False, False)  # no systemd: nothing of ours runs


def test_what_a_tick_saw_becomes_the_home_assistant_state_without_a_second_read(rig):
    from dashcam_helpers import mqtt
    from dashcam_helpers.tick import status_facts

    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(millivolts=3611, percent=95, external=True, raw={"VIN": 5208, "VOUT": 4979, "IOUT": 857})
    world.mode = "off"
    ledger.record_staged("dashcam", "Normal/A.MP4", 10, 1, event=False, sha256="ab" * 32, staged_path="a")
    ledger.put_state("last_ingest", {"wall": 1.76e9, "files": 7, "bytes": 70, "result": "ok"})
    record = run()
    doc = mqtt.state_document(status_facts(record, ledger), now=1.76e9)
    assert doc["battery_voltage"] == 3.611 and doc["battery_percent"] == 95
    assert doc["external_power"] == "ON" and doc["input_voltage"] == 5.208
    assert doc["output_current"] == 0.857
    assert doc["camera_mode"] == "record"  # the mode the tick switched to, not the one it saw
    assert doc["backlog_files"] == 1 and doc["server_reachable"] == "OFF"
    assert doc["last_ingest_files"] == 7 and doc["last_upload"] is None


# ---------------------------------------------------------------- hostile battery output: the tick goes on and shuts down

from test_battery import BAD_CLI_STATES, BAD_COMMAND_OUTPUTS  # noqa: E402  (the same outputs battery.read is tested with)

WINDOW_MINUTES = 2  # thresholds.unknown_low_minutes for these tests: 4 ticks of 30 s


class RealBatteryWorld(FakeWorld):
    """The fake world, but the battery is battery.read() of a real program (the fake lifepo4wered-cli
    or a battery-info.sh script), as SystemFacts reads it."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def battery(self):
        from dashcam_helpers import battery

        return battery.read(self.cfg)


@pytest.fixture
def real_battery(tmp_path, fake_hw):
    def make(**battery_keys):
        cfg = config.validate(
            deep_merge(MINIMAL, {
                "paths": {"local_staging": str(tmp_path / "staging"), "state_dir": str(tmp_path / "state")},
                "battery": {"timeout_seconds": 1, **battery_keys},
                "thresholds": {"unknown_low_minutes": WINDOW_MINUTES},
            }),
            "test.yaml",
        )
        return cfg, RealBatteryWorld(cfg)

    return make


def ticks_until_shutdown(cfg, world, set_bad, limit=12):
    """One known on-battery tick, then bad output: the tick numbers (from the first bad one) that shut down.
    Every tick must return (no exception) and store its reading."""
    clock = FakeClock()
    actions = FakeActions(world)
    shut = []
    with Ledger(cfg.paths.ledger) as ledger:
        first = tick(cfg, world, actions, ledger=ledger, clock=clock)
        assert first["saw"]["battery"]["percent"] is not None and first["saw"]["battery"]["external"] is False
        assert not first["decision"]["shutdown"]
        set_bad()
        for i in range(limit):
            clock.advance()
            record = tick(cfg, world, actions, ledger=ledger, clock=clock)
            b = record["saw"]["battery"]
            assert b["percent"] is None and b["reason"], b
            shut.append(record["decision"]["shutdown"])
        assert len(ledger.recent_readings(100)) == limit + 1  # every reading stored
    assert ("poweroff",) in actions.calls
    return shut


@pytest.mark.parametrize("state", list(BAD_CLI_STATES.values()) + ["mode = hang\n"],
                         ids=list(BAD_CLI_STATES) + ["hang"])
def test_each_bad_lifepo4wered_output_still_shuts_down_on_battery_after_the_unknown_window(real_battery, fake_hw, state):
    cfg, world = real_battery()
    fake_hw.set_battery("VBAT = 3400\nVIN = 0\n")
    shut = ticks_until_shutdown(cfg, world, lambda: fake_hw.set_battery(state))
    # unknown from the first bad tick (0); WINDOW_MINUTES later it counts as low and the Pi powers off
    assert shut.index(True) == WINDOW_MINUTES * 2


@pytest.mark.parametrize("text", BAD_COMMAND_OUTPUTS, ids=lambda t: t[:40])
def test_each_bad_battery_command_output_still_shuts_down_on_battery_after_the_unknown_window(tmp_path, real_battery, text):
    out = tmp_path / "battery.json"
    out.write_text('{"battery_voltage": 3.4, "input_voltage": 0.1}')
    prog = tmp_path / "battery-info.sh"
    prog.write_text(f"#!/bin/sh\ncat {out}\n")
    prog.chmod(0o755)
    cfg, world = real_battery(source="command", command=str(prog))
    shut = ticks_until_shutdown(cfg, world, lambda: out.write_text(text), limit=WINDOW_MINUTES * 2 + 1)
    assert shut.index(True) == WINDOW_MINUTES * 2


@pytest.mark.parametrize("state", list(BAD_CLI_STATES.values()), ids=list(BAD_CLI_STATES))
def test_dashcamctl_policy_fed_a_bad_battery_output_exits_0_and_records_an_unknown_reading(
    fake_hw, make_config, dashcamctl, tmp_path, state
):
    import json
    import socket

    with socket.socket() as s:  # a port nobody listens on: away from home
        s.bind(("127.0.0.1", 0))
        away = s.getsockname()[1]
    fake_hw.usb_device("1-1", authorized="1")
    fake_hw.set_battery(state)
    cfg = make_config({"upload": {"port": away, "connect_timeout": 1}, "battery": {"timeout_seconds": 2}})
    r = dashcamctl("--config", str(cfg), "--dry-run", "policy", "--json", env={**fake_hw.env, "CACHE_DIRECTORY": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the output"))
    assert record["saw"]["battery"]["percent"] is None and record["saw"]["battery"]["reason"]
    with Ledger(str(tmp_path / "state" / "ledger.sqlite3")) as ledger:
        assert [row["percent"] for row in ledger.recent_readings(5)] == [None]


# ---------------------------------------------------------------- a broken ledger does not stop the shutdown

from dashcam_helpers.tick_ledger import TickLedger  # noqa: E402

GARBAGE = b"\x00\xffthis is no SQLite database\n" * 200


def low_battery_ticks(cfg, fallback_dir, n=3, timeout=5):
    """n ticks, each with its own TickLedger as dashcamctl policy opens it, on battery at 10 %."""
    world = FakeWorld()
    world.reading = FakeReading(percent=10, millivolts=3150, external=False)
    actions = FakeActions(world)
    clock = FakeClock()
    records = []
    for _ in range(n):
        with TickLedger(cfg.paths.ledger, [str(fallback_dir)], clock.boot, timeout=timeout) as ledger:
            records.append(tick(cfg, world, actions, ledger=ledger, clock=clock))
            problem = ledger.problem
        clock.advance()
    return records, actions, problem


def test_a_garbage_ledger_still_debounces_and_powers_off(tmp_path):
    cfg = config.validate(deep_merge(MINIMAL, {"paths": {"local_staging": str(tmp_path / "staging"),
                                                          "state_dir": str(tmp_path / "state")}}), "test.yaml")
    os.makedirs(cfg.paths.state_dir, exist_ok=True)
    with open(cfg.paths.ledger, "wb") as f:
        f.write(GARBAGE)
    records, actions, problem = low_battery_ticks(cfg, tmp_path / "run")
    assert [r["decision"]["shutdown"] for r in records] == [False, False, True]  # debounced over 3 ticks
    assert actions.calls[-1] == ("poweroff",)
    assert "damaged" in problem
    aside = [n for n in os.listdir(cfg.paths.state_dir) if n.startswith("ledger.sqlite3.damaged-")]
    assert len(aside) == 1 and open(os.path.join(cfg.paths.state_dir, aside[0]), "rb").read() == GARBAGE
    assert not os.path.exists(cfg.paths.ledger)  # never replaced by an empty ledger


def test_a_ledger_locked_by_another_writer_still_debounces_and_powers_off(rig, tmp_path):
    cfg, world, actions, clock, ledger, run = rig
    ledger.db.execute("BEGIN IMMEDIATE")  # e.g. an ingest stuck in a transaction
    try:
        records, actions, problem = low_battery_ticks(cfg, tmp_path / "run", timeout=0.2)
    finally:
        ledger.db.execute("ROLLBACK")
    assert [r["decision"]["shutdown"] for r in records] == [False, False, True]
    assert actions.calls[-1] == ("poweroff",) and "locked" in problem


def test_a_ledger_that_breaks_between_ticks_keeps_the_debounce_it_had(rig, tmp_path):
    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(percent=10, millivolts=3150, external=False)
    assert not run()["decision"]["shutdown"]  # one low reading in the ledger
    assert not run()["decision"]["shutdown"]  # two
    ledger.db.execute("BEGIN IMMEDIATE")
    try:
        with TickLedger(cfg.paths.ledger, [str(tmp_path / "run")], clock.boot, timeout=0.2) as tl:
            record = tick(cfg, world, actions, ledger=tl, clock=clock)
    finally:
        ledger.db.execute("ROLLBACK")
    assert record["decision"]["shutdown"] and actions.calls[-1] == ("poweroff",)


def policy_env(tmp_path, fake_hw):
    """Fakes on PATH for a real (not dry-run) dashcamctl policy: uhubctl and lifepo4wered-cli from
    tests/fakes, a systemctl that logs what it is asked; away from home."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "systemctl.log"
    (bindir / "systemctl").write_text(f'#!/bin/sh\ncase "$1" in list-units) exit 0 ;; esac\necho "$*" >> {log}\n')
    (bindir / "systemctl").chmod(0o755)
    fake_hw.usb_device("1-1", authorized="1")
    fake_hw.set_battery("VBAT = 3150\nVIN = 0\n")  # 10 %, on battery
    env = {**fake_hw.env, "PATH": f"{bindir}{os.pathsep}{fake_hw.env['PATH']}",
           "CACHE_DIRECTORY": str(tmp_path / "cache"), "RUNTIME_DIRECTORY": str(tmp_path / "run")}
    return env, log


def away_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashcamctl_policy_with_a_garbage_ledger_powers_off_and_status_says_the_ledger_is_damaged(
    tmp_path, fake_hw, make_config, dashcamctl
):
    env, systemctl_log = policy_env(tmp_path, fake_hw)
    cfg = make_config({"upload": {"port": away_port(), "connect_timeout": 1}})
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.sqlite3").write_bytes(GARBAGE)
    for n in range(3):
        r = dashcamctl("--config", str(cfg), "policy", env=env)
        assert r.returncode == 0, r.stderr
        assert "ledger unusable" in r.stderr and "is damaged" in r.stderr  # loud in the journal, every tick
        assert ("poweroff" in (systemctl_log.read_text() if systemctl_log.exists() else "")) == (n == 2)
    r = dashcamctl("--config", str(cfg), "status", env=env)
    assert r.returncode == 0 and r.stdout.startswith("LEDGER DAMAGED: ") and "moved aside to" in r.stdout
    import json

    facts = json.loads(dashcamctl("--config", str(cfg), "status", "--json", env=env).stdout)
    assert facts["ledger"]["damaged"] is True and facts["ledger"]["moved_to"].startswith(str(tmp_path / "state"))


def test_dashcamctl_policy_with_a_read_only_state_dir_powers_off(tmp_path, fake_hw, make_config):
    """The state directory mounted read-only (in a private mount namespace), the ledger in it readable."""
    import shutil
    import subprocess

    from conftest import LAUNCHER, SRC

    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -m (mount namespaces) to make a read-only directory for root")
    env, systemctl_log = policy_env(tmp_path, fake_hw)
    env = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    env.pop("JOURNAL_STREAM", None)
    cfg = tmp_path / "config.yaml"
    state = tmp_path / "state"
    with Ledger(str(state / "ledger.sqlite3")) as led:
        led.put_state("last_ingest", {"wall": 1.0, "files": 1, "bytes": 1, "result": "ok"})
    import yaml

    from conftest import MINIMAL, deep_merge as merge

    cfg.write_text(yaml.safe_dump(merge(MINIMAL, {
        "paths": {"local_staging": str(tmp_path / "staging"), "state_dir": str(state)},
        "upload": {"port": away_port(), "connect_timeout": 1},
    })))
    config_path = str(cfg)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    for n in range(3):
        r = subprocess.run(["unshare", "-m", "sh", "-c", script, str(state), str(LAUNCHER), "--config", config_path, "policy"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "ledger unusable" in r.stderr
        assert ("poweroff" in (systemctl_log.read_text() if systemctl_log.exists() else "")) == (n == 2)
    assert (tmp_path / "run" / "policy-fallback.json").exists()
    assert not any(n.startswith("ledger.sqlite3.damaged") for n in os.listdir(state))  # unwritable is not damaged


def test_nonsense_stored_in_the_ledger_is_left_out_and_the_tick_still_shuts_down(rig):
    cfg, world, actions, clock, ledger, run = rig
    ledger.put_state("policy", {"boot_id": clock.boot, "last_tick": "yesterday", "unknown_since": "x",
                                "recorded_seconds": [1], "data_since": {"a": 1}})
    ledger.put_state("last_upload", {"result": "failed", "wall": "noon", "held_until": "never"})
    ledger.db.execute("INSERT INTO readings (wall, boot_id, monotonic, millivolts, percent, external, source)"
                      " VALUES (0, ?, 'soon', 'many', 'low', 1, 'x')", (clock.boot,))
    ledger.db.execute("INSERT INTO readings (wall, boot_id, monotonic, millivolts, percent, external, source)"
                      " VALUES (0, ?, 1.0, NULL, 400, 0, 'x')", (clock.boot,))
    world.reading = FakeReading(percent=10, millivolts=3150, external=False)
    assert [run()["decision"]["shutdown"] for _ in range(3)] == [False, False, True]
    assert actions.calls[-1] == ("poweroff",)


def test_a_tick_state_that_is_not_a_mapping_is_ignored(rig):
    cfg, world, actions, clock, ledger, run = rig
    ledger.put_state("policy", ["not", "a", "mapping"])
    world.reading = FakeReading(percent=10, millivolts=3150, external=False)
    assert [run()["decision"]["shutdown"] for _ in range(3)] == [False, False, True]


def test_the_tick_state_is_read_field_by_field_and_a_bad_field_costs_only_itself(rig):
    from dashcam_helpers.policy import TickState

    stored = {"boot_id": "b", "last_tick": 5, "last_mode": 3, "reachable": "yes", "reachable_since": "x",
              "recorded_seconds": None, "battery_low": True, "seen_ingest": {"wall": 1}, "unknown_since": float("nan")}
    assert TickState.parse(stored) == TickState(boot_id="b", last_tick=5, battery_low=True, seen_ingest={"wall": 1})
    cfg, world, actions, clock, ledger, run = rig
    ledger.put_state("policy", {"boot_id": clock.boot, "last_tick": clock.monotonic() - 30, "last_mode": "record",
                                "recorded_seconds": None, "reachable": "yes"})
    record = run()  # the camera recorded for the 30 s since the last tick; "yes" is no answer of the server
    assert record["saw"]["recorded_seconds"] == 30.0 and record["saw"]["was_reachable"] is None


def test_an_upload_account_with_a_number_no_float_holds_still_shuts_down(rig):
    # JSON has no limit on an integer: a 400-digit "wall" once raised OverflowError in the tick
    cfg, world, actions, clock, ledger, run = rig
    ledger.put_state("last_upload", {"result": "failed", "wall": 10**400, "held_until": -10**400})
    world.reading = FakeReading(percent=10, millivolts=3150, external=False)
    assert [run()["decision"]["shutdown"] for _ in range(3)] == [False, False, True]
    assert actions.calls[-1] == ("poweroff",)


# --- the camera records whenever the car can move: what the tick remembers between ticks ---------------


def test_on_external_power_data_mode_waits_until_the_server_has_answered_for_settle_minutes(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(percent=95, external=True)  # permanent USB power, or the engine runs
    run()  # away: recording
    world.reachable = True  # in reach of the home server
    first = clock.monotonic()
    modes = []
    for _ in range(8):
        run()
        modes.append(world.mode)
    assert ledger.get_state("policy")["reachable_since"] == first  # persisted from the first tick in reach
    # 3 min of 30 s ticks: the tick that finds it settled is the 7th in reach (0, 30, ..., 180 s)
    assert modes == ["record"] * 6 + ["data"] * 2, modes
    assert actions.watches == 1  # the camera left record: the ignition watcher is started once


def test_a_drive_by_and_a_drop_off_never_leave_record(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(percent=95, external=True)
    for reach in (1, 0, 5, 0, 6, 0, 2, 0):  # ticks in reach (a drive-by, 2 and 2.5 min drop-offs), out of reach
        world.reachable = reach > 0
        for _ in range(max(reach, 1)):
            run()
            assert world.mode == "record", ledger.get_state(LAST_KEY)["decision"]["reason"]
    assert [c for c in actions.calls if c[0] == "camera"] == []


def test_the_engine_started_during_an_ingest_on_battery_stops_it_and_counts_the_return(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True
    run()  # arriving home on battery: data at once
    assert world.mode == "data" and actions.watches == 1
    world.ingest_running = True
    run()
    before = {"wall": 5, "files": 0, "pending": 0, "failed": 0, "result": "ok"}
    ledger.put_state("last_ingest", before)
    world.reading = FakeReading(percent=95, external=True)  # the engine starts

    def stop(units):  # the ingest, stopped, records how far it got
        actions.calls.append(("stop", tuple(units)))
        world.ingest_running = False
        ledger.put_state("last_ingest", {"wall": 9, "files": 7, "pending": 24, "failed": 0, "result": "interrupted"})

    actions.stop_units = stop
    record = run()
    assert actions.calls[-2:] == [("stop", (INGEST_UNITS,)), ("camera", "record")]
    assert record["decision"]["back_to_record"] == "engine_started"
    assert record["back_to_record"] == "engine started: ingest stopped after 7 of 31 clips, camera back to record 0.0 s after the engine started"
    returns = ledger.get_state("back_to_record")
    assert returns["counts"] == {"engine_started": 1} and returns["last"]["message"] == record["back_to_record"]


def test_a_return_the_ignition_watcher_made_first_is_not_counted_again(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True
    run()  # arriving home on battery: data at once; the ingest leaves the camera off
    world.mode = "off"
    run()
    world.reading = FakeReading(percent=95, external=True)  # the engine starts

    def watcher_was_first(mode):  # under the lock, the camera already records
        actions.calls.append(("camera", mode))
        world.mode = mode
        return False
    actions.set_camera = watcher_was_first
    record = run()
    assert record["decision"]["back_to_record"] == "engine_started" and world.mode == "record"
    assert record["back_to_record"] is None
    assert record["done"] == ["camera record (already recording: the ignition watcher switched it)"]
    assert ledger.get_state("back_to_record") is None


def test_an_unknown_power_reading_neither_starts_nor_ends_the_external_streak(rig):
    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(percent=95, external=True)
    run()
    since = ledger.get_state("policy")["external_since"]
    world.reading = FakeReading(percent=None, external=None, millivolts=None, reason="I2C failed")
    run()
    assert ledger.get_state("policy")["external_since"] == since
    world.reading = FakeReading(percent=80, external=False)
    run()
    assert ledger.get_state("policy")["external_since"] is None


# ---------------------------------------------------------------- when the camera recorded (coverage.py)


def test_ticks_keep_the_window_in_which_the_camera_recorded(rig):
    from dashcam_helpers import mqtt
    from dashcam_helpers.tick import status_facts

    cfg, world, actions, clock, ledger, run = rig
    world.reading = FakeReading(millivolts=3300, percent=80, external=True)
    world.mode = "record"
    first = clock.mono
    for _ in range(4):  # driving: recording
        run()
    last = clock.mono - STEP
    clock.advance(3600)  # an hour with the Pi off: no tick, no window
    world.mode = "off"
    again = clock.mono
    run()  # on external power the tick puts the camera back to record: a window starts there
    record = run()
    windows = ledger.recording_windows()
    assert [(w.boot_id, w.start_mono, w.end_mono) for w in windows] == [
        ("boot-1", first, last), ("boot-1", again, again + STEP)]
    doc = mqtt.state_document(status_facts(record, ledger, cfg), now=1.76e9)
    assert doc["footage_lost_minutes"] == 0 and doc["problem"] == "OFF"



@pytest.mark.parametrize("left", [48 * 10**6, 0])
def test_clips_an_ingest_left_on_the_card_are_fetched_at_the_next_boot_on_external_power(rig, left):
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True
    run()  # arriving home on battery: data
    # the budget let the ingest copy the events only: the normal clips stay on the card (its card_left)
    ledger.put_state("last_ingest", {"wall": clock.wall, "files": 2, "bytes": 3 * 10**6, "result": "ok",
                                     "pending": 3 if left else 0})
    ledger.put_state(budget.CARD_KEY, {"camera": cfg.camera.name, "bytes": left, "event_bytes": 0, "files": 3})
    world.mode = "off"
    for _ in range(3):  # at home on battery: nothing new to fetch
        assert run()["decision"]["camera"] is None
    # the low battery shut the Pi down; the engine powers it on again at home, the camera records
    # from power-on; with camera.settle_minutes 0 the first tick decides
    clock.boot, clock.mono = "boot-2", 20.0
    world.reading, world.mode = FakeReading(millivolts=3611, percent=95, external=True), "record"
    at_once = config.validate(deep_merge(MINIMAL, {"paths": {"local_staging": cfg.paths.local_staging,
                                                             "state_dir": cfg.paths.state_dir},
                                                   "camera": {"settle_minutes": 0}}), "test.yaml")
    record = tick(at_once, world, actions, ledger=ledger, clock=clock)
    if left:
        assert world.mode == "data", record["decision"]["reason"]
        assert "48 MB left on the card by the last ingest" in record["decision"]["reason"]
    else:  # nothing left there, nothing recorded since: nothing to fetch
        assert world.mode == "record", record["decision"]["reason"]


def test_the_boot_id_comes_from_the_kernel_else_from_the_units_environment(tmp_path):
    from dashcam_helpers.policy import boot_id
    kernel = tmp_path / "boot_id"
    kernel.write_text("0f3c7a52-8d7e-4b8e-9a55-2c1d5e6f7a8b\n")
    assert boot_id(str(kernel), {}) == "0f3c7a52-8d7e-4b8e-9a55-2c1d5e6f7a8b"
    hidden = str(tmp_path / "hidden")  # ProcSubset=pid: /proc/sys is not there
    # systemd's %b: the same id, 32 hex digits: the same boot as the policy (which reads the file) names it
    assert boot_id(hidden, {"DASHCAM_BOOT_ID": "0F3C7A528D7E4B8E9A552C1D5E6F7A8B"}) == "0f3c7a52-8d7e-4b8e-9a55-2c1d5e6f7a8b"
    for bad in ({}, {"DASHCAM_BOOT_ID": ""}, {"DASHCAM_BOOT_ID": "%b"}, {"DASHCAM_BOOT_ID": "0f3c7a52" * 3},
                {"DASHCAM_BOOT_ID": "zz" * 16}):
        assert boot_id(hidden, bad) == "unknown"


def test_a_watcher_start_that_failed_is_tried_again_at_the_next_tick(rig):
    # systemctl timed out (systemd busy at boot, a D-Bus hiccup): the camera is in data and nothing
    # watches for the engine starting. The next tick finds the camera in the same mode; it must
    # start the watcher again rather than take it as running
    cfg, world, actions, clock, ledger, run = rig
    world.reachable = True

    def refused():
        actions.watches += 1
        raise RuntimeError("systemctl start --no-block dashcam-watch.service did not finish within 30 s")

    actions.start_watch = refused
    record = run()  # arriving home on battery: data at once
    assert world.mode == "data" and actions.watches == 1 and record["failed"]
    actions.start_watch = FakeActions.start_watch.__get__(actions)
    world.ingest_running = True
    run()
    assert world.mode == "data" and actions.watches == 2
    run()
    assert actions.watches == 2  # started: not again at every tick


def test_a_time_of_this_boot_in_the_ledger_that_lies_in_the_future_does_not_hold_data_mode(rig):
    # the ledger on disk is input (a user that may write it, a card that flips a bit): a monotonic
    # time of this boot later than now cannot be, and must not keep max_data_minutes_external from
    # firing on external power (data mode "for -115 days")
    cfg, world, actions, clock, ledger, run = rig
    world.reachable, world.ingest_running, world.mode = True, True, "data"
    world.reading = FakeReading(percent=95, external=True)
    run()
    state = ledger.get_state("policy")
    state["data_since"] = clock.mono + 10**7
    ledger.put_state("policy", state)
    ticks = 0
    while world.mode == "data" and ticks < 100:
        run()
        ticks += 1
    assert world.mode == "record" and ticks <= 2 * cfg.camera.max_data_minutes_external + 1, ticks


def test_an_unknown_streak_of_this_boot_that_began_in_the_future_still_shuts_down(rig):
    # the same for the window of unknown readings on battery: "unknown for -115 days" must not hold
    # off the low-battery shutdown for ever
    cfg, world, actions, clock, ledger, run = rig
    run()  # a known reading: on battery
    world.reading = FakeReading(percent=None, millivolts=None, external=None, reason="I2C failed")
    run()
    state = ledger.get_state("policy")
    state["unknown_since"] = clock.mono + 10**7
    ledger.put_state("policy", state)
    shut = [run()["decision"]["shutdown"] for _ in range(60)]
    assert True in shut and shut.index(True) <= 2 * cfg.thresholds.unknown_low_minutes


def test_a_camera_mode_that_reads_unknown_is_watched_as_off_or_data_are(rig):
    # powered but its data device gone from sysfs (a camera that dropped off the bus), or a hub that
    # stops answering: not record either, and the engine starting must be caught within a second
    cfg, world, actions, clock, ledger, run = rig
    world.mode = "unknown"
    world.reading = FakeReading(percent=None, millivolts=None, external=None, reason="I2C failed")
    record = run()
    assert record["decision"]["camera"] is None and world.mode == "unknown"
    assert actions.watches == 1
    run()
    assert actions.watches == 1  # started: not again at every tick


def test_dashcamctl_policy_with_a_config_broken_since_the_last_tick_still_powers_off(tmp_path, fake_hw):
    """A typo typed over ssh at 10 %: the tick says the file is broken and runs on the last good
    configuration (the cache the last tick left); the shutdown comes as it would have."""
    import subprocess

    import yaml

    from conftest import LAUNCHER, SRC, MINIMAL, deep_merge as merge

    env, systemctl_log = policy_env(tmp_path, fake_hw)
    env = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    env.pop("JOURNAL_STREAM", None)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(merge(MINIMAL, {
        "paths": {"local_staging": str(tmp_path / "staging"), "state_dir": str(tmp_path / "state")},
        "upload": {"port": away_port(), "connect_timeout": 1},
    })))

    def tick():
        return subprocess.run([str(LAUNCHER), "--config", str(cfg), "policy"], capture_output=True, text=True,
                              env=env, timeout=60)

    def powered_off():
        return "poweroff" in (systemctl_log.read_text() if systemctl_log.exists() else "")

    broken = "thresholds:\n  shutdown_percent: [oops\n"
    good = cfg.read_text()
    cfg.write_text(good + broken)
    r = tick()  # no tick ever loaded it: there is no last good configuration to run on
    assert r.returncode == 78 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text(good)
    r = tick()
    assert r.returncode == 0 and "broken" not in r.stderr, r.stderr
    cfg.write_text(good + broken)
    for n in range(2):
        assert not powered_off()
        r = tick()
        assert r.returncode == 0, r.stderr
        said = [ln for ln in r.stderr.splitlines() if "is broken" in ln]
        assert len(said) == 1 and "last good configuration" in said[0] and "not valid YAML" in said[0], r.stderr
    assert powered_off()


def test_dashcamctl_policy_on_the_last_good_configuration_an_older_version_cached_still_powers_off(
    tmp_path, fake_hw, make_config, dashcamctl
):
    # the package upgraded (one more key, with a default) while the file was broken: the cache the
    # older version left is validated again, the new key gets its default, and the shutdown comes
    import json

    env, systemctl_log = policy_env(tmp_path, fake_hw)
    cfg = make_config({"upload": {"port": away_port(), "connect_timeout": 1}})
    assert dashcamctl("--config", str(cfg), "policy", env=env).returncode == 0
    cache = tmp_path / "cache" / "config-cache.json"
    data = json.loads(cache.read_text())
    data["key"][-1] = "0.0.0-older"
    del data["config"]["budget"]["event_percent"]
    cache.write_text(json.dumps(data))
    cfg.write_text(cfg.read_text() + "thresholds:\n  shutdown_percent: [oops\n")
    for n in range(2):
        r = dashcamctl("--config", str(cfg), "policy", env=env)
        assert r.returncode == 0 and "last good configuration" in r.stderr, r.stderr
    assert "poweroff" in systemctl_log.read_text()
