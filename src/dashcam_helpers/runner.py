"""The one way dashcam-manager runs an external command.

argv lists only (never a shell), a timeout on every call, the dry-run flag honoured
here for commands that change something, every command logged with secrets masked,
and failures turned into typed errors that carry the command's stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Iterable, Mapping, Optional, Sequence

from .record import Record

log = logging.getLogger("dashcam.runner")

MASK = "********"


class CommandError(Exception):
    """Base of every failure of an external command."""

    def __init__(self, argv: Sequence[str], message: str, stderr: str = ""):
        self.argv = list(argv)
        self.stderr = stderr
        super().__init__(message)


class CommandNotFound(CommandError):
    pass


class CommandTimeout(CommandError):
    pass


class CommandFailed(CommandError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str, shown: str):
        self.returncode = returncode
        self.stdout = stdout
        detail = last_line(stderr) or last_line(stdout)
        super().__init__(
            argv,
            f"{shown} exited with {describe_returncode(returncode)}" + (f": {detail}" if detail else ""),
            stderr,
        )


class Result(Record):
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str
    dry_run: bool = False


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe_returncode(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def shown(argv: Sequence[str], secrets: Iterable[str] = ()) -> str:
    """The command as a shell-quoted line for logs, with every secret replaced by a mask."""
    secrets = [s for s in secrets if s]
    out = []
    for arg in argv:
        for s in secrets:
            arg = arg.replace(s, MASK)
        out.append(shlex.quote(arg))
    return " ".join(out)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    dry_run: bool = False,
    changes_state: bool = True,
    check: bool = True,
    secrets: Iterable[str] = (),
    input: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
) -> Result:
    """Run ``argv`` and return its output as text.

    ``changes_state``: the command switches hardware, mounts, writes files or talks to
    the server; under ``dry_run`` it is logged and not run. Read-only commands run
    even in a dry run, so a dry run still sees the real world.
    ``check``: a non-zero exit raises CommandFailed.
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("run() takes an argv list, never a command string")
    argv = [os.fspath(a) for a in argv]
    secrets = list(secrets)
    line = shown(argv, secrets)
    if dry_run and changes_state:
        log.info("dry run, not running: %s", line)
        return Result(argv, 0, "", "", dry_run=True)
    log.debug("running: %s", line)
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise CommandNotFound(argv, f"{argv[0]}: command not found (is it installed and on PATH?)")
    except PermissionError:
        raise CommandNotFound(argv, f"{argv[0]}: permission denied (not executable?)")
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise CommandTimeout(argv, f"{line} did not finish within {timeout:g} s", err)
    if proc.returncode != 0:
        # what leaves this function in an error or a log line is masked; Result keeps the raw text
        stdout, stderr = _mask(proc.stdout, secrets), _mask(proc.stderr, secrets)
        log.debug("%s exited with %s; stderr: %s", line, describe_returncode(proc.returncode), last_line(stderr))
        if check:
            raise CommandFailed(argv, proc.returncode, stdout, stderr, line)
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


def _mask(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text
