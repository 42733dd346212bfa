"""The policy's systemd units say what the design promises: monotonic timer, oneshot root tick, boot unit first."""

from __future__ import annotations

import configparser
import re

import pytest

from conftest import ROOT

SYSTEMD = ROOT / "systemd"


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def test_the_timer_is_monotonic_every_30_s_and_enabled_with_timers_target():
    t = unit("dashcam-policy.timer")
    assert "OnCalendar" not in t["Timer"]  # wall clock: jumps on a Pi without RTC
    assert t["Timer"]["OnBootSec"] and t["Timer"]["OnUnitActiveSec"] == "30s"
    assert int(re.match(r"(\d+)s", t["Timer"]["AccuracySec"]).group(1)) <= 5
    assert t["Install"]["WantedBy"] == "timers.target"


def test_the_tick_is_a_oneshot_root_service_after_the_boot_unit():
    s = unit("dashcam-policy.service")
    assert s["Service"]["Type"] == "oneshot"
    assert s["Service"]["ExecStart"] == "/usr/bin/dashcamctl policy"
    assert "User" not in s["Service"]
    assert "dashcam-boot.service" in s["Unit"]["After"]
    assert "Install" not in s  # started by the timer only


def test_the_boot_unit_decides_the_camera_once_per_boot_early_and_without_the_network():
    b = unit("dashcam-boot.service")
    assert b["Service"]["ExecStart"] == "/usr/bin/dashcamctl boot"
    assert b["Service"]["Type"] == "oneshot"
    assert b["Unit"]["DefaultDependencies"] == "no"  # not after basic.target
    assert "network" not in b["Unit"]["After"] and "systemd-modules-load.service" in b["Unit"]["After"]
    assert b["Install"]["WantedBy"] == "sysinit.target"
    assert "char-i2c rw" in (SYSTEMD / "dashcam-boot.service").read_text()  # the one battery read


def test_the_watcher_is_started_by_the_policy_only_and_restarted_if_it_fails():
    w = unit("dashcam-watch.service")
    assert w["Service"]["ExecStart"] == "/usr/bin/dashcamctl watch"
    assert w["Service"]["Restart"] == "on-failure"
    assert "Install" not in w
    # started by a tick before it records its state: the watcher reads that tick's power source
    assert "dashcam-policy.service" in w["Unit"]["After"]
    assert "dashcam-watch.service" not in unit("dashcam-policy.service")["Unit"].get("After", "")
    assert never_started_by_the_package("dashcam-watch")


def test_every_relaxed_hardening_setting_carries_a_comment_saying_why():
    for name in ("dashcam-policy.service", "dashcam-boot.service", "dashcam-watch.service"):
        lines = (SYSTEMD / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"(ProtectKernelTunables=no|PrivateDevices=no|ProtectSystem=full|CapabilityBoundingSet=|DeviceAllow=)", line):
                above = "\n".join(lines[max(0, i - 6) : i])
                assert "#" in above and ("relaxed" in above or "CAP_" in above or "opens" in above), (name, line)


def never_started_by_the_package(name):
    """debian/rules installs unit ``name`` with dh_installsystemd --no-start, and only so."""
    calls = [line.split() for line in (ROOT / "debian" / "rules").read_text().splitlines()
             if line.split()[:2] == ["dh_installsystemd", f"--name={name}"]]
    return bool(calls) and all("--no-start" in call for call in calls)


def test_the_package_never_starts_the_boot_unit_on_install_or_upgrade():
    assert never_started_by_the_package("dashcam-boot")


def test_a_boot_unit_that_fails_or_is_killed_at_its_timeout_leaves_the_watcher_running():
    # the boot starts the watcher itself once the camera is off (or did not take); a boot killed at
    # TimeoutStartSec (a camera script that hangs: SCRIPT_TIMEOUT 60 s a try; battery.timeout_seconds
    # up to 60 s) or one that crashes never gets there, and the camera (as the hub powered it up: in
    # data) is unwatched until the first policy tick
    b = unit("dashcam-boot.service")
    assert "dashcam-watch.service" in b["Unit"].get("OnFailure", "").split()


def test_a_watcher_killed_by_a_signal_systemd_counts_as_clean_is_restarted():
    # Restart=on-failure takes SIGTERM, SIGHUP, SIGINT and SIGPIPE for a clean end: a stray kill
    # (not a stop job, which is never restarted) would leave the camera out of record unwatched;
    # the tick starts the watcher only when the camera leaves record
    w = unit("dashcam-watch.service")
    forced = w["Service"].get("RestartForceExitStatus", "").split()
    assert {"SIGTERM", "SIGHUP"} <= set(forced), forced


def test_a_watcher_that_cannot_read_its_configuration_is_not_restarted_every_two_seconds():
    # a wrong configuration (exit status 78, EX_CONFIG) does not mend itself: restarted every 2 s
    # (never hitting the start limit) the watcher would start Python on battery for nothing
    w = unit("dashcam-watch.service")
    assert "78" in w["Service"].get("RestartPreventExitStatus", "").split()


@pytest.mark.parametrize("name", ["dashcam-policy.service", "dashcam-watch.service", "dashcam-boot.service"])
def test_a_unit_that_runs_on_the_last_good_configuration_runs_without_the_file_too(name):
    # the file deleted or moved aside after it worked (a hand edit, a copy over it): the unit runs on
    # the last good configuration its cache holds (config.load_cached, last_good), so its condition
    # holds with the file or with that cache; a condition on the file alone skipped every policy
    # tick (no low-battery shutdown) and the boot (the camera never back to record)
    from dashcam_helpers.config import CACHE_NAME, DEFAULT_PATH

    conditions = [line.split("=", 1)[1] for line in (SYSTEMD / name).read_text().splitlines()
                  if line.startswith("ConditionPathExists=")]
    assert sorted(conditions) == sorted([f"|{DEFAULT_PATH}", f"|/var/cache/dashcam/{CACHE_NAME}"]), conditions
    assert unit(name)["Service"]["CacheDirectory"] == "dashcam"
