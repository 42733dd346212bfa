"""Footage lost before it was copied, damaged clips, the camera's card: coverage.py.

The comparison of recording windows with the card's clips is a pure function (compare):
tested as a table of scenarios. The ledger's side (windows recorded by the tick, losses and
damaged clips kept, status and MQTT) runs against a real SQLite ledger and a card in tmp_path.
"""

from __future__ import annotations

import calendar
import io
import os
import struct
import time
from pathlib import Path

import pytest

from dashcam_helpers import config, coverage, mqtt, status
from dashcam_helpers.coverage import ClipTime, Now, Window
from dashcam_helpers.ledger import Ledger
from dashcam_helpers.tick_ledger import TickLedger

MIN = 60
T0 = calendar.timegm((2026, 11, 29, 5, 0, 0))  # the Pi's wall clock (UTC), set by NTP
CAM = 3600  # the camera's clock shows local time, an hour ahead
BOOT_BASE = {"b0": T0 - 50_000, "b1": T0 - 1_000}  # wall - monotonic of each boot


def win(i, start_min, end_min, boot="b1", synced=True):
    base = BOOT_BASE[boot]
    wall_end = T0 + end_min * MIN if synced else 0.0 + end_min * MIN  # an unset clock reads 1970
    return Window(i, boot, T0 + start_min * MIN - base, T0 + end_min * MIN - base, wall_end, synced)


def stamp(t: float) -> str:
    return time.strftime("%Y_%m%d_%H%M%S", time.gmtime(t))


def card_files(*ranges, clip=MIN, cam=CAM, gap=2):
    """(path, size, mtime_ns) of 60 s clips (the camera closes one and opens the next within
    ``gap`` seconds) covering each (start_min, end_min) of the Pi's time, named on the camera's clock."""
    out = []
    for start_min, end_min in ranges:
        t = T0 + start_min * MIN + cam
        while t < T0 + end_min * MIN + cam:
            out.append((f"Normal/Front/{stamp(t)}_{len(out):04d}F.MP4", 1 << 20, int((t + clip - gap) * 1e9)))
            t += clip
    return out


def now(boot="b1", at_min=200, synced=True):
    wall = T0 + at_min * MIN
    return Now(boot, wall - BOOT_BASE[boot], wall if synced else 100.0, synced)


def judge(windows, files, *, at=None, previous_offset=None, reformatted=False):
    clips, skipped = coverage.clip_times(files)
    return coverage.compare(windows, clips, at or now(), previous_offset=previous_offset, reformatted=reformatted,
                            start_seconds=60, min_seconds=120)


def summary(verdict):
    return [(x.cause, round(x.seconds / MIN)) for x in verdict.losses]


SCENARIOS = [
    # (name, windows, card, keyword arguments, expected losses (cause, minutes), unplaced minutes)
    ("every window has its clips", [win(1, 0, 30), win(2, 60, 90)], card_files((0, 30), (60, 90)), {}, [], 0),
    ("a gap while the car was off is no loss", [win(1, 0, 30), win(2, 240, 250)], card_files((0, 30), (240, 250)),
     {"at": now(at_min=260)}, [], 0),
    ("the oldest window was overwritten by loop recording", [win(1, 0, 30), win(2, 60, 90), win(3, 120, 150)],
     card_files((70, 90), (120, 150)), {}, [("overwritten", 29), ("overwritten", 9)], 0),
    ("a hole in the middle of the card: the camera recorded nothing there", [win(1, 0, 60)],
     card_files((0, 20), (35, 60)), {}, [("missing", 15)], 0),
    ("a reformatted card: what it held before is gone", [win(1, 0, 30), win(2, 60, 90)], card_files((60, 90)),
     {"reformatted": True}, [("formatted", 29)], 0),
    ("an empty card: the camera recorded nothing", [win(1, 0, 30)], [], {}, [("missing", 29)], 0),
    ("an earlier boot never had its clock set: not judged, counted", [win(1, 0, 30, boot="b0", synced=False),
                                                                      win(2, 60, 90)],
     card_files((60, 90)), {}, [], 30),
    ("the clock is not set now: this boot's windows on the monotonic clock",
     [win(1, 0, 30, boot="b0", synced=False), win(2, 60, 90, synced=False), win(3, 120, 150, synced=False)],
     card_files((120, 150)), {"at": now(synced=False)}, [("overwritten", 29)], 30),
    ("a window the camera did not record in (too short to start): the learned offset wins",
     [win(1, 0, 30), win(2, 60, 62)], card_files((0, 30)), {"previous_offset": CAM}, [], 0),
    ("the camera's clock moved an hour (summer time): the newest clip wins over the learned offset",
     [win(1, 0, 30), win(2, 60, 90)], card_files((0, 30), (60, 90), cam=CAM + 3600), {"previous_offset": CAM}, [], 0),
    ("a clip with a wild time in its name does not set the camera's clock",
     [win(1, 0, 30), win(2, 60, 90)], card_files((0, 30), (60, 90)) + [("Normal/Front/2099_0101_000000_9999F.MP4", 1, 0)],
     {}, [], 0),
    ("a start within record_start_seconds is not judged", [win(1, 0, 30)], card_files((1, 30)), {}, [], 0),
    ("no window since the last ingest", [], card_files((0, 30)), {}, [], 0),
]


@pytest.mark.parametrize("name,windows,files,kwargs,expected,unplaced", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_recording_windows_against_the_card(name, windows, files, kwargs, expected, unplaced):
    verdict = judge(windows, files, **kwargs)
    assert summary(verdict) == expected
    assert round(verdict.unplaced_seconds / MIN) == unplaced


def test_a_loss_is_told_on_the_cameras_clock():
    verdict = judge([win(1, 0, 30), win(2, 60, 90)], card_files((60, 90)))
    (loss,) = verdict.losses
    assert coverage.describe(loss) == ("lost: from 2026-11-29 06:01 to 2026-11-29 06:30, about 29 minutes "
                                       "(overwritten by loop recording before it was copied)")
    assert verdict.offset == pytest.approx(CAM, abs=5)


def test_an_empty_card_tells_the_loss_on_the_pis_clock():
    (loss,) = judge([win(1, 0, 30)], []).losses
    assert coverage.describe(loss).endswith("(the Pi's clock, UTC), about 29 minutes (the camera was recording but "
                                            "no clip covers it)")


def test_clip_times_skip_what_does_not_parse_and_count_it():
    files = [
        ("Normal/Front/2026_1129_060000_0001F.MP4", 10, int((T0 + CAM + 58) * 1e9)),
        ("Normal/Front/2026_1340_990000_0002F.MP4", 10, 0),  # no time in the name, mtime 1970: nothing
        ("Normal/Front/FILE0003.MP4", 10, int((T0 + CAM + 200) * 1e9)),  # no name time: ends at its mtime
        ("Normal/Front/\udcff\n.MP4", 10, int((T0 + CAM + 300) * 1e9)),  # any bytes in a name
        ("Photo/2026_1129_060000_0004.JPG", 10, int((T0 + CAM) * 1e9)),  # a photo covers no time
        ("Normal/Front/2026_1129_070000_0005F.MP4", 10, 2**63 - 1),  # a time no calendar holds
    ]
    clips, skipped = coverage.clip_times(files)
    assert skipped == 1
    by_name = {c.path.rsplit("/", 1)[1]: c for c in clips}
    assert by_name["2026_1129_060000_0001F.MP4"] == ClipTime(files[0][0], T0 + CAM, T0 + CAM + 58)
    assert by_name["FILE0003.MP4"].end == T0 + CAM + 200
    assert by_name["FILE0003.MP4"].start == T0 + CAM + 200 - 58  # the usual length, from the clip measured
    assert by_name["2026_1129_070000_0005F.MP4"].start == T0 + CAM + 3600
    assert "2026_1129_060000_0004.JPG" not in by_name


# --- the moov parser -----------------------------------------------------------------------------


def box(kind: bytes, body: bytes = b"", *, size=None, large=None) -> bytes:
    if large is not None:
        return struct.pack(">I4sQ", 1, kind, large) + body
    return struct.pack(">I4s", len(body) + 8 if size is None else size, kind) + body


FTYP = box(b"ftyp", b"isom\0\0\2\0isomiso2avc1mp41")
MDAT = box(b"mdat", b"\0" * 1000)
MOOV = box(b"moov", box(b"mvhd", b"\0" * 100))

MP4S = [
    ("a whole clip, moov at the end", FTYP + MDAT + MOOV, None),
    ("a whole clip, moov first", FTYP + MOOV + MDAT, None),
    ("a 64-bit mdat", FTYP + box(b"mdat", b"\0" * 100, large=116) + MOOV, None),
    ("an mdat that runs to the end (size 0) and no moov", FTYP + box(b"mdat", b"\0" * 100, size=0), "no moov box"),
    ("cut short in the mdat", FTYP + MDAT[:500], "cut short: box 'mdat'"),
    ("cut short after the mdat", FTYP + MDAT, "no moov box"),
    ("cut short in the moov, moov first", FTYP + MOOV[:50], "cut short: box 'moov'"),
    ("zero bytes", b"", "zero bytes"),
    ("garbage from the start: no MP4 to judge", b"\xff\xd8\xff\xe0" + b"\x17" * 500, None),
    ("garbage after the mdat", FTYP + MDAT + b"\x00\x00\x00\x03\xff\xfe\xfd\xfc" * 10, "no box at offset"),
    ("garbage after a moov: it plays", FTYP + MDAT + MOOV + b"\xff" * 40, None),
    ("a few stray bytes after the mdat", FTYP + MDAT + b"\0" * 5, "5 stray bytes"),
    ("a huge 32-bit box size", FTYP + box(b"mdat", b"\0" * 10, size=0xFFFFFFFF), "needs 4294967295 bytes"),
    ("a huge 64-bit box size", FTYP + box(b"mdat", b"\0" * 10, large=(1 << 64) - 1), "cut short: box 'mdat'"),
    ("a box shorter than its header", FTYP + box(b"mdat", size=3), "no box at offset 32"),
    ("more boxes than are read, no moov seen: not judged", FTYP + box(b"free") * (coverage.MAX_BOXES + 5), None),
]


@pytest.mark.parametrize("name,data,expected", MP4S, ids=[m[0] for m in MP4S])
def test_the_moov_parser(name, data, expected):
    why = coverage.iso_bmff_damage(io.BytesIO(data), len(data))
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


def test_the_moov_parser_reads_only_box_headers():
    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    data = FTYP + box(b"mdat", b"\0" * 10_000_000) + MOOV
    assert coverage.iso_bmff_damage(Counting(data), len(data)) is None
    assert Counting.read_bytes <= 16 * 3


# --- with the ledger and a card ------------------------------------------------------------------


@pytest.fixture
def cfg(make_config):
    return config.load(str(make_config()))


def put_card(card: Path, files):
    for rel, size, mtime_ns in files:
        path = card / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(FTYP + MDAT + MOOV)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return [(rel, len(FTYP + MDAT + MOOV), mtime_ns) for rel, _, mtime_ns in files]


def tick_windows(ledger, ranges, boot="b1", synced=True, step=30):
    """What the policy tick records: the camera seen in record every ``step`` seconds over each range."""
    base = BOOT_BASE[boot]
    for start_min, end_min in ranges:
        since = None
        t = T0 + start_min * MIN
        while t <= T0 + end_min * MIN:
            ledger.note_recording(boot_id=boot, since=since, now=t - base, wall=t, synced=synced, external=True,
                                  keep=coverage.KEEP_WINDOWS)
            since = t - base
            t += step


def test_the_tick_stretches_a_window_and_starts_the_next_after_a_gap(tmp_path):
    with Ledger(str(tmp_path / "ledger.sqlite3")) as ledger:
        tick_windows(ledger, [(0, 30), (60, 90)])
        windows = ledger.recording_windows()
    assert [(w.start_mono, w.end_mono) for w in windows] == [
        (T0 - BOOT_BASE["b1"], T0 + 30 * MIN - BOOT_BASE["b1"]),
        (T0 + 60 * MIN - BOOT_BASE["b1"], T0 + 90 * MIN - BOOT_BASE["b1"]),
    ]


class Clock:
    def __init__(self, mono, wall, synced):
        self.mono, self.wall, self.is_synced = mono, wall, synced

    def synced(self):
        return self.is_synced


def test_note_tick_follows_the_cameras_mode(tmp_path):
    with Ledger(str(tmp_path / "ledger.sqlite3")) as ledger:
        args = dict(boot="b1", external=None)
        coverage.note_tick(ledger, Clock(0, T0, True), now=10, wall=T0, seen="off", after="off", since=None, **args)
        coverage.note_tick(ledger, Clock(0, T0, True), now=20, wall=T0 + 10, seen="off", after="record", since=None,
                           **args)  # the tick put it in record: a window starts
        coverage.note_tick(ledger, Clock(0, T0, True), now=50, wall=T0 + 40, seen="record", after="record", since=20,
                           **args)
        coverage.note_tick(ledger, Clock(0, T0, True), now=80, wall=T0 + 70, seen="record", after="data", since=50,
                           **args)  # it recorded until the tick took it to data
        coverage.note_tick(ledger, Clock(0, T0, True), now=110, wall=T0 + 100, seen="data", after="data", since=None,
                           **args)
        assert [(w.start_mono, w.end_mono, w.synced) for w in ledger.recording_windows()] == [(20, 80, True)]


def test_a_tick_with_a_broken_ledger_goes_on_without_the_window(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"not a database at all" * 100)
    with TickLedger(str(path), [str(tmp_path / "fallback")], "b1") as ledger:
        coverage.note_tick(ledger, Clock(0, T0, True), boot="b1", now=10, wall=T0, seen="record", after="record",
                           since=None, external=True)
        assert ledger.problem


def test_an_ingest_records_the_loss_warns_once_and_status_and_mqtt_show_it(tmp_path, cfg, caplog):
    card = tmp_path / "card"
    files = put_card(card, card_files((60, 90), (120, 150)))
    with Ledger(cfg.paths.ledger) as ledger:
        tick_windows(ledger, [(0, 30), (60, 90), (120, 150)])
        with caplog.at_level("WARNING", logger="dashcam.coverage"):
            out = coverage.check_card(cfg, ledger, str(card), files, [], coverage.Card("67EF-9CED"), now())
        assert out["lost_seconds"] == 29 * MIN
        (row,) = ledger.losses_since(T0)
        assert row["cause"] == "overwritten" and round(row["seconds"] / MIN) == 29
        state = ledger.get_state(coverage.STATE_KEY)
        assert state["card"]["total_bytes"] > 0 and state["fs_uuid"] == "67EF-9CED"
        # the next ingest judges only what was recorded since: nothing new, nothing lost again
        out = coverage.check_card(cfg, ledger, str(card), files, [], coverage.Card("67EF-9CED"), now(at_min=210))
        assert out["lost_seconds"] == 0 and len(ledger.losses_since(T0)) == 1
        facts = coverage.facts(ledger, cfg, T0 + 300 * MIN)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["lost: from 2026-11-29 06:01 to 2026-11-29 06:30, about 29 minutes "
                        "(overwritten by loop recording before it was copied)"]
    assert facts["footage"]["lost_minutes_7d"] == 29
    assert facts["problem"] == {"problem": True, "reasons": ["footage lost: about 29 minutes in the last 7 days"]}
    text = status.render({"footage": facts["footage"], "problem": facts["problem"]})
    assert "footage:  29 minutes lost in the last 7 days (once; last found" in text
    assert "PROBLEM:  footage lost: about 29 minutes in the last 7 days" in text
    doc = mqtt.state_document(facts, now=T0)
    assert doc["footage_lost_minutes"] == 29 and doc["problem"] == "ON"
    assert doc["problem_reason"] == "footage lost: about 29 minutes in the last 7 days"
    assert doc["card_total_bytes"] == facts["footage"]["card"]["total_bytes"]


def test_a_reformatted_card_of_the_same_camera_reports_the_footage_it_held_as_formatted(tmp_path, cfg):
    card = tmp_path / "card"
    first = put_card(card, card_files((0, 30)))
    with Ledger(cfg.paths.ledger) as ledger:
        tick_windows(ledger, [(0, 30)])
        coverage.check_card(cfg, ledger, str(card), first, [], coverage.Card("67EF-9CED"), now(at_min=40))
        # the camera recorded two windows; then the card was formatted in the camera's menu
        tick_windows(ledger, [(60, 90), (120, 150)])
        for f in card.rglob("*.MP4"):
            f.unlink()
        files = put_card(card, card_files((125, 150)))
        coverage.check_card(cfg, ledger, str(card), files, [], coverage.Card("1234-ABCD"), now())
        rows = ledger.losses_since(T0)
        assert [(r["cause"], round(r["seconds"] / MIN)) for r in rows] == [("formatted", 29), ("formatted", 4)]
        assert ledger.get_state(coverage.STATE_KEY)["fs_uuid"] == "1234-ABCD"


def test_damaged_clips_are_flagged_once_copied_all_the_same_and_a_problem(tmp_path, cfg, make_config):
    card = tmp_path / "card"
    (card / "Normal/Front").mkdir(parents=True)
    (card / "Normal/Front/2026_1129_060000_0001F.MP4").write_bytes(b"")
    (card / "Normal/Front/2026_1129_060100_0002F.MP4").write_bytes(FTYP + MDAT[:300])
    (card / "Normal/Front/2026_1129_060200_0003F.MP4").write_bytes(FTYP + MDAT + MOOV)
    from dashcam_helpers import ingest

    result = ingest.ingest_source(cfg, str(card))
    assert result.damaged == 2 and result.files == 3 and not result.failed
    assert sorted(p.name for p in card.rglob("*.MP4")) == [  # never deleted from the card
        "2026_1129_060000_0001F.MP4", "2026_1129_060100_0002F.MP4", "2026_1129_060200_0003F.MP4"]
    with Ledger(cfg.paths.ledger) as ledger:
        rows = ledger.damaged_since(0)
        assert [(r["source_path"].rsplit("/", 1)[1], r["reason"][:9]) for r in rows] == [
            ("2026_1129_060000_0001F.MP4", "zero byte"), ("2026_1129_060100_0002F.MP4", "cut short")]
        assert ledger.get_state("last_ingest")["damaged"] == 2
        facts = coverage.facts(ledger, cfg)
    assert facts["footage"]["damaged_7d"] == 2
    assert facts["problem"]["reasons"] == ["2 damaged clips in the last 7 days"]
    assert mqtt.state_document(facts)["damaged_clips"] == 2
    # a second run flags nothing again (the clips are known)
    assert ingest.ingest_source(cfg, str(card)).damaged == 0


def test_the_problem_sensor_says_upload_failing_only_after_alert_hours(tmp_path, make_config):
    cfg = config.load(str(make_config({"upload": {"alert_hours": 6}})))
    wall = T0
    with Ledger(cfg.paths.ledger, clock=lambda: wall - 7 * 3600) as ledger:
        ledger.record_staged("dashcam", "Normal/a.MP4", 1, 1, event=False, sha256="0" * 64, staged_path="dashcam/a")
        ledger.put_state("last_upload", {"wall": wall, "result": "failed", "reason": "rsync: permission denied"})
        assert coverage.facts(ledger, cfg, wall)["problem"] == {
            "problem": True,
            "reasons": ["upload failing, clips waiting for more than 6 h: rsync: permission denied"]}
        assert coverage.facts(ledger, cfg, wall - 2 * 3600)["problem"] == {"problem": False, "reasons": []}
        ledger.put_state("last_upload", {"wall": wall, "result": "ok"})
        assert coverage.facts(ledger, cfg, wall)["problem"]["problem"] is False
        ledger.record_failed("dashcam", "Normal/\\xff.MP4", 1, 1, event=False,
                             reason="refused: the name is not valid UTF-8")
        assert coverage.facts(ledger, cfg, wall)["problem"]["reasons"] == [
            "1 clip refused (dashcamctl files --state failed)"]


def test_the_footage_lost_event_goes_out_once_per_new_loss_and_not_for_old_ones():
    facts = {"footage": {"lost_minutes_7d": 29, "last_loss": {"wall": T0, "message": "lost: from A to B"}}}
    events, memory = mqtt.events_from_facts(facts, {}, T0 + 10)
    assert events == []  # the first look takes its bearings: an old loss is history
    facts["footage"]["last_loss"] = {"wall": T0 + 100, "message": "lost: from C to D, about 12 minutes"}
    facts["footage"]["lost_minutes_7d"] = 41
    events, memory = mqtt.events_from_facts(facts, memory, T0 + 200)
    assert [(e["event_type"], e["minutes"]) for e in events] == [("footage_lost", 41)]
    assert "about 41 minutes in the last 7 days; last: lost: from C to D" in events[0]["message"]
    events, memory = mqtt.events_from_facts(facts, memory, T0 + 300)
    assert events == []
    assert "footage_lost" in mqtt.EVENT_TYPES


def test_status_without_any_check_yet_reads_plainly(cfg):
    with Ledger(cfg.paths.ledger) as ledger:
        facts = coverage.facts(ledger, cfg)
    text = status.render(facts)
    assert text.splitlines() == ["footage:  0 minutes lost in the last 7 days; card not measured yet",
                                 "problem:  none"]
    doc = mqtt.state_document(facts)
    assert doc["problem"] == "OFF" and doc["problem_reason"] == "none" and doc["card_hours"] is None


def test_what_was_found_with_the_clock_unset_counts_until_a_check_with_the_clock_set(cfg):
    with Ledger(cfg.paths.ledger, clock=lambda: 100.0) as ledger:  # 1970: no NTP yet
        ledger.record_loss("dashcam", "overwritten", 0, 600, "lost: from A to B, about 10 minutes", keep=10)
        ledger.put_state(coverage.STATE_KEY, {"last": {"wall": 100.0}})
        assert coverage.facts(ledger, cfg, T0)["footage"]["lost_minutes_7d"] == 10
        ledger.put_state(coverage.STATE_KEY, {"last": {"wall": T0}})
        assert coverage.facts(ledger, cfg, T0)["footage"]["lost_minutes_7d"] == 0


# --- any input: never a traceback ------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([FTYP, MDAT, MOOV, MDAT[:37], box(b"free", size=0), box(b"mdat", large=1 << 40),
                                 box(b"\x00\x01ab", size=9), b"\x00" * 3, b"\x00\x00\x00\x01mdat"]), max_size=8),
       st.binary(max_size=64))
def test_the_moov_parser_takes_any_bytes(parts, tail):
    data = b"".join(parts) + tail
    why = coverage.iso_bmff_damage(io.BytesIO(data), len(data))
    assert why is None or isinstance(why, str)
    if not data:
        assert why == "zero bytes"


names = st.one_of(st.text(max_size=40), st.builds(lambda d, n: f"Normal/{d}_{n}F.MP4",
                                                  st.from_regex(r"(19|20)\d\d_\d{4}_\d{6}", fullmatch=True),
                                                  st.integers(0, 9999)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, st.integers(0, 1 << 40), st.integers(-(1 << 63), (1 << 63) - 1)), max_size=30),
       st.lists(st.tuples(st.floats(-1e12, 1e12), st.floats(0, 1e6), st.booleans(), st.sampled_from(["b0", "b1"])),
                max_size=6),
       st.booleans(), st.one_of(st.none(), st.floats(-1e10, 1e10)))
def test_any_card_and_any_windows_give_a_verdict(files, windows, synced_now, previous):
    ws = [Window(i + 1, boot, start, start + length, start + length + (T0 if synced else 0), synced)
          for i, (start, length, synced, boot) in enumerate(windows)]
    clips, skipped = coverage.clip_times(files)
    verdict = coverage.compare(ws, clips, now(synced=synced_now), previous_offset=previous, reformatted=False,
                               start_seconds=60, min_seconds=120)
    assert all(x.seconds >= 120 for x in verdict.losses)
    assert verdict.judged_seconds + verdict.unplaced_seconds == pytest.approx(
        sum(w.end_mono - w.start_mono for w in ws), abs=1e-3)  # placed on the wall clock: float rounding
    for x in verdict.losses:
        coverage.describe(x)


def test_a_ledger_of_the_first_schema_gains_the_new_tables_and_keeps_its_clips(tmp_path):
    import sqlite3

    from dashcam_helpers.ledger import MIGRATIONS

    path = tmp_path / "ledger.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO footage (camera, source_path, size, mtime_ns, state, updated_at)"
               " VALUES ('dashcam', 'Normal/A.MP4', 1, 1, 'staged', 0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Ledger(str(path)) as ledger:
        assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert [c.source_path for c in ledger.files()] == ["Normal/A.MP4"]
        assert ledger.recording_windows() == [] and ledger.losses_since(0) == [] and ledger.damaged_since(0) == []


def test_the_clock_counts_as_set_only_with_timesyncds_flag_and_a_time_after_2020(tmp_path):
    flag = tmp_path / "synchronized"
    assert not coverage.clock_synced(T0, str(flag))
    flag.write_text("")
    assert coverage.clock_synced(T0, str(flag))
    assert not coverage.clock_synced(100.0, str(flag))  # 1970: whatever the flag says
    assert not coverage.clock_synced(float("nan"), str(flag))


def test_a_damaged_ledger_is_itself_the_problem(tmp_path, cfg):
    path = Path(cfg.paths.ledger)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a database at all" * 100)
    with TickLedger(str(path), [str(tmp_path / "fallback")], "b1") as ledger:
        ledger.get_state("x")  # the tick's first read finds the damage
        facts = coverage.facts(ledger, cfg, T0)
    assert facts["problem"]["problem"] is True and facts["problem"]["reasons"][0].startswith("the ledger is unusable")
    assert mqtt.state_document(facts)["problem"] == "ON"
    problem = dict(status.SECTIONS)["problem"](cfg)
    assert problem["problem"] is True and "damaged" in problem["reasons"][0]


def test_footage_waiting_on_the_camera_is_the_recording_since_the_last_check_at_the_learned_rate(tmp_path, cfg):
    card = tmp_path / "card"
    files = put_card(card, card_files((0, 30)))
    with Ledger(cfg.paths.ledger) as ledger:
        assert coverage.on_camera(ledger) == (0.0, None)
        tick_windows(ledger, [(0, 30)])
        assert coverage.on_camera(ledger) == (30 * MIN, None)  # no rate learned yet
        coverage.check_card(cfg, ledger, str(card), files, [], coverage.Card("67EF-9CED"), now(at_min=40))
        rate = ledger.get_state(coverage.STATE_KEY)["bytes_per_minute"]
        assert rate == pytest.approx(sum(s for _, s, _ in files) / 30, rel=0.05)
        tick_windows(ledger, [(60, 80)])
        seconds, size = coverage.on_camera(ledger)
    assert seconds == 20 * MIN and size == int(20 * rate)


# --- the coverage state as stored is any JSON: a bad value is as good as none ----------------------------

HOSTILE_STATES = [
    '{"offset": NaN}', '{"offset": Infinity}', '{"offset": 1' + "0" * 400 + '}', '{"offset": "3600"}',
    '{"offset": true}', '{"bytes_per_minute": NaN}', '{"bytes_per_minute": Infinity}', '{"bytes_per_minute": -5}',
    '{"bytes_per_minute": true}', '{"bytes_per_minute": 1' + "0" * 400 + '}', '{"judged_id": true}',
    '{"judged_id": -1}', '{"judged_id": 1' + "0" * 400 + '}', '{"fs_uuid": ["x"], "card": "x", "last": 5}', '[1, 2]',
]


def put_raw_state(ledger, key, text):
    with ledger.transaction() as db:
        db.execute("INSERT INTO state (key, value, updated_at) VALUES (?, ?, 0)"
                   " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, text))


@pytest.mark.parametrize("stored", HOSTILE_STATES)
def test_a_coverage_state_of_any_shape_judges_as_if_there_were_none(tmp_path, cfg, stored):
    card = tmp_path / "card"
    files = put_card(card, card_files((60, 90), (120, 150)))
    with Ledger(cfg.paths.ledger) as ledger:
        tick_windows(ledger, [(0, 30), (60, 90), (120, 150)])
        put_raw_state(ledger, coverage.STATE_KEY, stored)
        out = coverage.check_card(cfg, ledger, str(card), files, [], coverage.Card("67EF-9CED"), now())
        assert out["lost_seconds"] == 29 * MIN
        state = ledger.get_state(coverage.STATE_KEY)
        rate = state["bytes_per_minute"]
        assert rate == pytest.approx(sum(s for _, s, _ in files) / 60, rel=0.05)
        assert isinstance(state["offset"], float) and abs(state["offset"] - CAM) < 120
        tick_windows(ledger, [(200, 220)])
        put_raw_state(ledger, coverage.STATE_KEY, stored)  # and what reads it between ingests
        seconds, size = coverage.on_camera(ledger)
        facts = coverage.facts(ledger, cfg, T0 + 300 * MIN)
    assert size is None or size >= 0
    assert status.render(facts).count("\n") == 1 and mqtt.state_document(facts, now=T0)["problem"] == "ON"


ODD = ["Event/a\nb.MP4", "Event/c\rd.MP4", "Normal/back\\slash.MP4", "Normal/{name}/{folder}.MP4", "Normal/-rf/--x.MP4",
       "Normal/" + "n" * 251 + ".MP4", os.fsdecode(b"Normal/\xff\xfe.MP4"), "Normal/2026_1129_060000_0001F.MP4"]


def test_odd_names_on_the_card_are_checked_flagged_and_shown_on_one_line_each(tmp_path, make_config, caplog):
    from dashcam_helpers import ingest

    cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})))
    card = tmp_path / "card"
    for rel in ODD:  # each one zero bytes or cut short: a damaged clip of an odd name
        path = Path(os.fsencode(str(card / rel)).decode("utf-8", "surrogateescape"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if "\\" in rel or "{" in rel else FTYP + MDAT[:100])
    result = ingest.ingest_source(cfg, str(card), card=coverage.Card("67EF-9CED"))
    assert result.damaged == len(ODD) - 1  # the name that is not UTF-8 is refused, not checked
    assert "checking the card" not in caplog.text  # the check itself did not fail
    with Ledger(cfg.paths.ledger) as ledger:
        flagged = {r["source_path"] for r in ledger.damaged_since(0, True)}
        facts = coverage.facts(ledger, cfg)
    assert flagged == set(ODD) - {ODD[6]}
    text = status.render(facts)
    assert text.count("\n") == 1 and "7 damaged clips" in text


def test_the_moov_parser_never_reads_through_a_link_on_the_card(tmp_path):
    card = tmp_path / "card"
    (card / "Normal").mkdir(parents=True)
    secret = tmp_path / "secret.MP4"
    secret.write_bytes(FTYP + MDAT[:100])  # would be "cut short" if it were read
    (card / "Normal/link.MP4").symlink_to(secret)
    assert coverage.clip_damage(str(card), "Normal/link.MP4", 500) is None
    assert coverage.clip_damage(str(card), "Normal/gone.MP4", 500) is None  # vanished since the scan
    os.mkfifo(card / "Normal/fifo.MP4")  # a file swapped for a FIFO since the scan: no hang
    assert coverage.clip_damage(str(card), "Normal/fifo.MP4", 500) is None  # not a clip this can judge
