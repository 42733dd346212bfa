"""Shared test fixtures: the package on sys.path, configs in tmp_path, dashcamctl as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import yaml
from merge import deep_merge  # noqa: F401 (the tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
FIXTURES = ROOT / "tests" / "fixtures"  # real output of the tools, see its README
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

_QUARANTINED = []


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Remember the quarantined tests (before -m deselects them) for the summary."""
    for item in items:
        mark = item.get_closest_marker("quarantined")
        if mark is not None:
            _QUARANTINED.append((item.nodeid, mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")))


def pytest_terminal_summary(terminalreporter):
    """Every run says which system tests are quarantined, and why: they are known not to pass yet."""
    if _QUARANTINED:
        terminalreporter.section("quarantined system tests (not in make test; make test-quarantined runs them)")
        for nodeid, reason in _QUARANTINED:
            terminalreporter.write_line(f"{nodeid}: {reason}")


MINIMAL = {"upload": {"host": "127.0.0.1", "user": "dashcam", "dest_path": "footage"}}


@pytest.fixture
def make_config(tmp_path):
    """Write a config (minimal valid + overrides) under tmp_path, with paths pointing into tmp_path."""

    def make(overrides: Optional[Dict[str, Any]] = None, name: str = "config.yaml") -> Path:
        data = deep_merge(
            MINIMAL,
            {"paths": {"local_staging": str(tmp_path / "staging"), "state_dir": str(tmp_path / "state")}},
        )
        data = deep_merge(data, overrides or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


@pytest.fixture
def dashcamctl(tmp_path):
    """Run dashcamctl as a real subprocess: the launcher the package installs as /usr/bin/dashcamctl
    (debian/dashcamctl-launcher, through its #! line: Debian's python3 -S) on the source tree."""

    def run(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60, input: Optional[str] = None):
        return subprocess.run(
            [str(LAUNCHER), *args],
            capture_output=True,
            text=True,
            env=dashcamctl_env(env),
            timeout=timeout,
            input=input,
        )

    return run


LAUNCHER = ROOT / "debian" / "dashcamctl-launcher"


def dashcamctl_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment dashcamctl runs in under the tests: this source tree first on PYTHONPATH,
    none of the variables systemd or a user's shell would hand it, then ``env``."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(SRC) + os.pathsep + full_env.get("PYTHONPATH", "")
    for name in ("DASHCAM_CONFIG", "JOURNAL_STREAM", "NOTIFY_SOCKET", "RUNTIME_DIRECTORY", "CACHE_DIRECTORY"):
        full_env.pop(name, None)
    if env:
        full_env.update(env)
    return full_env
FAKES = ROOT / "tests" / "fakes"  # fake lifepo4wered-cli and uhubctl; their knobs are documented at their top


class FakeHardware:
    """The fake tools first on PATH, their state and call logs, and a fake sysfs tree, all under tmp_path."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "hw"
        self.sysfs = self.root / "sys"
        self.uhubctl_state = self.root / "uhubctl-state.json"
        self.uhubctl_calls = self.root / "uhubctl-calls.jsonl"
        self.battery_calls = self.root / "lifepo4wered-calls.jsonl"
        self.battery_state = self.root / "lifepo4wered-state"
        self.env: Dict[str, str] = {
            "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
            "DASHCAM_SYSFS": str(self.sysfs),
            "UHUBCTL_FAKE_STATE": str(self.uhubctl_state),
            "UHUBCTL_FAKE_CALLS": str(self.uhubctl_calls),
            "LIFEPO4WERED_FAKE_CALLS": str(self.battery_calls),
            "LIFEPO4WERED_FAKE_STATE": str(self.battery_state),
        }
        self.root.mkdir(parents=True, exist_ok=True)

    def usb_device(self, name: str = "1-1", authorized: str = "1") -> Path:
        """A USB device directory with its ``authorized`` attribute in the fake sysfs."""
        d = self.sysfs / "bus" / "usb" / "devices" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "authorized").write_text(authorized + "\n")
        return d / "authorized"

    def authorized(self, name: str = "1-1") -> str:
        return (self.sysfs / "bus" / "usb" / "devices" / name / "authorized").read_text().strip()

    def uhubctl_argvs(self):
        import json

        if not self.uhubctl_calls.exists():
            return []
        return [json.loads(line) for line in self.uhubctl_calls.read_text().splitlines()]

    def battery_call_count(self) -> int:
        return len(self.battery_calls.read_text().splitlines()) if self.battery_calls.exists() else 0

    def set_battery(self, text: str) -> None:
        """Lines for the fake lifepo4wered-cli state file: "NAME = value" or "mode = i2c-fail"."""
        self.battery_state.write_text(text)

    def port_power(self, hub: str = "1-1", port: int = 1) -> bool:
        import json

        return json.loads(self.uhubctl_state.read_text())[hub][str(port)]


@pytest.fixture
def fake_hw(tmp_path, monkeypatch):
    """Fakes first on PATH (for subprocesses via ``env=fake_hw.env`` and for in-process code)."""
    hw = FakeHardware(tmp_path)
    for k, v in hw.env.items():
        monkeypatch.setenv(k, v)
    return hw


@dataclass
class Reading:
    """A battery reading as the policy and the watcher see one (battery.read's fields)."""
    external: Optional[bool]
    percent: Optional[int] = 90
    millivolts: Optional[int] = 3400
    source: str = "lifepo4wered"
    raw: Dict[str, Any] = field(default_factory=dict)
    reason: Optional[str] = None
