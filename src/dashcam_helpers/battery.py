"""Battery readings from the UPS: lifepo4wered-cli, a battery-info.sh-style program, or none.

``read(cfg)`` never raises: whatever the tool prints (NaN, Infinity, 1e308, a 400-digit
number, JSON nested a thousand deep, strings, negative values, garbage bytes, nothing)
and however it ends (an exit status, a signal, a hang), it returns a Reading whose
unknown parts are None and whose ``reason`` says why. A known percent is an int in
0-100, known millivolts lie in PLAUSIBLE_MV. An unknown reading is never 0 %: the
policy must not shut the Pi down because the I2C bus was busy; it counts how long the
readings stay unknown on battery instead (thresholds.unknown_low_minutes).

``raw`` keeps the values as read for status --json and MQTT, reduced to what JSON can
carry: top-level scalars only, numbers finite, strings cut short (RAW_TEXT).

The policy tick calls this every 30 s on battery, so the module imports little and
does one short subprocess call per try.
"""

from __future__ import annotations

import time
from types import MappingProxyType
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from . import runner
from .record import Record
from .log import get as get_logger

log = get_logger("dashcam.battery")

# Below the last step of the voltage table a battery reads as this percent (the user's step table).
FLOOR_PERCENT = 5

# lifepo4wered-cli: -1 = register not accessible, -2 = I2C failed after retries (then exit status 6).
# The vendor daemon holds a non-blocking flock on the bus now and then, so a failed read is retried.
CLI_FAILED_VALUES = (-1, -2)
CLI_EXIT_I2C_FAILED = 6
RETRIES = 3  # tries in all, within battery.timeout_seconds
RETRY_PAUSE = 0.2  # seconds between tries

# A single LiFePO4 cell lives between about 2.5 V (empty, the firmware cuts off near 2.85 V) and
# 3.65 V (charging). Anything outside this band is a wiring or read error, not a battery.
PLAUSIBLE_MV = (2000, 4500)

# source "command": battery-info.sh reports input_voltage in volts. The LiFePO4wered/Pi+ counts
# external power as present when VIN >= VIN_THRESHOLD, 4498 mV by default; on battery VIN reads
# near 0. 4.5 V is that default, rounded: a USB supply sagging under load stays above it.
EXTERNAL_INPUT_VOLTS = 4.5
# an input voltage outside this band (volts) is a read error, not a supply: external power unknown
PLAUSIBLE_INPUT_VOLTS = (0.0, 60.0)

# lifepo4wered-cli prints registers of at most 16 bits; a longer number is not a register value
CLI_MAX_DIGITS = 9
# strings kept in ``raw`` are cut to this many characters; at most RAW_KEYS keys are kept
RAW_TEXT = 80
RAW_KEYS = 64
# bytes a battery tool may print (lifepo4wered-cli get: about 1 KB; battery-info.sh: a few hundred);
# more is a tool printing in a loop, stopped before it fills the memory
MAX_OUTPUT = 64 * 1024


class Reading(Record):
    source: str  # "lifepo4wered" | "command" | "none"
    millivolts: Optional[int]  # battery voltage; None = unknown
    percent: Optional[int]  # None = unknown
    external: Optional[bool]  # on external power; None = unknown
    raw: Mapping[str, Any] = MappingProxyType({})  # the values as read (status --json, MQTT)
    reason: Optional[str] = None  # why (part of) the reading is unknown

    @property
    def known(self) -> bool:
        return self.percent is not None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "millivolts": self.millivolts,
            "percent": self.percent,
            "external": self.external,
            "known": self.known,
            "reason": self.reason,
            "raw": dict(self.raw),
        }


def percent_from_millivolts(mv: int, table: Sequence[Tuple[int, int]]) -> int:
    """The percent of the first step (highest voltage first) that ``mv`` reaches; below all: 5 %."""
    for step_mv, percent in table:
        if mv >= step_mv:
            return percent
    return FLOOR_PERCENT


def finite(value: Any) -> bool:
    """An int or float JSON can carry and arithmetic can use: not bool, not NaN or ±Infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return -(10**15) < value < 10**15  # beyond, float() loses it or overflows: not a measurement
    return value - value == 0.0  # False for NaN and ±Infinity, without importing math


def short(value: Any) -> str:
    """``repr`` of a bad value, cut to RAW_TEXT characters (a 400-digit number stays one line)."""
    try:
        text = repr(value) if not isinstance(value, int) or finite(value) else f"<{len(str(abs(value)))}-digit number>"
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = "<a number too long to print>"
    return text if len(text) <= RAW_TEXT else text[: RAW_TEXT - 3] + "..."


def safe_raw(data: Any) -> Dict[str, Any]:
    """The top-level scalars of ``data`` as JSON can carry them: a non-finite or huge number and any
    nested value become their short text, so nothing downstream meets NaN or a deep structure."""
    if not isinstance(data, dict):
        return {}
    out: Dict[str, Any] = {}
    for key, value in list(data.items())[:RAW_KEYS]:
        key = str(key)[:RAW_TEXT]
        if value is None or isinstance(value, bool) or finite(value):
            out[key] = value
        elif isinstance(value, str):
            out[key] = value[:RAW_TEXT]
        else:
            out[key] = short(value) if isinstance(value, (int, float)) else f"<{type(value).__name__}>"
    return out


def unknown(source: str, reason: str, raw: Optional[Dict[str, Any]] = None) -> Reading:
    return Reading(source, None, None, None, safe_raw(raw or {}), reason)


def read(cfg, *, quiet: bool = False) -> Reading:
    """One reading from the configured source; unknown (with the reason logged, unless ``quiet``:
    the caller says it) when it fails. Never raises, whatever the source prints or does."""
    source = cfg.battery.source
    if source == "none":
        # A mains-powered bench: external power always, and a "full battery" so that nothing
        # that looks at the percent mistakes the bench for an empty UPS.
        return Reading("none", None, 100, True, {}, None)
    try:
        if source == "lifepo4wered":
            reading = _read_lifepo4wered(cfg)
        elif source == "command":
            reading = _read_command(cfg)
        else:  # the schema refuses other values; keep the promise never to raise anyway
            reading = unknown(source, f"unknown battery source {source!r}")
    except Exception as e:  # a case the parsers missed: still a reading, so the policy's clock runs
        log.error("battery reading (%s) failed unexpectedly: %s: %s", source, type(e).__name__, e, exc_info=True)
        reading = unknown(source, f"reading failed: {type(e).__name__}: {str(e)[:RAW_TEXT]}")
    if reading.reason and not quiet:
        log.warning("battery reading (%s) incomplete: %s", source, reading.reason)
    return reading


# ---------------------------------------------------------------------------- lifepo4wered


class ParseError(ValueError):
    pass


def cli_number(text: str) -> Optional[int]:
    """A register value as lifepo4wered-cli prints it: an optional minus and ASCII digits, nothing else
    (int() would also take "+5", "5_0", " 5" and non-ASCII digits). None for anything else."""
    digits = text[1:] if text.startswith("-") else text
    if not digits or len(digits) > CLI_MAX_DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    return int(text)


def parse_lifepo4wered(text: str) -> Dict[str, Any]:
    """``NAME = value`` lines of ``lifepo4wered-cli get`` -> {NAME: int}.

    A value that is not a plain decimal number ("nan", "1e308", 400 digits) is kept as its text,
    cut short, and makes that register unknown (reading_from_lifepo4wered says so); the others
    still count. Raises ParseError when the output is not NAME = value lines at all, or empty."""
    values: Dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not name.isascii() or not name.replace("_", "").isalnum() or not name.upper() == name:
            raise ParseError(f"line {number} is not NAME = value: {line.strip()[:RAW_TEXT]!r}")
        parsed = cli_number(value)
        values[name] = value[:RAW_TEXT] if parsed is None else parsed
    if not values:
        raise ParseError("no output")
    return values


def _failed_fields(values: Dict[str, Any]) -> Tuple[str, ...]:
    return tuple(
        name for name in ("VBAT", "VIN", "VIN_THRESHOLD") if values.get(name, CLI_FAILED_VALUES[0]) in CLI_FAILED_VALUES
    )


def reading_from_lifepo4wered(values: Dict[str, Any], table) -> Reading:
    """Turn parsed ``get`` values into a Reading; failed, missing or non-numeric registers make
    their part unknown, with the reason."""
    raw = safe_raw(values)
    reasons = []
    mv = values.get("VBAT")
    percent: Optional[int] = None
    if mv is None:
        reasons.append("VBAT missing from the output")
    elif not isinstance(mv, int) or isinstance(mv, bool):
        reasons.append(f"VBAT is not a number: {short(mv)}")
        mv = None
    elif mv in CLI_FAILED_VALUES:
        reasons.append(f"VBAT read failed ({mv})")
        mv = None
    elif not PLAUSIBLE_MV[0] <= mv <= PLAUSIBLE_MV[1]:
        reasons.append(f"VBAT {mv} mV is not a plausible LiFePO4 voltage")
        mv = None
    else:
        percent = percent_from_millivolts(mv, table)
    external: Optional[bool] = None
    vin, threshold = values.get("VIN"), values.get("VIN_THRESHOLD")
    if vin is None or threshold is None:
        reasons.append("VIN or VIN_THRESHOLD missing from the output")
    elif not all(isinstance(v, int) and not isinstance(v, bool) for v in (vin, threshold)):
        reasons.append(f"VIN/VIN_THRESHOLD is not a number ({short(vin)}/{short(threshold)})")
    elif vin in CLI_FAILED_VALUES or threshold in CLI_FAILED_VALUES:
        reasons.append(f"VIN/VIN_THRESHOLD read failed ({vin}/{threshold})")
    elif vin < 0 or threshold <= 0:
        reasons.append(f"VIN/VIN_THRESHOLD {vin}/{threshold} mV is not a plausible reading")
    else:
        external = vin >= threshold
    return Reading("lifepo4wered", mv, percent, external, raw, "; ".join(reasons) or None)


def _read_lifepo4wered(cfg) -> Reading:
    argv = [cfg.tools.lifepo4wered_cli, "get"]
    deadline = time.monotonic() + cfg.battery.timeout_seconds
    reason = "no reading"
    for attempt in range(1, RETRIES + 1):
        left = deadline - time.monotonic()
        if left <= 0.05:
            reason += f" (gave up after {cfg.battery.timeout_seconds} s)"
            break
        try:
            result = runner.run(argv, timeout=left, changes_state=False, check=False, max_output=MAX_OUTPUT)
        except runner.CommandTimeout:
            return unknown("lifepo4wered", f"{argv[0]} did not answer within {cfg.battery.timeout_seconds} s")
        except runner.CommandError as e:  # not installed, not executable
            return unknown("lifepo4wered", str(e))
        retry = False
        try:
            values = parse_lifepo4wered(result.stdout)
        except ParseError as e:
            values = {}
            if result.returncode == 0:  # garbage from a program that says it succeeded: not a bus hiccup
                return unknown("lifepo4wered", f"{argv[0]} get printed garbage: {e}")
            retry = True
        if result.returncode not in (0,):
            what = "I2C failed" if result.returncode == CLI_EXIT_I2C_FAILED else runner.describe_returncode(result.returncode)
            reason = f"{argv[0]} get: {what}" + (f": {runner.last_line(result.stderr)}" if result.stderr.strip() else "")
            retry = True
        elif _failed_fields(values):
            reason = f"{argv[0]} get: {'/'.join(_failed_fields(values))} not read (" + ", ".join(
                f"{n}={values.get(n, 'missing')}" for n in _failed_fields(values)
            ) + ")"
            retry = True
        if not retry:
            return reading_from_lifepo4wered(values, cfg.battery.voltage_table)
        log.debug("battery read %d/%d failed: %s", attempt, RETRIES, reason)
        if attempt < RETRIES:
            time.sleep(min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
    else:
        reason += f" ({RETRIES} tries)"
    # every try failed: keep what the last try said, but the reading is unknown
    return unknown("lifepo4wered", reason)


# ---------------------------------------------------------------------------- command


def reading_from_battery_info(data: Any, table) -> Reading:
    """battery-info.sh JSON -> Reading.

    battery_voltage (V) -> millivolts. Percent: the program's battery_percent (it is the authority
    that was chosen), else the voltage table. External power: an ``external_power`` boolean when
    the program prints one, else input_voltage >= 4.5 V (the LiFePO4wered default VIN_THRESHOLD).
    A value that is not a finite number (a string, NaN, ±Infinity, 1e308, 400 digits) or lies
    outside its plausible band makes its part unknown, with the reason.
    """
    if not isinstance(data, dict):
        return unknown("command", f"expected a JSON object, got {type(data).__name__}")
    raw = safe_raw(data)
    reasons = []

    def number(key: str, low: float, high: float, what: str) -> Optional[float]:
        v = data.get(key)
        if v is None:
            return None
        if not finite(v):
            reasons.append(f"{key} is not a finite number: {short(v)}")
            return None
        if not low <= v <= high:
            reasons.append(f"{key} {short(v)} {what}")
            return None
        return float(v)

    volts = number("battery_voltage", PLAUSIBLE_MV[0] / 1000, PLAUSIBLE_MV[1] / 1000, "V is not a plausible LiFePO4 voltage")
    mv = None if volts is None else int(round(volts * 1000))
    percent: Optional[int] = None
    given = number("battery_percent", 0, 100, "is outside 0-100")
    if given is not None:
        percent = int(round(given))
    elif mv is not None and data.get("battery_percent") is None:
        percent = percent_from_millivolts(mv, table)
    if percent is None and not reasons:
        reasons.append("neither battery_percent nor battery_voltage given")
    external: Optional[bool] = None
    if isinstance(data.get("external_power"), bool):
        external = data["external_power"]
    else:
        vin = number("input_voltage", PLAUSIBLE_INPUT_VOLTS[0], PLAUSIBLE_INPUT_VOLTS[1], "V is not a plausible input voltage")
        if vin is not None:
            external = vin >= EXTERNAL_INPUT_VOLTS
        elif "input_voltage" not in data:
            reasons.append("input_voltage missing: external power unknown")
    return Reading("command", mv, percent, external, raw, "; ".join(reasons) or None)


def _read_command(cfg) -> Reading:
    argv = [cfg.battery.command]
    try:
        result = runner.run(argv, timeout=cfg.battery.timeout_seconds, changes_state=False, max_output=MAX_OUTPUT)
    except runner.CommandTimeout:
        return unknown("command", f"{argv[0]} did not answer within {cfg.battery.timeout_seconds} s")
    except runner.CommandError as e:
        return unknown("command", str(e))
    return reading_from_command_output(result.stdout, cfg.battery.voltage_table, argv[0])


def reading_from_command_output(text: str, table, name: str = "battery command") -> Reading:
    """What the battery command printed -> Reading (unknown with the reason when it is not JSON)."""
    import json

    try:
        # NaN, Infinity and -Infinity are not JSON: kept as their text, they read as "not a number"
        data = json.loads(text, parse_constant=str)
    except ValueError as e:  # also an int beyond sys.get_int_max_str_digits()
        return unknown("command", f"{name} printed no valid JSON ({str(e)[:60]}): {text.strip()[:60]!r}")
    except RecursionError:
        return unknown("command", f"{name} printed JSON nested too deep to read")
    return reading_from_battery_info(data, table)
