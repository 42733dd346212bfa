"""systemd as a tool: the systemctl calls the helpers make, in one place.

    start:     systemctl start --no-block UNIT           (the unit runs on its own)
    stop:      systemctl stop UNIT...                    (blocks until they have stopped)
    restart:   systemctl restart UNIT
    reload:    systemctl daemon-reload
    poweroff:  systemctl poweroff
    units:     systemctl list-units --all --plain --no-legend --no-pager --type=service -- PATTERN...
    show:      systemctl show UNIT -p PROPERTY

Every call goes through the runner (argv, timeout, dry run, typed errors). A call that
changes something is only logged under ``dry_run``; ``units`` and ``show`` read, and run
in a dry run too. Callers get a :class:`Systemctl` by parameter: tests pass a fake with
the same methods, or a ``run`` that records the argv.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Callable, List, Optional

from . import runner

# the states in which a unit counts as running (list-units' ACTIVE column)
RUNNING = ("active", "activating", "deactivating", "reloading")
START_TIMEOUT = 30  # seconds: --no-block only queues the job
STOP_TIMEOUT = 150  # seconds: an ingest deletes its .part and unmounts, an upload ends rsync
READ_TIMEOUT = 10  # seconds for list-units and show


class Systemctl:
    """systemctl through the runner. ``program``: the systemctl to run (a seam: doctor's
    Machine names its own); ``run``: runner.run or a fake with its signature."""

    def __init__(self, program: str = "systemctl", *, dry_run: bool = False,
                 run: Optional[Callable[..., runner.Result]] = None):
        self.program = program
        self.dry_run = dry_run
        self.run = run or runner.run

    def _change(self, args: List[str], timeout: float, check: bool) -> runner.Result:
        return self.run([self.program, *args], timeout=timeout, dry_run=self.dry_run, check=check)

    def start(self, unit: str, *, check: bool = True) -> runner.Result:
        """Queue the start of ``unit`` and return (--no-block)."""
        return self._change(["start", "--no-block", unit], START_TIMEOUT, check)

    def stop(self, units: List[str], *, check: bool = True) -> runner.Result:
        """Stop ``units`` (names or patterns) and wait until they have stopped."""
        return self._change(["stop", *units], STOP_TIMEOUT, check)

    def restart(self, unit: str, *, timeout: float = START_TIMEOUT) -> runner.Result:
        return self._change(["restart", unit], timeout, True)

    def daemon_reload(self, *, timeout: float = START_TIMEOUT) -> runner.Result:
        return self._change(["daemon-reload"], timeout, True)

    def poweroff(self) -> runner.Result:
        return self._change(["poweroff"], START_TIMEOUT, True)

    def units(self, *patterns: str, timeout: float = READ_TIMEOUT) -> List[str]:
        """The service units matching ``patterns`` that are running (see RUNNING). CommandError
        (no systemctl, a timeout) passes to the caller; an answer it cannot read lists nothing."""
        result = self.run([self.program, "list-units", "--all", "--plain", "--no-legend", "--no-pager",
                           "--type=service", "--", *patterns], timeout=timeout, changes_state=False, check=False)
        return running_units(result.stdout)

    def show(self, unit: str, prop: str, *, timeout: float = READ_TIMEOUT) -> str:
        """``systemctl show UNIT -p PROP``: its output (PROP=value lines); CommandFailed on an error."""
        return self.run([self.program, "show", unit, "-p", prop], timeout=timeout, changes_state=False).stdout


def running_units(listing: str) -> List[str]:
    """The running units in ``systemctl list-units --plain --no-legend``: UNIT LOAD ACTIVE SUB DESCRIPTION."""
    found = []
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in RUNNING:
            found.append(parts[0])
    return found
