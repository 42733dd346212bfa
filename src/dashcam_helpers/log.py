"""Logging: the journal under systemd, readable lines on stderr otherwise.

Under systemd every record goes to the journal with SYSLOG_IDENTIFIER=dashcam and any
structured fields passed as ``extra={"DASHCAM_FILE": ..., "DASHCAM_BYTES": ...}``
(upper-case names beginning with DASHCAM_ become journal fields).
"""

from __future__ import annotations

import logging
import os
import sys

IDENTIFIER = "dashcam"


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


class _JournalHandler(logging.Handler):
    """Sends records to the journal with only our own structured fields (not every LogRecord attribute)."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self):
        super().__init__()
        from systemd import journal  # only under systemd: keeps the import off other runs

        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: str(v) for k, v in record.__dict__.items() if k.startswith("DASHCAM_")}
            self._send(
                self.format(record),
                PRIORITY=str(self.PRIORITY.get(record.levelno, 6)),
                SYSLOG_IDENTIFIER=IDENTIFIER,
                LOGGER=record.name,
                **fields,
            )
        except Exception:  # logging must never take the program down
            self.handleError(record)


def setup(verbose: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if under_journal():
        try:
            handler = _JournalHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("<%(levelno)d>%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
