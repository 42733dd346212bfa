"""dashcamctl status: battery and camera as read back, with the fakes first on PATH and a fake sysfs."""

from __future__ import annotations

import json

from dashcam_helpers import status


def test_status_json_shows_the_ups_reading_and_the_camera_mode(fake_hw, dashcamctl, make_config):
    fake_hw.usb_device("1-1", authorized="0")
    r = dashcamctl("--config", str(make_config()), "status", "--json", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["battery"]["millivolts"] == 3611
    assert facts["battery"]["external"] is True
    assert facts["battery"]["percent"] == 95 and facts["battery"]["source"] == "lifepo4wered"
    assert facts["battery"]["raw"]["VIN_THRESHOLD"] == 4498
    assert facts["camera"]["mode"] == "record"
    assert facts["camera"]["attached"] is None  # no camera on this machine
    assert fake_hw.uhubctl_argvs() == [["-l", "1-1", "-p", "1"]]  # status switches nothing


def test_status_follows_a_switch(fake_hw, dashcamctl, make_config):
    fake_hw.usb_device("1-1", authorized="1")
    cfg = str(make_config())
    assert dashcamctl("--config", cfg, "mode", "off", env=fake_hw.env).returncode == 0
    assert json.loads(dashcamctl("--config", cfg, "status", "--json", env=fake_hw.env).stdout)["camera"]["mode"] == "off"
    assert dashcamctl("--config", cfg, "mode", "data", env=fake_hw.env).returncode == 0
    assert json.loads(dashcamctl("--config", cfg, "status", "--json", env=fake_hw.env).stdout)["camera"]["mode"] == "data"


def test_status_with_a_failing_ups_reports_unknown_not_zero(fake_hw, dashcamctl, make_config):
    fake_hw.set_battery("mode = i2c-fail\n")
    r = dashcamctl("--config", str(make_config()), "status", "--json", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)["battery"]
    assert b["percent"] is None and b["millivolts"] is None and b["known"] is False
    assert "I2C failed" in b["reason"]


def test_status_text_reads_like_a_sentence(fake_hw, dashcamctl, make_config):
    fake_hw.usb_device("1-1", authorized="0")
    r = dashcamctl("--config", str(make_config()), "status", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "battery:  95 %, 3611 mV, external power [lifepo4wered]"
    assert lines[1] == "camera:   record, storage not attached [uhubctl]"


def test_status_without_hub_or_ups_still_answers(fake_hw, dashcamctl, make_config):
    cfg = make_config({"camera": {"hub_location": "7-7"}, "tools": {"lifepo4wered_cli": "/nonexistent/cli"}})
    r = dashcamctl("--config", str(cfg), "status", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("battery:  unknown (")
    assert r.stdout.splitlines()[1].startswith("camera:   unknown,")


def test_a_broken_section_does_not_hide_the_others(make_config):
    from dashcam_helpers import config

    def broken(cfg):
        raise RuntimeError("ledger on fire")

    sections = [("ledger", broken), ("battery", lambda cfg: {"source": "none"})]
    facts = status.gather(config.load(str(make_config())), sections)
    assert facts == {"ledger": {"error": "RuntimeError: ledger on fire"}, "battery": {"source": "none"}}


def test_status_reports_backlog_server_and_last_runs(fake_hw, dashcamctl, make_config, tmp_path):
    import socket
    import time

    from dashcam_helpers.config import load
    from dashcam_helpers.ledger import Ledger

    with socket.socket() as listener:  # a server that answers on 127.0.0.1
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        path = make_config({"upload": {"port": port}})
        cfg = load(str(path))
        with Ledger(cfg.paths.ledger) as ledger:
            ledger.record_staged("dashcam", "Normal/Front/A.MP4", 1000, 1, event=False, sha256="ab" * 32, staged_path="x")
            ledger.record_failed("dashcam", "Event/B.MP4", 5, 2, event=True, reason="Input/output error")
            ledger.put_state("last_upload", {"wall": time.time(), "files": 3, "bytes": 3000, "result": "ok", "reason": None})
        fake_hw.usb_device("1-1", authorized="0")
        r = dashcamctl("--config", str(path), "status", "--json", env=fake_hw.env)
        assert r.returncode == 0, r.stderr
        facts = json.loads(r.stdout)
        assert facts["staging"]["backlog_files"] == 1 and facts["staging"]["backlog_bytes"] == 1000
        assert facts["staging"]["failed_files"] == 1 and facts["staging"]["free_bytes"] > 0
        assert facts["server"] == {"host": "127.0.0.1", "port": port, "reachable": True}
        assert facts["last_upload"]["files"] == 3 and facts["last_ingest"] == {}
        text = dashcamctl("--config", str(path), "status", env=fake_hw.env).stdout.splitlines()
    assert text[2].startswith("staging:  1 clips (1.0 kB) waiting for the server, ")
    assert text[2].endswith("1 clips failed to read (dashcamctl files --state failed)")
    assert text[3] == f"server:   127.0.0.1:{port} reachable"
    assert text[4] == "ingest:   never"
    assert text[5].startswith("upload:   ") and text[5].endswith(" ok: 3 clips, 3.0 kB")

    with Ledger(cfg.paths.ledger) as ledger:  # a cut send: its names wait
        end = time.time() + 600
        ledger.put_state("upload_hold", {"until": end, "names": {"dashcam/2026/01/01/A.MP4": end}})
    r = dashcamctl("--config", str(path), "status", "--json", env=fake_hw.env)
    assert json.loads(r.stdout)["staging"]["held_files"] == 1
    text = dashcamctl("--config", str(path), "status", env=fake_hw.env).stdout.splitlines()
    assert text[2].startswith("staging:  1 clips (1.0 kB) waiting for the server, 1 of them held until ")
    r = dashcamctl("--config", str(path), "status", "--json", env=fake_hw.env)
    assert json.loads(r.stdout)["server"]["reachable"] is False  # the listener is closed now


def strict_json(text):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_status_json_with_a_nan_battery_program_is_strict_json_with_null_for_unknown(tmp_path, fake_hw, dashcamctl, make_config):
    prog = tmp_path / "battery-info.sh"
    prog.write_text('#!/bin/sh\necho \'{"battery_voltage": NaN, "battery_percent": Infinity, "input_voltage": -Infinity,'
                    ' "output_power": 1e999, "deep": [[[[[[1]]]]]]}\'\n')
    prog.chmod(0o755)
    r = dashcamctl("--config", str(make_config({"battery": {"source": "command", "command": str(prog)}})),
                   "status", "--json", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    b = strict_json(r.stdout)["battery"]
    assert b["percent"] is None and b["millivolts"] is None and b["external"] is None and b["known"] is False
    assert "not a finite number" in b["reason"]
    assert b["raw"]["output_power"] is None or isinstance(b["raw"]["output_power"], str)


def test_status_json_with_a_nan_register_is_strict_json(fake_hw, dashcamctl, make_config):
    fake_hw.set_battery("VBAT = nan\nVIN = 0\n")
    r = dashcamctl("--config", str(make_config()), "status", "--json", env=fake_hw.env)
    assert r.returncode == 0, r.stderr
    b = strict_json(r.stdout)["battery"]
    assert b["percent"] is None and b["external"] is False and "VBAT is not a number" in b["reason"]


def test_print_json_turns_nan_and_infinity_into_null_and_cuts_deep_nesting():
    from dashcam_helpers.strictjson import dumps

    deep = []
    for _ in range(5000):
        deep = [deep]
    doc = strict_json(dumps({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": deep, 1: (2,)}))
    assert doc["a"] is None and doc["b"] == [None, None] and doc["1"] == [2]


def test_status_counts_the_returns_to_record_for_the_road():
    from dashcam_helpers.status import render

    assert render({"back_to_record": {}}) == "road:     the camera was never put back to record for the road"
    line = render({"back_to_record": {"counts": {"engine_started": 2, "leaving_home": 1}, "total": 3,
                                      "last": {"kind": "leaving_home", "wall": 1.7e9,
                                               "message": "leaving home: ingest stopped after 7 of 31 clips"}}})
    assert line.startswith("road:     camera back to record 3 times (engine started 2, leaving home 1); last ")
    assert line.endswith(": leaving home: ingest stopped after 7 of 31 clips")


# --- what the ledger holds is any JSON: each line of the text says so, none ends the report --------------

import pytest  # noqa: E402

NAN, INF, HUGE = float("nan"), float("inf"), 10**400


@pytest.mark.parametrize("name,section", [
    ("budget", {"on_battery": True, "runtime_minutes": INF, "waiting_bytes": 1}),
    ("budget", {"on_battery": True, "runtime_minutes": NAN}),
    ("budget", {"staged_bytes": "x", "waiting_bytes": 1}),
    ("budget", {"waiting_bytes": [1]}),
    ("budget", {"waiting_bytes": HUGE}),
    ("footage", {"card": {"total_bytes": "x", "used_bytes": "y"}}),
    ("footage", {"card": {"total_bytes": HUGE}}),
    ("footage", {"losses_7d": 2, "last_loss": "x"}),
    ("problem", {"problem": True, "reasons": [1, None]}),
    ("problem", {"problem": True, "reasons": 5}),
])
def test_a_section_of_any_shape_renders_as_one_line_and_the_others_still_show(name, section):
    text = status.render({name: section, "last_upload": {}})
    first, rest = text.split("\n", 1)
    assert first.startswith(name) or first.startswith(name.upper())
    assert "\n" not in rest and rest.startswith("upload:")
