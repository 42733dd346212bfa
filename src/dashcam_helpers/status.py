"""The status facts: what the Pi knows now, as sections of one dict. `dashcamctl status` shows
them, MQTT publishes them to Home Assistant (mqtt-publish, and every policy tick).

``gather(cfg)`` returns {"battery": {...}, "camera": {...}, ...}; each section comes from
one function in SECTIONS, so another part of the package adds its facts by adding a
function there. A section that fails shows {"error": "..."} instead of ending the report.
``seen_by_tick(...)`` builds the same sections from what a policy tick has just read.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: the policy tick imports this module
    import argparse
    from typing import Any, Callable, Dict, List, Optional, Tuple
from .log import get as get_logger
from .records import LastIngest, LastUpload

log = get_logger("dashcam.status")


def battery_section(cfg) -> Dict[str, Any]:
    from . import battery

    return battery.read(cfg).as_dict()


def camera_section(cfg) -> Dict[str, Any]:
    from . import camera, device

    return {
        "backend": cfg.camera.backend,
        "mode": camera.current_mode(cfg),
        "attached": device.camera_attached(cfg),
    }


def staging_section(cfg) -> Dict[str, Any]:
    """The backlog the server has not verified yet, and the room left in staging."""
    import time

    from .ledger import Ledger
    from .staging import space as staging_space

    with Ledger(cfg.paths.ledger) as ledger:
        files, size = ledger.backlog()
        failed = ledger.counts()["failed"]
        # names a session cut earlier may still write on the server: not sent before then
        holds = ledger.upload_holds(time.time())
    out: Dict[str, Any] = {"backlog_files": files, "backlog_bytes": size, "failed_files": failed}
    if holds:
        out["held_files"], out["held_until"] = len(holds), max(holds.values())
    try:
        out["free_bytes"], out["reserve_bytes"] = staging_space(cfg)
    except OSError as e:
        out["free_bytes"] = None
        out["reason"] = f"{cfg.paths.local_staging}: {e.strerror}"
    return out


def server_section(cfg) -> Dict[str, Any]:
    from . import server

    return {"host": cfg.upload.host, "port": cfg.upload.port, "reachable": server.reachable(cfg, min(3, cfg.upload.connect_timeout))}


def state_section(ledger, key: str) -> Dict[str, Any]:
    """A state document of the ledger as a section ({} when there is none, or it is no document)."""
    value = ledger.get_state(key)
    return value if isinstance(value, dict) else {}


def _ledger_state(key: str):
    def section(cfg) -> Dict[str, Any]:
        from .ledger import Ledger

        with Ledger(cfg.paths.ledger) as ledger:
            return state_section(ledger, key)

    return section


def _last_run(record):
    """The section of a run's account in the ledger (records.LastIngest, records.LastUpload)."""
    def section(cfg) -> Dict[str, Any]:
        from .ledger import Ledger

        with Ledger(cfg.paths.ledger) as ledger:
            return record.facts(record.read(ledger))

    return section


def budget_section(cfg) -> Dict[str, Any]:
    """The power budget as the last policy tick estimated it (budget.report): runtime left on battery,
    footage waiting, time to all safe, the oldest footage not yet on the server."""
    from .ledger import Ledger
    from .tick import last_budget

    with Ledger(cfg.paths.ledger) as ledger:
        return last_budget(ledger)


def _coverage(part: str):
    """A section of coverage.facts: footage lost, damaged clips and the card; the problem sensor."""
    def section(cfg) -> Dict[str, Any]:
        from . import coverage
        from .ledger import Ledger, LedgerError

        try:
            with Ledger(cfg.paths.ledger) as ledger:
                return coverage.facts(ledger, cfg).get(part, {})
        except LedgerError as e:
            if part != "problem":
                raise
            return {"problem": True, "reasons": [f"the ledger is unusable: {e}"]}

    return section


def ledger_section(cfg) -> Dict[str, Any]:
    """Whether the ledger was found damaged and set aside (ingest and upload refuse until restored)."""
    from .ledger import damage_marker, damage_message

    marker = damage_marker(cfg.paths.ledger)
    if marker is None:
        return {"damaged": False, "path": cfg.paths.ledger}
    return {
        "damaged": True,
        "path": cfg.paths.ledger,
        "moved_to": marker.get("moved_to"),
        "since": marker.get("wall"),
        "reason": marker.get("reason"),
        "message": damage_message(cfg.paths.ledger, marker),
    }


SECTIONS: List[Tuple[str, Callable[[Any], Dict[str, Any]]]] = [
    ("ledger", ledger_section),
    ("battery", battery_section),
    ("camera", camera_section),
    ("staging", staging_section),
    ("server", server_section),
    ("last_ingest", _last_run(LastIngest)),
    ("last_upload", _last_run(LastUpload)),
    ("back_to_record", _ledger_state("back_to_record")),
    ("budget", budget_section),
    ("footage", _coverage("footage")),
    ("problem", _coverage("problem")),
]


def gather(cfg, sections: Optional[List[Tuple[str, Callable[[Any], Dict[str, Any]]]]] = None) -> Dict[str, Dict[str, Any]]:
    """Every section of SECTIONS (or of ``sections``), each read now."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, section in SECTIONS if sections is None else sections:
        try:
            out[name] = section(cfg)
        except Exception as e:  # one broken fact must not hide the others
            log.debug("status section %s failed", name, exc_info=True)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def seen_by_tick(ledger, cfg, *, battery: Dict[str, Any], camera_mode: str, camera_attached: Any,
                 backlog_files: int, backlog_bytes: int, staging_free: Optional[int], reachable: Optional[bool],
                 budget: Optional[Dict[str, Any]], wall: float) -> Dict[str, Dict[str, Any]]:
    """The status facts from what a policy tick has just read, for the MQTT state of every tick: the
    sections of gather() the tick saw, without a second battery read or server probe, and the
    last runs and the footage from the tick's own ``ledger``."""
    return {
        "battery": dict(battery),
        "camera": {"mode": camera_mode, "attached": camera_attached},
        "staging": {"backlog_files": backlog_files, "backlog_bytes": backlog_bytes, "free_bytes": staging_free},
        "server": {"reachable": reachable},
        "budget": budget or {},
        "last_ingest": LastIngest.facts(LastIngest.read(ledger)),
        "last_upload": LastUpload.facts(LastUpload.read(ledger)),
        **_coverage_seen(ledger, cfg, wall),
    }


def _coverage_seen(ledger, cfg, wall: float) -> Dict[str, Any]:
    """Footage lost, damaged clips, the card, and the problem sensor (coverage.facts); {} on failure."""
    if cfg is None:
        return {}
    try:
        from . import coverage

        return coverage.facts(ledger, cfg, wall)
    except Exception as e:  # noqa: B902 - MQTT shows them unknown; the tick goes on
        log.debug("status: no footage facts for the tick: %s", e)
        return {}


def _battery_line(b: Dict[str, Any]) -> str:
    if "error" in b:
        return f"battery:  error: {b['error']}"
    power = {True: "external power", False: "on battery", None: "power source unknown"}[b.get("external")]
    if b["source"] == "none":
        return "battery:  none configured (mains-powered), external power"
    if b.get("percent") is None:
        return f"battery:  unknown ({b.get('reason')}), {power} [{b['source']}]"
    mv = f"{b['millivolts']} mV, " if b.get("millivolts") is not None else ""
    extra = f" ({b['reason']})" if b.get("reason") else ""
    return f"battery:  {b['percent']} %, {mv}{power} [{b['source']}]{extra}"


def _camera_line(c: Dict[str, Any]) -> str:
    if "error" in c:
        return f"camera:   error: {c['error']}"
    attached = f"storage attached as {c['attached']}" if c.get("attached") else "storage not attached"
    return f"camera:   {c['mode']}, {attached} [{c['backend']}]"


def _staging_line(st: Dict[str, Any]) -> str:
    from .notify import human_bytes

    if "error" in st:
        return f"staging:  error: {st['error']}"
    free = "free space unknown" if st.get("free_bytes") is None else f"{human_bytes(st['free_bytes'])} free"
    failed = f", {st['failed_files']} clips failed to read (dashcamctl files --state failed)" if st.get("failed_files") else ""
    held = (
        f", {st['held_files']} of them held until {_when(st['held_until'])} (a session cut earlier may still write them on the server)"
        if st.get("held_files") else ""
    )
    return f"staging:  {st['backlog_files']} clips ({human_bytes(st['backlog_bytes'])}) waiting for the server{held}, {free}{failed}"


def _server_line(sv: Dict[str, Any]) -> str:
    if "error" in sv:
        return f"server:   error: {sv['error']}"
    return f"server:   {sv['host']}:{sv['port']} {'reachable' if sv['reachable'] else 'not reachable'}"


def _when(wall) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(wall).strftime("%Y-%m-%d %H:%M:%S") if wall else "?"


def _last_line(label: str, run: Dict[str, Any]) -> str:
    from .notify import human_bytes

    if "error" in run:
        return f"{label + ':':<9} error: {run['error']}"
    if not run:
        return f"{label + ':':<9} never"
    what = f"{run.get('files', 0)} clips, {human_bytes(run.get('bytes') or 0)}"
    why = f" ({run['reason']})" if run.get("reason") else ""
    return f"{label + ':':<9} {_when(run.get('wall'))} {run.get('result', '?')}: {what}{why}"


def _returns_line(r: Dict[str, Any]) -> str:
    """How often the camera was put back to record because the car could move (dashcam-watch, the policy)."""
    if "error" in r:
        return f"road:     error: {r['error']}"
    counts = r.get("counts") if isinstance(r.get("counts"), dict) else {}
    if not counts:
        return "road:     the camera was never put back to record for the road"
    each = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counts.items()))
    last = r.get("last") if isinstance(r.get("last"), dict) else {}
    return f"road:     camera back to record {sum(counts.values())} times ({each}); last {_when(last.get('wall'))}: {last.get('message')}"


def _budget_line(b: Dict[str, Any]) -> str:
    """Runtime left on battery, footage waiting (events among it), time to all safe, oldest unsent."""
    from .budget import size, span

    if "error" in b:
        return f"budget:   error: {b['error']}"
    if not b:
        return "budget:   no estimate yet (the policy has not ticked, or budget.enabled is false)"

    def minutes(key: str) -> Any:
        value = b.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    if b.get("on_battery") and minutes("runtime_minutes") is not None:
        run = f"~{span(minutes('runtime_minutes') * 60)} on battery ({b.get('runtime_why')})"
    else:
        run = f"runtime not estimated ({b.get('runtime_why') or 'unknown'})"
    where = f"{size(b.get('staged_bytes') or 0)} staged, {'' if b.get('camera_exact') else '~'}" \
            f"{size(b.get('camera_bytes') or 0)} on the camera"
    waiting = f"{size(b.get('waiting_bytes') or 0)} waiting ({size(b.get('waiting_event_bytes') or 0)} of events; {where})"
    safe = minutes("all_safe_minutes")
    if not b.get("waiting_bytes"):
        safe_text = "all safe on the server"
    elif safe is not None:
        safe_text = f"all safe in ~{span(safe * 60)}"
    else:
        safe_text = "not all on this charge: the rest waits for external power or the next arrival" \
            if b.get("on_battery") else "time to all safe unknown"
    oldest = minutes("oldest_unsent_minutes")
    old = f"; oldest not yet on the server: {span(oldest * 60)}" if oldest is not None and b.get("waiting_bytes") else ""
    return f"budget:   {run}; {waiting}; {safe_text}{old}"


def _footage_line(f: Dict[str, Any]) -> str:
    """Footage lost before it was copied, damaged clips, and how full the camera's card is."""
    from .notify import human_bytes

    if "error" in f:
        return f"footage:  error: {f['error']}"
    lost = f"{f.get('lost_minutes_7d', 0)} minutes lost in the last 7 days"
    if f.get("losses_7d"):
        last = f.get("last_loss") or {}
        times = "once" if f["losses_7d"] == 1 else f"{f['losses_7d']} times"
        lost += f" ({times}; last found {_when(last.get('wall'))}: {last.get('message')})"
    n = f.get("damaged_7d")
    damaged = f", {n} damaged clip{'' if n == 1 else 's'}" if n else ""
    card = f.get("card") or {}
    if card.get("total_bytes"):
        room = f"card {human_bytes(card.get('used_bytes') or 0)} of {human_bytes(card['total_bytes'])} used"
        if card.get("holds_hours"):
            room += f", holds about {card['holds_hours']} h of recording"
    else:
        room = "card not measured yet"
    return f"footage:  {lost}{damaged}; {room}"


def _problem_line(p: Dict[str, Any]) -> str:
    if "error" in p:
        return f"problem:  error: {p['error']}"
    if not p.get("problem"):
        return "problem:  none"
    return "PROBLEM:  " + "; ".join(p.get("reasons") or ["?"])


# the line of each section (any other section: its keys and values)
LINES: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "battery": _battery_line,
    "camera": _camera_line,
    "staging": _staging_line,
    "server": _server_line,
    "last_ingest": lambda section: _last_line("ingest", section),
    "last_upload": lambda section: _last_line("upload", section),
    "back_to_record": _returns_line,
    "budget": _budget_line,
    "footage": _footage_line,
    "problem": _problem_line,
}


def render(facts: Dict[str, Dict[str, Any]]) -> str:
    lines = []
    for name, section in facts.items():
        try:
            if name == "ledger":
                if section.get("damaged") or "error" in section:  # a healthy ledger needs no line
                    lines.append(f"LEDGER DAMAGED: {section.get('message') or section.get('error')}")
            elif name in LINES:
                lines.append(LINES[name](section))
            else:
                body = ", ".join(f"{k} {v}" for k, v in section.items())
                lines.append(f"{name + ':':<9} {body}")
        except Exception as e:  # noqa: B902 - a section of any shape (the ledger is input): one line, the rest shows
            lines.append(f"{name + ':':<9} unreadable ({type(e).__name__}: {str(e)[:80]})")
    from .log import printable  # names from the card (in reasons, sources) are any bytes: escaped

    return "\n".join(printable(line) for line in lines)


def status(args: argparse.Namespace, cfg) -> Tuple[int, Dict[str, Dict[str, Any]]]:
    facts = gather(cfg)
    if not args.json:
        print(render(facts))
    return 0, facts
