"""Giving up root: the ingest mounts the camera's card as root, then reads it as the staging owner.

Only mount(2) needs privilege. Everything that touches the card's bytes (the scan, the hash,
the copy into staging) runs in a child process that has dropped to the owner of staging (the
``dashcam`` user): its groups, gid and uid all set, no capabilities left, and no-new-privileges
so nothing it runs can regain any. The root parent waits, forwards a stop (SIGTERM) to it, and
learns its result as JSON: never a pickle, since the child handles hostile card data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import signal
import stat
from typing import Any, Callable, Dict, Optional, Tuple

from .errors import DashcamError, TryLater
from .log import get as get_logger

log = get_logger("dashcam.privilege")

User = Tuple[int, int]  # (uid, gid)
PR_SET_NO_NEW_PRIVS = 38
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


def staging_user(staging: str) -> Optional[User]:
    """Who copies into ``staging``: its owner, when we are root and it is someone else; else None.

    The nearest directory of the path that exists and root may look at decides: staging may not
    exist before the first ingest, and the ingest's root holds no CAP_DAC_* to enter
    /var/lib/dashcam (dashcam's, 0750), whose owner then decides. A symlink there is refused: root
    follows no links in a directory another user writes.
    """
    if os.geteuid() != 0:
        return None
    path = staging
    while True:
        try:
            st = os.lstat(path)
            break
        except (FileNotFoundError, PermissionError):
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
    if stat.S_ISLNK(st.st_mode):
        raise DashcamError(f"refusing {path}: it is a symbolic link (root follows no links here; remove it)")
    if st.st_uid == 0:
        log.info("%s belongs to root: the copy runs as root", path)
        return None
    return st.st_uid, st.st_gid


def _capabilities() -> Dict[str, int]:
    """The capability sets of this process (/proc/self/status), e.g. {"CapEff": 0, ...}."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in CAP_FIELDS:
                out[key] = int(value.strip(), 16)
    return out


def drop_to(user: User) -> None:
    """Become ``user`` for good: supplementary groups, gid, uid (real, effective, saved), then
    no-new-privileges. Leaving uid 0 clears every capability; checked, not assumed."""
    uid, gid = user
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups() != [gid]:
        raise DashcamError(f"could not drop to uid {uid} gid {gid}")
    left = {k: v for k, v in _capabilities().items() if k in ("CapPrm", "CapEff", "CapAmb") and v}
    if left:
        raise DashcamError(f"capabilities left after dropping to uid {uid}: {left}")


def run_as(
    user: User,
    func: Callable[[], Any],
    *,
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any],
    should_stop: Callable[[], bool] = lambda: False,
) -> Any:
    """``decode(encode(func()))``, with func run in a child process dropped to ``user``.

    A DashcamError (TryLater too) in the child is raised again here with its message; any other
    exception becomes a DashcamError naming it. When ``should_stop()`` turns true the child gets
    SIGTERM (the unit's KillMode=mixed signals only this, the main process), from itself: the
    parent writes to a pipe, and a thread of the child signals its own process. Root holds no
    CAP_KILL in the unit, and without it may not signal a process of another user; the pipe needs
    no privilege, and its end-of-file stops the child too if this process dies. The child's sd_notify
    STATUS= lines reach systemd through this process, so the unit keeps NotifyAccess=main: the
    child can report progress but never change the unit's state (READY=, MAINPID=, ...).
    """
    relay = _status_relay()
    rfd, wfd = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(rfd)
        os.close(stop_w)
        code = 0
        try:
            _stop_on_word(stop_r)
            if relay is not None:
                os.environ["NOTIFY_SOCKET"] = "@" + relay.getsockname()[1:].decode("ascii")
                relay.close()
            else:
                os.environ.pop("NOTIFY_SOCKET", None)
            drop_to(user)
            answer: Dict[str, Any] = {"result": encode(func())}
        except TryLater as e:
            answer = {"error": "try-later", "message": str(e)}
        except DashcamError as e:
            answer = {"error": "failed", "message": str(e)}
        except BaseException as e:  # noqa: B902 - reported to the parent, which decides
            answer = {"error": "failed", "message": f"{type(e).__name__}: {e}{_where(e)}"}
            code = 1
        try:
            data = json.dumps(answer).encode("utf-8")
            while data:
                data = data[os.write(wfd, data):]
        finally:
            os._exit(code)
    os.close(wfd)
    os.close(stop_r)
    chunks = []
    stopped = False
    try:
        while True:
            ready, _, _ = select.select([rfd] + ([relay] if relay is not None else []), [], [], 0.2)
            if not stopped and should_stop():
                stopped = True
                os.write(stop_w, b"s")
            if relay is not None and relay in ready:
                _forward_status(relay)
            if rfd in ready:
                chunk = os.read(rfd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(rfd)
        if relay is not None:
            relay.close()
        _, status = os.waitpid(pid, 0)
        os.close(stop_w)
    return _answer(b"".join(chunks), status, user, decode)


def _where(e: BaseException) -> str:
    """ " (in FUNCTION, FILE:LINE)" of the line that raised ``e``: an unexpected error of the copy
    (an errno without a file name, say) then still says which call it was."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (in {last.name}, {os.path.basename(last.filename)}:{last.lineno})"


def _stop_on_word(stop_r: int) -> None:
    """In the child: SIGTERM to itself (its own handler then stops the work) once the parent
    writes to ``stop_r`` or is gone (end of file)."""
    import threading

    def wait() -> None:
        try:
            os.read(stop_r, 1)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="stop-word", daemon=True).start()


def _status_relay():
    """A datagram socket (abstract name) for the child's sd_notify, when we run under systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind("\0dashcam-status-%d-%s" % (os.getpid(), os.urandom(8).hex()))
    return sock


def _forward_status(relay) -> None:
    """Pass on the STATUS= of one datagram from the child, and nothing else."""
    from . import notify
    from .log import printable

    try:
        data = relay.recv(4096)
    except OSError:
        return
    for line in data.decode("utf-8", "replace").split("\n"):
        if line.startswith("STATUS="):
            notify.status(printable(line[len("STATUS="):])[:200])


def _answer(raw: bytes, status: int, user: User, decode: Callable[[Any], Any]) -> Any:
    how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
           else f"exit status {os.waitstatus_to_exitcode(status)}")
    try:
        answer = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise DashcamError(f"the copy (as uid {user[0]}) ended without a result ({how})") from None
    if not isinstance(answer, dict):
        raise DashcamError(f"the copy (as uid {user[0]}) gave an unreadable result ({how})")
    if "result" in answer:
        try:
            return decode(answer["result"])
        except (TypeError, ValueError, KeyError) as e:
            raise DashcamError(f"the copy (as uid {user[0]}) gave an unreadable result: {e}") from None
    message = str(answer.get("message"))
    raise (TryLater if answer.get("error") == "try-later" else DashcamError)(message)
