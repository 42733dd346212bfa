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
        f"{bad}: upload.colour: unknown key (known: method, host, user, port, dest_path, layout, order, ssh_key, known_hosts, "
        "bwlimit, connect_timeout, io_timeout, keep_days, cut_session_seconds, alert_hours)",
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


# ---------------------------------------------------------------- values that parsed and failed later: now exit 78 by key

import os  # noqa: E402

import pytest  # noqa: E402

BASE = "upload:\n  host: server\n  user: cam\n  dest_path: footage\n"
BAD_VALUES = [
    ("ingest:\n  reserve_percent: .nan\n", "ingest.reserve_percent"),
    ("ingest:\n  reserve_percent: .inf\n", "ingest.reserve_percent"),
    ("ingest:\n  reserve_percent: -.inf\n", "ingest.reserve_percent"),
    ("thresholds:\n  disconnect_percent: .nan\n", "thresholds.disconnect_percent"),
    ("ingest:\n  after_date: \"2024-13-45\"\n", "ingest.after_date"),
    ("ingest:\n  after_date: 2024-13-45\n", "ingest.after_date"),
    ("ingest:\n  after_date: 2024-02-30\n", "ingest.after_date"),
    ("ingest:\n  after_date: 2024-01-01 10:00:00\n", "ingest.after_date"),
    ("ingest:\n  globs: [\"[z-a]\"]\n", "ingest.globs[0]"),
    ("ingest:\n  reserve_bytes: 1000000000000000000000000000000\n", "ingest.reserve_bytes"),
    ("ingest:\n  reserve_bytes: " + "9" * 5000 + "\n", "ingest.reserve_bytes"),
    ("upload:\n  bwlimit: 1000000000000000000000000000000\n", "upload.bwlimit"),
    ("upload:\n  host: -oProxyCommand\n", "upload.host"),
    ("mqtt:\n  host: -oProxyCommand\n", "mqtt.host"),
    ("upload:\n  port: 1:20\n", "upload.port"),
    ("mqtt:\n  host: broker\n  port: 1:20\n", "mqtt.port"),
    ("battery:\n  timeout_seconds: 1:30\n", "battery.timeout_seconds"),
]


def _textual(extra):
    """Keep the value exactly as written (safe_dump would quote 1:20 or rewrite .nan)."""
    if extra.startswith("upload:\n"):
        body = extra[len("upload:\n"):]
        key = body.split(":")[0].strip()
        kept = "".join(line + "\n" for line in BASE.splitlines()[1:] if line.split(":")[0].strip() != key)
        return "upload:\n" + kept + body
    return BASE + extra


@pytest.mark.parametrize("extra, key", BAD_VALUES, ids=[k + ":" + e.split(":", 2)[-1].strip()[:30] for e, k in BAD_VALUES])
def test_each_value_that_failed_only_at_run_time_is_exit_78_naming_its_key(dashcamctl, tmp_path, extra, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(_textual(extra))
    r = dashcamctl("check-config", str(bad))
    assert r.returncode == 78, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{bad}: {key}: "), lines
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr and len(lines[0]) < 300


def test_a_yaml_date_and_a_quoted_date_are_both_accepted(dashcamctl, tmp_path):
    for value in ("2024-01-01", '"2024-01-01"'):
        good = tmp_path / "good.yaml"
        good.write_text(BASE + f"ingest:\n  after_date: {value}\n")
        r = dashcamctl("check-config", "--json", str(good))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["config"]["ingest"]["after_date"] == "2024-01-01"


def test_numbers_written_the_usual_ways_still_load(dashcamctl, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(BASE.replace("dest_path", "port: 2222\n  bwlimit: 1_000\n  dest_path") + "ingest:\n  reserve_percent: 7.5\n")
    r = dashcamctl("check-config", "--json", str(good))
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)["config"]
    assert (cfg["upload"]["port"], cfg["upload"]["bwlimit"], cfg["ingest"]["reserve_percent"]) == (2222, 1000, 7.5)


def test_a_config_path_that_is_a_fifo_is_a_clean_error_not_a_hang(dashcamctl, tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    r = dashcamctl("check-config", str(fifo), timeout=20)
    assert r.returncode == 78 and r.stderr.strip() == f"{fifo}: is a FIFO, not a regular file"


def test_a_config_path_that_is_a_fifo_with_a_writer_is_still_refused(dashcamctl, tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer that never writes nor closes
    try:
        r = dashcamctl("check-config", str(fifo), timeout=20)
    finally:
        os.close(fd)
    assert r.returncode == 78 and "is a FIFO" in r.stderr


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a device"), ("/dev/null", "a device"), ("/", "a directory")])
def test_a_config_path_that_is_a_device_or_a_directory_is_a_clean_error(dashcamctl, path, kind):
    r = dashcamctl("--config", path, "status", timeout=20)
    assert r.returncode == 78 and r.stderr.strip() == f"{path}: is {kind}, not a regular file"


def test_a_huge_config_file_is_a_clean_error(dashcamctl, tmp_path):
    huge = tmp_path / "config.yaml"
    with open(huge, "wb") as f:
        f.truncate(4 * 1024**3)  # sparse: 4 GiB that cost no disk
    r = dashcamctl("check-config", str(huge), timeout=20)
    assert r.returncode == 78 and "a configuration is at most 1048576 bytes" in r.stderr


def test_a_deeply_nested_config_is_a_clean_error(dashcamctl, tmp_path):
    deep = tmp_path / "config.yaml"
    deep.write_text(BASE + "ingest:\n  globs: " + "[" * 5000 + "]" * 5000 + "\n")
    r = dashcamctl("check-config", str(deep), timeout=60)
    assert r.returncode == 78 and "Traceback" not in r.stderr and "internal error" not in r.stderr


# ---------------------------------------------------------------- the ingest unit's ExecCondition: a broken config fails it

# ExecCondition= (systemd.service(5)): exit 1-254 skips the unit, 255 or a signal fails it
CONDITION_SKIPS = range(1, 255)


@pytest.mark.parametrize("content", [
    "upload:\n  host: server\n  user: cam\n  dest_path: x\n  port: 1:20\n",   # a bad value
    "upload: [unclosed\n",                                                    # not YAML
    "camera:\n  match_serial: X\n",                                           # upload.host missing
])
def test_match_with_a_broken_config_exits_255_so_the_ingest_unit_fails_instead_of_skipping(dashcamctl, tmp_path, content):
    bad = tmp_path / "config.yaml"
    bad.write_text(content)
    r = dashcamctl("--config", str(bad), "match", "sda1")
    assert r.returncode == 255 and r.returncode not in CONDITION_SKIPS
    assert f"{bad}: " in r.stderr and "cannot tell whether sda1 is the camera" in r.stderr
    assert "Traceback" not in r.stderr


def test_match_with_a_missing_or_fifo_config_exits_255(dashcamctl, tmp_path):
    r = dashcamctl("--config", str(tmp_path / "absent.yaml"), "match", "sda1")
    assert r.returncode == 255
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    r = dashcamctl("--config", str(fifo), "match", "sda1", timeout=20)
    assert r.returncode == 255 and "is a FIFO" in r.stderr


def test_match_with_a_good_config_and_another_device_still_exits_1_to_skip(dashcamctl, make_config):
    r = dashcamctl("--config", str(make_config()), "match", "/dev/sdzz9")
    assert r.returncode == 1 and r.returncode in CONDITION_SKIPS


def test_the_ingest_unit_runs_match_as_its_exec_condition_and_says_why_255():
    from conftest import ROOT

    unit = (ROOT / "systemd" / "dashcam-ingest@.service").read_text()
    assert "ExecCondition=/usr/bin/dashcamctl match %I" in unit
    assert "255" in unit and "1-254" in unit
