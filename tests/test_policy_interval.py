"""dashcamctl policy-interval: the drop-in it writes, the systemctl calls it makes, what it reads back.

A fake systemctl first on PATH loads dashcam-policy.timer the way systemd.timer(5) says systemd does:
the shipped unit, then the drop-ins of /etc/systemd/system/dashcam-policy.timer.d in name order, an
empty trigger assignment resetting every trigger of the unit; what it loaded changes only at
daemon-reload, and `show -p TimersMonotonic` prints it in systemd 252's format. Whether the real
systemd agrees is tests/system/test_interval.py's job (in a guest, across a reboot).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from conftest import ROOT
from dashcam_helpers import policy_timer

SHIPPED = ROOT / "systemd" / "dashcam-policy.timer"

FAKE_SYSTEMCTL = r'''#!/usr/bin/python3
import glob, json, os, re, sys
state = os.environ["FAKE_SYSTEMCTL_STATE"]
with open(state + ".calls", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
KEYS = {"OnActiveSec": "OnActiveUSec", "OnBootSec": "OnBootUSec", "OnStartupSec": "OnStartupUSec",
        "OnUnitActiveSec": "OnUnitActiveUSec", "OnUnitInactiveSec": "OnUnitInactiveUSec", "OnCalendar": None}

def load():
    timers, section = [], None
    files = [os.environ["FAKE_SHIPPED_UNIT"]] + sorted(glob.glob(os.path.join(
        os.environ["DASHCAM_ROOT"], "etc/systemd/system/dashcam-policy.timer.d/*.conf")))
    for path in files:
        for line in open(path):
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Timer]" and "=" in line and not line.startswith("#"):
                key, value = (x.strip() for x in line.split("=", 1))
                if key in KEYS:
                    if value == "":
                        timers = []          # systemd.timer(5): an empty assignment resets every timer
                    elif KEYS[key]:
                        timers.append((KEYS[key], value))
    return timers

if sys.argv[1:] == ["daemon-reload"]:
    json.dump(load(), open(state, "w"))
elif sys.argv[1:] == ["show", "dashcam-policy.timer", "-p", "TimersMonotonic"]:
    timers = json.load(open(state)) if os.path.exists(state) else load()
    for base, value in timers:
        value = {"60s": "1min", "120s": "2min"}.get(value, value)   # systemd prints spans its own way
        print("TimersMonotonic={ %s=%s ; next_elapse=1h 2min 3.456789s }" % (base, value))
elif os.environ.get("FAKE_SYSTEMCTL_FAIL") == sys.argv[1]:
    print("Failed to %s: Access denied" % sys.argv[1], file=sys.stderr)
    sys.exit(1)
'''


@pytest.fixture
def systemd(tmp_path):
    """A root tree, the fake systemctl first on PATH, and what it was asked."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    root = tmp_path / "root"
    root.mkdir()
    state = tmp_path / "systemd-loaded.json"

    class Systemd:
        dropin_dir = root / "etc/systemd/system/dashcam-policy.timer.d"
        dropin = dropin_dir / "interval.conf"
        env = {
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "DASHCAM_ROOT": str(root),
            "FAKE_SYSTEMCTL_STATE": str(state),
            "FAKE_SHIPPED_UNIT": str(SHIPPED),
            "DASHCAM_CONFIG": str(tmp_path / "no-config.yaml"),
        }

        def calls(self):
            path = tmp_path / "systemd-loaded.json.calls"
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        def reload(self):
            """systemctl daemon-reload, as a person would run it."""
            subprocess.run(["systemctl", "daemon-reload"], env={**os.environ, **self.env}, check=True)

        def run(self, dashcamctl, *args, **env):
            return dashcamctl(*args, env={**self.env, **env})

    return Systemd()


def test_setting_60_s_writes_one_reset_then_both_timers_reloads_restarts_and_reads_back(systemd, dashcamctl):
    r = systemd.run(dashcamctl, "policy-interval", "60")
    assert r.returncode == 0, r.stderr
    lines = [line for line in systemd.dropin.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["[Timer]", "OnUnitActiveSec=", "OnBootSec=45s", "OnUnitActiveSec=60s"]
    assert stat.S_IMODE(systemd.dropin.stat().st_mode) == 0o644
    assert systemd.calls() == [
        ["daemon-reload"],
        ["restart", "dashcam-policy.timer"],
        ["show", "dashcam-policy.timer", "-p", "TimersMonotonic"],
    ]
    assert r.stdout.splitlines() == ["dashcam-policy.timer: every 60 s, first tick 45 s after boot"]


def test_show_prints_the_interval_systemd_loaded_and_changes_nothing(systemd, dashcamctl):
    r = systemd.run(dashcamctl, "policy-interval", "--show", "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert (shown["interval_seconds"], shown["boot_delay_seconds"], shown["problems"]) == (30, 45, [])
    assert systemd.calls() == [["show", "dashcam-policy.timer", "-p", "TimersMonotonic"]]
    assert not systemd.dropin_dir.exists()


def test_the_drop_in_the_readme_used_to_give_shows_two_intervals_and_fails(systemd, dashcamctl):
    systemd.dropin_dir.mkdir(parents=True)
    (systemd.dropin_dir / "override.conf").write_text("[Timer]\nOnUnitActiveSec=60s\n")
    systemd.reload()
    r = systemd.run(dashcamctl, "policy-interval", "--show")
    assert r.returncode == 1
    assert "every 30 s" in r.stdout
    assert "more than one OnUnitActiveSec= (30 s, 60 s)" in r.stdout


def test_a_bare_reset_that_loses_on_boot_sec_is_a_failure_with_its_fix(systemd, dashcamctl):
    systemd.dropin_dir.mkdir(parents=True)
    (systemd.dropin_dir / "override.conf").write_text("[Timer]\nOnUnitActiveSec=\nOnUnitActiveSec=60s\n")
    systemd.reload()
    r = systemd.run(dashcamctl, "policy-interval", "--show")
    assert r.returncode == 1
    assert "no OnBootSec=: after the next boot the policy never ticks" in r.stdout
    assert "dashcamctl policy-interval SECONDS" in r.stdout


def test_a_later_drop_in_that_adds_a_timer_is_named_and_the_read_back_fails(systemd, dashcamctl):
    systemd.dropin_dir.mkdir(parents=True)
    (systemd.dropin_dir / "override.conf").write_text("[Timer]\nOnUnitActiveSec=20s\n")
    r = systemd.run(dashcamctl, "policy-interval", "60")
    assert r.returncode == 1
    assert f"{systemd.dropin_dir / 'override.conf'} sets the timer too" in r.stderr
    assert "more than one OnUnitActiveSec= (60 s, 20 s)" in r.stdout


def test_an_earlier_drop_in_is_reset_by_ours(systemd, dashcamctl):
    systemd.dropin_dir.mkdir(parents=True)
    (systemd.dropin_dir / "10-old.conf").write_text("[Timer]\nOnUnitActiveSec=20s\n")
    r = systemd.run(dashcamctl, "policy-interval", "120")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "every 120 s, first tick 45 s after boot" in r.stdout
    assert "sets the timer too" not in r.stderr


def test_reset_removes_the_drop_in_and_goes_back_to_30_s(systemd, dashcamctl):
    assert systemd.run(dashcamctl, "policy-interval", "60").returncode == 0
    r = systemd.run(dashcamctl, "policy-interval", "--reset")
    assert r.returncode == 0, r.stderr
    assert not systemd.dropin.exists()
    assert "every 30 s, first tick 45 s after boot" in r.stdout
    assert systemd.calls()[-3:-1] == [["daemon-reload"], ["restart", "dashcam-policy.timer"]]


def test_dry_run_writes_nothing_and_runs_no_systemctl_that_changes_something(systemd, dashcamctl):
    r = systemd.run(dashcamctl, "--dry-run", "policy-interval", "60")
    assert r.returncode == 0, r.stderr
    assert not systemd.dropin_dir.exists()
    assert systemd.calls() == []
    assert "OnBootSec=45s" in r.stderr  # the drop-in it would write, logged


@pytest.mark.parametrize("given", ["0", "9", "301", "-5", "sixty", "1min", "٦٠", ""])
def test_an_interval_out_of_range_or_not_seconds_is_refused_and_nothing_written(systemd, dashcamctl, given):
    r = systemd.run(dashcamctl, "policy-interval", given)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not systemd.dropin_dir.exists()
    assert systemd.calls() == []


def test_a_failing_systemctl_is_one_line_saying_what_to_run_by_hand(systemd, dashcamctl):
    r = systemd.run(dashcamctl, "policy-interval", "60", FAKE_SYSTEMCTL_FAIL="restart")
    assert r.returncode == 1
    assert systemd.dropin.exists()
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert errors[0].endswith("Access denied (the drop-in is in place; then run: systemctl daemon-reload; "
                              "systemctl restart dashcam-policy.timer)")


def test_the_drop_in_keeps_the_shipped_units_boot_delay():
    shipped = dict(line.split("=", 1) for line in SHIPPED.read_text().splitlines()
                   if line.startswith(("OnBootSec=", "OnUnitActiveSec=")))
    assert shipped == {"OnBootSec": f"{policy_timer.BOOT_DELAY_SECONDS}s",
                       "OnUnitActiveSec": f"{policy_timer.SHIPPED_INTERVAL_SECONDS}s"}


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("1min", 60), ("1min 30s", 90), ("2h", 7200), ("1d 2h 3min 4.5s", 93784.5), ("500ms", 0.5), ("1month", 2629800),
    ("", None), ("n/a", None), ("30", None), ("30 parsecs", None), ("s", None), ("1min garbage", None),
])
def test_time_spans_as_systemctl_prints_them(text, seconds):
    assert policy_timer.parse_timespan(text) == seconds


def test_timers_monotonic_on_one_line_or_many():
    # systemd 252 prints one line per trigger, in the unit's order (e.g. snapper-cleanup.timer:
    # "TimersMonotonic={ OnUnitActiveUSec=1h ; next_elapse=4h 10min 1.368734s }" then OnBootUSec)
    real = ("TimersMonotonic={ OnUnitActiveUSec=1min ; next_elapse=4h 10min 1.368734s }\n"
            "TimersMonotonic={ OnBootUSec=45s ; next_elapse=45s }\n")
    state = policy_timer.TimerState(policy_timer.parse_timers_monotonic(real))
    assert (state.boot, state.interval, state.problems()) == (45, 60, [])
    one = "TimersMonotonic={ OnBootUSec=45s ; next_elapse=0 } { OnUnitActiveUSec=1min ; next_elapse=2h }"
    many = "TimersMonotonic={ OnBootUSec=45s ; next_elapse=0 }\nTimersMonotonic={ OnUnitActiveUSec=1min ; next_elapse=2h }\n"
    for text in (one, many):
        state = policy_timer.TimerState(policy_timer.parse_timers_monotonic(text))
        assert (state.boot, state.interval, state.problems()) == (45, 60, [])
    assert policy_timer.TimerState(policy_timer.parse_timers_monotonic("TimersMonotonic=\n")).problems()


@pytest.mark.parametrize("expire_after, warned", [(120, True), (240, False)])
def test_an_mqtt_expiry_shorter_than_three_ticks_is_warned_with_the_value_to_set(systemd, dashcamctl, make_config,
                                                                                expire_after, warned):
    cfg = make_config({"mqtt": {"host": "127.0.0.1", "expire_after": expire_after}})
    r = systemd.run(dashcamctl, "--config", str(cfg), "policy-interval", "60")
    assert r.returncode == 0, r.stderr
    assert ("mqtt.expire_after is 120 s, under 3 ticks of 60 s" in r.stderr and "set it to about 240" in r.stderr) == warned
    assert (" WARNING " in r.stderr) == warned


def test_the_readme_shows_the_drop_in_the_command_writes():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Changing the interval"):]
    section = section[:section.index("\n## ")]
    shown = section.split("```ini\n", 1)[1].split("```", 1)[0].splitlines()
    written = [ln for ln in policy_timer.dropin_text(60).splitlines() if not ln.startswith("#")]
    assert shown == written


def test_a_drop_in_directory_that_cannot_be_made_is_one_line_and_no_systemctl(systemd, dashcamctl, tmp_path):
    (tmp_path / "root" / "etc").write_text("a file where /etc should be")
    r = systemd.run(dashcamctl, "policy-interval", "60")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert "cannot write" in errors[0] and "interval.conf: Not a directory" in errors[0]
    assert systemd.calls() == []
