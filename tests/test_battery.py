"""Battery readings: lifepo4wered-cli (fake on PATH), a battery-info.sh-style command, or none.

A failed read is retried briefly and then reported as unknown with a reason: never 0 %, never a crash.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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


@pytest.mark.parametrize("text", ["", "hello\n", "VBAT 3611\n", "= 5\n", "vbat = 3611\n", "\x00\x17 bus error\n"])
def test_garbage_is_a_parse_error_naming_the_line(text):
    with pytest.raises(battery.ParseError):
        battery.parse_lifepo4wered(text)


@pytest.mark.parametrize("value", ["three", "nan", "inf", "-inf", "1e308", "9" * 400, "+3300", "3_300", "\u0663\u0663\u0660\u0660", ""])
def test_a_register_that_is_not_a_plain_number_is_unknown_and_the_others_still_count(value):
    values = battery.parse_lifepo4wered(f"VBAT = {value}\nVIN = 0\nVIN_THRESHOLD = 4498\n")
    r = battery.reading_from_lifepo4wered(values, DEFAULT_TABLE)
    assert r.percent is None and r.millivolts is None and "VBAT is not a number" in r.reason
    assert r.external is False  # VIN still read: on battery, so the unknown window runs
    assert len(r.reason) < 200 and json.dumps(r.as_dict(), allow_nan=False)


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


# What a battery-info.sh-style program printed, on battery (input_voltage 0.1), each with a bad value
# where the battery's is expected: every one is an unknown reading with a reason, on battery.
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e400", "9" * 400, "-3.3", '"3.3"', "[3.3]",
               "{}", "true", "null"]
BAD_COMMAND_OUTPUTS = [
    *(f'{{"battery_voltage": {n}, "input_voltage": 0.1}}' for n in BAD_NUMBERS),
    *(f'{{"battery_percent": {n}, "input_voltage": 0.1}}' for n in BAD_NUMBERS),
    '{"battery_voltage": ' + "[" * 100_000 + "]" * 100_000 + ', "input_voltage": 0.1}',
    '{"battery_percent": ' + "9" * 5000 + ', "input_voltage": 0.1}',
    "NaN",
    "[" * 100_000 + "]" * 100_000,
    "",
    "\x00\xff\xfe not json",
]


@pytest.mark.parametrize("text", BAD_COMMAND_OUTPUTS, ids=lambda t: t[:40])
def test_hostile_battery_info_output_is_unknown_with_a_reason_never_an_exception(text):
    r = battery.reading_from_command_output(text, DEFAULT_TABLE)
    assert r.percent is None and r.millivolts is None and not r.known
    assert r.reason and len(r.reason) < 300
    json.dumps(r.as_dict(), allow_nan=False)  # status --json and MQTT can carry it


@pytest.mark.parametrize("n", ["NaN", "Infinity", "-Infinity", "1e308", "9" * 400, "-5", "70"])
def test_an_input_voltage_that_is_no_measurement_leaves_the_power_source_unknown_not_on_battery(n):
    r = battery.reading_from_command_output(f'{{"battery_percent": 50, "input_voltage": {n}}}', DEFAULT_TABLE)
    assert r.percent == 50 and r.external is None and "input_voltage" in r.reason


def test_a_null_percent_falls_back_to_the_voltage_table():
    r = battery.reading_from_command_output('{"battery_voltage": 3.26, "battery_percent": null, "input_voltage": 0}', DEFAULT_TABLE)
    assert (r.percent, r.external, r.reason) == (40, False, None)


# ---------------------------------------------------------------- properties (Hypothesis)


def assert_sane_or_unknown_with_a_reason(r):
    """The contract of battery.read: a known reading is sane; an unknown part has its reason."""
    assert isinstance(r, battery.Reading)
    if r.percent is not None:
        assert type(r.percent) is int and 0 <= r.percent <= 100
    if r.millivolts is not None:
        assert type(r.millivolts) is int and battery.PLAUSIBLE_MV[0] <= r.millivolts <= battery.PLAUSIBLE_MV[1]
    assert r.external in (True, False, None)
    if r.percent is None:
        assert r.reason
    json.dumps(r.as_dict(), allow_nan=False)  # no NaN, no Infinity, nothing too deep


json_scalars = (
    st.none() | st.booleans() | st.text(max_size=20)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)
battery_keys = st.sampled_from(["battery_voltage", "battery_percent", "input_voltage", "external_power", "output_power", "x"])


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(battery_keys, json_values, max_size=6))
def test_property_any_battery_info_object_gives_a_sane_or_unknown_reading(data):
    assert_sane_or_unknown_with_a_reason(battery.reading_from_battery_info(data, DEFAULT_TABLE))


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(
    st.text(max_size=200),
    st.dictionaries(battery_keys, json_values, max_size=6).map(lambda d: json.dumps(d)),  # NaN/Infinity as Python writes them
))
def test_property_any_command_output_gives_a_sane_or_unknown_reading(text):
    assert_sane_or_unknown_with_a_reason(battery.reading_from_command_output(text, DEFAULT_TABLE))


register_names = st.sampled_from(["VBAT", "VIN", "VIN_THRESHOLD", "VOUT", "IOUT", "PI_RUNNING"])
register_values = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.sampled_from(["-1", "-2", "nan", "inf", "-inf", "1e308", "9" * 400, "", "0x10", "3.3"]),
    st.text(max_size=12).filter(lambda t: "\n" not in t and "\r" not in t),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(register_names, register_values), max_size=8) | st.text(max_size=200))
def test_property_any_lifepo4wered_output_parses_or_is_refused_and_reads_sane_or_unknown(lines):
    text = lines if isinstance(lines, str) else "".join(f"{n} = {v}\n" for n, v in lines)
    try:
        values = battery.parse_lifepo4wered(text)
    except battery.ParseError:
        return  # the reader turns it into an unknown reading (tests below, through the fake)
    assert_sane_or_unknown_with_a_reason(battery.reading_from_lifepo4wered(values, DEFAULT_TABLE))


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


# ---------------------------------------------------------------- battery.read never raises, through real programs

# What the fake lifepo4wered-cli is told to do (its state file), on battery unless the output is all garbage.
BAD_CLI_STATES = {
    "vbat-nan": "VBAT = nan\nVIN = 0\n",
    "vbat-inf": "VBAT = inf\nVIN = 0\n",
    "vbat-minus-inf": "VBAT = -inf\nVIN = 0\n",
    "vbat-1e308": "VBAT = 1e308\nVIN = 0\n",
    "vbat-400-digits": f"VBAT = {'9' * 400}\nVIN = 0\n",
    "vbat-negative": "VBAT = -3300\nVIN = 0\n",
    "vbat-string": "VBAT = three volts\nVIN = 0\n",
    "garbage-bytes": "mode = garbage\n",
    "empty-output": "mode = empty\n",
    "i2c-failed": "mode = i2c-fail\n",
}


@pytest.mark.parametrize("state", BAD_CLI_STATES.values(), ids=BAD_CLI_STATES.keys())
def test_read_of_a_hostile_lifepo4wered_cli_is_unknown_with_a_reason(fake_hw, make_config, state):
    fake_hw.set_battery(state)
    r = battery.read(load(make_config))
    assert_sane_or_unknown_with_a_reason(r)
    assert r.percent is None and r.reason


def script(tmp_path, body, name="tool"):
    prog = tmp_path / name
    prog.write_text(f"#!/bin/sh\n{body}\n")
    prog.chmod(0o755)
    return str(prog)


@pytest.mark.parametrize("body, reason", [("kill -SEGV $$", "signal SIGSEGV"), ("sleep 30", "did not answer within 1 s")])
def test_read_of_a_crashing_or_hanging_lifepo4wered_cli_is_unknown(tmp_path, make_config, body, reason):
    cfg = config.load(str(make_config({"tools": {"lifepo4wered_cli": script(tmp_path, body)}, "battery": {"timeout_seconds": 1}})))
    r = battery.read(cfg)
    assert r.percent is None and reason in r.reason


@pytest.mark.parametrize(
    "text", BAD_COMMAND_OUTPUTS[::3] + ["\x00\xff garbage", ""], ids=lambda t: t[:40]
)
def test_read_of_a_hostile_battery_command_is_unknown_with_a_reason(tmp_path, make_config, text):
    out = tmp_path / "out"
    out.write_bytes(text.encode("utf-8", "surrogateescape"))
    r = battery.read(load(make_config, source="command", command=script(tmp_path, f"cat {out}")))
    assert_sane_or_unknown_with_a_reason(r)
    assert r.percent is None and r.reason


def test_read_of_a_crashing_battery_command_is_unknown(tmp_path, make_config):
    r = battery.read(load(make_config, source="command", command=script(tmp_path, "kill -SEGV $$")))
    assert r.percent is None and "signal SIGSEGV" in r.reason


def test_read_never_raises_even_when_a_parser_has_a_bug(tmp_path, make_config, caplog):
    class BrokenTable(tuple):  # a voltage table that raises: stands for any bug below read()
        def __iter__(self):
            raise ZeroDivisionError("boom")

    prog = script(tmp_path, 'echo \'{"battery_voltage": 3.3, "input_voltage": 0}\'')
    cfg = load(make_config, source="command", command=prog)
    cfg = cfg.replace(battery=cfg.battery.replace(voltage_table=BrokenTable()))
    r = battery.read(cfg)
    assert r.percent is None and "ZeroDivisionError: boom" in r.reason
    assert any(rec.levelname == "ERROR" for rec in caplog.records)


# 2 MB and then a hang: a program that floods its output (a broken driver printing in a loop) would
# fill the memory of a Pi within the timeout if it were read to the end
FLOOD = "head -c 2000000 /dev/zero; sleep 30"


def test_a_lifepo4wered_cli_that_floods_its_output_is_cut_off_not_read_into_memory(tmp_path, make_config):
    cfg = config.load(str(make_config({"tools": {"lifepo4wered_cli": script(tmp_path, FLOOD)}, "battery": {"timeout_seconds": 1}})))
    r = battery.read(cfg)
    assert r.percent is None and r.external is None and "printed more than" in r.reason, r.reason


def test_a_battery_command_that_floods_its_output_is_cut_off_not_read_into_memory(tmp_path, make_config):
    r = battery.read(load(make_config, source="command", command=script(tmp_path, FLOOD), timeout_seconds=1))
    assert r.percent is None and "printed more than" in r.reason, r.reason
