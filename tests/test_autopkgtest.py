"""debian/tests: the control file parses as autopkgtest reads it (deb822), names scripts that exist
and restrictions autopkgtest knows, and each script passes against this tree's dashcamctl (the
launcher on the source, first on PATH), as it must against the installed package."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from debian import deb822

from conftest import LAUNCHER, ROOT, SRC

TESTS = ROOT / "debian" / "tests"
# autopkgtest's README.package-tests: the restrictions it defines (any other makes it skip the test)
KNOWN_RESTRICTIONS = {
    "allow-stderr", "breaks-testbed", "build-needed", "flaky", "hint-testsuite-triggers", "isolation-container",
    "isolation-machine", "needs-internet", "needs-reboot", "needs-root", "needs-sudo", "rw-build-tree",
    "skip-foreign-architecture", "skip-not-installable", "skippable", "superficial", "needs-recommends",
}


def paragraphs():
    with open(TESTS / "control", encoding="utf-8") as f:
        return list(deb822.Deb822.iter_paragraphs(f))


def test_the_control_file_names_executable_scripts_with_known_fields_and_restrictions():
    found = paragraphs()
    assert [p["Tests"] for p in found] == ["shipped-config", "policy-dry-run", "doctor-json"]
    for p in found:
        assert set(p) <= {"Tests", "Depends", "Restrictions", "Features", "Classes", "Architecture"}, dict(p)
        assert p["Depends"].split(",")[0].strip() == "@"
        restrictions = {r.strip() for r in p.get("Restrictions", "").replace(",", " ").split()}
        assert restrictions <= KNOWN_RESTRICTIONS, restrictions
        script = TESTS / p["Tests"]
        assert script.is_file() and script.stat().st_mode & stat.S_IXUSR, script


@pytest.fixture
def installed(tmp_path):
    """dashcamctl on PATH as the package installs it: the launcher, here on the source tree."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "dashcamctl"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{SRC}" exec "{LAUNCHER}" "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DASHCAM_CONFIG", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    (tmp_path / "adt").mkdir()
    env["AUTOPKGTEST_TMP"] = str(tmp_path / "adt")
    return env


@pytest.mark.parametrize("name, env", [
    ("shipped-config", {"DASHCAM_CONFIG": str(ROOT / "etc" / "dashcam" / "config.yaml")}),
    ("policy-dry-run", {}),
    ("doctor-json", {}),
])
def test_each_autopkgtest_passes_against_this_tree(installed, name, env):
    # autopkgtest runs each test from the source tree's root
    r = subprocess.run([str(TESTS / name)], cwd=ROOT, env={**installed, **env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].endswith(": ok")
