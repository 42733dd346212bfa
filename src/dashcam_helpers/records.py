"""The runs' accounts in the ledger's state, as typed records light enough for the policy tick.

    LastIngest   "last_ingest", written by the ingest (ingest.py) as its run ends
    LastUpload   "last_upload", written by the upload (upload.py) as its run ends

The owners write them and re-export them (``ingest.LastIngest``, ``upload.LastUpload``); they
live here because their readers include the policy tick (budget.py, tick.py), which runs every
30 s on battery and must not import the ingest's or the upload's machinery (nor ``typing``) to
read two documents. A reader parses the JSON it got from the ledger into the record: any value
(the ledger on disk may hold anything) reads as a record or as None, never raises.
"""

from __future__ import annotations

from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Optional

LAST_INGEST = "last_ingest"  # a LastIngest
LAST_UPLOAD_KEY = "last_upload"  # a LastUpload


def _finite(value: Any) -> bool:
    """An int or float arithmetic can use: not bool, not NaN or ±Infinity, and an int a float can
    hold (JSON has no limit: a 400-digit wall would raise OverflowError where the tick subtracts it)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -2**63 < value < 2**63
    return isinstance(value, float) and value - value == 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: Any) -> Optional[float]:
    return value if _finite(value) else None


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


class _RunAccount(Record):
    """A run's account under the ledger's state key ``_key``: read, written, shown by status."""

    _key = ""

    @classmethod
    def parse(cls, value: Any):
        raise NotImplementedError

    @classmethod
    def read(cls, ledger: Any):
        return cls.parse(ledger.get_state(cls._key))

    def write(self, ledger: Any) -> None:
        ledger.put_state(self._key, self.asdict())

    @staticmethod
    def facts(record: Optional[Record]) -> dict:
        """The run's status section (``last_ingest``, ``last_upload``): its fields, {} when there is none."""
        return record.asdict() if record is not None else {}


class LastIngest(_RunAccount):
    """The newest ingest run's account (ledger state ``last_ingest``), written as the run ends.

    Read by ``status`` (and so MQTT), the policy (an ingest since the data mode began) and the
    power budget (the rate it read at). ``result``: ok | failed | interrupted."""

    _key = LAST_INGEST

    wall: Optional[float] = None  # when it ended (time.time())
    files: int = 0  # staged
    bytes: int = 0
    result: Optional[str] = None
    reason: Optional[str] = None  # the error that stopped it
    source: Optional[str] = None  # the directory it read (the card's mount point)
    known: int = 0  # on the card and in the ledger already
    failed: int = 0  # clips that could not be read or staged, and refused ones
    pending: int = 0  # new clips left on the card
    refused: Optional[str] = None  # why copying stopped early for lack of space
    seconds: Optional[float] = None
    damaged: int = 0  # new clips flagged damaged

    @classmethod
    def from_state(cls, value: Any) -> Optional["LastIngest"]:
        """The record in the ledger's JSON (any value: it is read from disk), None when there is
        none; a field of the wrong type reads as its default."""
        if not isinstance(value, dict):
            return None
        return cls(
            wall=_number(value.get("wall")), files=_count(value.get("files")), bytes=_count(value.get("bytes")),
            result=_text(value.get("result")), reason=_text(value.get("reason")), source=_text(value.get("source")),
            known=_count(value.get("known")), failed=_count(value.get("failed")),
            pending=_count(value.get("pending")), refused=_text(value.get("refused")),
            seconds=_number(value.get("seconds")), damaged=_count(value.get("damaged")),
        )

    parse = from_state


class LastUpload(_RunAccount):
    """The ledger's "last_upload": how the last upload that did anything ended. Read by the
    policy (a failure pauses the next start; "held" waits for ``held_until``), the power
    budget (bytes / seconds), coverage (a failing upload is a problem), status and MQTT."""

    _key = LAST_UPLOAD_KEY

    wall: float
    files: int
    bytes: int
    result: str  # ok, failed, held (only clips held for a cut session were left), busy, unreachable
    reason: Optional[str]
    sent_bytes: int
    literal_bytes: int
    matched_bytes: int
    collisions: list
    held: int
    held_until: float
    seconds: float

    @classmethod
    def parse(cls, value: Any) -> Optional["LastUpload"]:
        """The record from the ledger's JSON; None when there is none or it is no such record. A
        number that is none reads as 0, a reason that is no text as None (a damaged ledger)."""
        if not isinstance(value, dict) or not isinstance(value.get("result"), str):
            return None
        numbers = {n: value.get(n) if _finite(value.get(n)) else 0.0
                   for n in cls._fields if n not in ("result", "reason", "collisions")}
        counts = {n: int(v) for n, v in numbers.items() if n not in ("wall", "held_until", "seconds")}
        reason, collisions = value.get("reason"), value.get("collisions")
        return cls(**{**numbers, **counts}, result=value["result"], reason=reason if isinstance(reason, str) else None,
                   collisions=[c for c in collisions if isinstance(c, str)] if isinstance(collisions, list) else [])
