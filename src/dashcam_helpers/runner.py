"""The one way dashcam-manager runs an external command.

argv lists only (never a shell), a timeout on every call, the dry-run flag honoured
here for commands that change something, every command logged with secrets masked,
and failures turned into typed errors that carry the command's stderr.

The command runs through os.posix_spawn with two pipes read under poll(), not through
the subprocess module: the policy timer starts a tick every 30 s on battery, and the
subprocess module (with threading, selectors, locale and more) costs a tick more CPU
than everything the tick does with it. What subprocess.run(capture_output=True,
text=True, timeout=...) gives is kept: PATH lookup, stdin from /dev/null, SIGPIPE
restored to its default in the child, output as text with universal newlines, the
child killed and reaped at the timeout.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Iterable, Mapping, Optional, Sequence

from .record import Record
from .log import get as get_logger

log = get_logger("dashcam.runner")

MASK = "********"

# Every tool runs under this locale, whatever the environment of the unit or the shell that
# started us: what we parse (rsync's file names and escapes, ssh's and rsync's messages) must
# not change with LANG. C.UTF-8 is built into glibc (no locales package needed); LANGUAGE
# goes too, as GNU gettext reads it before LC_ALL.
TOOL_LOCALE = "C.UTF-8"


# Every unit of the package runs with ProtectHome=yes: these directories are empty and inaccessible
# to the services, so a program under them works from a root shell and is missing in the unit.
HIDDEN_FROM_UNITS = ("/home", "/root", "/run/user")


def hidden_from_units(program: str) -> Optional[str]:
    """The directory of HIDDEN_FROM_UNITS that holds ``program`` (an absolute path), else None."""
    if not program.startswith("/"):
        return None
    path = os.path.normpath(program)
    for d in HIDDEN_FROM_UNITS:
        if path == d or path.startswith(d + "/"):
            return d
    return None


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


class CommandOutputTooLong(CommandError):
    """The command printed more than the caller's ``max_output``: it was killed, its output dropped."""


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
    env: Optional[Mapping[str, str]] = None,
    max_output: Optional[int] = None,
) -> Result:
    """Run ``argv`` and return its output as text.

    ``changes_state``: the command switches hardware, mounts, writes files or talks to
    the server; under ``dry_run`` it is logged and not run. Read-only commands run
    even in a dry run, so a dry run still sees the real world.
    ``check``: a non-zero exit raises CommandFailed.
    ``max_output``: bytes a stream (stdout, stderr) may carry; more kills the command and raises
    CommandOutputTooLong (a tool printing in a loop must not fill the memory within its timeout).
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
    full_env = tool_env(env)
    try:
        returncode, stdout, stderr = _spawn(argv, full_env, timeout, max_output)
    except (FileNotFoundError, PermissionError) as e:
        # under systemd (which sets INVOCATION_ID for every unit) the file may well exist:
        # ProtectHome=yes hides it (not found or denied); a shell sees it as it is
        hidden = hidden_from_units(argv[0]) if os.environ.get("INVOCATION_ID") else None
        if hidden:
            raise CommandNotFound(argv, f"{argv[0]}: hidden from the service: the units run with ProtectHome=yes, "
                                        f"which hides {', '.join(HIDDEN_FROM_UNITS)}; move the program out of {hidden} "
                                        "(e.g. to /usr/local/bin) and set its configuration key to the new path")
        if isinstance(e, PermissionError):
            raise CommandNotFound(argv, f"{argv[0]}: permission denied (not executable?)")
        raise CommandNotFound(argv, f"{argv[0]}: command not found (is it installed and on PATH?)")
    except _Timeout as e:
        raise CommandTimeout(argv, f"{line} did not finish within {timeout:g} s", e.stderr)
    except _TooLong:
        raise CommandOutputTooLong(argv, f"{line} printed more than {max_output} bytes: stopped, output dropped")
    proc = Result(argv, returncode, stdout, stderr)
    if proc.returncode != 0:
        # what leaves this function in an error or a log line is masked; Result keeps the raw text
        stdout, stderr = _mask(proc.stdout, secrets), _mask(proc.stderr, secrets)
        log.debug("%s exited with %s; stderr: %s", line, describe_returncode(proc.returncode), last_line(stderr))
        if check:
            raise CommandFailed(argv, proc.returncode, stdout, stderr, line)
    return proc


def tool_env(env: Optional[Mapping[str, str]] = None) -> dict:
    """The environment of a tool: ours, ``env`` on top, and the locale fixed."""
    full = {**os.environ, **(env or {}), "LC_ALL": TOOL_LOCALE}
    full.pop("LANGUAGE", None)
    return full


class _Timeout(Exception):
    def __init__(self, stderr: str):
        self.stderr = stderr


class _TooLong(Exception):
    pass


def _executable(name: str, env: Mapping[str, str]) -> str:
    """execvp's lookup: a name with a slash as it is, else the first PATH entry holding it."""
    if "/" in name:
        return name
    denied = None
    # os.get_exec_path() without its import of warnings (every policy tick runs tools)
    for d in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = denied or candidate
    if denied:
        raise PermissionError(denied)
    raise FileNotFoundError(name)


def _text(chunks) -> str:
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def _spawn(argv: Sequence[str], env: Mapping[str, str], timeout: float, max_output: Optional[int] = None):
    """Run argv with stdin from /dev/null and stdout/stderr captured; (returncode, stdout, stderr).
    The return code is negative for a signal, as with subprocess."""
    deadline = time.monotonic() + timeout
    path = _executable(argv[0], env)
    out_r, out_w = os.pipe()                 # non-inheritable: only the dup2'd copies reach the child
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(
            path, list(argv), env,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)],
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),     # Python ignores them; the child must not
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    chunks = {out_r: [], err_r: []}
    sizes = {out_r: 0, err_r: 0}
    try:
        poller = select.poll()
        for fd in chunks:
            poller.register(fd, select.POLLIN)
        open_fds = len(chunks)
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout(_text(chunks[err_r]))
            for fd, _ in poller.poll(left * 1000):
                data = os.read(fd, 65536)
                if data:
                    sizes[fd] += len(data)
                    if max_output is not None and sizes[fd] > max_output:
                        raise _TooLong()
                    chunks[fd].append(data)
                else:                                      # EOF: the child closed it (or exited)
                    poller.unregister(fd)
                    open_fds -= 1
        while True:                                         # both pipes closed: the child is ending
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = None
                return os.waitstatus_to_exitcode(status), _text(chunks[out_r]), _text(chunks[err_r])
            if time.monotonic() >= deadline:
                raise _Timeout(_text(chunks[err_r]))
            time.sleep(0.005)
    finally:
        os.close(out_r)
        os.close(err_r)
        if pid is not None:                                 # timeout or interrupted: kill and reap
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _mask(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text
