"""systemd as a tool: the argv of each systemctl call, what a dry run runs, what a listing says."""

from __future__ import annotations

import pytest

from dashcam_helpers import runner
from dashcam_helpers.systemd import Systemctl, running_units


class Recorder:
    """runner.run's signature: records each call, answers with ``stdout``, runs nothing."""

    def __init__(self, stdout: str = ""):
        self.calls = []
        self.stdout = stdout

    def __call__(self, argv, *, timeout, dry_run=False, changes_state=True, check=True):
        self.calls.append((list(argv), dry_run, changes_state, check))
        return runner.Result(list(argv), 0, self.stdout, "")


def test_each_call_is_one_systemctl_argv():
    run = Recorder()
    s = Systemctl(run=run)
    s.start("dashcam-upload.service")
    s.stop(["dashcam-ingest@*.service", "dashcam-upload.service"])
    s.daemon_reload()
    s.restart("dashcam-policy.timer")
    s.poweroff()
    assert [c[0] for c in run.calls] == [
        ["systemctl", "start", "--no-block", "dashcam-upload.service"],
        ["systemctl", "stop", "dashcam-ingest@*.service", "dashcam-upload.service"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "restart", "dashcam-policy.timer"],
        ["systemctl", "poweroff"],
    ]
    assert all(changes for _, _, changes, _ in run.calls)


def test_a_dry_run_reaches_every_call_that_changes_something_and_none_that_reads():
    run = Recorder("Id=dashcam-policy.timer\n")
    s = Systemctl("/usr/bin/systemctl", dry_run=True, run=run)
    s.start("dashcam-watch.service")
    s.poweroff()
    assert s.show("dashcam-policy.timer", "Id") == "Id=dashcam-policy.timer\n"
    assert s.units("dashcam-ingest@*.service") == []
    assert [(c[0][1], c[1], c[2]) for c in run.calls] == [
        ("start", True, True),
        ("poweroff", True, True),
        ("show", False, False),
        ("list-units", False, False),
    ]
    assert {c[0][0] for c in run.calls} == {"/usr/bin/systemctl"}


def test_units_lists_the_running_services_that_match():
    run = Recorder(
        "dashcam-ingest@sda1.service loaded activating start dashcam ingest of sda1\n"
        "dashcam-upload.service loaded inactive dead dashcam upload\n"
    )
    assert Systemctl(run=run).units("dashcam-ingest@*.service", "dashcam-upload.service") == ["dashcam-ingest@sda1.service"]
    assert run.calls[0][0] == ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager",
                               "--type=service", "--", "dashcam-ingest@*.service", "dashcam-upload.service"]
    assert run.calls[0][3] is False  # systemctl exits 0 with an empty listing; an error lists nothing


@pytest.mark.parametrize("listing, running", [
    ("a.service loaded active running A\nb.service loaded reloading reload B\n", ["a.service", "b.service"]),
    ("a.service loaded deactivating stop-sigterm A\n", ["a.service"]),
    ("a.service loaded failed failed A\nb.service loaded inactive dead B\n", []),
    ("", []),
    ("garbage\n\n  \na.service loaded\n", []),  # short lines are no units
])
def test_running_units_from_a_listing(listing, running):
    assert running_units(listing) == running
