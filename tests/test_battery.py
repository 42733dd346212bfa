"""Battery readings: lifepo4wered-cli (fake on PATH), a battery-info.sh-style command, or none.

A failed read is retried briefly and then reported as unknown with a reason: never 0 %, never a crash.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import FIXTURES
from dashcam_helpers import battery, config

DEFAULT_TABLE = config.validate({"upload": {"host": "h", "user": "u", "dest_path": "d"}}).battery.voltage_table


def load(make_config, **battery_keys):
    return config.load(str(make_config({"battery": battery_keys} if battery_keys else None)))


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    "mv, percent",
    [
        (3700, 100), (3650, 100), (3649, 95), (3611, 95), (3600, 95), (3599, 80), (3400, 80),
        (3350, 70), (3300, 60), (3275, 50), (3274, 40), (3250, 40), (3225, 30), (3200, 20),
        (3199, 10), (3100, 10), (3099, 5), (2900, 5),
    ],
)
def test_percent_follows_the_users_step_table(mv, percent):
    assert battery.percent_from_millivolts(mv, DEFAULT_TABLE) == percent


def test_percent_uses_a_configured_table():
    assert battery.percent_from_millivolts(3300, ((3500, 90), (3200, 30))) == 30
    assert battery.percent_from_millivolts(3100, ((3500, 90), (3200, 30))) == 5


def test_the_fixture_dump_parses_into_every_register():
    values = battery.parse_lifepo4wered((FIXTURES / "lifepo4wered-get.txt").read_text())
    assert values["VBAT"] == 3611 and values["VIN"] == 5208 and values["VIN_THRESHOLD"] == 4498
    assert len(values) == 36


@pytest.mark.parametrize("text", ["", "hello\n", "VBAT = three\n", "VBAT 3611\n", "= 5\n", "vbat = 3611\n"])
def test_garbage_is_a_parse_error_naming_the_line(text):
    with pytest.raises(battery.ParseError):
        battery.parse_lifepo4wered(text)


def test_external_power_when_vin_reaches_the_threshold():
    on = battery.reading_from_lifepo4wered({"VBAT": 3300, "VIN": 4498, "VIN_THRESHOLD": 4498}, DEFAULT_TABLE)
    off = battery.reading_from_lifepo4wered({"VBAT": 3300, "VIN": 4497, "VIN_THRESHOLD": 4498}, DEFAULT_TABLE)
    assert (on.external, off.external) == (True, False)
    assert on.percent == off.percent == 60 and on.reason is None


def test_a_failed_vin_leaves_the_percent_known_and_the_power_source_unknown():
    r = battery.reading_from_lifepo4wered({"VBAT": 3300, "VIN": -2, "VIN_THRESHOLD": 4498}, DEFAULT_TABLE)
    assert r.percent == 60 and r.external is None and "VIN" in r.reason


@pytest.mark.parametrize("vbat", [-1, -2, 0, 150, 9999])
def test_a_failed_or_absurd_vbat_is_unknown_not_zero_percent(vbat):
    r = battery.reading_from_lifepo4wered({"VBAT": vbat, "VIN": 0, "VIN_THRESHOLD": 4498}, DEFAULT_TABLE)
    assert r.percent is None and r.millivolts is None and not r.known and r.reason


def test_battery_info_json_fixture_reads_as_3610_mv_95_percent_external():
    r = battery.reading_from_battery_info(json.loads((FIXTURES / "battery-info.json").read_text()), DEFAULT_TABLE)
    assert (r.millivolts, r.percent, r.external, r.reason) == (3610, 95, True, None)
    assert r.raw["pi_running"] == 1


def test_battery_info_on_battery_and_percent_from_the_table_when_the_program_gives_none():
    r = battery.reading_from_battery_info({"battery_voltage": 3.26, "input_voltage": 0.1}, DEFAULT_TABLE)
    assert (r.millivolts, r.percent, r.external) == (3260, 40, False)


def test_battery_info_may_say_external_power_itself():
    r = battery.reading_from_battery_info({"battery_percent": 70, "external_power": False, "input_voltage": 5.0}, DEFAULT_TABLE)
    assert (r.percent, r.external) == (70, False)


@pytest.mark.parametrize(
    "data",
    [[], "x", {}, {"battery_voltage": "3.6"}, {"battery_percent": 140, "input_voltage": 5}, {"battery_voltage": 0.0}],
)
def test_battery_info_nonsense_is_unknown_with_a_reason(data):
    r = battery.reading_from_battery_info(data, DEFAULT_TABLE)
    assert r.percent is None and r.reason


# ---------------------------------------------------------------- lifepo4wered-cli through the fake


def test_reading_the_fixture_through_the_fake_cli(fake_hw, make_config):
    r = battery.read(load(make_config))
    assert (r.source, r.millivolts, r.percent, r.external, r.reason) == ("lifepo4wered", 3611, 95, True, None)
    assert r.known and r.raw["VBAT_SHDN"] == 2950
    assert fake_hw.battery_call_count() == 1


def test_on_battery_the_percent_comes_from_the_table(fake_hw, make_config):
    fake_hw.set_battery("VIN = 0\nVBAT = 3240\n")
    r = battery.read(load(make_config))
    assert (r.millivolts, r.percent, r.external) == (3240, 30, False)


def test_a_cli_that_fails_every_time_gives_unknown_after_a_few_quick_tries(fake_hw, make_config, caplog):
    fake_hw.set_battery("mode = i2c-fail\n")
    start = time.monotonic()
    r = battery.read(load(make_config))
    assert r.percent is None and r.millivolts is None and r.external is None and not r.known
    assert "I2C failed" in r.reason and "3 tries" in r.reason
    assert fake_hw.battery_call_count() == battery.RETRIES
    assert time.monotonic() - start < 5
    assert any("I2C failed" in rec.getMessage() for rec in caplog.records)


def test_a_bus_busy_for_two_reads_still_gives_the_reading(fake_hw, make_config):
    fake_hw.set_battery("mode = fail-first-2\n")
    r = battery.read(load(make_config))
    assert (r.millivolts, r.percent, r.reason) == (3611, 95, None)
    assert fake_hw.battery_call_count() == 3


def test_minus_one_values_with_exit_zero_are_retried_then_unknown(fake_hw, make_config):
    fake_hw.set_battery("VBAT = -1\n")
    r = battery.read(load(make_config))
    assert r.percent is None and "VBAT" in r.reason
    assert fake_hw.battery_call_count() == battery.RETRIES


def test_garbage_output_is_unknown_at_once(fake_hw, make_config):
    fake_hw.set_battery("mode = garbage\n")
    r = battery.read(load(make_config))
    assert r.percent is None and "garbage" in r.reason
    assert fake_hw.battery_call_count() == 1


def test_a_hanging_cli_is_cut_off_at_the_timeout(fake_hw, make_config):
    fake_hw.set_battery("mode = hang\n")
    start = time.monotonic()
    r = battery.read(load(make_config, timeout_seconds=1))
    assert time.monotonic() - start < 3
    assert r.percent is None and "did not answer within 1 s" in r.reason


def test_a_missing_cli_is_unknown_not_a_crash(fake_hw, make_config):
    cfg = config.load(str(make_config({"tools": {"lifepo4wered_cli": "/nonexistent/lifepo4wered-cli"}})))
    r = battery.read(cfg)
    assert r.percent is None and "not found" in r.reason


# ---------------------------------------------------------------- command and none


def test_command_source_runs_the_program(tmp_path, make_config):
    prog = tmp_path / "battery-info.sh"
    prog.write_text(f"#!/bin/sh\ncat {FIXTURES / 'battery-info.json'}\n")
    prog.chmod(0o755)
    r = battery.read(load(make_config, source="command", command=str(prog)))
    assert (r.source, r.millivolts, r.percent, r.external) == ("command", 3610, 95, True)


@pytest.mark.parametrize(
    "body, reason",
    [("echo not json", "no valid JSON"), ("echo oops >&2; exit 3", "status 3: oops"), ("sleep 30", "did not answer")],
)
def test_command_source_failures_are_unknown(tmp_path, make_config, body, reason):
    prog = tmp_path / "battery-info.sh"
    prog.write_text(f"#!/bin/sh\n{body}\n")
    prog.chmod(0o755)
    r = battery.read(load(make_config, source="command", command=str(prog), timeout_seconds=1))
    assert r.percent is None and reason in r.reason


def test_no_battery_means_external_power(make_config):
    r = battery.read(load(make_config, source="none"))
    assert r.source == "none" and r.external is True and r.reason is None
