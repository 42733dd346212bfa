"""The units' exposure as `systemd-analyze security --offline=yes` scores it, against each unit's target,
and the reason written beside every relaxed setting."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"

# the most exposure each unit may have (systemd 252's scale: 0 = locked down, 10 = none)
TARGETS = {
    "dashcam-upload.service": 1.2,
    "dashcam-mqtt-offline.service": 1.2,
    "dashcam-boot.service": 2.0,
    "dashcam-ingest@.service": 2.0,
    "dashcam-policy.service": 2.5,
    # the ignition watcher does the policy's work (camera, UPS, ledger, a server probe) faster
    "dashcam-watch.service": 2.5,
}
ANALYZE = shutil.which("systemd-analyze")


def exposure(unit: Path, tmp_path: Path) -> float:
    copy = tmp_path / unit.name
    shutil.copy(unit, copy)  # --offline=yes reads the file; a copy keeps the tree out of it
    res = subprocess.run([ANALYZE, "security", "--offline=yes", f"./{copy.name}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert found, f"no exposure in systemd-analyze's output:\n{res.stdout}\n{res.stderr}"
    return float(found.group(1))


def test_every_service_has_a_target():
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(TARGETS)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (package systemd)")
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_unit_is_no_more_exposed_than_its_target(name, tmp_path):
    score = exposure(UNITS / name, tmp_path)
    assert score <= TARGETS[name], f"{name}: exposure {score}, target {TARGETS[name]}"


RELAXED = re.compile(r"^(PrivateDevices=no|ProtectKernelTunables=no|ProtectSystem=(?!strict)|User=root|"
                     r"ReadWritePaths=|NotifyAccess=all|RestrictAddressFamilies=.*AF_INET|ProtectProc=(?!invisible))")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_relaxed_setting_says_why_in_a_comment_just_above_it(name):
    lines = (UNITS / name).read_text().splitlines()
    for i, line in enumerate(lines):
        if RELAXED.match(line):
            above = lines[max(0, i - 3):i]
            assert any(a.startswith("#") for a in above), f"{name}:{i + 1}: {line} has no reason beside it"


def test_the_ingest_holds_only_what_mount_and_the_drop_need():
    text = (UNITS / "dashcam-ingest@.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert sorted(caps) == ["CAP_SETGID", "CAP_SETUID", "CAP_SYS_ADMIN"]
    assert re.search(r"^DevicePolicy=closed$", text, re.M)
    assert re.search(r"^NotifyAccess=main$", text, re.M)
    # no User= at all (root is the default): with User= set, systemd 255 and later drop CAP_SETUID
    # from the permitted set after the seccomp filter, and the copy's drop to dashcam gets EPERM
    assert not re.search(r"^User=", text, re.M)


@pytest.mark.parametrize("name", ["dashcam-ingest@.service", "dashcam-upload.service"])
def test_a_unit_that_hides_proc_sys_gives_the_boot_id_the_power_budget_is_kept_by(name):
    # ProcSubset=pid hides /proc/sys/kernel/random/boot_id; without it the budget the policy wrote
    # for this boot reads as another boot's, which is no limit at all
    text = (UNITS / name).read_text()
    assert re.search(r"^ProcSubset=pid$", text, re.M)
    assert re.search(r"^Environment=DASHCAM_BOOT_ID=%b$", text, re.M)
