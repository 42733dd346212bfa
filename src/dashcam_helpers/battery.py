"""Battery readings from the UPS: lifepo4wered-cli, a battery-info.sh-style program, or none.

``read(cfg)`` never raises for a bad or failed reading: it returns a Reading whose
unknown parts are None and whose ``reason`` says why. An unknown reading is never
0 %: the policy must not shut the Pi down because the I2C bus was busy.

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


def unknown(source: str, reason: str, raw: Optional[Dict[str, Any]] = None) -> Reading:
    return Reading(source, None, None, None, dict(raw or {}), reason)


def read(cfg) -> Reading:
    """One reading from the configured source; unknown (with the reason logged) when it fails."""
    source = cfg.battery.source
    if source == "none":
        # A mains-powered bench: external power always, and a "full battery" so that nothing
        # that looks at the percent mistakes the bench for an empty UPS.
        return Reading("none", None, 100, True, {}, None)
    if source == "lifepo4wered":
        reading = _read_lifepo4wered(cfg)
    elif source == "command":
        reading = _read_command(cfg)
    else:  # the schema refuses other values; keep the promise never to raise anyway
        reading = unknown(source, f"unknown battery source {source!r}")
    if reading.reason:
        log.warning("battery reading (%s) incomplete: %s", source, reading.reason)
    return reading


# ---------------------------------------------------------------------------- lifepo4wered


class ParseError(ValueError):
    pass


def parse_lifepo4wered(text: str) -> Dict[str, int]:
    """``NAME = value`` lines of ``lifepo4wered-cli get`` -> {NAME: int}. Raises ParseError on garbage."""
    values: Dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not name.replace("_", "").isalnum() or not name.upper() == name:
            raise ParseError(f"line {number} is not NAME = value: {line.strip()[:80]!r}")
        try:
            values[name] = int(value)
        except ValueError:
            raise ParseError(f"line {number}: {name} is not a number: {value[:40]!r}")
    if not values:
        raise ParseError("no output")
    return values


def _failed_fields(values: Dict[str, int]) -> Tuple[str, ...]:
    return tuple(
        name for name in ("VBAT", "VIN", "VIN_THRESHOLD") if values.get(name, CLI_FAILED_VALUES[0]) in CLI_FAILED_VALUES
    )


def reading_from_lifepo4wered(values: Dict[str, int], table) -> Reading:
    """Turn parsed ``get`` values into a Reading; failed or missing registers make their part unknown."""
    raw: Dict[str, Any] = dict(values)
    reasons = []
    mv: Optional[int] = values.get("VBAT")
    percent: Optional[int] = None
    if mv is None:
        reasons.append("VBAT missing from the output")
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
    elif vin in CLI_FAILED_VALUES or threshold in CLI_FAILED_VALUES:
        reasons.append(f"VIN/VIN_THRESHOLD read failed ({vin}/{threshold})")
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
            result = runner.run(argv, timeout=left, changes_state=False, check=False)
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
            what = "I2C failed" if result.returncode == CLI_EXIT_I2C_FAILED else f"exit status {result.returncode}"
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
    """
    if not isinstance(data, dict):
        return unknown("command", f"expected a JSON object, got {type(data).__name__}")
    raw = dict(data)
    reasons = []

    def number(key: str) -> Optional[float]:
        v = data.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            reasons.append(f"{key} is not a number: {v!r}")
            return None
        return float(v)

    volts = number("battery_voltage")
    mv: Optional[int] = None
    if volts is not None:
        mv = int(round(volts * 1000))
        if not PLAUSIBLE_MV[0] <= mv <= PLAUSIBLE_MV[1]:
            reasons.append(f"battery_voltage {volts} V is not a plausible LiFePO4 voltage")
            mv = None
    percent: Optional[int] = None
    given = number("battery_percent")
    if given is not None and 0 <= given <= 100:
        percent = int(round(given))
    elif given is not None:
        reasons.append(f"battery_percent {given} is outside 0-100")
    elif mv is not None:
        percent = percent_from_millivolts(mv, table)
    if percent is None and not reasons:
        reasons.append("neither battery_percent nor battery_voltage given")
    external: Optional[bool] = None
    if isinstance(data.get("external_power"), bool):
        external = data["external_power"]
    else:
        vin = number("input_voltage")
        if vin is not None:
            external = vin >= EXTERNAL_INPUT_VOLTS
        elif "input_voltage" not in data:
            reasons.append("input_voltage missing: external power unknown")
    return Reading("command", mv, percent, external, raw, "; ".join(reasons) or None)


def _read_command(cfg) -> Reading:
    import json

    argv = [cfg.battery.command]
    try:
        result = runner.run(argv, timeout=cfg.battery.timeout_seconds, changes_state=False)
    except runner.CommandTimeout:
        return unknown("command", f"{argv[0]} did not answer within {cfg.battery.timeout_seconds} s")
    except runner.CommandError as e:
        return unknown("command", str(e))
    try:
        data = json.loads(result.stdout)
    except ValueError as e:
        return unknown("command", f"{argv[0]} printed no valid JSON ({e.args[0][:60]}): {result.stdout.strip()[:60]!r}")
    return reading_from_battery_info(data, cfg.battery.voltage_table)
