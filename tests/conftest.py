"""Shared test fixtures: the package on sys.path, configs in tmp_path, dashcamctl as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
FIXTURES = ROOT / "tests" / "fixtures"  # real output of the tools, see its README
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

MINIMAL = {"upload": {"host": "127.0.0.1", "user": "dashcam", "dest_path": "footage"}}


def deep_merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


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
    """Run dashcamctl as a real subprocess with Debian's python and the source tree."""

    def run(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60, input: Optional[str] = None):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(SRC) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.pop("DASHCAM_CONFIG", None)
        full_env.pop("JOURNAL_STREAM", None)
        full_env.pop("NOTIFY_SOCKET", None)
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "dashcam_helpers", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            input=input,
        )

    return run
