"""dashcamctl check-config as a user meets it: one line per mistake, exit 78, never a traceback."""

from __future__ import annotations

import json

from conftest import FIXTURES, ROOT


def test_check_config_accepts_the_shipped_config(dashcamctl):
    r = dashcamctl("check-config", str(ROOT / "etc/dashcam/config.yaml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("config.yaml: ok")
    assert r.stderr == ""


def test_check_config_accepts_the_seed_config_with_two_warnings(dashcamctl):
    r = dashcamctl("check-config", str(FIXTURES / "seed-config.yaml"))
    assert r.returncode == 0
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 2
    assert "paths.log_path: no longer used; replaced by the systemd journal" in warnings[0]
    assert "poll.interval_seconds: no longer used; replaced by dashcam-policy.timer" in warnings[1]


def test_a_config_with_several_mistakes_gets_one_line_each_and_exit_78(dashcamctl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "upload:\n  host: server\n  user: cam\n  port: ssh\n  dest_path: x\n  colour: blue\n"
        "thresholds:\n  shutdown_percent: -3\n"
        "camera:\n  port_number: 0\n"
    )
    r = dashcamctl("check-config", str(bad))
    assert r.returncode == 78
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"{bad}: camera.port_number: must be an integer 1-255, got 0",
        f"{bad}: upload.colour: unknown key (known: method, host, user, port, dest_path, ssh_key, known_hosts, "
        "bwlimit, connect_timeout, io_timeout, keep_days, cut_session_seconds)",
        f"{bad}: upload.port: must be an integer 1-65535, got 'ssh'",
        f"{bad}: thresholds.shutdown_percent: must be an integer 0-100, got -3",
    ]
    assert "Traceback" not in r.stderr


def test_config_option_and_environment_choose_the_file(dashcamctl, make_config, tmp_path):
    good = make_config()
    r = dashcamctl("check-config", env={"DASHCAM_CONFIG": str(good)})
    assert r.returncode == 0 and str(good) in r.stdout
    r = dashcamctl("--config", str(tmp_path / "missing.yaml"), "check-config", env={"DASHCAM_CONFIG": str(good)})
    assert r.returncode == 78
    assert r.stderr.strip() == f"{tmp_path / 'missing.yaml'}: no such file (dashcamctl --config PATH or DASHCAM_CONFIG choose another)"


def test_check_config_json_prints_the_effective_config(dashcamctl, make_config):
    r = dashcamctl("check-config", "--json", str(make_config({"upload": {"port": 2222}})))
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data["ok"] is True
    assert data["config"]["upload"]["port"] == 2222
    assert data["config"]["thresholds"]["shutdown_debounce"] == 3


def test_commands_that_need_a_config_exit_78_on_a_bad_one(dashcamctl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("upload: [1, 2]\n")
    r = dashcamctl("--config", str(bad), "files")
    assert r.returncode == 78
    assert "Traceback" not in r.stderr
    assert f"{bad}: upload: must be a mapping of keys, got a list" in r.stderr


def test_files_lists_an_empty_ledger(dashcamctl, make_config):
    r = dashcamctl("--config", str(make_config()), "files")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "no clips"
    r = dashcamctl("--config", str(make_config()), "files", "--json")
    assert json.loads(r.stdout) == []


def test_version_and_help(dashcamctl):
    r = dashcamctl("--version")
    assert r.returncode == 0 and r.stdout.startswith("dashcamctl ")
    r = dashcamctl("--help")
    assert "check-config" in r.stdout and "Exit codes" in r.stdout
