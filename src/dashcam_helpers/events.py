"""The news sent to Home Assistant as events (``mqtt.notifications``): what happened since the last
tick, from the status facts, rate-limited per kind, with the memory the ledger keeps between ticks
(EventMemory). Pure: mqtt sends them and keeps the memory."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .homeassistant import _int, _measured, _number, _section, _when, iso
from .record import Record


# Least time between two events of one kind, seconds.
EVENT_MIN_INTERVAL = {
    "clips_uploaded": 15 * 60,  # uploads in between are added up, none is lost
    "upload_failing": 24 * 3600,
    "low_battery_shutdown": 10 * 60,
    "card_read_error": 3600,
    "camera_back_to_record": 0,  # each is news: the engine started, the car left home
    "footage_lost": 3600,  # losses found in between are added up, none is lost
}
UPLOAD_FAILING_AFTER = 24 * 3600
EVENTS_STATE_KEY = "mqtt_events"


def _message(kind: str, data: Dict[str, Any]) -> str:
    if kind == "clips_uploaded":
        return f"{data.get('files', 0)} clip(s) uploaded ({data.get('bytes', 0)} bytes)"
    if kind == "upload_failing":
        return f"uploads have been failing since {iso(data.get('since'))}; {data.get('backlog_files')} file(s) waiting"
    if kind == "low_battery_shutdown":
        return f"battery low ({data.get('percent')} %): the Pi shuts down"
    if kind == "card_read_error":
        return f"reading the camera's card failed: {data.get('reason') or data.get('result')}"
    if kind == "camera_back_to_record":
        return str(data.get("detail") or "the camera is back to record")
    if kind == "footage_lost":
        return (f"footage lost before the Pi could copy it: about {data.get('minutes')} minutes in the last 7 days;"
                f" last: {data.get('last')}")
    return kind


class EventMemory(Record):
    """The ledger's ``mqtt_events`` document: what the events remember between ticks. The ledger is
    input like any other: a field of the wrong type reads as not there (from_state)."""

    sent: Dict[str, float]  # kind -> when the last one went out (EVENT_MIN_INTERVAL counts from it)
    pending: Dict[str, Dict[str, Any]]  # kind -> its data, held back by the rate limit
    upload_seen: Optional[float] = None  # the newest upload looked at; None: bearings not taken yet
    failing_since: Optional[float] = None  # when uploads began to fail; None: the last one went well
    ingest_seen: float = 0.0  # the newest ingest looked at
    loss_bearings: bool = False  # the footage losses' bearings are taken (loss_seen is in the document)
    loss_seen: Optional[float] = None  # the newest footage loss looked at

    @classmethod
    def from_state(cls, doc: Any) -> "EventMemory":
        doc = doc if isinstance(doc, dict) else {}

        def wall(key: str) -> Optional[float]:
            return _number(doc.get(key)) if isinstance(doc.get(key), (int, float)) else None

        sent = doc.get("sent") if isinstance(doc.get("sent"), dict) else {}
        pending = doc.get("pending") if isinstance(doc.get("pending"), dict) else {}
        return cls(
            sent={str(k): w for k, w in sent.items() if _measured(w) is not None},
            pending={str(k): dict(v) for k, v in pending.items() if isinstance(v, dict)},
            upload_seen=wall("upload_seen") if "upload_seen" in doc else None,
            failing_since=wall("failing_since"),
            ingest_seen=wall("ingest_seen") or 0.0,
            loss_bearings="loss_seen" in doc,
            loss_seen=wall("loss_seen"),
        )

    def as_state(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"sent": dict(self.sent), "pending": {k: dict(v) for k, v in self.pending.items()},
                               "failing_since": self.failing_since, "ingest_seen": self.ingest_seen}
        if self.upload_seen is not None:
            doc["upload_seen"] = self.upload_seen
        if self.loss_bearings:
            doc["loss_seen"] = self.loss_seen
        return doc


def events_from_facts(
    facts: Dict[str, Any], memory: Dict[str, Any], now: float
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """What happened since the last tick, as events to send (rate-limited), and the new memory.

    Pure: the memory is the document the ledger keeps under ``mqtt_events`` between ticks (EventMemory)."""
    mem = EventMemory.from_state(memory)
    sent, pending = dict(mem.sent), {k: dict(v) for k, v in mem.pending.items()}
    upload = _section(facts, "last_upload")
    ingest = _section(facts, "last_ingest")

    # The first tick after notifications are switched on only takes its bearings: an
    # upload or ingest from before then is history, not news.
    baseline = mem.upload_seen is None
    upload_seen, failing_since = mem.upload_seen or 0, mem.failing_since
    up_wall = _number(_when(upload))
    if up_wall is not None and up_wall > upload_seen:
        upload_seen = up_wall
        if upload.get("result") == "ok":
            failing_since = None
            pending.pop("upload_failing", None)  # news that is no longer true
            files, size = _int(upload.get("files")) or 0, _int(upload.get("bytes")) or 0
            if files and not baseline:
                p = pending.setdefault("clips_uploaded", {"files": 0, "bytes": 0})
                p["files"] = (_int(p.get("files")) or 0) + files
                p["bytes"] = (_int(p.get("bytes")) or 0) + size
        elif failing_since is None:
            failing_since = up_wall
    if failing_since is not None and now - failing_since >= UPLOAD_FAILING_AFTER:
        staging = _section(facts, "staging")
        pending["upload_failing"] = {
            "since": failing_since,
            "result": upload.get("result"),
            "reason": upload.get("reason"),
            "backlog_files": _int(staging.get("backlog_files")),
        }

    ingest_seen = mem.ingest_seen
    in_wall = _number(_when(ingest))
    if in_wall is not None and in_wall > ingest_seen:
        ingest_seen = in_wall
        if ingest.get("result") == "failed" and not baseline:
            pending["card_read_error"] = {"result": "failed", "reason": ingest.get("reason"), "files": ingest.get("files")}

    # footage lost before it was copied: the newest loss found, once (a new one after the baseline)
    loss = _section(facts, "footage").get("last_loss")
    loss_wall = _number(_when(loss)) if isinstance(loss, dict) else None
    loss_seen = mem.loss_seen
    if loss_wall is not None and loss_wall != loss_seen:
        if mem.loss_bearings:
            p = pending.setdefault("footage_lost", {})
            p["minutes"] = _int(_section(facts, "footage").get("lost_minutes_7d"))
            p["last"] = loss.get("message")
        loss_seen = loss_wall

    events = []
    for kind in list(pending):
        last = sent.get(kind)
        if last is not None and now - last < EVENT_MIN_INTERVAL.get(kind, 3600):
            continue  # keep it pending; it goes out when the interval has passed
        data = pending.pop(kind)
        events.append(make_event(kind, data, now))
        sent[kind] = now
    new = EventMemory(sent=sent, pending=pending, upload_seen=upload_seen, failing_since=failing_since,
                      ingest_seen=ingest_seen, loss_bearings=True, loss_seen=loss_seen)
    return events, new.as_state()


def make_event(kind: str, data: Dict[str, Any], now: float) -> Dict[str, Any]:
    event = {"event_type": kind, "time": iso(now), "message": _message(kind, data)}
    event.update({k: v for k, v in data.items() if k not in event})
    return event
