"""Upload against a real sshd on 127.0.0.1 whose only key is restricted with rrsync -wo, as the README says.

Every scenario runs `dashcamctl upload` as a real subprocess and checks the server's files,
the ledger and staging afterwards.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sshd import SshServer, free_port, keygen  # noqa: E402

from dashcam_helpers import config, ssh, upload  # noqa: E402
from dashcam_helpers.errors import TryLater  # noqa: E402
from dashcam_helpers.ledger import Ledger  # noqa: E402

CAMERA = "frontcam"
DAY = 86400
T0 = 1_763_000_000  # 2025-11-13, an afternoon in every time zone that matters here


@pytest.fixture
def server(tmp_path, request):
    """A real sshd: host key, client key and authorized_keys (rrsync -wo <tmp>/server) all in tmp_path.
    Parametrized indirectly, the rrsync options (e.g. "-wo -no-lock", as `dashcamctl keygen` prints)."""
    with SshServer(tmp_path / "sshd", tmp_path / "server", rrsync_args=getattr(request, "param", "-wo")) as srv:
        yield srv


@pytest.fixture
def upload_config(make_config, server, tmp_path):
    """A config pointing at the fixture's server, host key pinned, with optional overrides."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line() + "\n")

    def make(overrides=None):
        base = {
            "camera": {"name": CAMERA},
            "upload": {
                "host": "127.0.0.1",
                "port": server.port,
                "user": server.user,
                "dest_path": "footage",
                "ssh_key": str(server.client_key),
                "known_hosts": str(known_hosts),
                "connect_timeout": 5,
                "io_timeout": 30,
            },
            "poll": {"upload_retries": 0},
        }
        from conftest import deep_merge

        return make_config(deep_merge(base, overrides or {}))

    return make


def stage(cfg_path: Path, name: str, size: int, mtime: float, data: bytes = None) -> Path:
    """A clip as the ingest leaves it: bytes durable in ready/<camera>/<date>/, a 'staged' ledger row."""
    cfg = config.load(str(cfg_path))
    data = os.urandom(size) if data is None else data
    day = datetime.datetime.fromtimestamp(mtime).strftime("%Y-%m-%d")
    rel = f"{CAMERA}/{day}/{name}"
    path = Path(cfg.paths.ready) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.record_staged(
            CAMERA,
            f"Normal/{name}",
            len(data),
            int(mtime * 1e9),
            event=False,
            sha256=hashlib.sha256(data).hexdigest(),
            staged_path=rel,
        )
    return path


def on_server(server: SshServer, name: str, mtime: float) -> Path:
    return server.restrict_dir / "footage" / upload.remote_path(CAMERA, name, int(mtime * 1e9))


def refused_by_rrsync(argv):
    """What rsync reports when rrsync refuses a session for its one-session lock (a key without -no-lock)."""
    return upload.runner.CommandFailed(
        argv, 12, "", "/usr/bin/rrsync error: Another instance of rrsync is already accessing this directory.\n"
        "rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n", "rsync ...")


def states(cfg):
    """The set of ledger states of the staged clips."""
    with Ledger(cfg.paths.ledger) as ledger:
        return {c.state for c in ledger.files()}


def run_bounded(cfg, seconds: float = 180, **kw):
    """Uploader(cfg, ledger, **kw).run() in a thread of its own (with its own ledger connection):
    a deadlock fails the test instead of hanging the suite. Returns (summary, uploader)."""
    out = {}

    def target():
        try:
            with Ledger(cfg.paths.ledger) as ledger:
                out["uploader"] = upload.Uploader(cfg, ledger, **kw)
                out["summary"] = out["uploader"].run()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the upload did not end within {seconds} s (threads: {threading.enumerate()})"
    if "error" in out:
        raise out["error"]
    return out["summary"], out["uploader"]


def clips(cfg_path: Path):
    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        return {c.source_path: c for c in ledger.files()}, ledger.get_state("last_upload")


# --- pure functions ----------------------------------------------------------------------------


def test_remote_path_is_camera_year_month_day_of_the_clips_mtime():
    utc = datetime.timezone.utc
    ns = int(datetime.datetime(2026, 3, 7, 23, 59, 59, tzinfo=utc).timestamp()) * 10**9 + 999_999_999
    assert upload.remote_path("cam", "frontcam/2026-03-07/FILE0001.MP4", ns, utc) == "cam/2026/03/07/FILE0001.MP4"
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    assert upload.remote_path("cam", "FILE0001.MP4", ns, plus2) == "cam/2026/03/08/FILE0001.MP4"


def test_alternate_name_keeps_the_extension_and_adds_the_content_hash():
    assert upload.alternate_name("cam/2026/03/07/a.mp4", "0123456789abcdef") == "cam/2026/03/07/a.01234567.mp4"
    assert upload.alternate_name("cam/x/noext", "ffeeddccbb") == "cam/x/noext.ffeeddcc"


def test_plan_is_oldest_first_and_gives_a_reused_name_a_distinct_one(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite3"))
    utc = datetime.timezone.utc
    newer = ledger.record_staged("c", "Normal/A.MP4", 1, T0 * 10**9 + 5, event=False, sha256="aa" * 32, staged_path="c/d/A.MP4")
    older = ledger.record_staged("c", "Event/B.MP4", 1, (T0 - 3 * DAY) * 10**9, event=True, sha256="bb" * 32, staged_path="c/d/B.MP4")
    reused = ledger.record_staged("c", "Normal/A.MP4", 2, T0 * 10**9 + 9, event=False, sha256="cc" * 32, staged_path="c/d/A-1.MP4")
    sent = ledger.record_staged("c", "Normal/C.MP4", 1, T0 * 10**9, event=False, sha256="dd" * 32, staged_path="c/d/C.MP4")
    ledger.advance(sent, "uploaded", remote_path="c/2025/11/13/C.dd000000.MP4")
    items = upload.plan(ledger.files(), "/ready", utc)
    assert [i.clip.id for i in items] == [older, sent, newer, reused]
    names = {i.clip.id: i.remote for i in items}
    assert names[older] == "c/2025/11/10/B.MP4"
    assert names[sent] == "c/2025/11/13/C.dd000000.MP4"  # sent before under this name: keeps it
    assert names[newer] == "c/2025/11/13/A.MP4"
    assert names[reused] == "c/2025/11/13/A-1.MP4"
    assert items[0].local == "/ready/c/d/B.MP4"
    same_name = ledger.record_staged("c", "Event/A.MP4", 3, T0 * 10**9 + 7, event=True, sha256="ee" * 32, staged_path="c/e/A.MP4")
    names = {i.clip.id: i.remote for i in upload.plan(ledger.files(), "/ready", utc)}
    assert names[same_name] == "c/2025/11/13/A.eeeeeeee.MP4"
    ledger.close()


def test_rounds_split_by_bytes_and_count_keeping_order(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite3"))
    for n in range(7):
        ledger.record_staged("c", f"{n}.mp4", 100, T0 * 10**9 + n, event=False, sha256=f"{n:064d}", staged_path=f"c/{n}.mp4")
    items = upload.plan(ledger.files(), "/r")

    def rounds(max_bytes, max_files):
        out, rest = [], items
        while rest:
            batch, rest = upload.take_round(rest, max_bytes, max_files)
            out.append(batch)
        return out

    assert [[i.clip.source_path for i in r] for r in rounds(max_bytes=250, max_files=10)] == [
        ["0.mp4", "1.mp4"], ["2.mp4", "3.mp4"], ["4.mp4", "5.mp4"], ["6.mp4"]]
    assert [len(r) for r in rounds(max_bytes=10**9, max_files=3)] == [3, 3, 1]
    assert upload.take_round(items[:1], 1) == (items[:1], [])      # at least one item, however large
    ledger.close()


def test_a_round_holds_about_a_minute_of_sending_at_the_last_rounds_rate():
    MiB = 1024 * 1024
    assert upload.next_round_bytes(30 * MiB, 10.0, 0) == 180 * MiB        # 3 MiB/s: WiFi
    assert upload.next_round_bytes(1 * MiB, 60.0, 0) == upload.ROUND_MIN_BYTES
    assert upload.next_round_bytes(2000 * MiB, 10.0, 0) == upload.ROUND_MAX_BYTES   # a fast LAN
    assert upload.next_round_bytes(0, 3.0, 77) == 77                       # nothing sent: no rate
    assert upload.ROUND_MIN_BYTES <= upload.ROUND_FIRST_BYTES <= upload.ROUND_MAX_BYTES


def test_the_first_round_is_small_and_the_next_sized_by_its_rate(upload_config, server, monkeypatch):
    """The first round holds ROUND_FIRST_BYTES (here less than a clip: one clip); loopback then
    measures a rate far above what the other clips need for a minute, so they go in one round."""
    cfg_path = upload_config()
    for n in range(6):
        stage(cfg_path, f"CLIP{n:04d}.MP4", 300_000, T0 + n * 60)
    monkeypatch.setattr(upload, "ROUND_FIRST_BYTES", 100_000)
    sends = []
    send = upload.Uploader.send

    def counted_send(self, items, *, resume):
        sends.append(len(items))
        return send(self, items, resume=resume)

    monkeypatch.setattr(upload.Uploader, "send", counted_send)
    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg)
    assert summary.files == 6 and sends == [1, 5]


def test_a_checksum_pass_is_split_into_parts_of_about_equal_bytes(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite3"))
    for n, size in enumerate([500, 100, 100, 100, 100, 100, 10]):
        ledger.record_staged("c", f"{n}.mp4", size, T0 * 10**9 + n, event=False, sha256=f"{n:064d}", staged_path=f"c/{n}.mp4")
    items = upload.plan(ledger.files(), "/r")

    def cut(parts, of=items):
        return [[int(i.clip.source_path[0]) for i in part] for part in upload.split_by_bytes(of, parts)]

    assert cut(1) == [[0, 1, 2, 3, 4, 5, 6]]
    assert cut(2) == [[0], [1, 2, 3, 4, 5, 6]]           # 500 | 510: order kept, halves by bytes
    assert cut(3) == [[0], [1, 2], [3, 4, 5, 6]]
    assert cut(2, items[1:3]) == [[1], [2]]
    assert cut(4, items[:2]) == [[0], [1]]                  # never an empty part
    assert cut(7) == [[n] for n in range(7)]
    assert cut(2, items[:1]) == [[0]]
    ledger.close()


def test_itemized_output_and_stats_are_parsed():
    out = (
        "cd+++++++++ cam/2026/\n<f+++++++++ cam/2026/03/07/a b.mp4\n<fc.T...... cam/2026/03/07/c.mp4\n"
        ".d..t...... cam/\n\nNumber of files: 3\nLiteral data: 1,234,567 bytes\nMatched data: 5,505,024 bytes\n"
        "Total bytes sent: 1,240,001\n"
    )
    assert upload.parse_itemized(out) == {"cam/2026/03/07/a b.mp4": "<f+++++++++", "cam/2026/03/07/c.mp4": "<fc.T......"}
    assert upload.parse_stats(out) == {"sent": 1240001, "literal": 1234567, "matched": 5505024}


def test_ssh_options_pin_the_host_key_and_never_prompt(make_config):
    cfg = config.load(str(make_config({"upload": {"port": 2222, "known_hosts": "/etc/x/kh", "ssh_key": "/k/id"}})))
    argv = ssh.ssh_argv(cfg)
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    for want in ("BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/etc/x/kh",
                 "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes", "IdentityFile=/k/id", "ConnectTimeout=10"):
        assert want in opts
    assert argv[argv.index("-p") + 1] == "2222"
    assert ssh.known_hosts_name("srv", 22) == "srv" and ssh.known_hosts_name("srv", 2222) == "[srv]:2222"


def test_transient_and_fatal_failures_are_told_apart(make_config):
    cfg = config.load(str(make_config()))
    assert ssh.is_transient(12, "") and ssh.is_transient(30, "") and ssh.is_transient(35, "") and ssh.is_transient(10, "")
    assert ssh.is_transient(255, "ssh: connect to host 10.0.0.1 port 22: Connection refused")
    assert not ssh.is_transient(255, "Host key verification failed.")
    assert not ssh.is_transient(23, "some files could not be transferred")
    assert isinstance(ssh.classify(cfg, 255, "Permission denied (publickey)."), ssh.AuthProblem)
    assert "trust-host" in str(ssh.classify(cfg, 255, "No ED25519 host key is known for x\nHost key verification failed."))
    assert ssh.classify(cfg, 12, "rsync: connection unexpectedly closed") is None


# --- against the real server -------------------------------------------------------------------


def test_a_backlog_uploads_byte_identical_and_leaves_staging(upload_config, server, dashcamctl):
    cfg_path = upload_config()
    staged = {}
    for n in range(6):
        mtime = T0 - (n % 3) * DAY + n
        staged[f"CLIP{n:04d}.MP4"] = (stage(cfg_path, f"CLIP{n:04d}.MP4", 200_000 + n * 1000, mtime), mtime)
    originals = {name: (p.read_bytes(), m) for name, (p, m) in staged.items()}

    res = dashcamctl("--config", str(cfg_path), "upload")

    assert res.returncode == 0, res.stderr
    for name, (data, mtime) in originals.items():
        remote = on_server(server, name, mtime)
        assert remote.read_bytes() == data
        assert remote.stat().st_mtime == mtime
    rows, last = clips(cfg_path)
    assert {c.state for c in rows.values()} == {"pruned"}
    assert all(c.verified_at and c.remote_path for c in rows.values())
    assert not any(p.exists() for p, _ in staged.values())
    assert last["result"] == "ok" and last["files"] == 6 and last["bytes"] == sum(len(d) for d, _ in originals.values())
    # a second run finds nothing to do
    again = dashcamctl("--config", str(cfg_path), "upload")
    assert again.returncode == 0 and "nothing to upload" in again.stderr


@pytest.mark.parametrize("server", ["-wo -no-lock"], indirect=True)
def test_rounds_are_verified_while_the_next_one_is_sent(upload_config, server, monkeypatch):
    """Five rounds of two clips through the key `dashcamctl keygen` describes: round k's checksum
    pass overlaps round k+1's send, and every clip still ends verified, byte-identical on the
    server, and gone from staging."""
    cfg_path = upload_config()
    originals = {}
    for n in range(10):
        name, mtime = f"CLIP{n:04d}.MP4", T0 + n * 60
        originals[name] = (stage(cfg_path, name, 300_000 + n, mtime).read_bytes(), mtime)
    monkeypatch.setattr(upload, "ROUND_FILES", 2)
    overlapped = []
    send = upload.Uploader.send

    def watched_send(self, items, *, resume):
        overlapped.append(any(t.name == "upload-verify" and t.is_alive() for t in threading.enumerate()))
        return send(self, items, resume=resume)

    monkeypatch.setattr(upload.Uploader, "send", watched_send)
    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        summary = upload.Uploader(cfg, ledger).run()
        assert {c.state for c in ledger.files()} == {"pruned"} and summary.files == 10
        assert ledger.get_state(upload.IN_FLIGHT_KEY) == []
    assert overlapped == [False, True, True, True, True]    # from the second round on, a verification runs
    for name, (data, mtime) in originals.items():
        assert on_server(server, name, mtime).read_bytes() == data


@pytest.mark.parametrize("server", ["-wo -no-lock"], indirect=True)
def test_a_rounds_checksum_pass_runs_as_two_sessions_at_once(upload_config, server, monkeypatch):
    """One --checksum rsync hashes the Pi's files first and the server's after: two sessions
    over halves of the round keep both ends busy. Both end with every clip verified."""
    cfg_path = upload_config()
    originals = {}
    for n in range(4):
        name, mtime = f"CLIP{n:04d}.MP4", T0 + n * 60
        originals[name] = (stage(cfg_path, name, 400_000 + n, mtime).read_bytes(), mtime)
    real_run = upload.runner.run
    passes = []

    def run(argv, **kw):
        if "--checksum" not in argv:
            return real_run(argv, **kw)
        start = time.monotonic()
        try:
            return real_run(argv, **kw)
        finally:
            passes.append((start, time.monotonic()))

    monkeypatch.setattr(upload.runner, "run", run)
    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        summary = upload.Uploader(cfg, ledger).run()
        assert {c.state for c in ledger.files()} == {"pruned"} and summary.files == 4
    assert len(passes) == 2
    assert max(s for s, _ in passes) < min(e for _, e in passes), "the two parts did not overlap"
    for name, (data, mtime) in originals.items():
        assert on_server(server, name, mtime).read_bytes() == data


def test_a_part_of_the_checksum_pass_refused_by_the_lock_runs_again_after_the_other(upload_config, server,
                                                                                      monkeypatch, caplog):
    """Through a key without -no-lock the second part's session is refused ("Another instance of
    rrsync"); it runs when the first is done, and the upload keeps to one session from then on."""
    cfg_path = upload_config()
    for n in range(4):
        stage(cfg_path, f"CLIP{n:04d}.MP4", 100_000, T0 + n * 60)
    caplog.set_level(logging.INFO, logger="dashcam.upload")
    real_run = upload.runner.run
    checksum_passes = []

    def run(argv, **kw):
        if "--checksum" in argv:
            checksum_passes.append(threading.current_thread().name)
            if threading.current_thread().name == "upload-verify-part" and len(checksum_passes) <= 2:
                raise refused_by_rrsync(argv)
        return real_run(argv, **kw)

    monkeypatch.setattr(upload.runner, "run", run)
    cfg = config.load(str(cfg_path))
    summary, uploader = run_bounded(cfg)
    assert states(cfg) == {"pruned"} and summary.files == 4
    assert uploader.single_session and "one session at a time" in caplog.text
    assert len(checksum_passes) == 3        # both parts, then the refused one again


def test_a_key_without_no_lock_gets_one_session_at_a_time_and_everything_verified(upload_config, server,
                                                                                 monkeypatch, caplog):
    """rrsync without -no-lock refuses a session of the key while another runs ("Another instance
    of rrsync"). Whether a round's verification and the next send collide is a race, so the
    refusal is made certain here: the second send is refused once, as rrsync would. The upload
    waits for its other session, retries without spending a retry, and from then on verifies
    each round before it sends the next."""
    cfg_path = upload_config()          # poll.upload_retries 0: a failure counted as one would end the run
    originals = {}
    for n in range(8):
        name, mtime = f"CLIP{n:04d}.MP4", T0 + n * 60
        originals[name] = (stage(cfg_path, name, 200_000 + n, mtime).read_bytes(), mtime)
    monkeypatch.setattr(upload, "ROUND_FILES", 2)
    caplog.set_level(logging.INFO, logger="dashcam.upload")
    real_run = upload.runner.run
    sends, overlapped = [], []

    def run(argv, **kw):
        if "--stats" in argv:                                  # a send
            sends.append(argv)
            overlapped.append(any(t.name == "upload-verify" and t.is_alive() for t in threading.enumerate()))
            if len(sends) == 2:
                raise refused_by_rrsync(argv)
        return real_run(argv, **kw)

    monkeypatch.setattr(upload.runner, "run", run)
    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg)
    assert states(cfg) == {"pruned"} and summary.files == 8
    assert "one session at a time" in caplog.text
    # round 2 was refused once and sent again; rounds 3 and 4 started with no verification running
    assert len(sends) == 5 and overlapped[3:] == [False, False]
    for name, (data, mtime) in originals.items():
        assert on_server(server, name, mtime).read_bytes() == data


def test_through_a_key_without_no_lock_many_rounds_end_verified_whoever_is_refused(upload_config, server,
                                                                                    monkeypatch, caplog):
    """The real race, many times: a round's two checksum sessions and the next round's send
    start together through a key without -no-lock; rrsync refuses all but one of them, in any
    order. Whoever was refused waits for our session that runs (never for one that waits
    itself), and every clip ends verified."""
    cfg_path = upload_config()
    originals = {}
    for n in range(12):
        name, mtime = f"CLIP{n:04d}.MP4", T0 + n * 60
        originals[name] = (stage(cfg_path, name, 150_000 + n, mtime).read_bytes(), mtime)
    cfg = config.load(str(cfg_path))
    monkeypatch.setattr(upload, "ROUND_FILES", 3)
    caplog.set_level(logging.INFO, logger="dashcam.upload")
    summary, uploader = run_bounded(cfg)
    assert states(cfg) == {"pruned"} and summary.files == 12
    assert uploader.single_session and "one session at a time" in caplog.text   # the race happened
    for name, (data, mtime) in originals.items():
        assert on_server(server, name, mtime).read_bytes() == data


def test_a_lock_held_by_no_session_of_ours_is_waited_out_without_spending_a_retry(upload_config, server,
                                                                                  monkeypatch, caplog):
    """After a cut, the server's side of the old session holds rrsync's lock until its --timeout:
    the next run's first session is refused while none of ours runs. It waits and tries again
    (poll.upload_retries is 0 here: a retry spent would end the run)."""
    cfg_path = upload_config()
    stage(cfg_path, "CLIP0000.MP4", 100_000, T0)
    caplog.set_level(logging.INFO, logger="dashcam.upload")
    real_run = upload.runner.run
    refusals = []

    def run(argv, **kw):
        if len(refusals) < 2:
            refusals.append(argv)
            raise refused_by_rrsync(argv)
        return real_run(argv, **kw)

    monkeypatch.setattr(upload.runner, "run", run)
    slept = []
    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, sleep=slept.append)
    with Ledger(cfg.paths.ledger) as ledger:
        assert summary.files == 1 and {c.state for c in ledger.files()} == {"pruned"}
    assert len(slept) == 2 and all(0 < d <= upload.LOCK_RETRY_MAX for d in slept)
    assert "busy with a session that is not ours" in caplog.text


def test_a_lock_that_stays_taken_ends_the_run_as_busy_not_failed(upload_config, server, monkeypatch):
    cfg_path = upload_config()
    stage(cfg_path, "CLIP0000.MP4", 100_000, T0)

    def run(argv, **kw):
        raise refused_by_rrsync(argv)

    monkeypatch.setattr(upload.runner, "run", run)
    slept = []
    cfg = config.load(str(cfg_path))
    with pytest.raises(upload.ServerBusy) as busy:
        upload.upload(cfg, sleep=slept.append)
    assert isinstance(busy.value, TryLater) and "not ours" in str(busy.value)
    with Ledger(cfg.paths.ledger) as ledger:
        assert {c.state for c in ledger.files()} == {"staged"}
        # "busy", not "failed": the policy tries again at its next tick instead of pausing
        assert ledger.get_state("last_upload")["result"] == "busy"
        # refused sessions wrote nothing: no clip is held for them
        assert ledger.get_state(upload.HOLD_KEY) is None
    # waited about io_timeout + the grace, then gave up
    assert cfg.upload.io_timeout + upload.LOCK_GRACE <= sum(max(d, 1.0) for d in slept) <= \
        cfg.upload.io_timeout + upload.LOCK_GRACE + upload.LOCK_RETRY_MAX


def test_when_a_later_round_fails_the_rounds_before_it_are_still_recorded(upload_config, server, monkeypatch):
    cfg_path = upload_config()
    paths = [stage(cfg_path, f"CLIP{n:04d}.MP4", 100_000, T0 + n * 60) for n in range(4)]
    monkeypatch.setattr(upload, "ROUND_FILES", 2)
    send = upload.Uploader.send
    calls = []

    def failing_second_send(self, items, *, resume):
        calls.append(len(items))
        if len(calls) == 2:
            raise upload.UploadFailed("sending failed: the link went down", transient=True)
        return send(self, items, resume=resume)

    monkeypatch.setattr(upload.Uploader, "send", failing_second_send)
    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        with pytest.raises(upload.UploadFailed):
            upload.Uploader(cfg, ledger).run()
        states = {c.source_path: c.state for c in ledger.files()}
    # round 1 was proven on the server while round 2 failed: pruned; round 2 untouched, staged
    assert states == {"Normal/CLIP0000.MP4": "pruned", "Normal/CLIP0001.MP4": "pruned",
                      "Normal/CLIP0002.MP4": "staged", "Normal/CLIP0003.MP4": "staged"}
    assert [p.exists() for p in paths] == [False, False, True, True]


def test_with_keep_days_verified_clips_stay_until_they_are_old_enough(upload_config, server, tmp_path):
    cfg_path = upload_config({"upload": {"keep_days": 2}})
    path = stage(cfg_path, "KEEP.MP4", 50_000, T0)
    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        upload.Uploader(cfg, ledger).run()
        (clip,) = ledger.files()
        assert clip.state == "verified" and path.exists()
        assert upload.Uploader(cfg, ledger, clock=lambda: clip.verified_at + DAY).prune_expired() == 0
        assert path.exists()
        assert upload.Uploader(cfg, ledger, clock=lambda: clip.verified_at + 2 * DAY).prune_expired() == 1
        assert not path.exists() and ledger.get(clip.id).state == "pruned"


def expire_hold(cfg):
    """As if upload.cut_session_seconds had passed since the cut."""
    with Ledger(cfg.paths.ledger) as ledger:
        hold = ledger.get_state(upload.HOLD_KEY)
        assert hold and hold["names"], "no names were held"
        ended = time.time() - 1
        ledger.put_state(upload.HOLD_KEY, {"until": ended, "names": dict.fromkeys(hold["names"], ended)})


def test_a_cut_connection_deletes_nothing_and_the_rerun_resumes_without_resending(upload_config, server, dashcamctl):
    cfg_path = upload_config({"upload": {"bwlimit": 4000}})
    size = 40_000_000
    small = stage(cfg_path, "A_SMALL.MP4", 100_000, T0 - 60)
    big = stage(cfg_path, "B_BIG.MP4", size, T0)
    data = big.read_bytes()
    remote_dir = on_server(server, "B_BIG.MP4", T0).parent

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashcam_helpers", "--config", str(cfg_path), "upload"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    arrived = 0
    while time.monotonic() < deadline and arrived < 8_000_000:
        temps = [p for p in remote_dir.glob(".B_BIG.MP4.*")] if remote_dir.exists() else []
        arrived = max([p.stat().st_size for p in temps if p.exists()] or [0])
        time.sleep(0.05)
    assert arrived >= 8_000_000, "the transfer never got going"
    assert server.cut_sessions() >= 1
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    assert big.exists() and big.read_bytes() == data and small.exists()
    rows, last = clips(cfg_path)
    assert rows["Normal/B_BIG.MP4"].state == "staged"
    assert last["result"] == "failed"
    partial = on_server(server, "B_BIG.MP4", T0)
    kept = partial.stat().st_size
    assert 0 < kept < size and partial.read_bytes() == data[:kept]  # our own partial file, kept by --partial

    # the cut session's names are held: its server side could still be writing them
    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        hold = ledger.get_state(upload.HOLD_KEY)
    assert str(partial.relative_to(server.restrict_dir / "footage")) in hold["names"]
    assert hold["until"] >= time.time() + cfg.upload.cut_session_seconds - 120

    res = dashcamctl("--config", str(cfg_path), "upload", timeout=120)

    assert res.returncode == 0, res.stderr
    assert "wait until" in res.stderr and partial.stat().st_size == kept
    rows, last = clips(cfg_path)
    assert rows["Normal/B_BIG.MP4"].state == "staged" and big.exists()
    # only held clips were left: the policy waits for the hold to end instead of restarting
    assert last["result"] == "held" and last["held_until"] > time.time()

    expire_hold(cfg)
    res = dashcamctl("--config", str(cfg_path), "upload", timeout=120)

    assert res.returncode == 0, res.stderr
    assert partial.read_bytes() == data
    rows, last = clips(cfg_path)
    assert {c.state for c in rows.values()} == {"pruned"} and not big.exists()
    # what had arrived was not sent again: rsync matched it from the partial file on the server
    assert last["matched_bytes"] >= kept - 1_000_000
    assert last["literal_bytes"] <= size - kept + 1_000_000


def test_what_a_run_that_died_was_sending_waits_for_its_server_side_to_end(upload_config, server, dashcamctl):
    cfg_path = upload_config()
    died = stage(cfg_path, "DIED.MP4", 100_000, T0)
    data = died.read_bytes()
    other = stage(cfg_path, "OTHER.MP4", 100_000, T0 + 60)
    cfg = config.load(str(cfg_path))
    name = str(on_server(server, "DIED.MP4", T0).relative_to(server.restrict_dir / "footage"))
    with Ledger(cfg.paths.ledger) as ledger:  # what a run leaves when it is killed mid-send
        ledger.put_state(upload.RUN_KEY, {"wall": time.time() - 5, "sending": [name]})

    res = dashcamctl("--config", str(cfg_path), "upload", timeout=120)

    assert res.returncode == 0, res.stderr
    assert "the last upload was cut off" in res.stderr and "1 clip(s) wait until" in res.stderr
    assert not on_server(server, "DIED.MP4", T0).exists() and died.exists()
    assert on_server(server, "OTHER.MP4", T0).exists() and not other.exists()
    with Ledger(cfg.paths.ledger) as ledger:
        assert ledger.get_state(upload.RUN_KEY) is None  # this run ended: no marker left
        assert list(ledger.get_state(upload.HOLD_KEY)["names"]) == [name]

    expire_hold(cfg)
    res = dashcamctl("--config", str(cfg_path), "upload", timeout=120)

    assert res.returncode == 0, res.stderr
    assert on_server(server, "DIED.MP4", T0).read_bytes() == data and not died.exists()
    rows, _ = clips(cfg_path)
    assert {c.state for c in rows.values()} == {"pruned"}


def test_a_checksum_pass_that_ran_inside_a_hold_proves_nothing_even_when_recorded_after_it(
        upload_config, server, monkeypatch):
    cfg_path = upload_config({"upload": {"cut_session_seconds": 100}})
    clip = stage(cfg_path, "LATE.MP4", 100_000, T0)
    now = [time.time()]
    send, differing = upload.Uploader.send, upload.Uploader.differing_on_server

    def send_cut_then_retried(self, items, *, resume):
        send(self, items, resume=resume)
        self.hold([i.remote for i in items], "sending was cut off")  # as a retry after a cut leaves it

    def long_pass(self, items):
        out = differing(self, items)  # identical: the retry completed the file
        now[0] += 150  # the hold ends while the pass (or the next round's send) is on
        return out

    monkeypatch.setattr(upload.Uploader, "send", send_cut_then_retried)
    monkeypatch.setattr(upload.Uploader, "differing_on_server", long_pass)
    summary, _ = run_bounded(config.load(str(cfg_path)), clock=lambda: now[0])

    # the cut session could have ended, and overwritten the file, after that pass had read it
    rows, _ = clips(cfg_path)
    assert rows["Normal/LATE.MP4"].state == "uploaded" and clip.exists()
    assert summary.files == 0 and summary.held == 1


def test_each_held_name_has_its_own_end_so_a_link_that_keeps_dropping_releases_the_old_ones(upload_config, tmp_path):
    cfg = config.load(str(upload_config({"upload": {"cut_session_seconds": 100}})))
    now = [1_000_000.0]
    with Ledger(cfg.paths.ledger) as ledger:
        uploader = upload.Uploader(cfg, ledger, clock=lambda: now[0])
        uploader.hold(["a/EARLY.MP4"], "sending was cut off")
        now[0] += 60
        uploader.hold(["a/LATER.MP4"], "sending was cut off")  # another cut, 60 s on
        assert uploader.held() == ({"a/EARLY.MP4", "a/LATER.MP4"}, 1_000_100.0)
        now[0] += 50  # the first cut's session has had its 100 s, the second's not yet
        assert uploader.held() == ({"a/LATER.MP4"}, 1_000_160.0)
        now[0] += 60
        assert uploader.held() == (set(), 0.0)
        # a hold is never further off than cut_session_seconds, whatever the clock said before
        uploader.hold(["a/X.MP4"], "sending was cut off")
        now[0] -= 10_000  # the wall clock set back
        assert uploader.held() == ({"a/X.MP4"}, now[0] + 100)


def test_transient_failures_are_retried_within_one_run(upload_config, server, dashcamctl, tmp_path):
    cfg_path = upload_config({"upload": {"bwlimit": 4000}, "poll": {"upload_retries": 3}})
    big = stage(cfg_path, "RETRY.MP4", 12_000_000, T0)
    data = big.read_bytes()
    remote_dir = on_server(server, "RETRY.MP4", T0).parent
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashcam_helpers", "--config", str(cfg_path), "upload"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if remote_dir.exists() and any(p.stat().st_size > 2_000_000 for p in remote_dir.glob(".RETRY.MP4.*") if p.exists()):
            break
        time.sleep(0.05)
    server.cut_sessions()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "retry 1 of 3" in err
    assert on_server(server, "RETRY.MP4", T0).read_bytes() == data
    # identical on the server, but the cut session could still put its partial copy there:
    # the clip stays in staging, unverified, until the hold ends and a later run checks again
    rows, last = clips(cfg_path)
    assert rows["Normal/RETRY.MP4"].state == "uploaded" and big.exists()
    assert "checked again after" in err

    expire_hold(config.load(str(cfg_path)))
    res = dashcamctl("--config", str(cfg_path), "upload", timeout=120)

    assert res.returncode == 0, res.stderr
    rows, last = clips(cfg_path)
    assert rows["Normal/RETRY.MP4"].state == "pruned" and not big.exists()
    assert last["literal_bytes"] == 0  # nothing was sent again


def test_an_unknown_host_key_is_refused_with_what_to_do(upload_config, server, dashcamctl, tmp_path):
    cfg_path = upload_config()
    (tmp_path / "known_hosts").write_text("")
    clip = stage(cfg_path, "K.MP4", 10_000, T0)

    res = dashcamctl("--config", str(cfg_path), "upload")

    assert res.returncode == 1
    assert "not pinned" in res.stderr and "dashcamctl trust-host" in res.stderr
    assert clip.exists()
    rows, last = clips(cfg_path)
    assert rows["Normal/K.MP4"].state == "staged" and last["result"] == "failed"
    assert not (server.restrict_dir / "footage").exists()


def test_a_changed_host_key_is_refused_and_nothing_is_deleted(upload_config, server, dashcamctl, tmp_path):
    cfg_path = upload_config()
    impostor = keygen(tmp_path / "other_host_key")
    keytype, key = impostor.split()[:2]
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{server.port} {keytype} {key}\n")
    clip = stage(cfg_path, "K.MP4", 10_000, T0)

    res = dashcamctl("--config", str(cfg_path), "upload")

    assert res.returncode == 1
    assert "differs from the one pinned" in res.stderr and "trust-host" in res.stderr
    assert clip.exists() and clips(cfg_path)[0]["Normal/K.MP4"].state == "staged"


def test_a_key_the_server_does_not_accept_says_which_line_to_add(upload_config, server, dashcamctl, tmp_path):
    stranger = tmp_path / "stranger"
    keygen(stranger)
    cfg_path = upload_config({"upload": {"ssh_key": str(stranger)}})
    clip = stage(cfg_path, "K.MP4", 10_000, T0)

    res = dashcamctl("--config", str(cfg_path), "upload")

    assert res.returncode == 1
    assert "refused the key" in res.stderr and 'command="/usr/bin/rrsync -wo' in res.stderr
    assert clip.exists()


def test_a_name_taken_on_the_server_by_other_content_is_never_overwritten(upload_config, server, dashcamctl):
    cfg_path = upload_config()
    ours = stage(cfg_path, "SAME.MP4", 30_000, T0)
    our_data = ours.read_bytes()
    theirs = on_server(server, "SAME.MP4", T0)
    theirs.parent.mkdir(parents=True)
    their_data = os.urandom(30_000)  # same name, size and mtime: only the checksum tells them apart
    theirs.write_bytes(their_data)
    os.utime(theirs, (T0, T0))

    res = dashcamctl("--config", str(cfg_path), "upload")

    assert res.returncode == 0, res.stderr
    assert theirs.read_bytes() == their_data
    beside = theirs.with_name(f"SAME.{hashlib.sha256(our_data).hexdigest()[:8]}.MP4")
    assert beside.read_bytes() == our_data
    assert "already has" in res.stderr and beside.name in res.stderr
    rows, last = clips(cfg_path)
    clip = rows["Normal/SAME.MP4"]
    assert clip.state == "pruned" and clip.remote_path.endswith(beside.name)
    assert last["collisions"] == [clip.remote_path.replace(beside.name, "SAME.MP4")]


def test_an_identical_file_already_on_the_server_counts_as_verified(upload_config, server, dashcamctl):
    cfg_path = upload_config()
    ours = stage(cfg_path, "DUP.MP4", 30_000, T0)
    there = on_server(server, "DUP.MP4", T0)
    there.parent.mkdir(parents=True)
    there.write_bytes(ours.read_bytes())

    res = dashcamctl("--config", str(cfg_path), "upload")

    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in there.parent.iterdir()) == ["DUP.MP4"]
    assert clips(cfg_path)[0]["Normal/DUP.MP4"].state == "pruned"


def test_an_unreachable_server_exits_75_quickly_and_keeps_everything(make_config, dashcamctl):
    cfg_path = make_config({"camera": {"name": CAMERA}, "upload": {"port": free_port()}})
    clip = stage(cfg_path, "U.MP4", 10_000, T0)

    started = time.monotonic()
    res = dashcamctl("--config", str(cfg_path), "upload")

    assert res.returncode == 75, res.stderr
    assert time.monotonic() - started < 5
    assert "not reachable" in res.stderr
    rows, last = clips(cfg_path)
    assert clip.exists() and rows["Normal/U.MP4"].state == "staged"
    assert last["result"] == "unreachable" and last["files"] == 0


def test_an_empty_backlog_exits_0_without_contacting_the_server(make_config, dashcamctl):
    cfg_path = make_config({"upload": {"port": free_port()}})
    res = dashcamctl("--config", str(cfg_path), "upload")
    assert res.returncode == 0 and "nothing to upload" in res.stderr


def test_two_uploads_never_run_at_once(upload_config, server, dashcamctl):
    cfg_path = upload_config()
    clip = stage(cfg_path, "L.MP4", 10_000, T0)
    cfg = config.load(str(cfg_path))
    with upload.UploadLock(cfg.paths.state_dir):
        res = dashcamctl("--config", str(cfg_path), "upload")
    assert res.returncode == 75 and "another dashcamctl upload is running" in res.stderr
    assert clip.exists()


def test_dry_run_changes_nothing(upload_config, server, dashcamctl):
    cfg_path = upload_config()
    clip = stage(cfg_path, "D.MP4", 10_000, T0)
    res = dashcamctl("--config", str(cfg_path), "--dry-run", "upload")
    assert res.returncode == 0, res.stderr
    assert "would upload" in res.stderr
    assert clip.exists() and not (server.restrict_dir / "footage").exists()
    assert clips(cfg_path)[0]["Normal/D.MP4"].state == "staged"


# --- onboarding --------------------------------------------------------------------------------


def test_trust_host_pins_the_servers_key_after_yes_and_upload_then_works(upload_config, server, dashcamctl, tmp_path):
    cfg_path = upload_config({"upload": {"known_hosts": str(tmp_path / "etc" / "known_hosts")}})
    stage(cfg_path, "T.MP4", 10_000, T0)

    declined = dashcamctl("--config", str(cfg_path), "trust-host", input="n\n")
    assert declined.returncode == 1 and "Not pinned" in declined.stdout
    assert not (tmp_path / "etc" / "known_hosts").exists()

    res = dashcamctl("--config", str(cfg_path), "trust-host", input="y\n")

    assert res.returncode == 0, res.stderr
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(server.host_key) + ".pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert fingerprint in res.stdout
    pinned = (tmp_path / "etc" / "known_hosts").read_text()
    assert f"[127.0.0.1]:{server.port} ssh-ed25519 {server.host_key_pub.split()[1]}" in pinned
    assert dashcamctl("--config", str(cfg_path), "upload").returncode == 0
    # pinning again replaces the entry instead of piling up duplicates
    assert dashcamctl("--config", str(cfg_path), "trust-host", "--yes").returncode == 0
    assert (tmp_path / "etc" / "known_hosts").read_text().count(f"[127.0.0.1]:{server.port} ssh-ed25519") == 1


def test_keygen_creates_the_key_once_and_prints_the_restricted_authorized_keys_line(make_config, dashcamctl, tmp_path):
    key = tmp_path / "home" / ".ssh" / "id_ed25519"
    cfg_path = make_config({"upload": {"ssh_key": str(key)}})

    res = dashcamctl("--config", str(cfg_path), "keygen", "--server-dir", "/srv/footage")

    assert res.returncode == 0, res.stderr
    public = (tmp_path / "home" / ".ssh" / "id_ed25519.pub").read_text().strip()
    assert public.startswith("ssh-ed25519 AAAA")
    line = res.stdout.strip().splitlines()[-1]
    assert line == f'command="/usr/bin/rrsync -wo -no-lock /srv/footage",restrict {public}'
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = dashcamctl("--config", str(cfg_path), "keygen", "--server-dir", "/srv/footage")
    assert again.stdout.strip().splitlines()[-1] == line


def test_progress_goes_to_systemd_as_status_lines(upload_config, server, dashcamctl, tmp_path):
    import socket

    cfg_path = upload_config({"upload": {"bwlimit": 2000}})  # ~12 s: reports every 5 s, some mid-round
    for n in range(4):
        stage(cfg_path, f"P{n}.MP4", 6_000_000, T0 + n)
    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        res = dashcamctl("--config", str(cfg_path), "upload", env={"NOTIFY_SOCKET": sock_path})
        assert res.returncode == 0, res.stderr
        sock.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert any(m.startswith("STATUS=upload 0/4 files") for m in statuses), statuses
    assert any(re.match(r"STATUS=upload [123]/4 files, .* MB/s, ETA", m) for m in statuses), statuses
    assert any(m.startswith("STATUS=upload 4/4 files") and "ETA" in m for m in statuses), statuses
