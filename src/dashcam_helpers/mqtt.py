"""Home Assistant over MQTT: the session with the broker and what is published when. What the
messages say lives in homeassistant (discovery configs, the state document) and events (the news).

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

import os
import stat
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from .events import EVENT_MIN_INTERVAL, EVENTS_STATE_KEY, EventMemory, events_from_facts, make_event
from .homeassistant import EVENT_TYPES, OFFLINE, ONLINE, SENSORS, client_id, discovery_messages, state_document, topics
from .strictjson import dumps  # strict JSON: no NaN/Infinity in a payload (unknown is null)
from .record import Record
from .log import INFO, WARNING, get as get_logger

# what `from dashcam_helpers import mqtt` offers: the session and the publishing, and what Home
# Assistant is sent (homeassistant: discovery and state; events: the news)
__all__ = [
    "send", "connect", "Outcome", "read_password", "password_file_problem", "BadPasswordFile", "warn_plaintext",
    "state_messages", "publish_state", "publish_offline", "publish_event", "command", "dumps",
    "topics", "client_id", "discovery_messages", "state_document", "SENSORS", "ONLINE", "OFFLINE",
    "EVENT_TYPES", "EVENT_MIN_INTERVAL", "EventMemory", "events_from_facts", "make_event",
]

log = get_logger("dashcam.mqtt")

# Budget of one publish from the policy tick. Connection attempts get CONNECT_TIMEOUT; the
# whole session (DNS, TCP, TLS, CONNACK, PUBACKs) runs in a daemon thread that the tick
# waits for at most TICK_BUDGET seconds, then leaves behind (the process exits soon after).
TICK_BUDGET = 0.7
CONNECT_TIMEOUT = 0.5

# the broker and user last warned about a password sent without TLS (warn_plaintext)
PLAINTEXT_STATE_KEY = "mqtt_plaintext_warned"


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
        from . import status

        facts = status.gather(cfg)  # what `dashcamctl status` shows
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
