"""What every check of dashcamctl doctor is made of: its line (ok, warn or FAIL, what was found, the
fix), the machine it looks at (the seams tests replace), and the one way it runs a read-only tool."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

from .. import runner
from ..ignition import LOCK_PATH
from ..record import Record

OK, WARN, FAIL = "ok", "warn", "FAIL"
TOOL_TIMEOUT = 3.0  # seconds for one local tool (version, uhubctl status, systemctl, timedatectl)

DASHCAM_USER = "dashcam"  # the unprivileged user that owns staging, the ledger and the key


class Check(Record):
    name: str
    status: str  # ok | warn | FAIL
    found: str
    fix: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix}


def ok(name: str, found: str) -> Check:
    return Check(name, OK, found)


def warn(name: str, found: str, fix: Optional[str] = None) -> Check:
    return Check(name, WARN, found, fix)


def fail(name: str, found: str, fix: Optional[str] = None) -> Check:
    return Check(name, FAIL, found, fix)


class Machine(Record):
    """Where the checks look: the seams tests replace."""

    root: str = "/"  # prefix of /proc/device-tree/model, /proc/filesystems, /lib/modules
    systemctl: str = "systemctl"
    journalctl: str = "journalctl"
    timedatectl: str = "timedatectl"
    udev_context: Any = None  # a pyudev Context (or a fake with list_devices); None: the real one
    user: str = DASHCAM_USER  # the unprivileged user that owns staging, the ledger and the key
    euid: Optional[int] = None  # None: os.geteuid()
    lock_path: str = LOCK_PATH  # --switch holds the policy's lock (the tick's and the watcher's)
    udev_monitor: Any = None  # a pyudev Monitor (or a fake with start/fileno/poll); None: the real one

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def is_root(self) -> bool:
        return (os.geteuid() if self.euid is None else self.euid) == 0


def tool(argv: Sequence[str], timeout: float = TOOL_TIMEOUT) -> runner.Result:
    """A read-only command; CommandError (not found, timeout) passes to the caller."""
    return runner.run(list(argv), timeout=timeout, changes_state=False, check=False)


def first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""
