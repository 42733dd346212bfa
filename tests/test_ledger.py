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
    assert ledger.schema_version == len(MIGRATIONS)
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
                "INSERT INTO footage (camera, source_path, size, mtime_ns, state, updated_at) VALUES ('c','p',1,1,'seen',0)"
            )
            raise RuntimeError("power cut")
    assert ledger.files() == []


def test_a_nested_transaction_commits_and_rolls_back_with_the_outer_one(ledger):
    insert = "INSERT INTO footage (camera, source_path, size, mtime_ns, state, updated_at) VALUES ('c',?,1,1,'seen',0)"
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
