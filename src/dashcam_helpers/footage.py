"""The footage on a camera's card, as the ingest sees it before reading a byte: which files are
clips (globs, extensions), which are event clips, the date the camera recorded each, its key in
the ledger, why one cannot be staged, where it goes in staging and in which order.

Pure functions of names, sizes and times (and one walk of the card's folders): no copy, no
ledger, no mount. The upload and the loss check (coverage.py) use the dates too.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

from . import layout
from .log import get as get_logger
from .record import Record

log = get_logger("dashcam.ingest")

EVENT_FOLDERS = {"event", "events", "emr", "ro", "locked", "lock", "protected", "protect", "sos"}
EVENT_SUFFIX = re.compile(r"_E[A-Z0-9]{0,2}$", re.IGNORECASE)
MAX_DEPTH = 32  # folders below the card's root; cameras use two or three

# the recording time in a camera's file name: Novatek 2026_1125_233000_001F.MP4,
# NO20261125-233000-000123F.MP4, and the like (date, then time, with _ or - or nothing between)
NAME_STAMP = re.compile(r"(?<!\d)((?:19|20)\d\d)[_-]?(\d\d)[_-]?(\d\d)[_-](\d\d)[_-]?(\d\d)[_-]?(\d\d)(?!\d)")
INT64 = (-(1 << 63), (1 << 63) - 1)  # what an SQLite INTEGER holds (mtime_ns beyond: years 1677, 2262)


class Candidate(Record):
    source_path: str  # relative to the card's root, '/'-separated
    size: int
    mtime_ns: int
    event: bool


def glob_regex(pattern: str) -> "re.Pattern[str]":
    """A case-insensitive regex for a footage glob: ``*`` within a folder, ``**`` across folders."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    # DOTALL: a name may hold a newline, and ** must still match it
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


def is_event(source_path: str, patterns: Sequence["re.Pattern[str]"] = ()) -> bool:
    """Event/locked clips: in a folder like Event, RO, Locked, Protected, or named ..._E / _EF, or
    matching one of ``patterns`` (ingest.event_globs, compiled by glob_regex)."""
    if any(p.match(source_path) for p in patterns):
        return True
    parts = source_path.split("/")
    if any(p.lower() in EVENT_FOLDERS for p in parts[:-1]):
        return True
    stem = os.path.splitext(parts[-1])[0]
    return bool(EVENT_SUFFIX.search(stem))


def shown(name: str) -> str:
    """A name as one printable line: control characters and undecodable bytes as \\xNN escapes.

    For text the ledger keeps (a failed clip's reason): SQLite holds UTF-8 only, and a reason is
    one line. Log messages need none of this: the log escapes what a person reads (log.printable)."""
    return _UNPRINTABLE.sub(_escape_char, name)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def _escape_char(m: "re.Match[str]") -> str:
    o = ord(m.group())
    if 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8, carried by os.fsdecode's surrogateescape
        return "\\x%02x" % (o - 0xDC00)
    return "\\x%02x" % o if o < 0x100 else "\\u%04x" % o


def _walk(root: str, max_depth: int = MAX_DEPTH) -> Iterable[Tuple[str, os.stat_result]]:
    """(relative path, lstat) of every regular file below root; symlinks are never followed.

    Iterative (a card's tree may be any depth): folders deeper than ``max_depth`` are skipped,
    each with a message. Folders are listed in name order, so runs see clips in the same order."""
    stack: List[Tuple[str, int]] = [("", 0)]
    while stack:
        rel, depth = stack.pop()
        here = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s: %s", here, e.strerror or e)
            continue
        subdirs = []
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if depth + 1 > max_depth:
                        log.warning("not looking into %s: deeper than %d folders", path, max_depth)
                        continue
                    subdirs.append((path, depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    yield path, entry.stat(follow_symlinks=False)
            except OSError as e:
                log.warning("cannot stat %s: %s", path, e.strerror or e)
        stack.extend(reversed(subdirs))


def footage_files(
    root: str, globs: Sequence[str], extensions: Sequence[str], after_date: Optional[str] = None
) -> Iterator[Tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every footage file below ``root``: a glob and an extension
    match (case-insensitive). Kept lean: a rescan walks every clip on the card.

    ``after_date`` compares with the mtime read as the camera's wall-clock time (see clip_date)."""
    patterns = [glob_regex(g) for g in globs]
    exts = {e.lower().lstrip(".") for e in extensions}
    not_before = None
    if after_date:
        day = datetime.date.fromisoformat(after_date)
        not_before = (day - EPOCH.date()).days * 86400 * 10**9
    for rel, st in _walk(root):
        if rel.rpartition(".")[2].lower() not in exts:
            continue
        if not any(p.match(rel) for p in patterns):
            continue
        if not_before is not None and st.st_mtime_ns < not_before:
            continue
        yield rel, st.st_size, st.st_mtime_ns


EPOCH = datetime.datetime(1970, 1, 1)


def name_stamp(name: str) -> Optional[datetime.datetime]:
    """The recording time in a camera's file name (Novatek and the like), on the camera's clock, or None."""
    m = NAME_STAMP.search(os.path.basename(name))
    if m is None:
        return None
    try:
        return datetime.datetime(*(int(g) for g in m.groups()))
    except ValueError:  # 2026_1340_...: digits, not a time
        return None


def name_date(name: str) -> Optional[datetime.date]:
    """The recording date in a camera's file name, or None."""
    stamp = name_stamp(name)
    return None if stamp is None else stamp.date()


def clip_date(source_path: str, mtime_ns: int) -> datetime.date:
    """The date the camera showed when it recorded the clip, whatever the Pi's time zone.

    The timestamp in the file name when there is one; else the mtime as wall-clock time. vfat and
    exFAT keep the camera's wall clock without a zone, and the card is mounted so that the kernel
    adds none (vfat ``tz=UTC``, exFAT ``time_offset=0``): that mtime broken down in UTC is what the
    camera's clock said. Raises OverflowError for an mtime no calendar date holds."""
    day = name_date(source_path)
    if day is not None:
        return day
    try:
        return (EPOCH + datetime.timedelta(microseconds=mtime_ns // 1000)).date()
    except (OverflowError, ValueError) as e:
        raise OverflowError(f"its modification time ({mtime_ns} ns after 1970) is no calendar date") from e


def ledger_key(source_path: str, size: int, mtime_ns: int) -> Tuple[str, int, int]:
    """The clip's key as the ledger holds it: a name that is not UTF-8 as its bytes escaped
    (\\xNN, only ever in a refused clip's row), the mtime within what SQLite's INTEGER holds."""
    return ledger_path(source_path), size, min(max(mtime_ns, INT64[0]), INT64[1])


def ledger_path(source_path: str) -> str:
    try:
        source_path.encode("utf-8")
        return source_path
    except UnicodeEncodeError:
        return os.fsencode(source_path).decode("utf-8", "backslashreplace")


def refusal(clip: Candidate) -> Optional[str]:
    """Why a clip cannot be staged as it is (the reason kept in its ledger row), or None."""
    if ledger_path(clip.source_path) != clip.source_path:
        return "refused: the name is not valid UTF-8 (the ledger and the server's listings need text)"
    try:
        clip_date(clip.source_path, clip.mtime_ns)
    except OverflowError as e:
        return f"refused: {e}"
    return None


def candidate(rel: str, size: int, mtime_ns: int, event_patterns: Sequence["re.Pattern[str]"] = ()) -> Candidate:
    return Candidate(rel, size, mtime_ns, is_event(rel, event_patterns))


# event/locked clips first, then newest first (or oldest first): the upload's order too
order = layout.order


def staged_name(camera: str, clip: Candidate) -> str:
    """ready/-relative path for a clip: <camera>/<YYYY-MM-DD the camera recorded it>/<its folder on
    the card>/<file>. The folder keeps apart two clips of one name in two folders of the card."""
    return layout.staged_path(camera, clip_date(clip.source_path, clip.mtime_ns), clip.source_path)


def name_variant(name: str, n: int) -> str:
    """``clip.MP4`` -> ``clip~n.MP4``, still within NAME_MAX bytes (layout.with_suffix)."""
    return layout.with_suffix(name, f"~{n}")
