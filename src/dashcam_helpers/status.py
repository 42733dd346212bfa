"""dashcamctl status: what the Pi knows now, as sections of one dict.

``gather(cfg)`` returns {"battery": {...}, "camera": {...}, ...}; each section comes from
one function in SECTIONS, so another part of the package adds its facts by adding a
function there. A section that fails shows {"error": "..."} instead of ending the report.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Callable, Dict, List, Tuple

log = logging.getLogger("dashcam.status")


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


SECTIONS: List[Tuple[str, Callable[[Any], Dict[str, Any]]]] = [
    ("battery", battery_section),
    ("camera", camera_section),
]


def gather(cfg) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for name, section in SECTIONS:
        try:
            out[name] = section(cfg)
        except Exception as e:  # one broken fact must not hide the others
            log.debug("status section %s failed", name, exc_info=True)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


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


def render(facts: Dict[str, Dict[str, Any]]) -> str:
    lines = []
    for name, section in facts.items():
        if name == "battery":
            lines.append(_battery_line(section))
        elif name == "camera":
            lines.append(_camera_line(section))
        else:
            body = ", ".join(f"{k} {v}" for k, v in section.items())
            lines.append(f"{name + ':':<9} {body}")
    return "\n".join(lines)


def status(args: argparse.Namespace) -> int:
    from .cli import print_json
    from .commands import load_config

    cfg = load_config(args)
    facts = gather(cfg)
    if args.json:
        print_json(facts)
    else:
        print(render(facts))
    return 0
