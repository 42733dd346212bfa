"""The footage ledger: versioned schema, forward-only states, durable state between runs."""

from __future__ import annotations

import os
import sqlite3

import pytest

from dashcam_helpers.ledger import MIGRATIONS, Ledger, LedgerError


@pytest.fixture
def ledger(tmp_path):
    with Ledger(str(tmp_path / "state" / "ledger.sqlite3")) as led:
        yield led


def stage(ledger, path="Normal/Front/A.MP4", size=100, mtime=1, event=False):
    return ledger.record_staged("front", path, size, mtime, event=event, sha256="ab" * 32, staged_path=f"front/{path}")


def test_a_new_ledger_is_at_the_latest_schema_in_wal_mode(ledger):
    assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_ledger_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "l.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(LedgerError, match="newer than this dashcam-manager knows"):
        Ledger(str(path))


def test_states_only_move_forward(ledger):
    clip = stage(ledger)
    ledger.advance(clip, "uploaded", remote_path="front/2026/11/25/A.MP4")
    ledger.advance(clip, "verified")
    with pytest.raises(LedgerError, match="cannot go from verified to staged"):
        ledger.advance(clip, "staged")
    ledger.advance(clip, "pruned")
    got = ledger.get(clip)
    assert got.state == "pruned" and got.remote_path == "front/2026/11/25/A.MP4"
    assert got.uploaded_at and got.verified_at and got.pruned_at


def test_a_reused_name_with_new_size_or_mtime_is_a_new_clip(ledger):
    a = stage(ledger, size=100, mtime=1)
    b = stage(ledger, size=200, mtime=2)
    assert a != b
    assert ledger.known_keys("front") == {("Normal/Front/A.MP4", 100, 1), ("Normal/Front/A.MP4", 200, 2)}


def test_a_failed_read_counts_retries_and_is_not_known_so_it_is_retried(ledger):
    ledger.record_failed("front", "Event/B.MP4", 5, 9, event=True, reason="Input/output error")
    ledger.record_failed("front", "Event/B.MP4", 5, 9, event=True, reason="Input/output error")
    [clip] = ledger.files("failed")
    assert clip.retries == 2 and clip.reason == "Input/output error"
    assert ledger.known_keys("front") == set()
    stage(ledger, path="Event/B.MP4", size=5, mtime=9)
    assert ledger.get(clip.id).state == "staged" and ledger.get(clip.id).reason is None


def test_backlog_counts_what_the_server_has_not_verified(ledger):
    a = stage(ledger, path="a", size=10)
    stage(ledger, path="b", size=20)
    ledger.advance(stage(ledger, path="c", size=40), "verified")
    ledger.advance(a, "uploaded")
    assert ledger.backlog() == (2, 30)
    assert ledger.counts()["verified"] == 1


def test_state_survives_reopening(tmp_path):
    path = str(tmp_path / "l.sqlite3")
    with Ledger(path) as led:
        led.put_state("policy", {"mode": "record", "since": 12.5})
        stage(led)
    with Ledger(path) as led:
        assert led.get_state("policy") == {"mode": "record", "since": 12.5}
        assert led.get_state("missing", 7) == 7
        assert len(led.files()) == 1


def test_an_interrupted_transaction_leaves_nothing(ledger):
    with pytest.raises(RuntimeError):
        with ledger.transaction() as db:
            db.execute(
                "INSERT INTO footage (camera, source_path, size, mtime_ns, state, updated_at) VALUES ('c','p',1,1,'staged',0)"
            )
            raise RuntimeError("power cut")
    assert ledger.files() == []


def test_a_nested_transaction_commits_and_rolls_back_with_the_outer_one(ledger):
    insert = "INSERT INTO footage (camera, source_path, size, mtime_ns, state, updated_at) VALUES ('c',?,1,1,'staged',0)"
    with pytest.raises(RuntimeError):
        with ledger.transaction() as outer:
            outer.execute(insert, ("a",))
            with ledger.transaction() as inner:
                inner.execute(insert, ("b",))
            assert outer.in_transaction                 # the inner one did not commit on its own
            raise RuntimeError("power cut")
    assert ledger.files() == []
    with ledger.transaction() as outer:
        with ledger.transaction() as inner:
            inner.execute(insert, ("c",))
    assert [c.source_path for c in ledger.files()] == ["c"] and not ledger.db.in_transaction


def test_unknown_state_filter_is_refused(ledger):
    with pytest.raises(LedgerError, match="unknown state 'lost'"):
        ledger.files("lost")


def test_a_new_ledger_and_its_wal_are_readable_by_the_group_whatever_the_umask_of_its_creator(tmp_path):
    old = os.umask(0o077)  # dashcam-mqtt-offline's UMask=, say, if it is the first to open it
    try:
        with Ledger(str(tmp_path / "ledger.sqlite3")) as ledger:
            ledger.put_state("k", 1)
            for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
                assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
    finally:
        os.umask(old)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown")
def test_a_ledger_root_creates_belongs_to_the_owner_of_its_directory(tmp_path):
    # the policy and the ingest run as root; the uploader, as the dashcam user, must keep writing
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4321, 4321)
    with Ledger(str(state / "ledger.sqlite3")) as ledger:
        ledger.put_state("k", 1)
        for name in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"):
            st = (state / name).stat()
            assert (st.st_uid, st.st_gid) == (4321, 4321), name


# ---------------------------------------------------------------- a damaged ledger is set aside, never replaced

from dashcam_helpers.ledger import LedgerDamaged, damage_marker  # noqa: E402
from dashcam_helpers.tick_ledger import TickLedger  # noqa: E402

GARBAGE = b"\x00\xffthis is no SQLite database\n" * 200


def test_a_garbage_ledger_is_moved_aside_with_a_timestamp_and_never_replaced_by_an_empty_one(tmp_path, caplog):
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(GARBAGE)
    with pytest.raises(LedgerDamaged) as e:
        Ledger(str(path), clock=lambda: 1764470000.0)
    aside = tmp_path / "ledger.sqlite3.damaged-20251130T023320Z"
    assert aside.read_bytes() == GARBAGE  # kept as it was, for a person to recover
    assert str(aside) in str(e.value) and "ingest and upload stay stopped" in str(e.value)
    assert any(r.levelname == "ERROR" and str(aside) in r.getMessage() for r in caplog.records)
    assert damage_marker(str(path))["moved_to"] == str(aside)
    # every later open refuses too, and creates nothing: a fresh ledger would ingest every clip again
    for _ in range(2):
        with pytest.raises(LedgerDamaged):
            Ledger(str(path))
    assert not path.exists()


def test_a_marker_refuses_even_a_ledger_file_that_opens(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(GARBAGE)
    with pytest.raises(LedgerDamaged):
        Ledger(str(path))
    path.write_bytes(b"")  # an empty file (as systemd-tmpfiles once recreated it at boot) is a valid empty database
    with pytest.raises(LedgerDamaged):
        Ledger(str(path))
    os.unlink(str(path) + ".DAMAGED")  # a person restored it (or chose a fresh ledger): usable again
    with Ledger(str(path)) as led:
        assert led.backlog() == (0, 0)


def test_a_damaged_ledger_is_a_one_line_error_not_a_traceback(tmp_path, dashcamctl, make_config):
    cfg = make_config()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.sqlite3").write_bytes(GARBAGE)
    r = dashcamctl("--config", str(cfg), "files")
    assert r.returncode == 1 and "is damaged" in r.stderr and "Traceback" not in r.stderr
    source = tmp_path / "card" / "Normal" / "Front"
    source.mkdir(parents=True)
    (source / "A.MP4").write_bytes(b"clip")
    r = dashcamctl("--config", str(cfg), "ingest", "--source", str(tmp_path / "card"))
    assert r.returncode != 0 and "ingest and upload stay stopped" in r.stderr
    assert not (tmp_path / "state" / "ledger.sqlite3").exists()
    assert not list((tmp_path / "staging").rglob("A.MP4"))  # nothing copied that the ledger cannot record


def test_a_locked_ledger_is_not_called_damaged(tmp_path):
    path = str(tmp_path / "ledger.sqlite3")
    with Ledger(path) as led:
        led.db.execute("BEGIN IMMEDIATE")
        with TickLedger(path, [str(tmp_path / "fb")], "boot-1", timeout=0.2) as tl:
            tl.put_state("policy", {"x": 1})
            assert tl.problem and "locked" in tl.problem
        led.db.execute("ROLLBACK")
    assert damage_marker(path) is None and os.path.exists(path)


def test_the_tick_ledger_keeps_its_state_in_the_fallback_and_forgets_it_once_the_database_works(tmp_path):
    path = str(tmp_path / "ledger.sqlite3")
    fb = [str(tmp_path / "fb")]
    with Ledger(path) as led:
        led.put_state("policy", {"n": 0})
        led.db.execute("BEGIN IMMEDIATE")  # another writer holds the ledger
        with TickLedger(path, fb, "boot-1", timeout=0.2) as tl:
            with tl.transaction():
                tl.add_reading(wall=1.0, boot_id="boot-1", monotonic=10.0, millivolts=None, percent=20,
                               external=False, source="t", keep=5)
                tl.put_state("policy", {"n": 1})
        led.db.execute("ROLLBACK")
    with TickLedger(path, fb, "boot-1") as tl:  # the next tick: the database works again
        assert tl.get_state("policy") == {"n": 1}  # the fallback's newer state wins
        assert [r["percent"] for r in tl.recent_readings(10)] == [20]
        with tl.transaction():
            tl.put_state("policy", {"n": 2})
        assert tl.problem is None
    with TickLedger(path, fb, "boot-1") as tl:
        assert tl.get_state("policy") == {"n": 2}
    with TickLedger(path, fb, "boot-2") as tl:  # another boot: the fallback's readings are not this boot's
        assert tl.recent_readings(10) == []


def test_a_fallback_file_with_nonsense_is_read_without_a_crash(tmp_path):
    import json

    fb = tmp_path / "fb"
    fb.mkdir()
    (fb / "policy-fallback.json").write_text(json.dumps({
        "boot_id": "boot-1", "state": {},
        "readings": [{"boot_id": "boot-1", "monotonic": "soon"}, {"boot_id": "boot-1", "monotonic": 5.0, "percent": 20}],
    }))
    with TickLedger(str(tmp_path / "ledger.sqlite3"), [str(fb)], "boot-1") as tl:
        assert len(tl.recent_readings(10)) == 2  # the tick itself leaves out the unusable one
    (fb / "policy-fallback.json").write_bytes(b"\x00garbage")
    with TickLedger(str(tmp_path / "ledger.sqlite3"), [str(fb)], "boot-1") as tl:
        assert tl.recent_readings(10) == []
