"""Logging: the journal under systemd, readable lines on stderr otherwise.

Every module takes its logger here (``log = log.get("dashcam.policy")``) and calls
``log.info("copied %s", name, extra={"DASHCAM_FILE": name})``. Under systemd every record
goes to the journal with SYSLOG_IDENTIFIER=dashcam, PRIORITY, LOGGER and any structured
fields passed in ``extra`` (upper-case names beginning with DASHCAM_ become journal fields).

Why not the standard library's ``logging`` (and python3-systemd's JournalHandler) on the
command line: the policy timer starts ``dashcamctl policy`` every 30 s on battery, and
importing ``logging`` plus ``systemd.journal`` costs more CPU than the whole tick does
besides. The journal's native protocol is one datagram of ``KEY=value`` lines
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/), written here directly.

Until ``setup()`` is called (code used as a library, the tests) records go to the standard
library's ``logging`` under the same logger names, so ``caplog`` and any host program's
handlers see them.
"""

from __future__ import annotations

import os
import sys
import time

IDENTIFIER = "dashcam"
JOURNAL_SOCKET = "/run/systemd/journal/socket"

# the standard library's level numbers, so a host program's logging understands them
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3}            # syslog priorities


def under_journal() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _field(name: str, value: str) -> bytes:
    """One field of the native protocol: KEY=value, or KEY, length, value when it spans lines."""
    data = value.encode("utf-8", "replace")
    key = name.encode("ascii")
    if b"\n" not in data:
        return key + b"=" + data + b"\n"
    return key + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"


def journal_datagram(message: str, priority: int, logger: str, fields: dict) -> bytes:
    parts = [_field("MESSAGE", message), _field("PRIORITY", str(priority)),
             _field("SYSLOG_IDENTIFIER", IDENTIFIER), _field("LOGGER", logger)]
    parts += [_field(k, str(v)) for k, v in fields.items() if k.startswith("DASHCAM_") and k.isupper()]
    return b"".join(parts)


class _Stdlib:
    """Before setup(): hand every record to the standard library's logging."""

    def emit(self, name, level, msg, args, extra, exc_info):
        import logging

        logging.getLogger(name).log(level, msg, *args, extra=extra, exc_info=exc_info)


class _Stderr:
    """A terminal or a pipe: `HH:MM:SS LEVEL message`."""

    def __init__(self, level):
        self.level = level

    def emit(self, name, level, msg, args, extra, exc_info):
        if level < self.level:
            return
        text = _text(msg, args, exc_info)
        sys.stderr.write("%s %s %s\n" % (time.strftime("%H:%M:%S"), _NAMES.get(level, level), text))
        sys.stderr.flush()


class _Journal:
    """Under systemd: one datagram per record to the journal's native socket; the stderr
    stream (which systemd also connects to the journal) when the socket refuses it."""

    def __init__(self, level):
        import _socket  # the C module under socket, as in server.py: one datagram needs no more

        self.level = level
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)

    def emit(self, name, level, msg, args, extra, exc_info):
        if level < self.level:
            return
        text = _text(msg, args, exc_info)
        priority = _PRIORITY.get(level, 6)
        try:
            self.sock.sendto(journal_datagram(text, priority, name, extra or {}), JOURNAL_SOCKET)
        except OSError:              # no journald socket, or a record too big for one datagram
            sys.stderr.write("".join("<%d>%s\n" % (priority, line) for line in text.splitlines()))
            sys.stderr.flush()


def _escape(c: str) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return "\\x%02x" % (o - 0xDC00)
    return "\\x%02x" % o if o < 0x100 else "\\u%04x" % o if o < 0x10000 else "\\U%08x" % o


def printable(text: str, keep: str = "") -> str:
    """``text`` safe for a terminal: control characters (ESC, BEL, C1, newlines), invisible format
    characters (bidi overrides) and lone surrogates as \\x1b-style escapes, a backslash doubled.
    Names from the camera's card are any bytes: this is how a person sees them. ``keep``: characters
    left as they are (a multi-line message keeps its newlines)."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        "\\\\" if c == "\\" and not keep else c if c.isprintable() or c == " " or c in keep else _escape(c)
        for c in text
    )


def _shown(arg):
    return printable(arg) if isinstance(arg, str) else printable(str(arg)) if isinstance(arg, BaseException) else arg


def _text(msg, args, exc_info) -> str:
    # the message a person reads (journal MESSAGE, stderr) shows names escaped; structured DASHCAM_
    # fields keep the raw value
    text = str(msg) % tuple(_shown(a) for a in args) if args else str(msg)
    text = printable(text, keep="\n\t")
    if exc_info and sys.exc_info()[0] is not None:
        import traceback

        text += "\n" + traceback.format_exc().rstrip()
    return text


_sink = _Stdlib()


class Logger:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def log(self, level: int, msg, *args, extra: dict | None = None, exc_info: bool = False) -> None:
        try:
            _sink.emit(self.name, level, msg, args, extra, exc_info)
        except Exception:          # logging must never take the program down
            pass

    def debug(self, msg, *args, **kw) -> None:
        self.log(DEBUG, msg, *args, **kw)

    def info(self, msg, *args, **kw) -> None:
        self.log(INFO, msg, *args, **kw)

    def warning(self, msg, *args, **kw) -> None:
        self.log(WARNING, msg, *args, **kw)

    def error(self, msg, *args, **kw) -> None:
        self.log(ERROR, msg, *args, **kw)


def get(name: str) -> Logger:
    return Logger(name)


def setup(verbose: bool = False) -> None:
    """The command line's choice: the journal under systemd, stderr otherwise."""
    global _sink
    level = DEBUG if verbose else INFO
    if under_journal():
        try:
            _sink = _Journal(level)
            return
        except OSError:
            pass
    _sink = _Stderr(level)
