"""The ignition watcher and the boot decision with fake readings, a fake camera and clock, and a real ledger."""

from __future__ import annotations

import contextlib
import subprocess
import time
import types

import pytest

from conftest import LAUNCHER, MINIMAL, Reading, dashcamctl_env, deep_merge
from dashcam_helpers import config, ignition
from dashcam_helpers.ledger import Ledger
from dashcam_helpers.policy import INGEST_UNITS

CFG = config.validate(deep_merge(MINIMAL, {}), "test.yaml")


class Car:
    """One second per sleep: ``power`` and ``reach`` are per-second scripts (the last value stays)."""

    def __init__(self, mode, power, reach=(True,), ingest=False, ledger=None):
        self.mode, self.power, self.reach, self.ingest, self.ledger = mode, list(power), list(reach), ingest, ledger
        self.t = 0.0
        self.calls = []
        self.reads = 0

    def _at(self, script):
        return script[min(int(self.t), len(script) - 1)]

    def sleep(self, seconds):
        self.t += seconds
        if self.t > 600:
            raise AssertionError("the watcher did not end")

    def clock(self):
        return self.t

    def battery(self):
        self.reads += 1
        return Reading(external=self._at(self.power))

    def camera_mode(self):
        return self.mode

    def server_reachable(self):
        return self._at(self.reach)

    def units_running(self):
        return self.ingest, False

    def stop_units(self, units):
        self.calls.append(("stop", tuple(units)))
        self.ingest = False
        self.ledger.put_state("last_ingest", {"wall": 2, "files": 7, "pending": 24, "failed": 0, "result": "interrupted"})

    def set_camera(self, mode):
        self.calls.append(("camera", mode))
        self.mode = mode


@pytest.fixture
def ledger(tmp_path):
    with Ledger(str(tmp_path / "ledger.sqlite3")) as led:
        yield led


def run(car, ledger, **kw):
    return ignition.watch(CFG, car, car, ledger_open=lambda: contextlib.nullcontext(ledger),
                          lock=lambda: ignition.PolicyLock(None), clock=car.clock, wall=lambda: 1.7e9 + car.t,
                          sleep=car.sleep, **kw)


def test_the_engine_starting_during_an_ingest_stops_it_and_puts_the_camera_to_record(ledger):
    ledger.put_state("last_ingest", {"wall": 1, "files": 31, "result": "ok"})
    car = Car("data", [False] * 5 + [True], ingest=True, ledger=ledger)
    done = run(car, ledger)
    assert car.calls == [("stop", (INGEST_UNITS,)), ("camera", "record")]
    assert done["kind"] == "engine_started" and not done["failed"]
    assert done["message"] == ("engine started: ingest stopped after 7 of 31 clips, camera back to record"
                               " 0.0 s after the engine started")
    assert ledger.get_state(ignition.RETURNS_KEY)["counts"] == {"engine_started": 1}


def test_the_engine_starting_with_the_camera_off_puts_it_to_record(ledger):
    car = Car("off", [False, False, True], ledger=ledger)
    done = run(car, ledger)
    assert car.calls == [("camera", "record")]
    assert done["message"].startswith("engine started: no ingest running, camera back to record")


def test_unknown_readings_are_no_change_and_one_odd_reading_moves_nothing(ledger):
    # False, unknown, then a single True that the second reading under the lock does not confirm
    car = Car("off", [False, None, True, False, None, False], ledger=ledger)

    def sleep(seconds):
        car.t += seconds
        if car.t >= 20:
            car.mode = "record"  # the policy put it back for its own reasons: the watcher ends
    car.sleep = sleep
    power = iter([False, None, True, False, None] + [False] * 100)
    car.battery = lambda: Reading(external=next(power))
    assert run(car, ledger, mode_every=1.0) is None
    assert car.calls == []


def test_starting_after_the_engine_the_policys_last_reading_counts_as_the_one_before(ledger):
    car = Car("off", [True], ledger=ledger)
    done = run(car, ledger, last_external=False)
    assert done["kind"] == "engine_started" and car.calls == [("camera", "record")]


def test_in_data_mode_on_external_power_the_server_stopping_to_answer_is_the_car_leaving(ledger):
    ledger.put_state("last_ingest", {"wall": 1, "files": 3, "result": "ok"})
    car = Car("data", [True], reach=[True] * 8 + [False], ingest=True, ledger=ledger)
    done = run(car, ledger)
    assert done["kind"] == "leaving_home" and car.t == 8.0  # the first second out of reach
    assert car.calls == [("stop", (INGEST_UNITS,)), ("camera", "record")]
    assert done["message"].startswith("leaving home: ingest stopped after 7 of 31 clips, camera back to record")
    assert "after the server stopped answering" in done["message"]


def test_on_battery_a_wifi_blip_in_data_mode_changes_nothing(ledger):
    car = Car("data", [False], reach=[True, False, True], ingest=True, ledger=ledger)

    def sleep(seconds):
        car.t += seconds
        if car.t >= 30:
            car.mode = "off"  # the ingest ended; camera.after_ingest
        if car.t >= 60:
            car.mode = "record"
    car.sleep = sleep
    assert run(car, ledger) is None
    assert car.calls == []


def test_a_recording_camera_needs_no_watch(ledger):
    car = Car("record", [True], ledger=ledger)
    assert run(car, ledger) is None
    assert car.reads == 0


def test_a_failed_switch_is_said_not_counted_and_tried_again_after_growing_pauses(ledger, caplog):
    # a hub that does not answer (or no camera plugged in): not a loop of attempts as fast as the
    # switch fails, and not the end of the watch either (the car still drives)
    car = Car("off", [False, True], ledger=ledger)
    tries = []

    def broken_three_times(mode):
        tries.append(car.t)
        if len(tries) <= 3:
            raise RuntimeError("uhubctl: expected port power on, found off")
        car.mode = mode
    car.set_camera = broken_three_times
    with caplog.at_level("INFO", logger="dashcam"):
        done = run(car, ledger)
    assert [round(b - a) for a, b in zip(tries, tries[1:])] == [10, 20, 40]
    failed = [r.getMessage() for r in caplog.records if "FAILED: camera record: uhubctl" in r.getMessage()]
    assert len(failed) == 3 and all(r.levelname == "ERROR" for r in caplog.records if "FAILED" in r.getMessage())
    assert not done["failed"] and car.mode == "record"
    assert ledger.get_state(ignition.RETURNS_KEY)["counts"] == {"engine_started": 1}  # the one that took


def test_a_tick_that_put_the_camera_back_first_is_not_counted_again(ledger):
    # the watcher read the engine starting; a policy tick held the lock, switched and counted
    car = Car("off", [False, True], ledger=ledger)

    def lock():
        car.mode = "record"
        return ignition.PolicyLock(None)
    done = ignition.watch(CFG, car, car, ledger_open=lambda: contextlib.nullcontext(ledger), lock=lock,
                          clock=car.clock, wall=lambda: 1.7e9, sleep=car.sleep)
    assert done is None and car.calls == []
    assert ledger.get_state(ignition.RETURNS_KEY) is None


@pytest.mark.parametrize("external,mode", [(True, "record"), (False, "off"), (None, "off")])
def test_the_boot_decides_from_one_reading(external, mode):
    assert ignition.boot_mode(Reading(external=external))[0] == mode


def test_the_count_survives_a_broken_ledger_value():
    assert ignition.counted("garbage", "leaving_home", "m", 1.0)["counts"] == {"leaving_home": 1}
    mem = ignition.counted({"counts": {"leaving_home": 2, "engine_started": -4, 7: 1}}, "engine_started", "m", 2.0)
    assert mem["counts"] == {"leaving_home": 2, "engine_started": 1} and mem["total"] == 3


SYSTEMCTL = """#!/bin/sh
echo "$*" >> {log}
"""


@pytest.mark.parametrize("vin,mode,watch", [("5208", "record", False), ("0", "off", True)])
def test_dashcamctl_boot_switches_the_camera_from_one_battery_read(fake_hw, dashcamctl, make_config, tmp_path,
                                                                    vin, mode, watch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(SYSTEMCTL.format(log=tmp_path / "systemctl.log"))
    (bindir / "systemctl").chmod(0o755)
    fake_hw.usb_device("1-1", authorized="1")  # at power-on the hub gives the camera power and data
    fake_hw.set_battery(f"VIN = {vin}\n")
    env = dict(fake_hw.env, PATH=f"{bindir}:{fake_hw.env['PATH']}")
    r = dashcamctl("--config", str(make_config()), "boot", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"camera: {mode} (")
    assert fake_hw.battery_call_count() == 1
    assert fake_hw.port_power() is (mode == "record")
    if mode == "record":
        assert fake_hw.authorized("1-1") == "0"  # powered, data off: recording
    started = (tmp_path / "systemctl.log").read_text() if (tmp_path / "systemctl.log").exists() else ""
    assert ("start --no-block dashcam-watch.service" in started) is watch


def test_a_camera_mode_unknown_is_not_record_the_engine_starting_still_puts_it_to_record(ledger):
    car = Car("unknown", [False, True], ledger=ledger)  # a hub that does not answer uhubctl
    done = run(car, ledger)
    assert car.calls == [("stop", (INGEST_UNITS,)), ("camera", "record")] and done["kind"] == "engine_started"


def test_a_damaged_ledger_does_not_keep_the_watcher_from_putting_the_camera_back(fake_hw, make_config, tmp_path):
    """The ledger only counts the return: a damaged one (or one that cannot be opened) must not keep
    the camera off the road. The watcher opens it as the policy tick does (set aside, a fallback
    file) and puts the camera to record when the engine starts."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(SYSTEMCTL.format(log=tmp_path / "systemctl.log"))
    (bindir / "systemctl").chmod(0o755)
    cfg = make_config()
    state = tmp_path / "state"
    state.mkdir()
    (state / "ledger.sqlite3").write_bytes(b"not a database, " * 512)
    fake_hw.usb_device("1-1", authorized="0")
    fake_hw.uhubctl_state.write_text('{"1-1": {"1": false}}')  # the camera off, as after an ingest on battery
    fake_hw.set_battery("VIN = 0\n")
    env = dashcamctl_env(dict(fake_hw.env, PATH=f"{bindir}:{fake_hw.env['PATH']}"))
    proc = subprocess.Popen([str(LAUNCHER), "--config", str(cfg), "watch"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while fake_hw.battery_call_count() < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        fake_hw.set_battery("VIN = 5208\n")  # the engine starts
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert fake_hw.port_power() is True and fake_hw.authorized("1-1") == "0", err  # powered, data off: recording
    assert "engine started: no ingest running, camera back to record" in err, err
    assert "ignition watch: ledger unusable" in err  # the damaged ledger is said, not passed over in silence


@pytest.mark.parametrize("last_external", [None, True])
def test_the_camera_off_on_external_power_goes_to_record_whatever_the_last_tick_saw(ledger, last_external):
    # the boot read the battery as unknown (or on battery) and started the camera off; the engine runs
    # by the watcher's first reading, and the ledger's last power reading is none (a fresh ledger, a
    # fallback file) or the previous boot's "external": off on external power is never the policy's
    # wish (it puts the camera to record then), so the watcher must not wait for a change it never sees
    car = Car("off", [True], ledger=ledger)
    done = run(car, ledger, last_external=last_external)
    assert done is not None and done["kind"] == "engine_started" and not done["failed"]
    assert car.calls == [("camera", "record")] and car.t <= 1.0
    assert ledger.get_state(ignition.RETURNS_KEY)["counts"] == {"engine_started": 1}


def test_a_camera_mode_unknown_on_external_power_the_server_stopping_to_answer_is_the_car_leaving(ledger):
    # in data mode at home on external power, the hub stops answering uhubctl (or the data device
    # is gone from sysfs): the mode reads unknown. The car leaving must still put it to record, as
    # the policy would (unknown on external power and out of reach: record)
    car = Car("unknown", [True], reach=[True] * 3 + [False], ingest=True, ledger=ledger)
    done = run(car, ledger, last_external=True)
    assert done is not None and done["kind"] == "leaving_home" and car.t == 3.0
    assert car.calls == [("stop", (INGEST_UNITS,)), ("camera", "record")]


class StartLog:
    """systemd.Systemctl's start(), recorded."""

    def __init__(self):
        self.started = []

    def start(self, unit, *, check=True):
        self.started.append(unit)


@pytest.mark.parametrize("vin", ["5208", "0", "-2"])
def test_a_camera_switch_that_does_not_take_at_boot_still_starts_the_watcher(fake_hw, monkeypatch, vin):
    # the camera's hub is not enumerated yet (or never answers): the boot gives up after its
    # seconds, the camera is in whatever mode the hub powered it up in (data, not recording) and
    # the first policy tick is 45 s away: the watcher must run, it puts the camera back to record
    # once the engine runs or the car leaves
    monkeypatch.setenv("UHUBCTL_FAKE_HUBS", "9-9")
    fake_hw.set_battery(f"VIN = {vin}\n")
    systemctl = StartLog()
    rc = ignition.boot_command(types.SimpleNamespace(dry_run=False), CFG, seconds=0, sleep=lambda s: None,
                               systemctl=systemctl)
    assert rc == 0 and systemctl.started == ["dashcam-watch.service"]


def test_an_ingest_a_tick_started_while_the_watcher_waited_for_the_lock_is_stopped_first(ledger):
    # the watcher read the camera off and the engine starting; while it waited for the lock a
    # tick put the camera to data (the engine's power not yet read) and udev started an ingest:
    # the mode read under the lock decides, and the ingest stops before its storage goes away
    car = Car("off", [False, True], ledger=ledger)

    def lock():
        car.mode, car.ingest = "data", True
        return ignition.PolicyLock(None)
    done = ignition.watch(CFG, car, car, ledger_open=lambda: contextlib.nullcontext(ledger), lock=lock,
                          clock=car.clock, wall=lambda: 1.7e9, sleep=car.sleep)
    assert done["kind"] == "engine_started"
    assert car.calls == [("stop", (INGEST_UNITS,)), ("camera", "record")]


def test_a_battery_reading_that_stays_incomplete_is_said_once_by_the_watcher_not_every_second(fake_hw, make_config,
                                                                                              caplog):
    # a UPS that is not there yet (a fresh install) or an I2C bus that fails: the watcher reads it
    # every second, and one WARNING a second would flood the journal for as long as it runs
    facts = ignition.WatchFacts(config.load(str(make_config())))
    fake_hw.set_battery("mode = i2c-fail\n")
    with caplog.at_level("INFO", logger="dashcam"):
        readings = [facts.battery() for _ in range(5)]
        fake_hw.set_battery("VIN = 0\n")
        readings.append(facts.battery())
        fake_hw.set_battery("mode = i2c-fail\n")
        readings += [facts.battery() for _ in range(3)]
    assert [r.external for r in readings] == [None] * 5 + [False] + [None] * 3
    said = [r for r in caplog.records if "incomplete" in r.getMessage()]
    assert len(said) == 2 and all(r.levelname == "WARNING" and "ignition watch" in r.getMessage() for r in said)


def test_dashcamctl_boot_with_a_config_broken_since_the_last_boot_still_puts_the_camera_to_record(
        fake_hw, dashcamctl, make_config, tmp_path):
    # the engine starts the Pi; the file was broken by an edit since: the boot runs on the last good
    # configuration (the units' shared cache) and the camera records, as it did with the file intact
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(SYSTEMCTL.format(log=tmp_path / "systemctl.log"))
    (bindir / "systemctl").chmod(0o755)
    fake_hw.set_battery("VIN = 5208\n")
    env = dict(fake_hw.env, PATH=f"{bindir}:{fake_hw.env['PATH']}", CACHE_DIRECTORY=str(tmp_path / "cache"))
    path = make_config()
    fake_hw.usb_device("1-1", authorized="1")
    assert dashcamctl("--config", str(path), "boot", env=env).returncode == 0
    path.write_text(path.read_text() + "camera:\n  max_data_minutes: -1\n")
    fake_hw.usb_device("1-1", authorized="1")  # the next power-on: power and data
    r = dashcamctl("--config", str(path), "boot", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("camera: record (")
    assert fake_hw.port_power() is True and fake_hw.authorized("1-1") == "0"
    assert "is broken: camera.max_data_minutes" in r.stderr and "last good configuration" in r.stderr
