"""Where a clip goes, and in which order: its folder in staging, its path on the server, and the
order in which the ingest copies and the upload sends.

    staging   ready/<camera>/<YYYY-MM-DD>/<folder on the card>/<name>
    server    upload.layout below upload.dest_path, by default
              <camera>/<YYYY>/<MM>/<DD>/<folder on the card>/<name>
    order     event/locked clips first, then newest first (or oldest first); ties by card path

A clip's folder on the card is kept, below the day, in staging and on the server: an event
clip stays in the camera's Event/, RO/, ... folder, and two clips with the same name in two
folders of the card (Normal/Front/A.MP4, Event/Front/A.MP4) never meet. What makes a clip an
event (its folder, its name, ingest.event_globs) is part of its path on the card, so the path
on the server shows it too. Light on imports: the config check uses it.
"""

from __future__ import annotations

import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime
    from typing import Iterable, List, Optional, TypeVar

    T = TypeVar("T")

PLACEHOLDERS = ("camera", "YYYY", "MM", "DD", "folder", "kind", "name")
DEFAULT_LAYOUT = "{camera}/{YYYY}/{MM}/{DD}/{folder}/{name}"
# where clips went before the card's folders were kept: what was sent there stays there
LEGACY_LAYOUT = "{camera}/{YYYY}/{MM}/{DD}/{name}"
KINDS = {True: "Event", False: "Normal"}
_FIELD = re.compile(r"\{([^{}]*)\}")


NAME_MAX = 255  # bytes in one file name (ext4, vfat, exFAT, and the server's file system)


def with_suffix(name: str, suffix: str) -> str:
    """``clip.MP4`` + ``~1`` -> ``clip~1.MP4``: a name made distinct by a suffix before its
    extension (at the very end when it has no short one), its stem shortened at a character so
    the result still fits NAME_MAX bytes: a name the card allowed stays one staging and the
    server can create."""
    stem, ext = os.path.splitext(name)
    tail = (suffix + ext).encode("utf-8", "surrogateescape")
    if len(tail) >= NAME_MAX // 2:  # not a footage extension: the suffix goes at the very end
        stem, ext, tail = name, "", suffix.encode("utf-8", "surrogateescape")
    raw = stem.encode("utf-8", "surrogateescape")
    room = NAME_MAX - len(tail)
    if len(raw) > room:
        stem = raw[:room].decode("utf-8", "ignore")
    return stem + suffix + ext


# --- the order ----------------------------------------------------------------------------------


def order(clips: "Iterable[T]", newest_first: bool = True) -> "List[T]":
    """Event/locked clips first, then newest first (or oldest first), each by the clip's time
    (``mtime_ns``); ties by path on the card. One rule for the ingest (Candidates) and the
    upload (ledger Clips); the sort is stable, so a tie beyond that keeps the given order."""
    sign = -1 if newest_first else 1
    return sorted(clips, key=lambda c: (not c.event, sign * c.mtime_ns, c.source_path))


# --- the server's layout ------------------------------------------------------------------------


def layout_problems(template: str) -> "List[str]":
    """What is wrong with an upload.layout (empty: nothing)."""
    problems = []
    if template.startswith("/"):
        problems.append("must be relative to upload.dest_path (no leading /)")
    segments = template.strip("/").split("/")
    for seg in segments:
        if seg in ("", ".", ".."):
            problems.append(f"has an empty, '.' or '..' folder ({seg!r})")
            continue
        if "{" in _FIELD.sub("", seg) or "}" in _FIELD.sub("", seg):
            problems.append(f"{seg!r}: a brace that opens no placeholder (known: "
                            + ", ".join("{%s}" % p for p in PLACEHOLDERS) + ")")
        for name in _FIELD.findall(seg):
            if name not in PLACEHOLDERS:
                problems.append(f"unknown placeholder {{{name}}} (known: "
                                + ", ".join("{%s}" % p for p in PLACEHOLDERS) + ")")
            elif name in ("folder", "name") and seg != "{%s}" % name:
                problems.append(f"{{{name}}} must be a folder of its own ({seg!r})")
    for name in ("folder", "name"):
        if template.count("{%s}" % name) != 1:
            problems.append(f"must hold {{{name}}} exactly once")
    if segments[-1] != "{name}":
        problems.append("must end with /{name}")
    return problems


def _safe(part: str) -> str:
    """A path component as it goes to the server: never empty, '.' or '..' (a card holds no such
    name; only a damaged ledger could give one)."""
    return part if part not in ("", ".", "..") else "_" + part


def server_path(template: str, camera: str, day: "datetime.date", source_path: str, event: bool) -> str:
    """A clip's path below upload.dest_path: ``template`` (a valid upload.layout) filled in.

    ``source_path`` is the clip's path on the card ('/'-separated): its folders fill {folder}
    (none for a clip at the card's root), its name {name}, byte for byte. A placeholder's value
    is never read as a template itself."""
    parts = source_path.split("/")
    folders = [_safe(p) for p in parts[:-1] if p not in ("", ".")]
    values = {"camera": camera, "YYYY": f"{day:%Y}", "MM": f"{day:%m}", "DD": f"{day:%d}",
              "kind": KINDS[bool(event)], "name": _safe(parts[-1])}
    out = []
    for seg in template.strip("/").split("/"):
        if seg == "{folder}":
            out.extend(folders)
        else:
            out.append(_FIELD.sub(lambda m: values[m.group(1)], seg))
    return "/".join(out)


def staged_path(camera: str, day: "datetime.date", source_path: str) -> str:
    """ready/-relative path of a clip: ``<camera>/<YYYY-MM-DD>/<folder on the card>/<name>``."""
    return server_path("{camera}/{YYYY}-{MM}-{DD}/{folder}/{name}", camera, day, source_path, False)


_STAGED_DAY = re.compile(r"[^/]+/(\d{4})-(\d{2})-(\d{2})/")


def staged_day(staged: "Optional[str]") -> "Optional[datetime.date]":
    """The day in a staged path (``<camera>/<YYYY-MM-DD>/...``): the one the ingest chose."""
    import datetime

    m = _STAGED_DAY.match(staged or "")
    if m is None:
        return None
    try:
        return datetime.date(*(int(g) for g in m.groups()))
    except ValueError:
        return None


def is_legacy_staged(staged: "Optional[str]") -> bool:
    """Staged before the card's folders were kept: ``<camera>/<YYYY-MM-DD>/<name>``, nothing between."""
    return staged_day(staged) is not None and staged.count("/") == 2

