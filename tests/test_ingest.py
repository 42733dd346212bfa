"""Ingest: new clips land in staging once, verified, never partial; the card is only read.

Integration tests run `dashcamctl ingest --source DIR` as a real subprocess against a
directory that looks like the camera's card, with the real SQLite ledger.
"""

from __future__ import annotations

import calendar
import datetime
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SRC
from dashcam_helpers import config, footage, ingest, log
from dashcam_helpers.card import mount_argv
from dashcam_helpers.staging import reserve_bytes
from dashcam_helpers.ledger import Ledger

DAY = 86400


def write_clip(card: Path, rel: str, size: int, mtime: float, seed: int = 0) -> Path:
    path = card / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(f"{rel}-{seed}").randbytes(size))
    os.utime(path, (mtime, mtime))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ledger_rows(state_dir: Path):
    """The ledger as the next run sees it (opening it completes a migration a kill interrupted)."""
    with Ledger(str(state_dir / "ledger.sqlite3")) as ledger:
        return [dict(clip.__dict__) for clip in ledger.files()]


def files_in(directory: Path):
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def assert_staging_consistent(staging: Path, state: Path, *, complete: bool = False):
    """Every staged row points at a file with its hash; with complete=True, nothing else is in ready/."""
    rows = [r for r in ledger_rows(state) if r["state"] == "staged"] if (state / "ledger.sqlite3").exists() else []
    ready = staging / "ready"
    for r in rows:
        path = ready / r["staged_path"]
        assert path.is_file(), f"ledger row {r['source_path']} points at missing {path}"
        assert sha256(path) == r["sha256"], f"{path} differs from its ledger hash"
    staged_paths = [r["staged_path"] for r in rows]
    assert len(staged_paths) == len(set(staged_paths)), "two ledger rows share a staged file"
    if complete:
        on_disk = sorted(str(p.relative_to(ready)) for p in files_in(ready))
        assert on_disk == sorted(staged_paths), "a file in ready/ has no ledger row"
    return rows


@pytest.fixture
def card(tmp_path):
    d = tmp_path / "card"
    d.mkdir()
    return d


@pytest.fixture
def cfg_path(make_config):
    # tmp filesystems are shared and their free space moves: the reserve has its own test
    return make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})


# --- pure pieces --------------------------------------------------------------------------------


def test_globs_match_case_insensitively_and_star_star_crosses_folders():
    g = footage.glob_regex("Normal/**")
    assert g.match("Normal/Front/A.MP4") and g.match("normal/a.mp4")
    assert not g.match("Other/Normal/a.mp4")
    one = footage.glob_regex("Normal/Front/*.MP4")
    assert one.match("NORMAL/front/x.mp4") and not one.match("Normal/Front/sub/x.MP4")
    assert footage.glob_regex("**/*.ts").match("a/b/c.TS") and footage.glob_regex("**/*.ts").match("c.ts")


def test_event_clips_are_recognised_by_folder_or_suffix():
    assert footage.is_event("Event/Front/a.MP4")
    assert footage.is_event("DCIM/RO/a.MP4")
    assert footage.is_event("Normal/Locked/a.mp4")
    assert footage.is_event("Normal/20240101_120000_E.MP4")
    assert footage.is_event("Normal/20240101_120000_EF.MP4")
    assert not footage.is_event("Normal/Front/20240101_120000.MP4")
    assert not footage.is_event("Normal/EVENTUALLY.MP4")


def test_order_puts_events_first_then_newest_or_oldest():
    c = footage.Candidate
    clips = [c("Normal/old.mp4", 1, 100, False), c("Normal/new.mp4", 1, 300, False),
             c("Event/ev_old.mp4", 1, 50, True), c("Event/ev_new.mp4", 1, 200, True)]
    assert [x.source_path for x in footage.order(clips, newest_first=True)] == [
        "Event/ev_new.mp4", "Event/ev_old.mp4", "Normal/new.mp4", "Normal/old.mp4"]
    assert [x.source_path for x in footage.order(clips, newest_first=False)] == [
        "Event/ev_old.mp4", "Event/ev_new.mp4", "Normal/old.mp4", "Normal/new.mp4"]


def test_reserve_is_the_larger_of_bytes_and_percent(make_config):
    cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 1000, "reserve_percent": 5}})))
    assert reserve_bytes(cfg, 10_000) == 1000
    assert reserve_bytes(cfg, 100_000) == 5000


def test_mount_is_read_only_never_executes_from_the_card_and_adds_no_time_zone():
    assert mount_argv("/dev/sda1", "vfat", "/run/dashcam/mnt/sda1") == [
        "mount", "-t", "vfat", "-o", "ro,nosuid,nodev,noexec,noatime,nosymfollow,tz=UTC,utf8", "/dev/sda1",
        "/run/dashcam/mnt/sda1"]
    assert mount_argv("/dev/sda1", "exfat", "/m") == [
        "mount", "-t", "exfat", "-o", "ro,nosuid,nodev,noexec,noatime,nosymfollow,time_offset=0", "/dev/sda1", "/m"]
    # the card's files belong to the unprivileged reader (vfat and exfat have no owners of their own)
    assert mount_argv("/dev/sda1", "vfat", "/m", reader=(105, 110))[4] == \
        "ro,nosuid,nodev,noexec,noatime,nosymfollow,tz=UTC,utf8,uid=105,gid=110,umask=0077"


# --- a directory source, through the real CLI ----------------------------------------------------


def test_a_source_that_is_not_a_folder_is_said_as_it_is(cfg_path, tmp_path, dashcamctl):
    missing = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(tmp_path / "gone"))
    assert missing.returncode != 0 and "gone: No such file or directory" in missing.stderr, missing.stderr
    (tmp_path / "file").write_text("x")
    a_file = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(tmp_path / "file"))
    assert a_file.returncode != 0 and "file: not a directory" in a_file.stderr, a_file.stderr
    assert "Traceback" not in missing.stderr + a_file.stderr


def test_first_ingest_stages_every_clip_with_its_hash_and_a_rescan_copies_nothing(card, cfg_path, tmp_path, dashcamctl):
    now = time.time()
    clips = {f"Normal/Front/2024_{i:04d}.MP4": write_clip(card, f"Normal/Front/2024_{i:04d}.MP4", 50_000 + i, now - i * 60)
             for i in range(5)}
    write_clip(card, "Normal/Front/notes.txt", 10, now)  # not footage
    write_clip(card, "Misc/other.MP4", 10, now)  # outside the footage folders
    os.symlink("/etc/passwd", card / "Normal/Front/escape.MP4")  # never followed out of the card

    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    assert r.returncode == 0, r.stderr
    rows = assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)
    assert sorted(row["source_path"] for row in rows) == sorted(clips)
    for row in rows:
        assert row["sha256"] == sha256(clips[row["source_path"]])
        assert row["staged_path"].startswith("dashcam/")
    assert not list((tmp_path / "staging/incoming").glob("*.part"))

    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    assert r.returncode == 0, r.stderr
    assert '"files": 0' in r.stdout and '"known": 5' in r.stdout
    assert len(ledger_rows(tmp_path / "state")) == 5


def test_only_new_clips_are_copied_and_a_reused_name_is_a_new_clip_beside_the_old(card, cfg_path, tmp_path, dashcamctl):
    now = time.time()
    write_clip(card, "Normal/Front/A.MP4", 40_000, now - 100)
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    first = ledger_rows(tmp_path / "state")

    write_clip(card, "Normal/Front/B.MP4", 30_000, now - 50)
    # a loop-recording camera overwrote A.MP4 with a new clip: new size and mtime
    write_clip(card, "Normal/Front/A.MP4", 41_000, now - 10, seed=1)
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    assert r.returncode == 0, r.stderr
    assert '"files": 2' in r.stdout
    rows = assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)
    assert len(rows) == 3
    assert rows[0] == first[0]  # the old row and its staged file are untouched
    a_paths = sorted(row["staged_path"] for row in rows if row["source_path"] == "Normal/Front/A.MP4")
    assert len(a_paths) == 2 and a_paths[0] != a_paths[1]


def test_same_file_name_in_two_folders_never_overwrites(card, cfg_path, tmp_path, dashcamctl):
    now = time.time()
    front = write_clip(card, "Normal/Front/0001.MP4", 20_000, now - 5)
    rear = write_clip(card, "Normal/Rear/0001.MP4", 21_000, now - 4)
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    rows = assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)
    assert {r["sha256"] for r in rows} == {sha256(front), sha256(rear)}
    assert len({r["staged_path"] for r in rows}) == 2


def clips_aged(card: Path, days_old) -> float:
    """1000-byte clips on the card, each as many days old as ``days_old`` ({path: days}) says; now."""
    now = time.time()
    for rel, days in days_old.items():
        write_clip(card, rel, 1000, now - days * DAY)
    return now


def ingest_rows(card: Path, make_config, tmp_path: Path, dashcamctl, **ingest_keys):
    """An ingest with no reserve and ``ingest_keys``; the ledger's rows, whose ids follow the copy order."""
    cfg = make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0, **ingest_keys}})
    assert dashcamctl("--config", str(cfg), "ingest", "--source", str(card)).returncode == 0
    return ledger_rows(tmp_path / "state")


def test_event_clips_are_copied_first_then_newest_first(card, make_config, tmp_path, dashcamctl):
    now = clips_aged(card, {"Normal/Front/old.MP4": 3, "Normal/Front/new.MP4": 1, "Normal/Front/mid_E.MP4": 2,
                            "Event/Front/ev.MP4": 5, "DCIM/photo.JPG": 4, "Normal/Front/ancient.MP4": 30})
    rows = ingest_rows(card, make_config, tmp_path, dashcamctl,
                       after_date=time.strftime("%Y-%m-%d", time.localtime(now - 10 * DAY)))
    order = [r["source_path"] for r in rows]
    assert order == ["Normal/Front/mid_E.MP4", "Event/Front/ev.MP4", "Normal/Front/new.MP4",
                     "Normal/Front/old.MP4", "DCIM/photo.JPG"]


def test_event_globs_add_event_clips_that_are_copied_first(card, make_config, tmp_path, dashcamctl):
    clips_aged(card, {"Parking/Front/P.MP4": 3, "Normal/Front/N.MP4": 1, "Event/Front/E.MP4": 5,
                      "Normal/Front/x_SOS_1.MP4": 6})
    rows = ingest_rows(card, make_config, tmp_path, dashcamctl, event_globs=["Parking/**", "**/*_sos_*.mp4"])
    assert [(r["source_path"], r["event"]) for r in rows] == [
        ("Parking/Front/P.MP4", True), ("Event/Front/E.MP4", True), ("Normal/Front/x_SOS_1.MP4", True),
        ("Normal/Front/N.MP4", False)]
    assert footage.is_event("Parking/a.MP4", [footage.glob_regex("parking/**")])
    assert not footage.is_event("Parking/a.MP4")


def test_oldest_first_when_configured(card, make_config, tmp_path, dashcamctl):
    now = time.time()
    for i in range(4):
        write_clip(card, f"Normal/{i}.MP4", 100, now - i * 60)
    cfg = make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0, "newest_first": False}})
    assert dashcamctl("--config", str(cfg), "ingest", "--source", str(card)).returncode == 0
    assert [r["source_path"] for r in ledger_rows(tmp_path / "state")] == [f"Normal/{i}.MP4" for i in (3, 2, 1, 0)]


def test_leftover_part_files_of_a_crashed_run_are_removed(card, cfg_path, tmp_path, dashcamctl):
    incoming = tmp_path / "staging/incoming"
    incoming.mkdir(parents=True)
    (incoming / "X.MP4.3.part").write_bytes(b"half a clip")
    write_clip(card, "Normal/X.MP4", 1000, time.time())
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    assert not list(incoming.glob("*.part"))
    assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)


def test_dry_run_copies_nothing(card, cfg_path, tmp_path, dashcamctl):
    write_clip(card, "Normal/X.MP4", 1000, time.time())
    r = dashcamctl("--config", str(cfg_path), "--dry-run", "ingest", "--source", str(card))
    assert r.returncode == 0, r.stderr
    assert "would copy Normal/X.MP4" in r.stderr
    assert not files_in(tmp_path / "staging/ready")


def test_a_dry_run_creates_nothing_no_ledger_no_lock_no_folder(card, cfg_path, tmp_path, dashcamctl):
    write_clip(card, "Normal/X.MP4", 1000, time.time())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = dashcamctl("--config", str(cfg_path), "--dry-run", "ingest", "--source", str(card))
    assert r.returncode == 0, r.stderr
    assert "would copy Normal/X.MP4" in r.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "state").exists() and not (tmp_path / "staging").exists()


def test_a_dry_run_after_a_real_run_leaves_the_ledger_and_staging_as_they_were(card, cfg_path, tmp_path, dashcamctl):
    write_clip(card, "Normal/X.MP4", 1000, time.time())
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    write_clip(card, "Normal/Y.MP4", 1000, time.time())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = dashcamctl("--config", str(cfg_path), "--dry-run", "ingest", "--source", str(card))
    assert r.returncode == 0, r.stderr
    assert "would copy Normal/Y.MP4" in r.stderr and "would copy Normal/X.MP4" not in r.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def needs_root_mounts():
    if os.geteuid() != 0:
        pytest.skip("needs root (loop and bind mounts)")


@pytest.fixture
def small_staging(tmp_path):
    """Staging on its own 24 MiB ext4 filesystem, so free space is exact and ours alone."""
    needs_root_mounts()
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 missing (e2fsprogs)")
    image = tmp_path / "staging.img"
    mnt = tmp_path / "staging"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(24 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_clips_that_would_cross_the_reserve_stay_on_the_card_with_a_message(card, small_staging, make_config,
                                                                            tmp_path, dashcamctl):
    now = time.time()
    for i in range(6):
        write_clip(card, f"Normal/{i}.MP4", 4 << 20, now - i * 60)  # 24 MiB of clips for a 24 MiB filesystem
    st = os.statvfs(small_staging)
    free = st.f_bavail * st.f_frsize
    reserve = free - (9 << 20)  # room for two 4 MiB clips (and their directory), not three
    cfg = make_config({"ingest": {"reserve_bytes": reserve, "reserve_percent": 0}})
    r = dashcamctl("--config", str(cfg), "ingest", "--source", str(card), "--json")
    assert r.returncode == 0, r.stderr  # what was copied is fine; the rest waits for space
    assert "would leave less than the reserve" in r.stderr
    assert '"pending": 4' in r.stdout
    rows = assert_staging_consistent(small_staging, tmp_path / "state", complete=True)
    assert [row["source_path"] for row in rows] == ["Normal/0.MP4", "Normal/1.MP4"]


def test_a_clip_that_cannot_be_read_is_marked_failed_and_the_others_are_copied(card, cfg_path, tmp_path, dashcamctl):
    needs_root_mounts()
    now = time.time()
    write_clip(card, "Normal/a.MP4", 30_000, now - 30)
    bad = write_clip(card, "Normal/b.MP4", 30_000, now - 20)
    write_clip(card, "Normal/c.MP4", 30_000, now - 10)
    # a real EIO from read(2): another process's memory file reads EIO at address 0
    holder = subprocess.Popen(["sleep", "60"])
    try:
        r = subprocess.run(["mount", "--bind", f"/proc/{holder.pid}/mem", str(bad)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {r.stderr.strip()}")
        try:
            r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card))
        finally:
            subprocess.run(["umount", str(bad)], check=True)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1
    assert "cannot read Normal/b.MP4" in r.stderr
    rows = {row["source_path"]: row for row in ledger_rows(tmp_path / "state")}
    assert rows["Normal/a.MP4"]["state"] == "staged" and rows["Normal/c.MP4"]["state"] == "staged"
    assert rows["Normal/b.MP4"]["state"] == "failed"
    assert "Input/output error" in rows["Normal/b.MP4"]["reason"]
    assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)

    # the card is fine again: the failed clip is retried, the others are not copied twice
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    assert r.returncode == 0, r.stderr
    assert '"files": 1' in r.stdout
    staged = [row["source_path"] for row in ledger_rows(tmp_path / "state") if row["state"] == "staged"]
    assert sorted(staged) == ["Normal/a.MP4", "Normal/b.MP4", "Normal/c.MP4"]
    assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)


def spawn_ingest(cfg_path: Path, card: Path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    for k in ("DASHCAM_CONFIG", "JOURNAL_STREAM", "NOTIFY_SOCKET"):
        env.pop(k, None)
    return subprocess.Popen(
        [sys.executable, "-m", "dashcam_helpers", "--config", str(cfg_path), "ingest", "--source", str(card)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_sigterm_mid_copy_stops_within_5_seconds_leaving_no_part_and_a_consistent_ledger(card, cfg_path, tmp_path):
    now = time.time()
    for i in range(40):
        write_clip(card, f"Normal/{i:03d}.MP4", 8 << 20, now - i)
    proc = spawn_ingest(cfg_path, card)
    incoming = tmp_path / "staging/incoming"
    deadline = time.monotonic() + 60
    while not list(incoming.glob("*.part")) or not files_in(tmp_path / "staging/ready"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 75, err
    assert "SIGTERM: stopping the ingest" in err
    assert not list(incoming.glob("*.part"))
    rows = assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)
    assert 0 < len(rows) < 40
    db = sqlite3.connect(tmp_path / "state/ledger.sqlite3")
    assert '"interrupted"' in db.execute("SELECT value FROM state WHERE key = 'last_ingest'").fetchone()[0]
    db.close()


def test_kill_9_at_random_moments_never_leaves_a_wrong_file_and_a_rerun_stages_each_clip_once(card, cfg_path, tmp_path):
    now = time.time()
    clips = {}
    for i in range(12):
        rel = f"Normal/Front/{i:03d}.MP4" if i % 4 else f"Event/{i:03d}.MP4"
        clips[rel] = sha256(write_clip(card, rel, random.Random(i).randint(20_000, 400_000), now - i * 60))
    staging, state = tmp_path / "staging", tmp_path / "state"

    def wait_for_staged(proc, k: int, deadline=60.0):
        """Until k clips are in ready/ and a .part is being written (the run is mid-copy)."""
        end = time.monotonic() + deadline
        while len(files_in(staging / "ready")) < k or not list((staging / "incoming").glob("*.part")):
            if proc.poll() is not None or time.monotonic() > end:
                return
            time.sleep(0.001)

    rng = random.Random(20240917)
    killed_mid_copy = 0
    for attempt in range(50):
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        proc = spawn_ingest(cfg_path, card)
        if attempt % 5 == 0:
            time.sleep(rng.uniform(0, 0.3))  # also during start-up: ledger creation, cleanup, scan
        else:
            # anywhere in the copy, whatever this machine's pace: after a random number of clips,
            # a random few milliseconds into the next (reading, fsync, rename or ledger commit)
            wait_for_staged(proc, rng.randrange(len(clips) - 1))
            time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        rows = assert_staging_consistent(staging, state)
        if 0 < len(rows) < len(clips):
            killed_mid_copy += 1
        for row in rows:
            assert clips[row["source_path"]] == row["sha256"]

        proc = spawn_ingest(cfg_path, card)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        rows = assert_staging_consistent(staging, state, complete=True)
        assert sorted(row["source_path"] for row in rows) == sorted(clips), f"attempt {attempt}"
        assert not list((staging / "incoming").glob("*.part"))
    # about 30 of the 50 land mid-copy here (31, 32, 32 in three runs; 29 twice); the others land in
    # start-up, before the first clip or after the last. At least 20 shows the test still aims right.
    assert killed_mid_copy >= 20, f"only {killed_mid_copy} of 50 kills landed while clips were being copied"


# --- the camera's block device: mount around the same code -----------------------------------------


FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
{body}
"""


@pytest.fixture
def fake_mount_tools(tmp_path, monkeypatch):
    """mount/umount/blkid that record their argv; the 'mounted card' is the mountpoint directory itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "tools.log"
    bodies = {"mount": "exit 0", "umount": "exit 0",
              "blkid": 'case "$*" in *UUID*) echo "${FAKE_UUID:-67EF-9CED}";; *) echo "${FAKE_FSTYPE:-vfat}";; esac'}
    for name, body in bodies.items():
        p = bin_dir / name
        p.write_text(FAKE_TOOL.format(log=log, body=body))
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def card_device(make_config, tmp_path: Path, sections=None, clip: Optional[str] = "Normal/Front/A.MP4"):
    """(config, device): the card of the fake block device sdz1 mounts on <tmp>/mnt/sdz1 and holds
    ``clip``; ``sections`` adds to the config (any section but camera)."""
    cfg = config.load(str(make_config({"camera": {"mount_base": str(tmp_path / "mnt")}, **(sections or {})})))
    dev = tmp_path / "sdz1"
    dev.write_bytes(b"")
    if clip:
        write_clip(tmp_path / "mnt/sdz1", clip, 5000, time.time())
    return cfg, dev


def test_device_ingest_mounts_read_only_copies_unmounts_and_puts_the_camera_back(make_config, tmp_path,
                                                                               fake_mount_tools):
    cfg, dev = card_device(make_config, tmp_path, {"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})
    back = []
    result = ingest.ingest_device(cfg, str(dev), camera_back=lambda c, dry_run: back.append(dry_run))
    assert result.files == 1
    calls = fake_mount_tools.read_text().splitlines()
    assert f"mount -t vfat -o ro,nosuid,nodev,noexec,noatime,nosymfollow,tz=UTC,utf8 {dev} {tmp_path}/mnt/sdz1" in calls
    assert calls[-1] == f"umount {tmp_path}/mnt/sdz1"
    assert back == [False]


def test_device_ingest_keeps_the_cards_filesystem_uuid_and_how_full_it_is(make_config, tmp_path, fake_mount_tools,
                                                                          monkeypatch):
    from dashcam_helpers import coverage

    cfg, dev = card_device(make_config, tmp_path, {"ingest": {"reserve_bytes": 0, "reserve_percent": 0}},
                           clip="Normal/Front/2026_1129_053712_013F.MP4")
    ingest.ingest_device(cfg, str(dev), camera_back=lambda c, dry_run: None)
    with Ledger(cfg.paths.ledger) as ledger:
        state = ledger.get_state(coverage.STATE_KEY)
    assert state["fs_uuid"] == "67EF-9CED"
    assert state["card"]["total_bytes"] == os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    assert state["card"]["used_bytes"] > 0
    monkeypatch.setenv("FAKE_UUID", "1234-ABCD")  # formatted since: the next ingest says so
    ingest.ingest_device(cfg, str(dev), camera_back=lambda c, dry_run: None)
    with Ledger(cfg.paths.ledger) as ledger:
        state = ledger.get_state(coverage.STATE_KEY)
    assert state["fs_uuid"] == "1234-ABCD" and state["last"]["reformatted"] is True


def test_an_ingest_from_a_directory_judges_no_recording_window(make_config, tmp_path):
    """A card in a reader may not be the camera's current one: only damaged clips are looked for."""
    from dashcam_helpers import coverage

    cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})))
    write_clip(tmp_path / "card", "Normal/Front/2026_1129_053712_013F.MP4", 5000, time.time())
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.note_recording(boot_id="b", since=None, now=1.0, wall=time.time(), synced=True, external=True, keep=9)
    ingest.ingest_source(cfg, str(tmp_path / "card"))
    with Ledger(cfg.paths.ledger) as ledger:
        assert ledger.get_state(coverage.STATE_KEY) is None and ledger.losses_since(0) == []


def test_device_ingest_unmounts_and_puts_the_camera_back_even_when_the_ingest_fails(make_config, tmp_path,
                                                                                    fake_mount_tools):
    cfg, dev = card_device(make_config, tmp_path, {"paths": {"state_dir": "/proc/no-ledger-here"}})
    back = []
    with pytest.raises(Exception):
        ingest.ingest_device(cfg, str(dev), camera_back=lambda c, dry_run: back.append(dry_run))
    assert fake_mount_tools.read_text().splitlines()[-1] == f"umount {tmp_path}/mnt/sdz1"
    assert back == [False]


def test_a_stopped_device_ingest_unmounts_and_leaves_the_camera_to_whoever_stopped_it(make_config, tmp_path,
                                                                                       fake_mount_tools):
    cfg, dev = card_device(make_config, tmp_path)
    back = []
    result = ingest.ingest_device(cfg, str(dev), should_stop=lambda: True,
                                  camera_back=lambda c, dry_run: back.append(dry_run))
    assert result.files == 0
    assert fake_mount_tools.read_text().splitlines()[-1] == f"umount {tmp_path}/mnt/sdz1"
    assert back == []  # no battery read, no uhubctl: the unit ends within its stop timeout


def test_device_with_another_filesystem_is_not_mounted(make_config, tmp_path, fake_mount_tools, monkeypatch):
    monkeypatch.setenv("FAKE_FSTYPE", "ext4")
    cfg, dev = card_device(make_config, tmp_path, clip=None)
    back = []
    with pytest.raises(ingest.DashcamError, match="ext4"):
        ingest.ingest_device(cfg, str(dev), camera_back=lambda c, dry_run: back.append(dry_run))
    assert not any(line.startswith("mount") for line in fake_mount_tools.read_text().splitlines())
    assert back == [False]


KILL_PARENT = """#!/bin/sh
# stands in for the kernel and systemd: the camera's block device goes away, the unit bound to it
# (BindsTo=) is stopped, and its main process gets SIGTERM
echo "$(basename "$0")" >> "{log}"
kill -TERM "$PPID"
"""


@pytest.fixture
def device_ingest(make_config, tmp_path, fake_mount_tools, fake_hw):
    """``dashcamctl ingest sdz1`` as the unit runs it: fake mount tools, the camera switched by
    scripts (backend scripts) and read back from the fake uhubctl and sysfs (powered, data off:
    record), the battery read from a command (on external power: back to record)."""
    fake_hw.usb_device("1-1", authorized="0")
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("record", "data", "off"):
        p = scripts / name
        p.write_text(f"#!/bin/sh\necho {name} >> {tmp_path / 'camera.log'}\n")
        p.chmod(0o755)
    battery = scripts / "battery"
    battery.write_text("#!/bin/sh\necho '{\"battery_percent\": 95, \"input_voltage\": 5.21}'\n")
    battery.chmod(0o755)
    cfg = make_config({
        "camera": {"mount_base": str(tmp_path / "mnt"), "backend": "scripts",
                   **{f"{n}_script": str(scripts / n) for n in ("record", "data", "off")}},
        "battery": {"source": "command", "command": str(battery)},
        "ingest": {"reserve_bytes": 0, "reserve_percent": 0},
    })
    dev = tmp_path / "sdz1"
    dev.write_bytes(b"")
    write_clip(tmp_path / "mnt/sdz1", "Normal/Front/A.MP4", 5000, time.time())

    class Run:
        camera_log = tmp_path / "camera.log"

        def signal_from(self, script: Path) -> None:
            """``script`` logs its name to camera_log and sends the ingest SIGTERM when it runs."""
            script.write_text(KILL_PARENT.format(log=self.camera_log))
            script.chmod(0o755)

        def __call__(self, dashcamctl):
            return dashcamctl("--config", str(cfg), "ingest", str(dev))

    run = Run()
    run.scripts = scripts
    run.bin = fake_mount_tools.parent / "bin"
    return run


def warnings_in(stderr: str):
    return [line for line in stderr.splitlines() if "warning" in line.lower() or "error" in line.lower()]


def test_a_normal_device_ingest_logs_no_warning_for_the_stop_that_follows_the_camera_going_back(
        device_ingest, dashcamctl):
    device_ingest.signal_from(device_ingest.scripts / "record")
    r = device_ingest(dashcamctl)
    assert r.returncode == 0, r.stderr
    assert device_ingest.camera_log.read_text().splitlines() == ["record"]
    assert "SIGTERM after the copy, as expected" in r.stderr
    assert "stopping the ingest" not in r.stderr
    assert warnings_in(r.stderr) == []


def test_a_sigterm_before_the_copy_is_complete_still_warns_and_leaves_the_camera_alone(device_ingest, dashcamctl):
    device_ingest.signal_from(device_ingest.bin / "mount")
    r = device_ingest(dashcamctl)
    assert r.returncode == 75, r.stderr
    assert "SIGTERM: stopping the ingest" in r.stderr
    # no camera script ran (the log holds only the fake mount): whoever stopped the ingest decides the camera
    assert device_ingest.camera_log.read_text().splitlines() == ["mount"]


def test_the_shipped_default_globs_cover_the_users_camera_layout(card, make_config, tmp_path):
    cfg = config.load(str(make_config({})))
    write_clip(card, "Normal/Front/2024_0101_120000_F.MP4", 10, time.time())
    found = [footage.candidate(*f) for f in footage.footage_files(str(card), cfg.ingest.globs, cfg.ingest.extensions)]
    assert [c.source_path for c in found] == ["Normal/Front/2024_0101_120000_F.MP4"]


def test_files_root_stages_belong_to_the_staging_owner_so_the_uploader_can_prune_them(card, cfg_path, tmp_path,
                                                                                        dashcamctl):
    needs_root_mounts()
    (tmp_path / "staging").mkdir()
    (tmp_path / "state").mkdir()
    os.chown(tmp_path / "staging", 4321, 4321)
    os.chown(tmp_path / "state", 4321, 4321)
    for parent in (tmp_path, *tmp_path.parents[:2]):  # the copy runs as 4321: let it reach the card
        parent.chmod(parent.stat().st_mode | 0o001)
    write_clip(card, "Normal/Front/A.MP4", 1000, time.time())
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    made = [p for p in (tmp_path / "staging").rglob("*") if p.name != ".lock"] + [tmp_path / "state/ledger.sqlite3"]
    assert len(made) == 8  # incoming, ready, camera, day, Normal, Front, the clip; the ledger
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made} == {(4321, 4321)}


# --- names and files from the card -------------------------------------------------------------------

# any name a card's (or --source's) filesystem allows: (what it is, the name as bytes)
ODD_NAMES = [
    ("spaces", b"clip with  spaces .MP4"),
    ("leading dash", b"-rf --delete-after.MP4"),
    ("non-ascii", "Fahrt_Ünïcödé_日本.MP4".encode()),
    ("backslash", b"back\\slash\\.MP4"),
    ("rsync escape", b"a\\#101.MP4"),
    ("tab", b"tab\there.MP4"),
    ("carriage return", b"cr\rhere.MP4"),
    ("newline", b"nl\nhere.MP4"),
    ("control characters", b"ctl\x01\x1b[31m\x7f.MP4"),
    ("invalid utf-8", b"bad\xff\xfeutf8.MP4"),
    ("240 bytes", b"L" * 236 + b".MP4"),
    ("255 bytes", b"M" * 251 + b".MP4"),
    ("255 bytes multibyte", ("é" * 125 + "x.MP4").encode()),
]


def write_named(card: Path, folder: str, name: bytes, size: int, mtime: float, seed: int = 0) -> bytes:
    """A clip under a bytes name (the card's filesystem takes any); returns its content."""
    directory = os.path.join(os.fsencode(str(card)), folder.encode())
    os.makedirs(directory, exist_ok=True)
    data = random.Random(name + bytes([seed])).randbytes(size)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))
    return data


def staged_bytes(staging: Path, row) -> bytes:
    with open(os.path.join(os.fsencode(str(staging / "ready")), os.fsencode(row["staged_path"])), "rb") as f:
        return f.read()


def utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("what,name", ODD_NAMES, ids=[w for w, _ in ODD_NAMES])
def test_any_name_is_staged_byte_identical_or_refused_with_a_reason_never_skipped(what, name, card, cfg_path, tmp_path,
                                                                                  dashcamctl):
    now = time.time()
    odd = write_named(card, "Normal/Front", name, 20_000, now - 10)
    plain = write_named(card, "Normal/Front", b"plain.MP4", 10_000, now - 20)
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    rows = {os.fsencode(row["source_path"]): row for row in ledger_rows(tmp_path / "state")}
    assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)
    assert staged_bytes(tmp_path / "staging", rows[b"Normal/Front/plain.MP4"]) == plain  # never blocked
    shown = log.printable(os.fsdecode(b"Normal/Front/" + name))  # what a person reads
    if utf8(name):
        assert r.returncode == 0, r.stderr
        row = rows[b"Normal/Front/" + name]
        assert row["state"] == "staged"
        assert os.fsencode(row["staged_path"]).rsplit(b"/", 1)[1] == name  # the very name
        assert staged_bytes(tmp_path / "staging", row) == odd  # the very bytes
        listed = dashcamctl("--config", str(cfg_path), "files").stdout.splitlines()
        assert len(listed) == 3 and any(line.endswith(" " + shown) for line in listed)  # one line each
        assert any(line.startswith(("INFO staged " + shown, f"staged {shown}")) or f" staged {shown} " in line
                   for line in r.stderr.splitlines()), r.stderr
    else:
        assert r.returncode == 1
        row = rows[b"Normal/Front/bad\\xff\\xfeutf8.MP4"]  # the bytes, escaped: a row a person can read
        assert row["state"] == "failed" and row["reason"].startswith("refused: the name is not valid UTF-8")
        # one line in the log names the clip and the reason
        assert any(shown + ": refused: the name is not valid UTF-8" in line for line in r.stderr.splitlines())
        assert '"reason": "refused: the name is not valid UTF-8' in r.stdout
        listed = dashcamctl("--config", str(cfg_path), "files", "--state", "failed").stdout
        # the row's key holds the bytes as \xNN text: shown as such, its backslashes doubled
        assert "bad\\\\xff\\\\xfeutf8.MP4  (refused: the name is not valid UTF-8" in listed
        status = dashcamctl("--config", str(cfg_path), "status", "--json").stdout
        assert '"failed_files": 1' in status
    assert "\n" not in shown and "\r" not in shown and "\t" not in shown

    # the next run copies nothing again; a refused clip is refused again, never "already in the ledger"
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    assert '"files": 0' in r.stdout
    assert f'"known": {1 + utf8(name)}' in r.stdout
    assert len(ledger_rows(tmp_path / "state")) == 2


@pytest.mark.parametrize("name", [b"SAME.MP4", b"N" * 251 + b".MP4"], ids=["short", "255 bytes"])
def test_the_same_name_in_normal_and_event_with_different_content_stages_both(name, card, cfg_path, tmp_path,
                                                                                dashcamctl):
    now = time.time()
    normal = write_named(card, "Normal/Front", name, 30_000, now - 10, seed=1)
    event = write_named(card, "Event/Front", name, 30_000, now - 10, seed=2)
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card))
    assert r.returncode == 0, r.stderr
    rows = {row["source_path"].split("/")[0]: row for row in assert_staging_consistent(
        tmp_path / "staging", tmp_path / "state", complete=True)}
    assert staged_bytes(tmp_path / "staging", rows["Event"]) == event
    assert staged_bytes(tmp_path / "staging", rows["Normal"]) == normal
    # each keeps its name, in its folder of the card: no name~1 for either
    day = datetime.datetime.fromtimestamp(now - 10, datetime.timezone.utc).strftime("%Y-%m-%d")
    assert rows["Event"]["staged_path"].encode() == b"dashcam/" + day.encode() + b"/Event/Front/" + name
    assert rows["Normal"]["staged_path"].encode() == b"dashcam/" + day.encode() + b"/Normal/Front/" + name


def test_a_name_once_staged_is_never_given_to_another_clip_even_after_it_left_staging(card, cfg_path, tmp_path,
                                                                                      dashcamctl):
    now = time.time()
    write_clip(card, "Normal/Front/LOOP.MP4", 10_000, now - 60)
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    first = ledger_rows(tmp_path / "state")[0]["staged_path"]
    os.unlink(tmp_path / "staging/ready" / first)  # uploaded, verified and pruned
    write_clip(card, "Normal/Front/LOOP.MP4", 11_000, now - 30, seed=1)  # the camera reused the name
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    second = ledger_rows(tmp_path / "state")[1]["staged_path"]
    assert second != first and second.endswith("LOOP~1.MP4")


def test_a_folder_whose_name_a_staged_clip_has_fails_that_clip_only(card, cfg_path, tmp_path, dashcamctl):
    """Normal/A.MP4 was a clip; later the card holds a folder of that name: its clip cannot be
    staged below a file, is marked failed with the reason, and the others are staged."""
    now = time.time()
    write_clip(card, "Normal/A.MP4", 1000, now - 60)
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    os.unlink(card / "Normal/A.MP4")
    write_clip(card, "Normal/A.MP4/B.MP4", 1000, now - 60)  # the same day as A.MP4
    write_clip(card, "Normal/C.MP4", 1000, now - 20)
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card))
    assert r.returncode == 1, r.stderr
    rows = {row["source_path"]: row for row in ledger_rows(tmp_path / "state")}
    assert rows["Normal/A.MP4/B.MP4"]["state"] == "failed" and "not a folder" in rows["Normal/A.MP4/B.MP4"]["reason"]
    assert rows["Normal/C.MP4"]["state"] == "staged" and rows["Normal/A.MP4"]["state"] == "staged"
    assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)


def test_name_variants_stay_within_255_bytes_and_cut_at_a_character():
    assert footage.name_variant("A.MP4", 2) == "A~2.MP4"
    long = "é" * 125 + "x.MP4"
    v = footage.name_variant(long, 1)
    assert len(v.encode()) <= 255 and v.endswith("~1.MP4") and v.encode().decode() == v


def test_shown_names_are_one_line_and_say_which_bytes():
    assert footage.shown("a\nb\r\tc\x1b.MP4") == "a\\x0ab\\x0d\\x09c\\x1b.MP4"
    assert footage.shown(os.fsdecode(b"bad\xff.MP4")) == "bad\\xff.MP4"
    assert footage.shown("Fahrt_Ü.MP4") == "Fahrt_Ü.MP4"


@given(names=st.lists(st.one_of(st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=60)
                                .map(lambda t: t.encode("utf-8", "surrogatepass")),
                                st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"/", b"_")
                                                                      .replace(b"\x00", b"_"))),
                      min_size=1, max_size=4),
       event_too=st.booleans())
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_every_clip_whatever_its_name_is_staged_identical_or_refused_once_with_a_row(
        names, event_too, make_config, tmp_path):
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        card = Path(d) / "card"
        cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0},
                                           "paths": {"local_staging": f"{d}/staging", "state_dir": f"{d}/state"}},
                                          name="config-%s.yaml" % os.path.basename(d))))
        now = time.time()
        content = {}
        for i, name in enumerate(dict.fromkeys(n + b".MP4" for n in names)):
            folders = ["Normal/Front"] + (["Event/Front"] if event_too and i == 0 else [])
            for seed, folder in enumerate(folders):
                content[folder.encode() + b"/" + name] = write_named(card, folder, name, 100 + i, now - i, seed)
        result = ingest.ingest_source(cfg, str(card))
        rows = {os.fsencode(r["source_path"]): r for r in ledger_rows(Path(d) / "state")}
        assert len(rows) == len(content)  # one row per clip: nothing skipped
        assert_staging_consistent(Path(d) / "staging", Path(d) / "state", complete=True)
        refused = 0
        for path, data in content.items():
            if utf8(path):
                row = rows[path]
                assert row["state"] == "staged" and staged_bytes(Path(d) / "staging", row) == data
                base = os.path.basename(path)
                got = os.fsencode(os.path.basename(row["staged_path"]))
                assert got == base or (got.endswith(b".MP4") and b"~" in got)  # the name, or name~n beside it
            else:
                refused += 1
                row = rows[os.fsencode(footage.ledger_path(os.fsdecode(path)))]
                assert row["state"] == "failed" and row["reason"].startswith("refused: ")
        assert result.files == len(content) - refused and len(result.failed) == refused
        again = ingest.ingest_source(cfg, str(card))
        assert again.files == 0 and again.known == len(content) - refused and len(again.failed) == refused


# --- odd files, times and space ------------------------------------------------------------------------


def test_an_oversized_clip_is_skipped_and_the_clips_that_fit_are_copied(card, small_staging, make_config, tmp_path,
                                                                        dashcamctl):
    now = time.time()
    write_clip(card, "Normal/huge.MP4", 12 << 20, now)  # the newest: first in line
    for i in range(3):
        write_clip(card, f"Normal/{i}.MP4", 1 << 20, now - 60 - i)
    st = os.statvfs(small_staging)
    cfg = make_config({"ingest": {"reserve_bytes": st.f_bavail * st.f_frsize - (8 << 20), "reserve_percent": 0}})
    r = dashcamctl("--config", str(cfg), "ingest", "--source", str(card), "--json")
    assert r.returncode == 0, r.stderr
    assert "skipping Normal/huge.MP4" in r.stderr and "would leave less than the reserve" in r.stderr
    assert '"pending": 1' in r.stdout
    rows = assert_staging_consistent(small_staging, tmp_path / "state", complete=True)
    assert sorted(row["source_path"] for row in rows) == ["Normal/0.MP4", "Normal/1.MP4", "Normal/2.MP4"]


def test_a_very_deep_tree_is_walked_without_recursion_and_its_depths_skipped_with_a_message(card, cfg_path, tmp_path,
                                                                                            dashcamctl):
    now = time.time()
    write_clip(card, "Normal/top.MP4", 1000, now)
    deep = os.path.join(str(card), "Normal")
    for _ in range(1100):  # deeper than Python's recursion limit (os.makedirs too recurses)
        deep = os.path.join(deep, "d")
        os.makedirs(deep, exist_ok=True)
    write_clip(card, "Normal/" + "s/" * 5 + "shallow.MP4", 1000, now - 1)
    with open(os.path.join(deep, "bottom.MP4"), "wb") as f:
        f.write(b"x")
    try:
        r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    finally:  # bottom up: pytest's own clean-up (shutil.rmtree) recurses and would fail on it
        os.unlink(os.path.join(deep, "bottom.MP4"))
        while deep != os.path.join(str(card), "Normal"):
            os.rmdir(deep)
            deep = os.path.dirname(deep)
    assert r.returncode == 0, r.stderr
    assert "RecursionError" not in r.stderr
    assert "deeper than 32 folders" in r.stderr
    rows = assert_staging_consistent(tmp_path / "staging", tmp_path / "state", complete=True)
    assert sorted(row["source_path"] for row in rows) == ["Normal/s/s/s/s/s/shallow.MP4", "Normal/top.MP4"]


def test_mtimes_beyond_2262_and_before_1970_are_staged_with_their_time_and_no_orphan(card, cfg_path, tmp_path,
                                                                                     dashcamctl):
    late = calendar.timegm((2300, 6, 1, 12, 0, 0)) * 10**9  # beyond a signed 64-bit count of ns
    early = calendar.timegm((1960, 6, 1, 12, 0, 0)) * 10**9
    for rel, ns in (("Normal/late.MP4", late), ("Normal/early.MP4", early), ("Normal/now.MP4", time.time_ns())):
        path = write_clip(card, rel, 1000, 0)
        os.utime(path, ns=(ns, ns))
    if os.stat(card / "Normal/late.MP4").st_mtime_ns != late:
        pytest.skip("this filesystem cannot hold a time in 2300")
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["source_path"]: row for row in assert_staging_consistent(tmp_path / "staging", tmp_path / "state",
                                                                         complete=True)}
    assert rows["Normal/late.MP4"]["staged_path"] == "dashcam/2300-06-01/Normal/late.MP4"
    assert rows["Normal/early.MP4"]["staged_path"] == "dashcam/1960-06-01/Normal/early.MP4"
    assert (tmp_path / "staging/ready/dashcam/2300-06-01/Normal/late.MP4").stat().st_mtime_ns == late
    assert (tmp_path / "staging/ready/dashcam/1960-06-01/Normal/early.MP4").stat().st_mtime_ns == early
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card), "--json")
    assert '"files": 0' in r.stdout and '"known": 3' in r.stdout


def test_a_time_no_calendar_holds_is_refused_with_a_reason():
    c = footage.Candidate("Normal/x.MP4", 1, 10**30, False)
    assert "no calendar date" in footage.refusal(c)
    # a time in the name still dates the clip
    assert footage.refusal(footage.Candidate("Normal/2026_1125_233000_001F.MP4", 1, 10**30, False)) is None


def test_a_clip_replaced_by_a_fifo_after_the_scan_fails_alone_and_blocks_nothing(card, make_config, tmp_path):
    cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})))
    now = time.time()
    swapped = write_clip(card, "Normal/swapped.MP4", 1000, now)  # the newest: copied first
    write_clip(card, "Normal/other.MP4", 1000, now - 60)
    calls = []

    def should_stop():  # asked before each clip: the first time, between the scan and the copy
        if not calls:
            swapped.unlink()
            os.mkfifo(swapped)
        calls.append(1)
        return False

    out = {}
    worker = threading.Thread(
        target=lambda: out.update(r=ingest.ingest_source(cfg, str(card), should_stop=should_stop)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the ingest waits on a FIFO"
    result = out["r"]
    assert result.files == 1 and [f for f, _ in result.failed] == ["Normal/swapped.MP4"]
    assert "not a regular file" in result.failed[0][1]
    rows = {row["source_path"]: row for row in ledger_rows(tmp_path / "state")}
    assert rows["Normal/swapped.MP4"]["state"] == "failed" and rows["Normal/other.MP4"]["state"] == "staged"


# --- clip dates --------------------------------------------------------------------------------------


@pytest.fixture(params=["America/New_York", "Europe/Berlin"])
def pi_zone(request, monkeypatch):
    """The Pi's time zone (this process and the dashcamctl it starts)."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def wall(*clock) -> int:
    """The camera's wall clock as the card's mtime reads on a mount without a zone (tz=UTC)."""
    return calendar.timegm(clock + (0,) * (6 - len(clock))) * 10**9


def test_the_folder_date_is_the_cameras_in_any_zone_of_the_pi(pi_zone):
    c = footage.Candidate
    assert footage.staged_name("cam", c("Normal/CLIP1.MP4", 1, wall(2026, 11, 25, 23, 59, 30), False)) == \
        "cam/2026-11-25/Normal/CLIP1.MP4"
    assert footage.staged_name("cam", c("Normal/CLIP2.MP4", 1, wall(2026, 11, 26, 0, 0, 30), False)) == \
        "cam/2026-11-26/Normal/CLIP2.MP4"


def test_a_timestamp_in_the_name_wins_over_the_mtime(pi_zone):
    mtime = wall(2026, 11, 27, 3, 0, 0)  # copied or touched later
    assert footage.clip_date("Normal/Front/2026_1125_233000_001F.MP4", mtime) == datetime.date(2026, 11, 25)
    assert footage.clip_date("Event/NO20261125-235959-000123F.MP4", mtime) == datetime.date(2026, 11, 25)
    assert footage.clip_date("Normal/20261125_235959_EF.MP4", mtime) == datetime.date(2026, 11, 25)
    # digits that are no time, or no timestamp at all: the mtime as the camera's wall clock
    assert footage.clip_date("Normal/2026_1340_990000_001F.MP4", mtime) == datetime.date(2026, 11, 27)
    assert footage.clip_date("Normal/FILE0001.MP4", mtime) == datetime.date(2026, 11, 27)


def test_ingest_in_any_zone_files_clips_under_the_cameras_date_and_keeps_their_mtime(pi_zone, card, cfg_path, tmp_path,
                                                                                    dashcamctl):
    before, after = wall(2026, 11, 25, 23, 59, 30), wall(2026, 11, 26, 0, 0, 30)
    for rel, ns in (("Normal/CLIPA.MP4", before), ("Normal/CLIPB.MP4", after)):
        os.utime(write_clip(card, rel, 1000, 0), ns=(ns, ns))
    r = dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card))
    assert r.returncode == 0, r.stderr
    rows = {row["source_path"]: row for row in ledger_rows(tmp_path / "state")}
    assert rows["Normal/CLIPA.MP4"]["staged_path"] == "dashcam/2026-11-25/Normal/CLIPA.MP4"
    assert rows["Normal/CLIPB.MP4"]["staged_path"] == "dashcam/2026-11-26/Normal/CLIPB.MP4"
    ready = tmp_path / "staging/ready/dashcam"
    assert (ready / "2026-11-25/Normal/CLIPA.MP4").stat().st_mtime_ns == before
    assert (ready / "2026-11-26/Normal/CLIPB.MP4").stat().st_mtime_ns == after


def test_the_last_ingest_record_reads_back_what_a_run_wrote_and_hostile_json_as_defaults(tmp_path):
    with Ledger(str(tmp_path / "ledger.sqlite3")) as ledger:
        assert ingest.LastIngest.read(ledger) is None and ingest.LastIngest.facts(None) == {}
        run = ingest.LastIngest(wall=1.5, files=2, bytes=3, result="ok", source="/m", seconds=0.25)
        run.write(ledger)
        assert ingest.LastIngest.read(ledger) == run
        ledger.put_state("last_ingest", {"wall": float("inf"), "files": True, "bytes": "3", "result": 5, "failed": 2})
        assert ingest.LastIngest.read(ledger) == ingest.LastIngest(failed=2)
        ledger.put_state("last_ingest", [1, 2])
        assert ingest.LastIngest.read(ledger) is None
