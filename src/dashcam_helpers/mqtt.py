"""Home Assistant over MQTT: discovery, one retained state document, availability, events.

Only used when the optional ``mqtt:`` section is set (``cfg.mqtt`` is not None); paho-mqtt
is imported only then. The policy tick calls ``publish_state(cfg, facts)`` every 30 s:
it never raises, and it never costs the tick more than about a second, whatever the
broker does (refuses, drops packets, accepts and then says nothing, DNS hangs).

Topics (``<base>`` = ``mqtt.base_topic``, default ``dashcam/<hostname>``):

- ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``: retained discovery
  configs, one per sensor, all on one device "Dashcam manager <hostname>".
- ``<base>/state``: ONE retained JSON document holding every fact; each sensor picks its
  value with a ``value_template``. One document rather than one topic per sensor: a tick is
  one publish, Home Assistant always sees a consistent snapshot (battery, mode and backlog
  of the same moment), and an unknown fact is an explicit ``null`` (HA shows "unknown").
- ``<base>/availability``: ``online`` / ``offline``, retained.
- ``<base>/event``: notifications (not retained), when ``mqtt.notifications`` is on.

Why availability works this way: the publisher is a short-lived process (one policy tick,
then exit), so a last will that fired on every exit would flap the device offline twice a
minute. A clean MQTT DISCONNECT does not trigger the will, so each tick connects with the
will ``offline`` set, publishes ``online`` (retained) and the state, and disconnects
cleanly. The will therefore fires only when a publisher dies mid-session (killed, power
cut while connected). When the Pi simply stops ticking (car parked with the Pi off, power
cut between ticks), nobody is connected to leave a will, so every sensor carries
``expire_after`` (default 120 s, about 4 ticks) and turns unavailable by itself; a clean
shutdown publishes ``offline`` explicitly (``dashcamctl mqtt-publish --offline``).
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import stat
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from . import __version__
from .strictjson import dumps  # strict JSON: no NaN/Infinity in a payload (unknown is null)
from .record import Record
from .log import INFO, WARNING, get as get_logger

log = get_logger("dashcam.mqtt")

# Budget of one publish from the policy tick. Connection attempts get CONNECT_TIMEOUT; the
# whole session (DNS, TCP, TLS, CONNACK, PUBACKs) runs in a daemon thread that the tick
# waits for at most TICK_BUDGET seconds, then leaves behind (the process exits soon after).
TICK_BUDGET = 0.7
CONNECT_TIMEOUT = 0.5

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


# ---------------------------------------------------------------- notifications (pure part)

# Least time between two events of one kind, seconds.
EVENT_MIN_INTERVAL = {
    "clips_uploaded": 15 * 60,  # uploads in between are added up, none is lost
    "upload_failing": 24 * 3600,
    "low_battery_shutdown": 10 * 60,
    "card_read_error": 3600,
    "camera_back_to_record": 0,  # each is news: the engine started, the car left home
    "footage_lost": 3600,  # losses found in between are added up, none is lost
}
UPLOAD_FAILING_AFTER = 24 * 3600
EVENTS_STATE_KEY = "mqtt_events"
# the broker and user last warned about a password sent without TLS (warn_plaintext)
PLAINTEXT_STATE_KEY = "mqtt_plaintext_warned"


def _message(kind: str, data: Dict[str, Any]) -> str:
    if kind == "clips_uploaded":
        return f"{data.get('files', 0)} clip(s) uploaded ({data.get('bytes', 0)} bytes)"
    if kind == "upload_failing":
        return f"uploads have been failing since {iso(data.get('since'))}; {data.get('backlog_files')} file(s) waiting"
    if kind == "low_battery_shutdown":
        return f"battery low ({data.get('percent')} %): the Pi shuts down"
    if kind == "card_read_error":
        return f"reading the camera's card failed: {data.get('reason') or data.get('result')}"
    if kind == "camera_back_to_record":
        return str(data.get("detail") or "the camera is back to record")
    if kind == "footage_lost":
        return (f"footage lost before the Pi could copy it: about {data.get('minutes')} minutes in the last 7 days;"
                f" last: {data.get('last')}")
    return kind


class EventMemory(Record):
    """The ledger's ``mqtt_events`` document: what the events remember between ticks. The ledger is
    input like any other: a field of the wrong type reads as not there (from_state)."""

    sent: Dict[str, float]  # kind -> when the last one went out (EVENT_MIN_INTERVAL counts from it)
    pending: Dict[str, Dict[str, Any]]  # kind -> its data, held back by the rate limit
    upload_seen: Optional[float] = None  # the newest upload looked at; None: bearings not taken yet
    failing_since: Optional[float] = None  # when uploads began to fail; None: the last one went well
    ingest_seen: float = 0.0  # the newest ingest looked at
    loss_bearings: bool = False  # the footage losses' bearings are taken (loss_seen is in the document)
    loss_seen: Optional[float] = None  # the newest footage loss looked at

    @classmethod
    def from_state(cls, doc: Any) -> "EventMemory":
        doc = doc if isinstance(doc, dict) else {}

        def wall(key: str) -> Optional[float]:
            return _number(doc.get(key)) if isinstance(doc.get(key), (int, float)) else None

        sent = doc.get("sent") if isinstance(doc.get("sent"), dict) else {}
        pending = doc.get("pending") if isinstance(doc.get("pending"), dict) else {}
        return cls(
            sent={str(k): w for k, w in sent.items() if _measured(w) is not None},
            pending={str(k): dict(v) for k, v in pending.items() if isinstance(v, dict)},
            upload_seen=wall("upload_seen") if "upload_seen" in doc else None,
            failing_since=wall("failing_since"),
            ingest_seen=wall("ingest_seen") or 0.0,
            loss_bearings="loss_seen" in doc,
            loss_seen=wall("loss_seen"),
        )

    def as_state(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"sent": dict(self.sent), "pending": {k: dict(v) for k, v in self.pending.items()},
                               "failing_since": self.failing_since, "ingest_seen": self.ingest_seen}
        if self.upload_seen is not None:
            doc["upload_seen"] = self.upload_seen
        if self.loss_bearings:
            doc["loss_seen"] = self.loss_seen
        return doc


def events_from_facts(
    facts: Dict[str, Any], memory: Dict[str, Any], now: float
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """What happened since the last tick, as events to send (rate-limited), and the new memory.

    Pure: the memory is the document the ledger keeps under ``mqtt_events`` between ticks (EventMemory)."""
    mem = EventMemory.from_state(memory)
    sent, pending = dict(mem.sent), {k: dict(v) for k, v in mem.pending.items()}
    upload = _section(facts, "last_upload")
    ingest = _section(facts, "last_ingest")

    # The first tick after notifications are switched on only takes its bearings: an
    # upload or ingest from before then is history, not news.
    baseline = mem.upload_seen is None
    upload_seen, failing_since = mem.upload_seen or 0, mem.failing_since
    up_wall = _number(_when(upload))
    if up_wall is not None and up_wall > upload_seen:
        upload_seen = up_wall
        if upload.get("result") == "ok":
            failing_since = None
            pending.pop("upload_failing", None)  # news that is no longer true
            files, size = _int(upload.get("files")) or 0, _int(upload.get("bytes")) or 0
            if files and not baseline:
                p = pending.setdefault("clips_uploaded", {"files": 0, "bytes": 0})
                p["files"] = (_int(p.get("files")) or 0) + files
                p["bytes"] = (_int(p.get("bytes")) or 0) + size
        elif failing_since is None:
            failing_since = up_wall
    if failing_since is not None and now - failing_since >= UPLOAD_FAILING_AFTER:
        staging = _section(facts, "staging")
        pending["upload_failing"] = {
            "since": failing_since,
            "result": upload.get("result"),
            "reason": upload.get("reason"),
            "backlog_files": _int(staging.get("backlog_files")),
        }

    ingest_seen = mem.ingest_seen
    in_wall = _number(_when(ingest))
    if in_wall is not None and in_wall > ingest_seen:
        ingest_seen = in_wall
        if ingest.get("result") == "failed" and not baseline:
            pending["card_read_error"] = {"result": "failed", "reason": ingest.get("reason"), "files": ingest.get("files")}

    # footage lost before it was copied: the newest loss found, once (a new one after the baseline)
    loss = _section(facts, "footage").get("last_loss")
    loss_wall = _number(_when(loss)) if isinstance(loss, dict) else None
    loss_seen = mem.loss_seen
    if loss_wall is not None and loss_wall != loss_seen:
        if mem.loss_bearings:
            p = pending.setdefault("footage_lost", {})
            p["minutes"] = _int(_section(facts, "footage").get("lost_minutes_7d"))
            p["last"] = loss.get("message")
        loss_seen = loss_wall

    events = []
    for kind in list(pending):
        last = sent.get(kind)
        if last is not None and now - last < EVENT_MIN_INTERVAL.get(kind, 3600):
            continue  # keep it pending; it goes out when the interval has passed
        data = pending.pop(kind)
        events.append(make_event(kind, data, now))
        sent[kind] = now
    new = EventMemory(sent=sent, pending=pending, upload_seen=upload_seen, failing_since=failing_since,
                      ingest_seen=ingest_seen, loss_bearings=True, loss_seen=loss_seen)
    return events, new.as_state()


def make_event(kind: str, data: Dict[str, Any], now: float) -> Dict[str, Any]:
    event = {"event_type": kind, "time": iso(now), "message": _message(kind, data)}
    event.update({k: v for k, v in data.items() if k not in event})
    return event


# ---------------------------------------------------------------- the MQTT session


_warned_missing = False


def _paho():
    """paho.mqtt.client, imported on use; None (and one warning per process) when it is missing."""
    global _warned_missing
    try:
        import paho.mqtt.client as client  # Debian: python3-paho-mqtt (Recommends)

        return client
    except ImportError:
        if not _warned_missing:
            log.warning("mqtt: configured, but python3-paho-mqtt is not installed (apt install python3-paho-mqtt); nothing published")
            _warned_missing = True
        return None


class _Refused(Exception):
    """The broker said no (or we cannot even ask): the user has to fix something."""


class _NoAnswer(Exception):
    """Connected, but no CONNACK before the deadline."""


PASSWORD_USER = "dashcam"  # besides root, the only user who may read the password file


def _allowed_readers(user: str = PASSWORD_USER) -> Tuple[Set[int], Set[int]]:
    """(uids, gids) that may own the password file and read it: root's and ``user``'s."""
    import grp
    import pwd

    uids, gids = {0}, {0}
    try:
        pw = pwd.getpwnam(user)
        uids.add(pw.pw_uid)
        gids.add(pw.pw_gid)
    except KeyError:
        pass
    try:
        gids.add(grp.getgrnam(user).gr_gid)
    except KeyError:
        pass
    return uids, gids


def password_file_problem(path: str, st: os.stat_result, allowed: Optional[Tuple[Set[int], Set[int]]] = None) -> Optional[str]:
    """Why the password file is open to others than root and dashcam, or None when it is not."""
    uids, gids = allowed if allowed is not None else _allowed_readers()
    mode = stat.S_IMODE(st.st_mode)
    fix = f"chown root:{PASSWORD_USER} {path}; chmod 0640 {path}"
    if mode & 0o007:
        return f"mqtt.password_file {path} is open to every user (mode {mode:04o}): {fix}"
    if st.st_uid not in uids:
        return f"mqtt.password_file {path} belongs to uid {st.st_uid}, neither root nor {PASSWORD_USER}: {fix}"
    if mode & 0o070 and st.st_gid not in gids:
        return f"mqtt.password_file {path} is open to group {st.st_gid}, neither root nor {PASSWORD_USER}: {fix}"
    return None


class BadPasswordFile(_Refused):
    """The password file is readable by others than root and dashcam: refused, never sent."""


def read_password(path: str, allowed: Optional[Tuple[Set[int], Set[int]]] = None) -> str:
    """The first line of the password file, when only root and dashcam can read it. Errors name
    the file, never its content."""
    try:
        with open(path, encoding="utf-8") as f:
            problem = password_file_problem(path, os.fstat(f.fileno()), allowed)
            if problem:
                raise BadPasswordFile(problem)
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise _Refused(f"cannot read mqtt.password_file {path}: {e.strerror or e}")


_warned_plaintext = False


def warn_plaintext(cfg, ledger=None) -> bool:
    """Warn once that the password goes to the broker unencrypted (mqtt.tls off). With a ledger
    (the policy tick, every 30 s) once per broker and user, remembered there; else once per process."""
    global _warned_plaintext
    m = cfg.mqtt
    if m is None or m.tls or not m.password_file or _warned_plaintext:
        return False
    _warned_plaintext = True
    if ledger is not None:
        key = {"host": m.host, "port": m.port, "username": m.username}
        if ledger.get_state(PLAINTEXT_STATE_KEY) == key:
            return False
        ledger.put_state(PLAINTEXT_STATE_KEY, key)
    log.warning("mqtt: the password for %s goes to %s:%d unencrypted (mqtt.tls is off): anyone on the "
                "network path can read it; set mqtt.tls: true (and mqtt.ca_file) if the broker offers TLS",
                m.username, m.host, m.port)
    return True


def _new_client(paho, cid: str):
    kwargs = {"client_id": cid, "clean_session": True, "protocol": paho.MQTTv311}
    api = getattr(paho, "CallbackAPIVersion", None)
    if api is not None:  # paho-mqtt 2.x wants the callback API chosen explicitly
        return paho.Client(api.VERSION2, **kwargs)
    return paho.Client(**kwargs)  # paho-mqtt 1.x (Debian bookworm: 1.6)


def _connack_text(paho, rc: Any) -> str:
    if hasattr(rc, "getName"):  # 2.x ReasonCode
        return str(rc.getName())
    try:
        return paho.connack_string(rc)
    except Exception:
        return f"code {rc}"


def connect(cfg, paho, deadline: float):
    """A client connected to the broker (CONNACK received) with the will ``offline`` set.
    Raises OSError/ValueError when the broker cannot be reached, _Refused when it says no,
    _NoAnswer when it does not answer before ``deadline`` (time.monotonic())."""
    m = cfg.mqtt
    client = _new_client(paho, client_id(cfg))
    client.will_set(topics(cfg).availability, OFFLINE, qos=1, retain=True)
    if m.username:
        client.username_pw_set(m.username, read_password(m.password_file) if m.password_file else None)
    if m.tls:
        client.tls_set(ca_certs=m.ca_file)
    if hasattr(type(client), "connect_timeout"):
        client.connect_timeout = CONNECT_TIMEOUT
    else:
        client._connect_timeout = CONNECT_TIMEOUT  # paho 1.6 has no setter; create_connection() uses it
    connack: Dict[str, Any] = {}

    def on_connect(_client, _userdata, _flags, rc, _properties=None):
        connack["rc"] = rc

    client.on_connect = on_connect
    client.connect(m.host, m.port, m.keepalive)
    while "rc" not in connack and time.monotonic() < deadline:
        if client.loop(timeout=min(0.05, max(0.0, deadline - time.monotonic()))) != 0:
            break
    rc = connack.get("rc")
    if rc is None:
        raise _NoAnswer(f"no answer from the broker {m.host}:{m.port}")
    if getattr(rc, "value", rc) != 0:
        raise _Refused(f"the broker {m.host}:{m.port} refused the connection: {_connack_text(paho, rc)}")
    return client


def _session(cfg, paho, messages: List[Tuple[str, str, bool]], deadline: float, result: Dict[str, Any]) -> None:
    """Connect, publish (topic, payload, retain) at QoS 1, wait for the acks, disconnect
    cleanly. Fills result["ok"] / result["error"]; never raises."""
    m = cfg.mqtt
    try:
        client = connect(cfg, paho, deadline)
        infos = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload, retain in messages]
        while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
            if client.loop(timeout=min(0.05, max(0.0, deadline - time.monotonic()))) != 0:
                break
        done = sum(1 for i in infos if i.is_published())
        client.disconnect()  # a clean DISCONNECT: the broker discards the will
        if done < len(infos):
            result["error"] = f"the broker {m.host}:{m.port} acknowledged {done} of {len(infos)} messages in time"
            return
        result["ok"] = True
    except _Refused as e:
        result["error"] = str(e)
        result["refused"] = True
    except _NoAnswer as e:
        result["error"] = str(e)
    except (OSError, ValueError) as e:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
        result["error"] = f"cannot reach the broker {m.host}:{m.port}: {e}"
    except Exception as e:  # whatever a client library may throw: the tick goes on
        result["error"] = f"publishing to {m.host}:{m.port} failed: {type(e).__name__}: {e}"


class Outcome(Record):
    ok: bool
    why: str = ""  # why nothing (or not everything) was published
    misconfigured: bool = False  # the broker refused us or the password file is unreadable: the user must act

    def __bool__(self) -> bool:
        return self.ok


def send(cfg, messages: List[Tuple[str, str, bool]], *, budget: float = TICK_BUDGET) -> Outcome:
    """Publish (topic, payload, retain) messages in one session within ``budget`` seconds."""
    if cfg.mqtt is None:
        return Outcome(False, "mqtt is not configured", True)
    paho = _paho()
    if paho is None:
        return Outcome(False, "python3-paho-mqtt is not installed", True)
    result: Dict[str, Any] = {}
    deadline = time.monotonic() + budget
    worker = threading.Thread(target=_session, args=(cfg, paho, messages, deadline, result), daemon=True)
    worker.start()
    worker.join(budget + 0.05)
    if worker.is_alive():  # e.g. a DNS lookup that hangs: leave it behind, the tick goes on
        return Outcome(False, f"gave up on the broker {cfg.mqtt.host}:{cfg.mqtt.port} after {budget:.1f} s")
    if result.get("ok"):
        return Outcome(True)
    return Outcome(False, result.get("error", "unknown failure"), bool(result.get("refused")))


def _report_failure(outcome: Outcome) -> None:
    # An unreachable broker is normal in the car: info, or the journal fills up twice a
    # minute. A refusal (bad user/password, unreadable password file) needs the user: warning.
    level = WARNING if outcome.misconfigured else INFO
    log.log(level, "mqtt: nothing published: %s", outcome.why)


def state_messages(cfg, facts: Dict[str, Any], now: Optional[float] = None) -> List[Tuple[str, str, bool]]:
    t = topics(cfg)
    msgs = [(topic, dumps(conf, sort_keys=True), True) for topic, conf in discovery_messages(cfg, t)]
    msgs.append((t.availability, ONLINE, True))
    msgs.append((t.state, dumps(state_document(facts, now), sort_keys=True), True))
    return msgs


def publish_state(cfg, facts: Dict[str, Any], *, budget: float = TICK_BUDGET) -> None:
    """Publish discovery, ``online`` and the state (and due events). Never raises; bounded time."""
    try:
        if cfg.mqtt is None:
            return
        if cfg.mqtt.password_file and not cfg.mqtt.tls:
            from .ledger import Ledger

            with Ledger(cfg.paths.ledger) as ledger:
                warn_plaintext(cfg, ledger)
        now = time.time()
        msgs = state_messages(cfg, facts, now)
        memory = None
        if cfg.mqtt.notifications:
            memory, events = _due_events(cfg, facts, now)
            t = topics(cfg)
            msgs += [(t.event, dumps(e, sort_keys=True), False) for e in events]
        outcome = send(cfg, msgs, budget=budget)
        if not outcome:
            _report_failure(outcome)
            return
        log.debug("mqtt: published %d messages", len(msgs))
        if memory is not None:  # only once the events are out; else they stay pending
            _save_memory(cfg, memory)
    except Exception as e:  # never break the tick
        log.warning("mqtt: publishing failed: %s: %s", type(e).__name__, e)


def publish_offline(cfg, *, budget: float = TICK_BUDGET) -> bool:
    """Mark the device offline (clean shutdown). Never raises."""
    try:
        if cfg.mqtt is None:
            return False
        outcome = send(cfg, [(topics(cfg).availability, OFFLINE, True)], budget=budget)
        if not outcome:
            _report_failure(outcome)
        return outcome.ok
    except Exception as e:
        log.warning("mqtt: publishing offline failed: %s: %s", type(e).__name__, e)
        return False


def publish_event(cfg, kind: str, data: Optional[Dict[str, Any]] = None, *, budget: float = TICK_BUDGET) -> bool:
    """Send one event now (e.g. the policy's ``low_battery_shutdown``), rate-limited per kind
    through the ledger. Returns True when it went out. Never raises."""
    try:
        if cfg.mqtt is None or not cfg.mqtt.notifications:
            return False
        now = time.time()
        memory = _load_memory(cfg)
        last = memory.sent.get(kind)
        if last is not None and now - last < EVENT_MIN_INTERVAL.get(kind, 3600):
            log.debug("mqtt: event %s rate-limited", kind)
            return False
        event = make_event(kind, data or {}, now)
        outcome = send(cfg, [(topics(cfg).event, dumps(event, sort_keys=True), False)], budget=budget)
        if not outcome:
            _report_failure(outcome)
            return False
        _save_memory(cfg, memory.replace(sent={**memory.sent, kind: now}))
        return True
    except Exception as e:
        log.warning("mqtt: event %s failed: %s: %s", kind, type(e).__name__, e)
        return False


def _load_memory(cfg) -> EventMemory:
    """The events' memory; an empty one (take bearings, announce nothing old) when the ledger cannot be read:
    a damaged or locked ledger must not keep the state from reaching Home Assistant."""
    import sqlite3

    from .ledger import Ledger, LedgerError

    try:
        with Ledger(cfg.paths.ledger) as ledger:
            value = ledger.get_state(EVENTS_STATE_KEY, {})
    except (LedgerError, sqlite3.Error) as e:
        log.warning("mqtt: events skipped, the ledger cannot be read: %s", e)
        value = {}
    return EventMemory.from_state(value)


def _save_memory(cfg, memory: EventMemory) -> None:
    import sqlite3

    from .ledger import Ledger, LedgerError

    try:
        with Ledger(cfg.paths.ledger) as ledger:
            ledger.put_state(EVENTS_STATE_KEY, memory.as_state())
    except (LedgerError, sqlite3.Error) as e:
        log.warning("mqtt: the events' rate limits could not be kept in the ledger: %s", e)


def _due_events(cfg, facts: Dict[str, Any], now: float) -> Tuple[EventMemory, List[Dict[str, Any]]]:
    events, memory = events_from_facts(facts, _load_memory(cfg).as_state(), now)
    return EventMemory.from_state(memory), events


# ---------------------------------------------------------------- dashcamctl mqtt-publish

CLI_BUDGET = 5.0  # by hand, wait long enough to report the real reason, not the tick's impatience


def gather_facts(cfg) -> Dict[str, Any]:
    """What `dashcamctl status --json` reports (battery, camera, staging, server, last runs)."""
    from . import status

    return status.gather(cfg)


def command(args, cfg):
    """dashcamctl mqtt-publish [--offline] [--if-configured] [--json]: publish once, say clearly how it went."""
    from .errors import BadConfig, DashcamError, TryLater

    if cfg.mqtt is None and args.if_configured:
        return 0  # the shutdown unit runs on every Pi; most have no broker
    if cfg.mqtt is None:
        raise BadConfig(f"{cfg.path}: mqtt is not configured (no mqtt section, or mqtt.enabled is false)")
    if cfg.mqtt.password_file:
        try:
            read_password(cfg.mqtt.password_file)
        except BadPasswordFile as e:
            raise BadConfig(str(e))
        except _Refused:
            pass  # unreadable: send() names it
    warn_plaintext(cfg)
    t = topics(cfg)
    broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    if args.offline:
        messages = [(t.availability, OFFLINE, True)]
        doc = None
    else:
        facts = gather_facts(cfg)
        doc = state_document(facts)
        messages = state_messages(cfg, facts)
    if args.dry_run:
        for topic, payload, retain in messages:
            print(f"would publish{' (retained)' if retain else ''} {topic} {payload}")
        return 0
    outcome = send(cfg, messages, budget=CLI_BUDGET)
    document = {"ok": outcome.ok, "error": outcome.why or None, "broker": broker, "state_topic": t.state,
                "availability_topic": t.availability, "messages": len(messages), "state": doc}
    if not outcome:
        err = (DashcamError if outcome.misconfigured else TryLater)(f"mqtt: nothing published: {outcome.why}")
        if not args.json:
            raise err
        log.error("%s", err)  # the document says it too, on stdout
        return err.exit_code, document
    if not args.json:
        if args.offline:
            print(f"published to {broker}: {t.availability} = offline")
        else:
            print(f"published to {broker}: {len(messages) - 2} discovery configs under "
                  f"{cfg.mqtt.discovery_prefix}/, {t.availability} = online, state on {t.state}")
            print(f'Home Assistant shows it as the device "{t.device_name}" (Settings > Devices & services > MQTT)')
    return 0, document
