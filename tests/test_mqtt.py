"""Home Assistant over MQTT, against a real Mosquitto broker started on 127.0.0.1 by the test."""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import SRC
from dashcam_helpers import config, mqtt

paho = pytest.importorskip("paho.mqtt.client", reason="python3-paho-mqtt is in the Makefile's DEPS")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is in the Makefile's DEPS")

# what `dashcamctl status --json` prints (the shape the policy tick hands to publish_state)
FACTS = {
    "battery": {
        "source": "lifepo4wered",
        "millivolts": 3611,
        "percent": 95,
        "external": True,
        "raw": {"VIN": 5208, "VBAT": 3611, "VOUT": 4979, "IOUT": 857},
    },
    "camera": {"mode": "record", "attached": None},
    "staging": {"backlog_files": 12, "backlog_bytes": 1800000000, "free_bytes": 25000000000},
    "server": {"reachable": False},
    "last_ingest": {"wall": 1764534359.5, "files": 12, "bytes": 1800000000, "result": "ok"},
    "last_upload": {"wall": 1764530000, "files": 0, "bytes": 0, "result": "unreachable", "reason": "no route"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Broker:
    def __init__(self, tmp_path: Path, users=None, listener_options=()):
        self.port = free_port()
        conf = tmp_path / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", *listener_options, "persistence false", "log_dest stderr", "log_type error",
                 # started as root, mosquitto would drop to its own user, who cannot read tmp_path
                 f"user {pwd.getpwuid(os.getuid()).pw_name}"]
        if users:
            pwfile = tmp_path / "mosquitto.passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(
                    ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(pwfile), user, password],
                    check=True, capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines += ["allow_anonymous true"]
        conf.write_text("\n".join(lines) + "\n")
        self.log = open(tmp_path / "mosquitto.log", "wb")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)

        def listening():
            assert self.proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, what="mosquitto to listen")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    yield b
    b.stop()


class Listener:
    """A Home Assistant stand-in: subscribes to everything and keeps the last payload per topic."""

    def __init__(self, port: int, topic: str = "#"):
        self.messages = {}
        self.retained = {}
        self.all = []
        self.lock = threading.Lock()
        api = getattr(paho, "CallbackAPIVersion", None)
        self.client = paho.Client(api.VERSION2) if api else paho.Client()
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5)

    def _on_message(self, _client, _userdata, msg):
        with self.lock:
            self.messages[msg.topic] = msg.payload.decode()
            self.retained[msg.topic] = bool(msg.retain)
            self.all.append((msg.topic, msg.payload.decode()))

    def get(self, topic):
        with self.lock:
            return self.messages.get(topic)

    def wait_for(self, topic, payload=None, timeout=10.0):
        wait_until(lambda: self.get(topic) is not None and (payload is None or self.get(topic) == payload),
                   timeout, f"{topic} = {payload!r} (have {self.get(topic)!r})")
        return self.get(topic)

    def close(self):
        self.client.disconnect()  # first, so the network thread stops without waiting out its select
        self.client.loop_stop()


@pytest.fixture
def listen(broker):
    listeners = []

    def make(topic="#"):
        listener = Listener(broker.port, topic)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.close()


def mqtt_config(make_config, port, **mqtt_keys):
    section = {"host": "127.0.0.1", "port": port, "base_topic": "dashcam/testpi", **mqtt_keys}
    return config.load(str(make_config({"mqtt": section})))


# ------------------------------------------------------------------ discovery and state


def test_discovery_configs_are_valid_json_with_what_home_assistant_requires(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    mqtt.publish_state(cfg, FACTS)
    ha = listen("homeassistant/#")
    t = mqtt.topics(cfg)
    expected = {f"homeassistant/{s.component}/{t.node_id}/{s.key}/config": s for s in mqtt.SENSORS}
    wait_until(lambda: all(ha.get(topic) for topic in expected), what="every discovery config")
    unique_ids = set()
    for topic, sensor in expected.items():
        assert ha.retained[topic], f"{topic} must be retained so HA finds it after a restart"
        conf = json.loads(ha.get(topic))
        for field in ("name", "unique_id", "state_topic", "value_template", "availability_topic", "device"):
            assert conf.get(field), f"{topic}: {field} missing"
        assert conf["state_topic"] == "dashcam/testpi/state"
        assert conf["availability_topic"] == "dashcam/testpi/availability"
        assert (conf["payload_available"], conf["payload_not_available"]) == ("online", "offline")
        assert conf["expire_after"] == 120
        assert conf["device"]["identifiers"] == [t.node_id]
        assert conf["device"]["name"].startswith("Dashcam manager ")
        for field in ("model", "manufacturer", "sw_version"):
            assert conf["device"][field]
        if sensor.component == "binary_sensor":
            assert (conf["payload_on"], conf["payload_off"]) == ("ON", "OFF")
        unique_ids.add(conf["unique_id"])
    assert len(unique_ids) == len(expected)

    def conf(component, key):
        return json.loads(ha.get(f"homeassistant/{component}/{t.node_id}/{key}/config"))

    assert conf("sensor", "battery_voltage")["unit_of_measurement"] == "V"
    assert conf("sensor", "battery_voltage")["device_class"] == "voltage"
    assert conf("sensor", "battery_voltage")["state_class"] == "measurement"
    assert (conf("sensor", "battery_percent")["device_class"], conf("sensor", "battery_percent")["unit_of_measurement"]) == ("battery", "%")
    assert conf("binary_sensor", "external_power")["device_class"] == "power"
    assert (conf("sensor", "output_current")["device_class"], conf("sensor", "output_current")["unit_of_measurement"]) == ("current", "A")
    assert (conf("sensor", "output_power")["device_class"], conf("sensor", "output_power")["unit_of_measurement"]) == ("power", "W")
    assert (conf("sensor", "backlog_bytes")["device_class"], conf("sensor", "backlog_bytes")["unit_of_measurement"]) == ("data_size", "B")
    assert conf("sensor", "staging_free_bytes")["device_class"] == "data_size"
    assert conf("sensor", "last_ingest")["device_class"] == "timestamp"
    assert conf("sensor", "last_upload")["device_class"] == "timestamp"
    assert conf("binary_sensor", "server_reachable")["device_class"] == "connectivity"
    assert conf("sensor", "camera_mode")["options"] == ["record", "data", "off", "unknown"]


def test_the_state_arrives_retained_with_the_right_values_and_the_device_online(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    started = time.time()
    mqtt.publish_state(cfg, FACTS)
    ha = listen("dashcam/testpi/#")
    state = json.loads(ha.wait_for("dashcam/testpi/state"))
    assert ha.retained["dashcam/testpi/state"]
    assert ha.wait_for("dashcam/testpi/availability") == "online"
    assert state["battery_voltage"] == 3.611
    assert state["battery_percent"] == 95
    assert state["external_power"] == "ON"
    assert state["input_voltage"] == 5.208
    assert state["output_voltage"] == 4.979
    assert state["output_current"] == 0.857
    assert state["output_power"] == round(4.979 * 0.857, 2)
    assert state["camera_mode"] == "record"
    assert state["backlog_files"] == 12 and state["backlog_bytes"] == 1800000000
    assert state["staging_free_bytes"] == 25000000000
    assert state["last_ingest"] == "2025-11-30T20:25:59+00:00"
    assert state["last_upload"] == "2025-11-30T19:13:20+00:00"
    assert state["last_upload_result"] == "unreachable"
    assert state["server_reachable"] == "OFF"
    assert abs(time.mktime(time.strptime(state["updated"], "%Y-%m-%dT%H:%M:%S+00:00")) - time.timezone - started) < 60
    # every sensor finds its key in the document its value_template reads
    assert {s.key for s in mqtt.SENSORS} <= set(state)


def test_missing_facts_are_published_as_unknown_not_left_out(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    mqtt.publish_state(cfg, {"battery": {"source": "none", "millivolts": None, "percent": None, "external": True, "raw": {}},
                             "camera": {"mode": "sideways"}})
    ha = listen("dashcam/testpi/state")
    state = json.loads(ha.wait_for("dashcam/testpi/state"))
    assert state["external_power"] == "ON"
    for key in ("battery_voltage", "battery_percent", "input_voltage", "output_power", "camera_mode",
                "backlog_files", "last_upload", "server_reachable"):
        assert key in state and state[key] is None, key


def test_the_battery_info_script_shape_is_read_in_volts_and_amps():
    doc = mqtt.state_document({"battery": {"raw": json.loads((Path(__file__).parent / "fixtures" / "battery-info.json").read_text())}})
    assert (doc["battery_voltage"], doc["input_voltage"], doc["output_voltage"]) == (3.61, 5.21, 4.98)
    assert (doc["output_current"], doc["output_power"]) == (0.86, 4.29)


def test_an_unread_lifepo4wered_register_is_unknown_not_negative():
    doc = mqtt.state_document({"battery": {"raw": {"VIN": -2, "VOUT": 4979, "IOUT": -1}}})
    assert (doc["input_voltage"], doc["output_voltage"], doc["output_current"], doc["output_power"]) == (None, 4.979, None, None)


def test_a_later_tick_replaces_the_state(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    mqtt.publish_state(cfg, FACTS)
    later = json.loads(json.dumps(FACTS))
    later["camera"]["mode"] = "data"
    later["server"]["reachable"] = True
    mqtt.publish_state(cfg, later)
    ha = listen("dashcam/testpi/state")
    state = json.loads(ha.wait_for("dashcam/testpi/state"))
    assert (state["camera_mode"], state["server_reachable"]) == ("data", "ON")


def test_no_mqtt_section_publishes_nothing_and_imports_no_client(make_config, broker, listen):
    cfg = config.load(str(make_config()))
    assert cfg.mqtt is None
    ha = listen()
    mqtt.publish_state(cfg, FACTS)
    time.sleep(0.3)  # nothing is expected to arrive; give a stray publish the time it would need
    assert ha.all == []
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from dashcam_helpers import config, mqtt;"
         f"mqtt.publish_state(config.load({str(make_config())!r}), {{}});"
         "print('paho.mqtt.client' in sys.modules)"],
        env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "False"


# ------------------------------------------------------------------ availability and the last will

PUBLISHER = """
import sys, time
from dashcam_helpers import config, mqtt
cfg = config.load(sys.argv[1])
client = mqtt.connect(cfg, mqtt._paho(), time.monotonic() + 5)
infos = [client.publish(t, p, qos=1, retain=r) for t, p, r in mqtt.state_messages(cfg, {})]
while not all(i.is_published() for i in infos):
    client.loop(0.05)
print("published", flush=True)
while True:
    client.loop(1.0)
"""


def test_the_last_will_marks_the_device_offline_when_the_publisher_dies(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    ha = listen("dashcam/testpi/availability")
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, cfg.path],
        env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "published"
        assert ha.wait_for("dashcam/testpi/availability", "online") == "online"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert ha.wait_for("dashcam/testpi/availability", "offline") == "offline"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_tick_that_ends_cleanly_leaves_the_device_online(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    ha = listen("dashcam/testpi/availability")
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from dashcam_helpers import config, mqtt;"
         "mqtt.publish_state(config.load(sys.argv[1]), {})", cfg.path],
        env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    assert ha.wait_for("dashcam/testpi/availability", "online") == "online"
    time.sleep(0.5)  # a will would arrive right after the process exits
    assert [p for t, p in ha.all] == ["online"]


def test_a_clean_shutdown_publishes_offline(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    mqtt.publish_state(cfg, FACTS)
    assert mqtt.publish_offline(cfg) is True
    ha = listen("dashcam/testpi/availability")
    assert ha.wait_for("dashcam/testpi/availability") == "offline"


# ------------------------------------------------------------------ a broker that is not there


def timed_publish(cfg, caplog):
    caplog.set_level(logging.INFO, logger="dashcam.mqtt")
    start = time.monotonic()
    mqtt.publish_state(cfg, FACTS)  # must not raise
    return time.monotonic() - start


def test_nothing_listening_costs_the_tick_less_than_a_second(make_config, caplog):
    cfg = mqtt_config(make_config, free_port())
    assert timed_publish(cfg, caplog) < 1.0
    assert "cannot reach the broker 127.0.0.1" in caplog.text


def test_a_port_that_accepts_but_never_answers_costs_less_than_a_second(make_config, caplog):
    with socket.socket() as silent:  # the TCP handshake completes, no CONNACK ever comes
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        cfg = mqtt_config(make_config, silent.getsockname()[1])
        assert timed_publish(cfg, caplog) < 1.0
    assert "no answer from the broker" in caplog.text or "gave up on the broker" in caplog.text


def test_a_broker_dropping_connection_attempts_costs_less_than_a_second(make_config, caplog):
    # A listener whose accept queue is full drops further SYNs, as a blackholed address does.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.3)
        with pytest.raises(OSError):
            probe.connect(("127.0.0.1", port))  # proves the port really drops attempts now
        probe.close()
        cfg = mqtt_config(make_config, port)
        assert timed_publish(cfg, caplog) < 1.0
        for s in fillers:
            s.close()
    assert "nothing published" in caplog.text


def test_a_broker_that_goes_away_between_ticks_costs_less_than_a_second(make_config, tmp_path, caplog):
    b = Broker(tmp_path)
    cfg = mqtt_config(make_config, b.port)
    mqtt.publish_state(cfg, FACTS)
    b.stop()
    assert timed_publish(cfg, caplog) < 1.0


# ------------------------------------------------------------------ credentials


@pytest.fixture
def auth_broker(tmp_path):
    b = Broker(tmp_path, users={"dashcam": "s3cret-pw"})
    yield b
    b.stop()


def test_username_and_password_file_log_in_and_the_password_is_never_logged(make_config, tmp_path, auth_broker, caplog):
    caplog.set_level(logging.DEBUG)
    pw = tmp_path / "mqtt.pw"
    pw.write_text("s3cret-pw\n")
    pw.chmod(0o640)
    cfg = mqtt_config(make_config, auth_broker.port, username="dashcam", password_file=str(pw))
    assert mqtt.send(cfg, [("dashcam/testpi/probe", "1", False)]).ok
    pw.write_text("wrong-pw\n")
    outcome = mqtt.send(cfg, [("dashcam/testpi/probe", "1", False)])
    assert not outcome.ok and outcome.misconfigured
    assert "refused the connection" in outcome.why
    mqtt.publish_state(cfg, FACTS)
    assert "refused the connection" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == "dashcam.mqtt")
    assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text


def test_an_unreadable_password_file_is_named_and_nothing_breaks(make_config, tmp_path, auth_broker, caplog):
    cfg = mqtt_config(make_config, auth_broker.port, username="dashcam", password_file=str(tmp_path / "nope"))
    outcome = mqtt.send(cfg, [("x", "1", False)])
    assert not outcome.ok and outcome.misconfigured
    assert f"cannot read mqtt.password_file {tmp_path / 'nope'}" in outcome.why


# ------------------------------------------------------------------ dashcamctl mqtt-publish


def test_mqtt_publish_reports_success_and_home_assistant_gets_the_ledger_facts(make_config, broker, listen, dashcamctl):
    path = make_config({"mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": "dashcam/testpi"}})
    from dashcam_helpers.ledger import Ledger

    cfg = config.load(str(path))
    os.makedirs(cfg.paths.local_staging)  # the package's tmpfiles.d creates it on the Pi
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.put_state("last_upload", {"wall": 1764530000, "files": 3, "bytes": 300, "result": "ok", "reason": None})
    r = dashcamctl("--config", str(path), "mqtt-publish")
    assert r.returncode == 0, r.stderr
    assert f"published to 127.0.0.1:{broker.port}" in r.stdout and "dashcam/testpi/state" in r.stdout
    ha = listen("dashcam/testpi/state")
    state = json.loads(ha.wait_for("dashcam/testpi/state"))
    assert (state["last_upload_result"], state["last_upload"]) == ("ok", "2025-11-30T19:13:20+00:00")
    assert state["backlog_files"] == 0 and state["staging_free_bytes"] > 0


def test_mqtt_publish_with_the_broker_down_says_so_and_exits_try_later(make_config, dashcamctl):
    path = make_config({"mqtt": {"host": "127.0.0.1", "port": free_port()}})
    r = dashcamctl("--config", str(path), "mqtt-publish")
    assert r.returncode == 75
    assert "nothing published: cannot reach the broker 127.0.0.1" in r.stderr and "Connection refused" in r.stderr


def test_mqtt_publish_without_an_mqtt_section_is_a_config_error(make_config, dashcamctl):
    r = dashcamctl("--config", str(make_config()), "mqtt-publish")
    assert r.returncode == 78 and "mqtt is not configured" in r.stderr


def test_mqtt_publish_offline_marks_the_device_offline(make_config, broker, listen, dashcamctl):
    path = make_config({"mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": "dashcam/testpi"}})
    assert dashcamctl("--config", str(path), "mqtt-publish").returncode == 0
    r = dashcamctl("--config", str(path), "mqtt-publish", "--offline", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    ha = listen("dashcam/testpi/availability")
    assert ha.wait_for("dashcam/testpi/availability") == "offline"


# ------------------------------------------------------------------ notifications

DAY = 24 * 3600


def upload(wall, result="ok", files=2, size=2000):
    return {"last_upload": {"wall": wall, "files": files, "bytes": size, "result": result, "reason": None},
            "staging": {"backlog_files": 7}}


def test_the_first_tick_takes_its_bearings_without_announcing_history():
    events, memory = mqtt.events_from_facts(upload(1000), {}, now=1010)
    assert events == [] and memory["upload_seen"] == 1000


def test_uploads_are_announced_and_ones_within_the_interval_are_added_up_not_lost():
    _, mem = mqtt.events_from_facts(upload(1000), {}, now=1000)
    events, mem = mqtt.events_from_facts(upload(2000, files=3, size=300), mem, now=2000)
    assert [(e["event_type"], e["files"], e["bytes"]) for e in events] == [("clips_uploaded", 3, 300)]
    assert events[0]["message"] == "3 clip(s) uploaded (300 bytes)"
    events, mem = mqtt.events_from_facts(upload(2100, files=1, size=10), mem, now=2100)
    assert events == []  # within 15 minutes of the last one: kept
    events, mem = mqtt.events_from_facts(upload(2200, files=4, size=40), mem, now=2200)
    assert events == []
    events, mem = mqtt.events_from_facts(upload(2200, files=4, size=40), mem, now=2000 + 15 * 60)
    assert [(e["files"], e["bytes"]) for e in events] == [(5, 50)]


def test_uploads_failing_for_a_day_are_announced_once_a_day():
    _, mem = mqtt.events_from_facts(upload(1000), {}, now=1000)
    events, mem = mqtt.events_from_facts(upload(2000, "unreachable"), mem, now=2000)
    assert events == []
    events, mem = mqtt.events_from_facts(upload(2000 + DAY - 60, "unreachable"), mem, now=2000 + DAY - 1)
    assert events == []
    events, mem = mqtt.events_from_facts(upload(2000 + DAY, "failed"), mem, now=2000 + DAY)
    assert [e["event_type"] for e in events] == ["upload_failing"]
    assert events[0]["since"] == 2000 and events[0]["backlog_files"] == 7
    events, mem = mqtt.events_from_facts(upload(2000 + DAY + 30, "failed"), mem, now=2000 + DAY + 30)
    assert events == []
    events, mem = mqtt.events_from_facts(upload(2000 + 2 * DAY, "failed"), mem, now=2000 + 2 * DAY)
    assert [e["event_type"] for e in events] == ["upload_failing"]
    events, mem = mqtt.events_from_facts(upload(2000 + 2 * DAY + 40, "ok"), mem, now=2000 + 2 * DAY + 40)
    assert mem["failing_since"] is None


def test_a_failing_notice_held_back_by_the_rate_limit_is_dropped_once_uploads_work_again():
    _, mem = mqtt.events_from_facts(upload(1000, "failed"), {}, now=1000)
    events, mem = mqtt.events_from_facts(upload(1000 + DAY, "failed"), mem, now=1000 + DAY)
    assert [e["event_type"] for e in events] == ["upload_failing"]
    events, mem = mqtt.events_from_facts(upload(1000 + 2 * DAY - 10, "failed"), mem, now=1000 + 2 * DAY - 10)
    assert events == [] and "upload_failing" in mem["pending"]  # due, but a day has not passed since the last
    events, mem = mqtt.events_from_facts(upload(1000 + 2 * DAY - 5, "ok", files=0), mem, now=1000 + 2 * DAY + 10)
    assert events == [] and mem["pending"] == {}


def test_a_failed_card_read_is_announced():
    _, mem = mqtt.events_from_facts({"last_ingest": {"wall": 100, "result": "ok"}}, {}, now=100)
    events, mem = mqtt.events_from_facts(
        {"last_ingest": {"wall": 200, "result": "failed", "files": 1, "reason": "I/O error on DCIM/x.MP4"}}, mem, now=200)
    assert [e["event_type"] for e in events] == ["card_read_error"]
    assert "I/O error" in events[0]["message"]


def test_events_go_out_on_the_tick_connection_and_their_rate_limit_lives_in_the_ledger(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port, notifications=True)
    ha = listen("dashcam/testpi/event")
    now = time.time()
    mqtt.publish_state(cfg, upload(now - 100))
    mqtt.publish_state(cfg, upload(now - 50, files=3, size=300))
    event = json.loads(ha.wait_for("dashcam/testpi/event"))
    assert (event["event_type"], event["files"]) == ("clips_uploaded", 3)
    assert mqtt.publish_event(cfg, "low_battery_shutdown", {"percent": 22}) is True
    wait_until(lambda: len(ha.all) == 2, what="the shutdown event")
    assert json.loads(ha.all[1][1])["message"] == "battery low (22 %): the Pi shuts down"
    assert mqtt.publish_event(cfg, "low_battery_shutdown", {"percent": 21}) is False  # rate-limited
    from dashcam_helpers.ledger import Ledger

    with Ledger(cfg.paths.ledger) as ledger:
        assert set(ledger.get_state("mqtt_events")["sent"]) == {"clips_uploaded", "low_battery_shutdown"}
    disc = listen("homeassistant/event/#")
    conf = json.loads(disc.wait_for(f"homeassistant/event/{mqtt.topics(cfg).node_id}/events/config"))
    assert conf["state_topic"] == "dashcam/testpi/event" and "clips_uploaded" in conf["event_types"]


def test_events_stay_pending_while_the_broker_is_away(make_config, tmp_path, caplog):
    port = free_port()
    cfg = mqtt_config(make_config, port, notifications=True)
    now = time.time()
    b = Broker(tmp_path)  # first tick with a broker: the bearings are saved
    cfg_up = mqtt_config(make_config, b.port, notifications=True)
    mqtt.publish_state(cfg_up, upload(now - 100))
    mqtt.publish_state(cfg, upload(now - 50, files=3, size=300))  # broker away: nothing sent
    ha = Listener(b.port, "dashcam/testpi/event")
    try:
        mqtt.publish_state(cfg_up, upload(now - 50, files=3, size=300))
        assert json.loads(ha.wait_for("dashcam/testpi/event"))["files"] == 3
    finally:
        ha.close()
        b.stop()


def test_no_events_without_notifications(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    ha = listen("dashcam/testpi/event")
    now = time.time()
    mqtt.publish_state(cfg, upload(now - 100))
    mqtt.publish_state(cfg, upload(now - 50))
    assert mqtt.publish_event(cfg, "low_battery_shutdown", {"percent": 22}) is False
    mqtt.publish_state(cfg, FACTS)  # a later state proves the broker had time to pass any event on
    time.sleep(0.3)
    assert ha.all == []


def test_the_shutdown_unit_command_is_quiet_without_mqtt(make_config, dashcamctl):
    r = dashcamctl("--config", str(make_config()), "mqtt-publish", "--offline", "--if-configured")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_a_tick_publishing_while_an_ingest_holds_a_connection_does_not_knock_it_offline(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port)
    ha = listen("dashcam/testpi/availability")
    other = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, cfg.path],
        env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert other.stdout.readline().strip() == "published"
        mqtt.publish_state(cfg, FACTS)  # same host, same config, another process
        mqtt.publish_state(cfg, FACTS)
        time.sleep(0.3)  # a will from a pushed-off connection would arrive right away
        assert other.poll() is None
        assert "offline" not in [p for _, p in ha.all]
    finally:
        other.kill()
        other.wait()
        other.stdout.close()


def test_a_policy_tick_publishes_what_it_saw_to_home_assistant(make_config, broker, listen, dashcamctl, fake_hw):
    import socket

    fake_hw.usb_device("1-1", authorized="0")
    with socket.socket() as s:  # a port nobody listens on: the server is away
        s.bind(("127.0.0.1", 0))
        away = s.getsockname()[1]
    path = make_config({"upload": {"port": away, "connect_timeout": 1},
                        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": "dashcam/testpi"}})
    ha = listen("dashcam/testpi/#")
    r = dashcamctl("--config", str(path), "policy", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    state = json.loads(ha.wait_for("dashcam/testpi/state"))
    assert state["battery_voltage"] == 3.611 and state["battery_percent"] == 95
    assert state["external_power"] == "ON" and state["input_voltage"] == 5.208
    assert state["server_reachable"] == "OFF"
    assert state["camera_mode"] == "record"
    assert fake_hw.battery_call_count() == 1  # one reading per tick: the published state is what the tick saw


# ---------------------------------------------------------------- strict JSON: unknown is null, never NaN


def strict_json(text):
    """json.loads that refuses NaN, Infinity and -Infinity (Python accepts them; Home Assistant does not)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


HOSTILE_FACTS = {
    "battery": {
        "source": "command", "millivolts": float("nan"), "percent": float("inf"), "external": None,
        "raw": {"battery_voltage": float("nan"), "input_voltage": "NaN", "output_voltage": float("-inf"),
                "output_current": 10**400, "output_power": "1e999", "VIN": "nan", "nested": {"x": float("nan")}},
    },
    "camera": {"mode": "record", "attached": None},
    "staging": {"backlog_files": float("nan"), "backlog_bytes": float("inf"), "free_bytes": 10**400},
    "server": {"reachable": False},
    "last_ingest": {"wall": float("nan"), "files": float("nan"), "result": "ok"},
    "last_upload": {"wall": 1e300, "files": None, "result": "failed"},
}


def test_nan_and_infinity_in_the_facts_are_published_as_null_and_every_payload_is_strict_json(make_config):
    cfg = mqtt_config(make_config, 1883)
    msgs = mqtt.state_messages(cfg, HOSTILE_FACTS, now=1764534359.0)
    state = None
    for topic, payload, _ in msgs:
        if payload.startswith(("{", "[")):
            doc = strict_json(payload)
            if topic.endswith("/state"):
                state = doc
    for key in ("battery_voltage", "battery_percent", "input_voltage", "output_voltage", "output_current",
                "output_power", "backlog_files", "backlog_bytes", "staging_free_bytes", "last_ingest",
                "last_ingest_files", "last_upload"):
        assert state[key] is None, key


def test_events_with_nan_are_strict_json(make_config):
    event = mqtt.make_event("low_battery_shutdown", {"percent": float("nan")}, 1764534359.0)
    strict_json(mqtt.dumps(event))


def test_a_policy_tick_with_a_nan_battery_publishes_unknown_as_null(make_config, broker, listen, dashcamctl, fake_hw):
    fake_hw.usb_device("1-1", authorized="0")
    fake_hw.set_battery("VBAT = nan\nVIN = inf\nVOUT = 1e308\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        away = s.getsockname()[1]
    path = make_config({"upload": {"port": away, "connect_timeout": 1},
                        "mqtt": {"host": "127.0.0.1", "port": broker.port, "base_topic": "dashcam/testpi"}})
    ha = listen("dashcam/testpi/#")
    r = dashcamctl("--config", str(path), "policy", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    state = strict_json(ha.wait_for("dashcam/testpi/state"))
    assert state["battery_voltage"] is None and state["battery_percent"] is None
    assert state["input_voltage"] is None and state["output_voltage"] is None


def test_a_damaged_ledger_still_lets_the_state_reach_home_assistant(make_config, broker, listen):
    cfg = mqtt_config(make_config, broker.port, notifications=True)
    os.makedirs(os.path.dirname(cfg.paths.ledger), exist_ok=True)
    with open(cfg.paths.ledger, "wb") as f:
        f.write(b"\x00\xff not a database " * 100)
    ha = listen("dashcam/testpi/state")
    mqtt.publish_state(cfg, FACTS)
    assert strict_json(ha.wait_for("dashcam/testpi/state"))["battery_percent"] == 95


def test_each_return_of_the_camera_to_record_goes_out_with_its_reason(make_config, broker, listen):
    from dashcam_helpers import ignition

    cfg = mqtt_config(make_config, broker.port, notifications=True)
    ha = listen("dashcam/testpi/event")
    leaving = ("leaving home: ingest stopped after 7 of 31 clips, camera back to record 1.2 s after the server"
               " stopped answering")
    ignition.publish(cfg, "leaving_home", leaving, 1.23)
    ignition.publish(cfg, "engine_started", "engine started: no ingest running, camera back to record", None)
    wait_until(lambda: len(ha.all) == 2, what="two events: each return is news, none rate-limited")
    first, second = (json.loads(payload) for _, payload in ha.all)
    assert (first["event_type"], first["reason"], first["message"], first["seconds"]) == (
        "camera_back_to_record", "leaving_home", leaving, 1.2)
    assert second["reason"] == "engine_started" and second["seconds"] is None
    assert "camera_back_to_record" in mqtt.EVENT_TYPES
