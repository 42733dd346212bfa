"""The one runner: argv only, timeouts, dry run, masked secrets, typed errors with stderr."""

from __future__ import annotations

import logging
import sys

import pytest

from dashcam_helpers import runner


def test_output_comes_back_as_text():
    r = runner.run([sys.executable, "-c", "print('hello')"], timeout=10, changes_state=False)
    assert r.returncode == 0 and r.stdout == "hello\n"


def test_a_command_string_is_refused():
    with pytest.raises(TypeError):
        runner.run("echo hi; rm -rf /", timeout=1)  # type: ignore[arg-type]


def test_a_failure_carries_the_status_and_stderr():
    with pytest.raises(runner.CommandFailed) as e:
        runner.run([sys.executable, "-c", "import sys; sys.stderr.write('no hub found\\n'); sys.exit(3)"], timeout=10)
    assert e.value.returncode == 3
    assert "no hub found" in e.value.stderr
    assert "exited with status 3: no hub found" in str(e.value)


def test_check_false_returns_the_failure_instead():
    r = runner.run([sys.executable, "-c", "raise SystemExit(6)"], timeout=10, check=False)
    assert r.returncode == 6


def test_a_missing_program_is_a_typed_error():
    with pytest.raises(runner.CommandNotFound) as e:
        runner.run(["no-such-program-here"], timeout=5)
    assert "command not found" in str(e.value)


def test_a_hanging_program_is_stopped_at_its_timeout():
    with pytest.raises(runner.CommandTimeout) as e:
        runner.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert "did not finish within 0.5 s" in str(e.value)


def test_dry_run_skips_commands_that_change_state_but_runs_readers(tmp_path, caplog):
    marker = tmp_path / "touched"
    caplog.set_level(logging.INFO, logger="dashcam.runner")
    r = runner.run(["touch", str(marker)], timeout=5, dry_run=True)
    assert r.dry_run and not marker.exists()
    assert f"dry run, not running: touch {marker}" in caplog.text
    r = runner.run(["echo", "reading"], timeout=5, dry_run=True, changes_state=False)
    assert r.stdout == "reading\n" and not r.dry_run


def test_secrets_are_masked_in_logs_and_errors(caplog):
    caplog.set_level(logging.DEBUG, logger="dashcam.runner")
    with pytest.raises(runner.CommandFailed) as e:
        runner.run(
            [sys.executable, "-c", "import sys; sys.stderr.write('bad password hunter2\\n'); sys.exit(1)", "--password=hunter2"],
            timeout=10,
            secrets=["hunter2"],
        )
    assert "hunter2" not in str(e.value) and "hunter2" not in e.value.stderr
    assert "hunter2" not in caplog.text
    assert runner.MASK in caplog.text


def test_a_program_killed_by_a_signal_says_so():
    with pytest.raises(runner.CommandFailed) as e:
        runner.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], timeout=10)
    assert "signal SIGKILL" in str(e.value)
