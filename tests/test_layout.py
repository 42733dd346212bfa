"""Where a clip goes (staging, server) and in which order: the rules, with names of any bytes."""

from __future__ import annotations

import datetime

import pytest

from conftest import MINIMAL, deep_merge
from dashcam_helpers import config, footage, layout, upload

DAY = datetime.date(2026, 11, 25)


def test_the_default_layout_keeps_the_cards_folders_below_the_day():
    p = layout.server_path
    default = layout.DEFAULT_LAYOUT
    assert p(default, "front", DAY, "Event/Front/A.MP4", True) == "front/2026/11/25/Event/Front/A.MP4"
    assert p(default, "front", DAY, "Normal/Front/A.MP4", False) == "front/2026/11/25/Normal/Front/A.MP4"
    assert p(default, "front", DAY, "DCIM/Movie/RO/2026_1125_233000_001F.MP4", True) == \
        "front/2026/11/25/DCIM/Movie/RO/2026_1125_233000_001F.MP4"
    assert p(default, "front", DAY, "A.MP4", False) == "front/2026/11/25/A.MP4"   # a clip at the card's root


@pytest.mark.parametrize("folder, name", [
    ("Event/{name}", "{folder}.MP4"),           # a placeholder's value is never a template
    ("lf\nhere/cr\rhere", "tab\there.MP4"),
    ("back\\slash", "a\\#101.MP4"),
    ("Ünï ☃/日本", "é" * 125 + "N.MP4"),           # 255 bytes
    ("-dash/ space ", "-leading.MP4"),
    ("{kind}}{", "}{camera}.MP4"),
])
def test_odd_folders_and_names_are_kept_byte_for_byte(folder, name):
    source = f"{folder}/{name}"
    for template in (layout.DEFAULT_LAYOUT, "{kind}/{camera}/{YYYY}{MM}{DD}/{folder}/{name}"):
        got = layout.server_path(template, "cam", DAY, source, True)
        assert got.endswith("/" + source) and got.count("/") == template.count("/") + folder.count("/")
    assert layout.staged_path("cam", DAY, source) == f"cam/2026-11-25/{source}"
    assert layout.server_path("{camera}/{kind}/{folder}/{name}", "cam", DAY, source, False) == f"cam/Normal/{source}"


def test_a_path_no_card_holds_cannot_climb_out_of_its_folder():
    """'.' and '..' are no names on a card; a damaged ledger row holding them stays below the day."""
    got = layout.server_path(layout.DEFAULT_LAYOUT, "cam", DAY, "../../etc/./x/..", False)
    assert got == "cam/2026/11/25/_../_../etc/x/_.."
    assert ".." not in got.split("/")


@pytest.mark.parametrize("template, problem", [
    ("{camera}/{YYYY}/{name}", "must hold {folder} exactly once"),
    ("{camera}/{folder}/{name}/x", "must end with /{name}"),
    ("/{camera}/{folder}/{name}", "no leading /"),
    ("{camera}/../{folder}/{name}", "'..'"),
    ("{camera}//{folder}/{name}", "empty"),
    ("{camera}/{year}/{folder}/{name}", "unknown placeholder {year}"),
    ("{camera}/x{folder}/{name}", "{folder} must be a folder of its own"),
    ("{camera}/{folder}/a-{name}", "{name} must be a folder of its own"),
    ("{camera}/{YYYY/{folder}/{name}", "a brace that opens no placeholder"),
    ("{camera}/{folder}/{folder}/{name}", "must hold {folder} exactly once"),
])
def test_a_layout_that_could_mix_clips_up_is_refused_with_its_reason(template, problem):
    problems = layout.layout_problems(template)
    assert any(problem in p for p in problems), problems
    with pytest.raises(config.ConfigError) as e:
        config.validate(deep_merge(MINIMAL, {"upload": {"layout": template}}), "test.yaml")
    assert all(p.startswith("upload.layout: ") for p in e.value.problems) and \
        any(problem in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("template", [layout.DEFAULT_LAYOUT, "{kind}/{camera}/{YYYY}-{MM}-{DD}/{folder}/{name}",
                                      "{folder}/{name}", "archive/{camera}/{YYYY}/{kind}/{folder}/{name}"])
def test_good_layouts_are_taken(template):
    assert layout.layout_problems(template) == []
    assert config.validate(deep_merge(MINIMAL, {"upload": {"layout": template}})).upload.layout == template


def test_upload_order_takes_newest_first_or_oldest_first_only():
    assert config.validate(MINIMAL).upload.order == "newest-first"
    assert config.validate(deep_merge(MINIMAL, {"upload": {"order": "oldest-first"}})).upload.order == "oldest-first"
    with pytest.raises(config.ConfigError) as e:
        config.validate(deep_merge(MINIMAL, {"upload": {"order": "newest"}}), "test.yaml")
    assert e.value.problems == ["upload.order: must be one of newest-first, oldest-first, got 'newest'"]


def test_ingest_and_upload_order_by_one_rule():
    """The same clips, as the ingest sees them (Candidates) and as the upload sees them (ledger
    rows): the same order, events first, whichever way the rest goes."""
    cards = [("Normal/old.MP4", 100, False), ("Normal/new.MP4", 300, False), ("Event/ev_old.MP4", 50, True),
             ("Normal/tie_b.MP4", 200, False), ("Normal/tie_a.MP4", 200, False), ("RO/ev_new.MP4", 250, True)]
    candidates = [footage.Candidate(path, 1, mtime, event) for path, mtime, event in cards]
    rows = [upload.Clip(id=n, camera="c", source_path=path, size=1, mtime_ns=mtime, event=event, sha256=None,
                        staged_path=None, remote_path=None, state="staged", reason=None, retries=0, seen_at=None,
                        staged_at=None, uploaded_at=None, verified_at=None, pruned_at=None, updated_at=0.0)
            for n, (path, mtime, event) in enumerate(cards)]
    for newest_first in (True, False):
        copied = [c.source_path for c in footage.order(candidates, newest_first)]
        sent = [i.clip.source_path for i in upload.plan(rows, "/r", newest_first=newest_first)]
        assert copied == sent
    assert copied == ["Event/ev_old.MP4", "RO/ev_new.MP4", "Normal/old.MP4", "Normal/tie_a.MP4",
                      "Normal/tie_b.MP4", "Normal/new.MP4"]


def test_staged_days_are_read_back_and_old_staged_paths_told_apart():
    assert layout.staged_day("cam/2026-11-25/Normal/Front/A.MP4") == DAY
    assert layout.staged_day("cam/2026-13-45/A.MP4") is None and layout.staged_day(None) is None
    assert layout.is_legacy_staged("cam/2026-11-25/A.MP4")
    assert not layout.is_legacy_staged("cam/2026-11-25/Normal/A.MP4")
    assert not layout.is_legacy_staged("x/A.MP4")
