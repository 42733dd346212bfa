"""What Home Assistant sees of the Pi over MQTT: its topics and identity, the discovery configs of
its sensors (data, not code), and the one retained state document made of the status facts.
Pure: the session and the publishing are in mqtt.

Why one state document rather than one topic per sensor: a tick is one publish, Home Assistant
always sees a consistent snapshot (battery, mode and backlog of the same moment), and an
unknown fact is an explicit ``null`` (HA shows "unknown").
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

from . import __version__
from .record import Record

ONLINE, OFFLINE = "online", "offline"
CAMERA_MODES = ("record", "data", "off", "unknown")


# ---------------------------------------------------------------- topics and identity


class Topics(Record):
    node_id: str  # discovery node id and unique_id prefix, e.g. dashcam_carpi
    base: str
    state: str
    availability: str
    event: str
    device_name: str


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def topics(cfg, hostname: Optional[str] = None) -> Topics:
    host = hostname or _hostname()
    base = cfg.mqtt.base_topic or f"dashcam/{_slug(host)}"
    return Topics(
        node_id=f"dashcam_{_slug(host)}",
        base=base,
        state=f"{base}/state",
        availability=f"{base}/availability",
        event=f"{base}/event",
        device_name=f"Dashcam manager {host}",
    )


def client_id(cfg, hostname: Optional[str] = None) -> str:
    """mqtt.client_id verbatim, else dashcam-<hostname>-<pid>. The pid matters: the policy
    tick, an ingest and an upload may publish at the same moment, and a broker that sees a
    client id twice drops the older connection (whose will then says "offline")."""
    if cfg.mqtt.client_id:
        return cfg.mqtt.client_id
    return f"dashcam-{_slug(hostname or _hostname())}"[:56] + f"-{os.getpid()}"


# ---------------------------------------------------------------- sensors (data, not code)


class Sensor(Record):
    key: str  # key in the state document, also the discovery object_id
    component: str  # sensor | binary_sensor
    name: str
    unit: Optional[str] = None
    device_class: Optional[str] = None
    state_class: Optional[str] = None
    icon: Optional[str] = None
    diagnostic: bool = False
    options: Optional[Tuple[str, ...]] = None  # enum sensors


SENSORS: Tuple[Sensor, ...] = (
    Sensor("battery_voltage", "sensor", "Battery voltage", "V", "voltage", "measurement"),
    Sensor("battery_percent", "sensor", "Battery", "%", "battery", "measurement"),
    Sensor("external_power", "binary_sensor", "External power", device_class="power"),
    Sensor("input_voltage", "sensor", "Input voltage", "V", "voltage", "measurement"),
    Sensor("output_voltage", "sensor", "Output voltage", "V", "voltage", "measurement"),
    Sensor("output_current", "sensor", "Output current", "A", "current", "measurement"),
    Sensor("output_power", "sensor", "Output power", "W", "power", "measurement"),
    Sensor("camera_mode", "sensor", "Camera mode", device_class="enum", icon="mdi:cctv", options=CAMERA_MODES),
    Sensor("camera_attached", "binary_sensor", "Camera storage attached", device_class="plug"),
    Sensor("backlog_files", "sensor", "Backlog files", "files", None, "measurement", icon="mdi:file-video"),
    Sensor("backlog_bytes", "sensor", "Backlog size", "B", "data_size", "measurement"),
    Sensor("staging_free_bytes", "sensor", "Free staging space", "B", "data_size", "measurement"),
    Sensor("last_ingest", "sensor", "Last ingest", device_class="timestamp"),
    Sensor("last_upload", "sensor", "Last upload", device_class="timestamp"),
    Sensor("last_upload_result", "sensor", "Last upload result", icon="mdi:cloud-upload"),
    Sensor("server_reachable", "binary_sensor", "Server reachable", device_class="connectivity"),
    # the power budget (budget.py): on battery only; null (unknown) on external power
    Sensor("runtime_minutes", "sensor", "Runtime on battery", "min", "duration", "measurement", icon="mdi:battery-clock"),
    Sensor("waiting_bytes", "sensor", "Footage waiting", "B", "data_size", "measurement"),
    Sensor("waiting_event_bytes", "sensor", "Event footage waiting", "B", "data_size", "measurement"),
    Sensor("all_safe_minutes", "sensor", "Time to all safe", "min", "duration", "measurement", icon="mdi:cloud-clock"),
    Sensor("oldest_unsent_minutes", "sensor", "Oldest footage not on the server", "min", "duration", "measurement",
           icon="mdi:clock-alert"),
    Sensor("footage_lost_minutes", "sensor", "Footage lost (7 days)", "min", "duration", "measurement",
           icon="mdi:filmstrip-off"),
    Sensor("damaged_clips", "sensor", "Damaged clips (7 days)", "clips", None, "measurement", icon="mdi:file-alert"),
    Sensor("card_used_bytes", "sensor", "Camera card used", "B", "data_size", "measurement"),
    Sensor("card_total_bytes", "sensor", "Camera card size", "B", "data_size", "measurement", diagnostic=True),
    Sensor("card_hours", "sensor", "Camera card holds", "h", "duration", "measurement", icon="mdi:sd"),
    Sensor("problem", "binary_sensor", "Problem", device_class="problem"),
    Sensor("problem_reason", "sensor", "Problem reason", icon="mdi:alert-circle-outline"),
    Sensor("updated", "sensor", "Last report", device_class="timestamp", diagnostic=True),
)

EVENT_TYPES = ("clips_uploaded", "upload_failing", "low_battery_shutdown", "card_read_error", "camera_back_to_record",
               "footage_lost")


def device(cfg, t: Topics) -> Dict[str, Any]:
    return {
        "identifiers": [t.node_id],
        "name": t.device_name,
        "model": "dashcam-manager",
        "manufacturer": "dashcam-manager",
        "sw_version": __version__,
    }


def discovery_messages(cfg, t: Topics) -> List[Tuple[str, Dict[str, Any]]]:
    """(topic, config) for every entity, as Home Assistant's MQTT discovery expects them."""
    dev = device(cfg, t)
    out = []
    for s in SENSORS:
        conf: Dict[str, Any] = {
            "name": s.name,
            "unique_id": f"{t.node_id}_{s.key}",
            "state_topic": t.state,
            "value_template": "{{ value_json.%s }}" % s.key,
            "availability_topic": t.availability,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": dev,
        }
        if s.component == "binary_sensor":
            conf.update(payload_on="ON", payload_off="OFF")
        for field, value in (
            ("unit_of_measurement", s.unit),
            ("device_class", s.device_class),
            ("state_class", s.state_class),
            ("icon", s.icon),
        ):
            if value is not None:
                conf[field] = value
        if s.options:
            conf["options"] = list(s.options)
        if s.diagnostic:
            conf["entity_category"] = "diagnostic"
        if cfg.mqtt.expire_after:
            conf["expire_after"] = cfg.mqtt.expire_after
        out.append((f"{cfg.mqtt.discovery_prefix}/{s.component}/{t.node_id}/{s.key}/config", conf))
    if cfg.mqtt.notifications:
        out.append(
            (
                f"{cfg.mqtt.discovery_prefix}/event/{t.node_id}/events/config",
                {
                    "name": "Events",
                    "unique_id": f"{t.node_id}_events",
                    "state_topic": t.event,
                    "event_types": list(EVENT_TYPES),
                    "availability_topic": t.availability,
                    "payload_available": ONLINE,
                    "payload_not_available": OFFLINE,
                    "device": dev,
                },
            )
        )
    return out


# ---------------------------------------------------------------- facts -> state document


def _section(facts: Dict[str, Any], name: str) -> Dict[str, Any]:
    value = facts.get(name) if isinstance(facts, dict) else None
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> Optional[float]:
    """A finite number, or None: NaN, ±Infinity, an int too large for a float and text that is
    none of these all read as unknown (HA shows "unknown"; strict JSON has no NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        n = float(value) if isinstance(value, (int, float)) else float(str(value).strip()[:64])
    except (ValueError, OverflowError):
        return None
    return n if n - n == 0.0 else None


def _measured(value: Any) -> Optional[float]:
    return _number(value) if isinstance(value, (int, float)) else None


def _raw_value(raw: Dict[str, Any], volts_key: str, milli_key: str) -> Optional[float]:
    """A UPS value from battery.raw: battery-info.sh JSON (volts/amps) or lifepo4wered-cli (mV/mA).
    Only numbers count: battery.raw keeps what a tool printed that was no number ("nan", "1e308")
    as its text, and that is unknown, not a value to parse again."""
    v = _measured(raw.get(volts_key))
    if v is not None:
        return round(v, 3)
    m = _measured(raw.get(milli_key))
    if m is not None and m >= 0:  # lifepo4wered-cli: -1 / -2 mean "not read"
        return round(m / 1000.0, 3)
    return None


def _onoff(value: Any) -> Optional[str]:
    if value is None:
        return None
    return "ON" if value else "OFF"


def iso(wall: Any) -> Optional[str]:
    """Epoch seconds -> ISO 8601 with the UTC offset, as HA timestamp sensors want. Strings pass through."""
    if isinstance(wall, str) and wall:
        return wall
    n = _number(wall)
    if n is None or n <= 0:
        return None
    try:
        return datetime.datetime.fromtimestamp(n, datetime.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # beyond year 9999: no time HA can show
        return None


def _when(section: Dict[str, Any]) -> Any:
    for key in ("wall", "time", "at", "when"):
        if section.get(key) is not None:
            return section[key]
    return None


def _int(value: Any) -> Optional[int]:
    n = _number(value)
    return int(n) if n is not None else None


def state_document(facts: Dict[str, Any], now: Optional[float] = None) -> Dict[str, Any]:
    """Flatten ``dashcamctl status --json`` facts into the state document: every sensor key
    is present, ``None`` (JSON null, HA "unknown") when the fact is missing or unreadable."""
    battery = _section(facts, "battery")
    raw = battery.get("raw") if isinstance(battery.get("raw"), dict) else {}
    camera = _section(facts, "camera")
    staging = _section(facts, "staging")
    server = _section(facts, "server")
    ingest = _section(facts, "last_ingest")
    upload = _section(facts, "last_upload")
    power_budget = _section(facts, "budget")
    footage = _section(facts, "footage")
    card = footage.get("card") if isinstance(footage.get("card"), dict) else {}
    problem = _section(facts, "problem")
    reasons = problem.get("reasons") if isinstance(problem.get("reasons"), list) else []

    mv = _number(battery.get("millivolts"))
    volts = round(mv / 1000.0, 3) if mv is not None else _raw_value(raw, "battery_voltage", "VBAT")
    out_v = _raw_value(raw, "output_voltage", "VOUT")
    out_a = _raw_value(raw, "output_current", "IOUT")
    power = _measured(raw.get("output_power"))
    if power is None and out_v is not None and out_a is not None:
        power = out_v * out_a
    mode = camera.get("mode")
    attached = camera.get("attached")
    return {
        "battery_voltage": volts,
        "battery_percent": _int(battery.get("percent")),
        "battery_source": battery.get("source"),
        "external_power": _onoff(battery.get("external")),
        "input_voltage": _raw_value(raw, "input_voltage", "VIN"),
        "output_voltage": out_v,
        "output_current": out_a,
        "output_power": round(power, 2) if power is not None else None,
        "camera_mode": mode if mode in CAMERA_MODES else None,
        "camera_attached": _onoff(bool(attached)) if attached is not None else None,
        "backlog_files": _int(staging.get("backlog_files")),
        "backlog_bytes": _int(staging.get("backlog_bytes")),
        "staging_free_bytes": _int(staging.get("free_bytes")),
        "last_ingest": iso(_when(ingest)),
        "last_ingest_files": _int(ingest.get("files")),
        "last_ingest_result": ingest.get("result"),
        "last_upload": iso(_when(upload)),
        "last_upload_files": _int(upload.get("files")),
        "last_upload_result": upload.get("result"),
        "server_reachable": _onoff(server.get("reachable")),
        "runtime_minutes": _number(power_budget.get("runtime_minutes")) if power_budget.get("on_battery") else None,
        "waiting_bytes": _int(power_budget.get("waiting_bytes")),
        "waiting_event_bytes": _int(power_budget.get("waiting_event_bytes")),
        "all_safe_minutes": _number(power_budget.get("all_safe_minutes")),
        "oldest_unsent_minutes": _number(power_budget.get("oldest_unsent_minutes")),
        "footage_lost_minutes": _int(footage.get("lost_minutes_7d")),
        "damaged_clips": _int(footage.get("damaged_7d")),
        "card_used_bytes": _int(card.get("used_bytes")),
        "card_total_bytes": _int(card.get("total_bytes")),
        "card_hours": _number(card.get("holds_hours")),
        "problem": _onoff(problem.get("problem")) if "problem" in problem else None,
        "problem_reason": ("; ".join(str(r) for r in reasons)[:250] or "none") if "problem" in problem else None,
        "updated": iso(time.time() if now is None else now),
    }
