"""The MQTT password: refused when others than root and dashcam can read its file, a warning when it
would go to the broker unencrypted, and TLS with the user's own CA."""

from __future__ import annotations

import logging
import os
import subprocess

import pytest

from dashcam_helpers import mqtt
from dashcam_helpers.ledger import Ledger
from test_mqtt import FACTS, MOSQUITTO, Broker, mqtt_config

ALLOWED = ({0, 4321}, {0, 4321})  # root and a stand-in for the dashcam user


def password_file(tmp_path, mode, uid=0, gid=0):
    pw = tmp_path / "mqtt.pw"
    pw.write_text("s3cret-pw\n")
    os.chown(pw, uid, gid)
    pw.chmod(mode)
    return pw


@pytest.mark.parametrize("mode, uid, gid, problem", [
    (0o600, 0, 0, None),
    (0o640, 0, 4321, None),          # root:dashcam 0640, as the README says
    (0o400, 4321, 4321, None),
    (0o644, 0, 4321, "open to every user (mode 0644)"),
    (0o604, 0, 0, "open to every user (mode 0604)"),
    (0o640, 0, 100, "open to group 100"),
    (0o600, 1000, 0, "belongs to uid 1000"),
])
def test_who_may_read_the_password_file(tmp_path, mode, uid, gid, problem):
    pw = password_file(tmp_path, mode, uid, gid)
    found = mqtt.password_file_problem(str(pw), os.stat(pw), ALLOWED)
    if problem is None:
        assert found is None
        assert mqtt.read_password(str(pw), ALLOWED) == "s3cret-pw"
    else:
        assert problem in found and f"chmod 0640 {pw}" in found and "s3cret" not in found
        with pytest.raises(mqtt.BadPasswordFile):
            mqtt.read_password(str(pw), ALLOWED)


def test_mqtt_publish_refuses_a_world_readable_password_file_with_exit_78(make_config, tmp_path, dashcamctl):
    pw = password_file(tmp_path, 0o644)
    cfg = mqtt_config(make_config, 1, username="dashcam", password_file=str(pw))
    r = dashcamctl("--config", cfg.path, "mqtt-publish")
    assert r.returncode == 78, r.stderr
    assert f"mqtt.password_file {pw} is open to every user (mode 0644)" in r.stderr
    assert "Traceback" not in r.stderr and "s3cret" not in r.stderr


def test_the_tick_sends_no_password_from_a_world_readable_file(make_config, tmp_path, caplog):
    pw = password_file(tmp_path, 0o644)
    cfg = mqtt_config(make_config, 1, username="dashcam", password_file=str(pw), tls=True)
    outcome = mqtt.send(cfg, [("x", "1", False)])
    assert not outcome.ok and outcome.misconfigured
    assert "open to every user" in outcome.why


def test_a_password_without_tls_is_warned_about_once(make_config, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    pw = password_file(tmp_path, 0o600)
    cfg = mqtt_config(make_config, 1, username="dashcam", password_file=str(pw))
    mqtt._warned_plaintext = False
    with Ledger(cfg.paths.ledger) as ledger:
        assert mqtt.warn_plaintext(cfg, ledger) is True
        mqtt._warned_plaintext = False  # a later tick is a new process; the ledger remembers
        assert mqtt.warn_plaintext(cfg, ledger) is False
    warnings = [r.getMessage() for r in caplog.records if "unencrypted" in r.getMessage()]
    assert warnings == ["mqtt: the password for dashcam goes to 127.0.0.1:1 unencrypted (mqtt.tls is off): "
                        "anyone on the network path can read it; set mqtt.tls: true (and mqtt.ca_file) "
                        "if the broker offers TLS"]
    tls = mqtt_config(make_config, 1, username="dashcam", password_file=str(pw), tls=True)
    mqtt._warned_plaintext = False
    assert mqtt.warn_plaintext(tls) is False


def test_the_tick_warns_about_plaintext_once_across_ticks(make_config, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    pw = password_file(tmp_path, 0o600)
    cfg = mqtt_config(make_config, 1, username="dashcam", password_file=str(pw))
    for _ in range(3):
        mqtt._warned_plaintext = False
        mqtt.publish_state(cfg, FACTS, budget=0.3)
    assert sum("unencrypted" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------ TLS with the user's CA


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path):
    """mosquitto with a TLS listener whose certificate (for 127.0.0.1) a private CA signed."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext", "-out", "server.crt", cwd=d)
    b = Broker(tmp_path, users={"dashcam": "s3cret-pw"},
               listener_options=[f"cafile {d / 'ca.crt'}", f"certfile {d / 'server.crt'}", f"keyfile {d / 'server.key'}"])
    b.ca = d / "ca.crt"
    yield b
    b.stop()


@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is in the Makefile's DEPS")
def test_tls_with_the_users_ca_logs_in_and_a_broker_the_ca_did_not_sign_is_refused(make_config, tmp_path, tls_broker):
    pw = password_file(tmp_path, 0o600)
    cfg = mqtt_config(make_config, tls_broker.port, username="dashcam", password_file=str(pw), tls=True,
                      ca_file=str(tls_broker.ca))
    outcome = mqtt.send(cfg, [("dashcam/testpi/probe", "1", False)], budget=5)
    assert outcome.ok, outcome.why
    system_cas = mqtt_config(make_config, tls_broker.port, username="dashcam", password_file=str(pw), tls=True)
    outcome = mqtt.send(system_cas, [("dashcam/testpi/probe", "1", False)], budget=5)
    assert not outcome.ok and "certificate verify failed" in outcome.why
