"""The policy timer's argument lists are parsed without argparse, exactly as argparse would parse them."""

from __future__ import annotations

import pytest

from dashcam_helpers import cli

ACCEPTED = [
    ["policy"],
    ["--dry-run", "policy"],
    ["--dry-run", "policy", "--json"],
    ["--config", "/etc/dashcam/other.yaml", "policy"],
    ["--config=/tmp/c.yaml", "-v", "--dry-run", "policy", "--json"],
    ["--verbose", "policy", "--json", "--json"],
]

REFUSED = [
    [],
    ["files"],
    ["policy", "--dry-run"],  # a global option after the command: argparse's business (and error)
    ["--dry", "policy"],  # an abbreviation: argparse accepts it
    ["policy", "-h"],
    ["--config", "policy"],
    ["--config", "--dry-run", "policy"],
    ["--config="],
    ["-vv", "policy"],
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=" ".join)
def test_the_fast_path_agrees_with_argparse(argv):
    quick = cli._timer_args(argv)
    assert quick is not None
    assert vars(quick) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", REFUSED, ids=lambda a: " ".join(a) or "nothing")
def test_anything_else_goes_to_argparse(argv):
    assert cli._timer_args(argv) is None


def test_policy_help_still_comes_from_argparse(dashcamctl):
    r = dashcamctl("policy", "--help")
    assert r.returncode == 0 and "usage: dashcamctl policy" in r.stdout
