"""Strict JSON out of whatever a tool printed: what the CLI prints, the ledger stores and MQTT publishes.

Values read from tools and from the ledger reach `status --json`, the ledger's state documents and
the MQTT payloads; a NaN, an Infinity, a tuple or a structure nested a thousand deep must still give
valid JSON there (json.dumps would write NaN, or raise RecursionError).
"""

from __future__ import annotations

import json

# json_safe() cuts structures deeper than this: json.dumps would raise RecursionError near 1000
JSON_MAX_DEPTH = 64


def json_safe(value, depth: int = 0):
    """``value`` as strict JSON can carry it: NaN and ±Infinity become None (JSON null, "unknown"),
    tuples and sets lists, keys text, anything else its str(), anything deeper than JSON_MAX_DEPTH
    a marker. What a tool printed reaches status --json and MQTT; the output must stay valid JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value - value == 0.0 else None  # NaN - NaN and inf - inf are NaN
    if depth >= JSON_MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, depth + 1) for v in value]
    return str(value)


def dumps(data, **kwargs) -> str:
    """json.dumps of json_safe(data), never NaN or Infinity (allow_nan=False)."""
    return json.dumps(json_safe(data), allow_nan=False, **kwargs)
