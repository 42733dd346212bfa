"""The upload's systemd units: hardened, and no retry loop while the server is away."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def test_the_path_unit_fires_on_events_not_on_a_non_empty_directory():
    text = (UNITS / "dashcam-upload.path").read_text()
    active = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert "PathChanged=/var/lib/dashcam/staging/incoming" in active
    assert not any(l.startswith("DirectoryNotEmpty=") for l in active)
    assert "Unit=dashcam-upload.service" in active


def test_server_down_is_not_a_failure_and_nothing_restarts_it():
    service = unit("dashcam-upload.service")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["SuccessExitStatus"] == "75"
    assert "Restart" not in service["Service"]
    assert service["Service"]["User"] == "dashcam"
    assert service["Service"]["ExecStart"] == "/usr/bin/dashcamctl upload"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_upload_service_is_hardened_to_an_exposure_of_at_most_2():
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNITS / "dashcam-upload.service")],
        capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for dashcam-upload.service: ([\d.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.0
