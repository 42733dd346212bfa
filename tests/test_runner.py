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


def test_large_output_on_both_streams_comes_back_whole():
    # more than a pipe holds on each stream at once: reading only one of them would deadlock
    code = "import sys; sys.stdout.write('o' * 300000); sys.stderr.write('e' * 300000); sys.stdout.write('!')"
    r = runner.run([sys.executable, "-c", code], timeout=20, changes_state=False)
    assert r.stdout == "o" * 300000 + "!" and r.stderr == "e" * 300000


def test_the_child_gets_sigpipe_back():
    # with SIGPIPE ignored (as Python leaves it) `yes` would complain of a broken pipe
    r = runner.run(["sh", "-c", "yes | head -n 1"], timeout=10, changes_state=False)
    assert r.stdout == "y\n" and r.stderr == ""


def test_a_program_that_closes_its_output_and_lingers_is_still_stopped_at_its_timeout():
    with pytest.raises(runner.CommandTimeout):
        runner.run(["sh", "-c", "exec >&- 2>&-; sleep 30"], timeout=0.5)


def test_text_has_universal_newlines_and_survives_bad_bytes():
    r = runner.run(["printf", "a\\r\\nb\\rc\\377\\n"], timeout=5, changes_state=False)
    assert r.stdout == "a\nb\nc\ufffd\n"


def test_env_is_added_to_the_environment_and_path_is_searched(tmp_path):
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho \"$GREETING $HOME\"\n")
    tool.chmod(0o755)
    path = f"{tool.parent}:/usr/bin:/bin"
    r = runner.run(["tool"], timeout=5, changes_state=False, env={"PATH": path, "GREETING": "hi"})
    assert r.stdout.startswith("hi /")


def test_a_program_that_is_not_executable_is_a_typed_error(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    with pytest.raises(runner.CommandNotFound) as e:
        runner.run(["tool"], timeout=5, env={"PATH": str(tmp_path)})
    assert "permission denied" in str(e.value)


def test_every_tool_runs_under_one_locale_whatever_ours_is(monkeypatch):
    """What the upload parses (rsync's names and escapes, ssh's messages) must not change with LANG."""
    monkeypatch.setenv("LC_ALL", "de_DE.ISO-8859-1")
    monkeypatch.setenv("LANGUAGE", "de")
    show = "import os; print(os.environ.get('LC_ALL'), os.environ.get('LANGUAGE'), os.environ.get('X'))"
    r = runner.run([sys.executable, "-c", show], timeout=10, changes_state=False, env={"LC_ALL": "C", "X": "1"})
    assert r.stdout.split() == ["C.UTF-8", "None", "1"]
