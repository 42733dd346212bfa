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

from dashcam_helpers import config, layout, records, rsync, runner, ssh, upload  # noqa: E402
from dashcam_helpers.errors import TryLater  # noqa: E402
from dashcam_helpers.ledger import Ledger  # noqa: E402

CAMERA = "frontcam"
DAY = 86400
T0 = 1_763_000_000  # 2025-11-13, an afternoon in every time zone that matters here


@pytest.fixture
def server(tmp_path, request):
    """A real sshd: host key, client key and authorized_keys all in tmp_path; the key's line is
    the one `dashcamctl keygen` prints (ssh.authorized_keys_line, DIR <tmp>/server). Parametrized
    indirectly, other rrsync options instead (e.g. "-wo", a key without -no-lock)."""
    param = getattr(request, "param", None)
    line = ssh.authorized_keys_line if param is None else None
    with SshServer(tmp_path / "sshd", tmp_path / "server", rrsync_args=param, key_line=line) as srv:
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


def stage(cfg_path: Path, name: str, size: int, mtime: float, data: bytes = None, folder: str = "Normal",
          event: bool = False) -> Path:
    """A clip as the ingest leaves it: bytes durable in ready/<camera>/<date>/<folder>/, a 'staged' ledger row."""
    cfg = config.load(str(cfg_path))
    data = os.urandom(size) if data is None else data
    day = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%d")  # as ingest dates it
    rel = f"{CAMERA}/{day}/{folder}/{name}"
    path = Path(cfg.paths.ready) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    with Ledger(cfg.paths.ledger) as ledger:
        ledger.record_staged(
            CAMERA,
            f"{folder}/{name}",
            len(data),
            int(mtime * 1e9),
            event=event,
            sha256=hashlib.sha256(data).hexdigest(),
            staged_path=rel,
        )
    return path


def remote_of(name: str, mtime_ns: int, folder: str = "Normal") -> str:
    """Where the default upload.layout puts a clip stage() made, relative to dest_path."""
    day = datetime.datetime.fromtimestamp(mtime_ns // 10**9, datetime.timezone.utc)
    return f"{CAMERA}/{day:%Y/%m/%d}/{folder}/{name}"


def on_server(server: SshServer, name: str, mtime: float, folder: str = "Normal") -> Path:
    return server.restrict_dir / "footage" / remote_of(name, int(mtime * 1e9), folder)


def refused_by_rrsync(argv):
    """What rsync reports when rrsync refuses a session for its one-session lock (a key without -no-lock)."""
    return runner.CommandFailed(
        argv, 12, "", "/usr/bin/rrsync error: Another instance of rrsync is already accessing this directory.\n"
        "rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n", "rsync ...")


class FailingSecondSend(rsync.Rsync):
    """The real tool, but its second send fails as a link that went down does."""

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.sends = 0

    def send(self, items, **kw):
        self.sends += 1
        if self.sends == 2:
            raise upload.UploadFailed("sending failed: the link went down", transient=True)
        return super().send(items, **kw)


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


def row(clip_id=1, source_path="Normal/Front/FILE0001.MP4", staged_path=None, mtime_ns=0, event=False, sha="aa",
        remote_path=None, camera="cam", state="staged") -> upload.Clip:
    """A ledger row as plan() reads it."""
    return upload.Clip(id=clip_id, camera=camera, source_path=source_path, size=1, mtime_ns=mtime_ns, event=event,
                       sha256=sha * 32, staged_path=staged_path, remote_path=remote_path, state=state, reason=None,
                       retries=0, seen_at=None, staged_at=None, uploaded_at=None, verified_at=None, pruned_at=None,
                       updated_at=0.0)


def test_remote_path_is_the_day_ingest_gave_the_staged_clip_whatever_the_pis_zone(monkeypatch):
    ns = int(datetime.datetime(2026, 3, 7, 23, 59, 59, tzinfo=datetime.timezone.utc).timestamp()) * 10**9
    default = layout.DEFAULT_LAYOUT
    for zone in ("UTC", "America/New_York", "Europe/Berlin"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        assert upload.remote_path(default, row(staged_path="cam/2026-03-07/Normal/Front/FILE0001.MP4", mtime_ns=ns)) \
            == "cam/2026/03/07/Normal/Front/FILE0001.MP4"
        # a day ingest chose from the clip's name wins over its mtime
        assert upload.remote_path(default, row(source_path="DCIM/Movie/RO/2026_0309_000100_001F.MP4", mtime_ns=ns,
                                               staged_path="cam/2026-03-09/DCIM/Movie/RO/2026_0309_000100_001F.MP4",
                                               event=True)) \
            == "cam/2026/03/09/DCIM/Movie/RO/2026_0309_000100_001F.MP4"
        # a row without the staged day: dated as ingest would, the mtime read as the camera's wall clock
        assert upload.remote_path(default, row(source_path="FILE0001.MP4", mtime_ns=ns)) == "cam/2026/03/07/FILE0001.MP4"
        assert upload.remote_path(default, row(source_path="Event/NO20260308-000100-000123F.MP4", mtime_ns=ns)) == \
            "cam/2026/03/08/Event/NO20260308-000100-000123F.MP4"
        # the layout before the card's folders were kept: a clip in flight under it keeps that name
        assert upload.legacy_remote_path("cam", "cam/2026-03-07/FILE0001~1.MP4", ns) == "cam/2026/03/07/FILE0001~1.MP4"
        assert upload.legacy_remote_path("cam", "FILE0001.MP4", ns) == "cam/2026/03/07/FILE0001.MP4"
    monkeypatch.delenv("TZ")
    time.tzset()


def test_the_server_name_comes_from_the_card_not_from_a_staging_variant():
    """A clip staged as name~1 (the same card path on the same day as an earlier clip) goes to the
    server under the card's name: beside the earlier one only if the server holds other content."""
    clip = row(staged_path="cam/2026-03-07/Normal/LOOP~1.MP4", source_path="Normal/LOOP.MP4")
    assert upload.remote_path(layout.DEFAULT_LAYOUT, clip) == "cam/2026/03/07/Normal/LOOP.MP4"


def test_alternate_name_keeps_the_extension_and_adds_the_content_hash():
    assert upload.alternate_name("cam/2026/03/07/a.mp4", "0123456789abcdef") == "cam/2026/03/07/a.01234567.mp4"
    assert upload.alternate_name("cam/x/noext", "ffeeddccbb") == "cam/x/noext.ffeeddcc"


@pytest.mark.parametrize("base", ["a" * 251 + ".MP4", "é" * 125 + "x.MP4", "b" * 255, "ü" * 127 + "x"],
                         ids=["ascii", "two-byte", "no-extension", "two-byte-no-extension"])
def test_an_alternate_name_still_fits_the_servers_255_bytes_and_cuts_at_a_character(base):
    """A name the filesystem allows (up to 255 bytes) with the hash added must still be one the
    server can create: else that clip fails at every run."""
    other = upload.alternate_name("cam/2026/03/07/" + base, "0123456789abcdef")
    directory, name = other.rsplit("/", 1)
    assert directory == "cam/2026/03/07" and len(name.encode()) <= 255 and name.encode().decode() == name
    assert "01234567" in name and name != base
    if base.endswith(".MP4"):
        assert name.endswith(".01234567.MP4")


def test_plan_puts_events_first_then_newest_or_oldest_and_gives_a_reused_name_a_distinct_one(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite3"))
    newer = ledger.record_staged("c", "Normal/A.MP4", 1, T0 * 10**9 + 5, event=False, sha256="aa" * 32,
                                 staged_path="c/2025-11-13/Normal/A.MP4")
    older = ledger.record_staged("c", "Event/B.MP4", 1, (T0 - 3 * DAY) * 10**9, event=True, sha256="bb" * 32,
                                 staged_path="c/2025-11-10/Event/B.MP4")
    reused = ledger.record_staged("c", "Normal/A.MP4", 2, T0 * 10**9 + 9, event=False, sha256="cc" * 32,
                                  staged_path="c/2025-11-13/Normal/A~1.MP4")
    sent = ledger.record_staged("c", "Normal/C.MP4", 1, T0 * 10**9, event=False, sha256="dd" * 32,
                                staged_path="c/2025-11-13/Normal/C.MP4")
    ledger.advance(sent, "uploaded", remote_path="c/2025/11/13/C.dd000000.MP4")
    items = upload.plan(ledger.files(), "/ready")
    # the event, however old, first; then the newest
    assert [i.clip.id for i in items] == [older, reused, newer, sent]
    assert [i.clip.id for i in upload.plan(ledger.files(), "/ready", newest_first=False)] == [older, sent, newer, reused]
    names = {i.clip.id: i.remote for i in items}
    assert names[older] == "c/2025/11/10/Event/B.MP4"
    assert names[sent] == "c/2025/11/13/C.dd000000.MP4"  # sent before under this name: keeps it
    # the camera reused a name on one day: the first in the order keeps it, the other goes beside
    assert names[reused] == "c/2025/11/13/Normal/A.MP4"
    assert names[newer] == "c/2025/11/13/Normal/A.aaaaaaaa.MP4"
    assert items[0].local == "/ready/c/2025-11-10/Event/B.MP4"
    # the same name in another folder of the card: its own path, no second name
    same_name = ledger.record_staged("c", "Event/A.MP4", 3, T0 * 10**9 + 7, event=True, sha256="ee" * 32,
                                     staged_path="c/2025-11-13/Event/A.MP4")
    names = {i.clip.id: i.remote for i in upload.plan(ledger.files(), "/ready")}
    assert names[same_name] == "c/2025/11/13/Event/A.MP4" and names[reused] == "c/2025/11/13/Normal/A.MP4"
    ledger.close()


def test_plan_fills_the_configured_layout_with_odd_names_taken_literally():
    kinds = "{camera}/{kind}/{YYYY}-{MM}-{DD}/{folder}/{name}"
    ev = row(1, "Event/{name}/a\nb\\c {kind}.MP4", "cam/2026-03-07/Event/{name}/a\nb\\c {kind}.MP4", event=True)
    plain = row(2, "{folder}.MP4", "cam/2026-03-07/{folder}.MP4", sha="bb")
    names = [i.remote for i in upload.plan([plain, ev], "/r", kinds)]
    assert names == ["cam/Event/2026-03-07/Event/{name}/a\nb\\c {kind}.MP4", "cam/Normal/2026-03-07/{folder}.MP4"]


def test_a_clip_staged_before_the_card_folders_were_kept_keeps_an_old_name_it_has_on_the_server():
    """Staged as <camera>/<day>/<name> by an earlier version: its name under the old layout is
    kept while the server may hold a partial file of ours there (in flight, or held for a cut
    session); else it goes where new clips go. A name it was sent under never changes."""
    flying = row(1, "Normal/Front/A.MP4", "cam/2026-03-07/A.MP4")
    fresh = row(2, "Event/Front/A.MP4", "cam/2026-03-07/A~1.MP4", event=True, sha="bb")
    sent = row(3, "Normal/Front/B.MP4", "cam/2026-03-07/B.MP4", sha="cc", remote_path="cam/2026/03/07/B.MP4",
               state="uploaded")
    new_style = row(4, "Normal/Front/A~1.MP4", "cam/2026-03-07/Normal/Front/A~1.MP4", sha="dd")
    keep = {"cam/2026/03/07/A.MP4", "cam/2026/03/07/A~1.MP4"}
    names = {i.clip.id: i.remote for i in upload.plan([flying, fresh, sent, new_style], "/r", keep=keep)}
    assert names == {1: "cam/2026/03/07/A.MP4", 2: "cam/2026/03/07/A~1.MP4", 3: "cam/2026/03/07/B.MP4",
                     4: "cam/2026/03/07/Normal/Front/A~1.MP4"}
    names = {i.clip.id: i.remote for i in upload.plan([flying, fresh, sent], "/r")}
    assert names == {1: "cam/2026/03/07/Normal/Front/A.MP4", 2: "cam/2026/03/07/Event/Front/A.MP4",
                     3: "cam/2026/03/07/B.MP4"}


def test_rounds_split_by_bytes_and_count_keeping_order(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite3"))
    for n in range(7):
        ledger.record_staged("c", f"{n}.mp4", 100, T0 * 10**9 + n, event=False, sha256=f"{n:064d}", staged_path=f"c/{n}.mp4")
    items = upload.plan(ledger.files(), "/r", newest_first=False)

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

    class CountedSends(rsync.Rsync):
        def send(self, items, **kw):
            sends.append(len(items))
            return super().send(items, **kw)

    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, rsync=CountedSends(cfg))
    assert summary.files == 6 and sends == [1, 5]


def test_a_checksum_pass_is_split_into_parts_of_about_equal_bytes(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite3"))
    for n, size in enumerate([500, 100, 100, 100, 100, 100, 10]):
        ledger.record_staged("c", f"{n}.mp4", size, T0 * 10**9 + n, event=False, sha256=f"{n:064d}", staged_path=f"c/{n}.mp4")
    items = upload.plan(ledger.files(), "/r", newest_first=False)

    def cut(parts, of=items):
        return [[int(i.clip.source_path[0]) for i in part] for part in rsync.split_by_bytes(of, parts)]

    assert cut(1) == [[0, 1, 2, 3, 4, 5, 6]]
    assert cut(2) == [[0], [1, 2, 3, 4, 5, 6]]           # 500 | 510: order kept, halves by bytes
    assert cut(3) == [[0], [1, 2], [3, 4, 5, 6]]
    assert cut(2, items[1:3]) == [[1], [2]]
    assert cut(4, items[:2]) == [[0], [1]]                  # never an empty part
    assert cut(7) == [[n] for n in range(7)]
    assert cut(2, items[:1]) == [[0]]
    ledger.close()


def test_ssh_options_pin_the_host_key_and_never_prompt(make_config):
    cfg = config.load(str(make_config({"upload": {"port": 2222, "known_hosts": "/etc/x/kh", "ssh_key": "/k/id"}})))
    argv = ssh.ssh_argv(cfg)
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    for want in ("BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/etc/x/kh",
                 "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes", "IdentityFile=/k/id", "ConnectTimeout=10"):
        assert want in opts
    assert argv[argv.index("-p") + 1] == "2222"
    assert ssh.known_hosts_name("srv", 22) == "srv" and ssh.known_hosts_name("srv", 2222) == "[srv]:2222"


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


# --- event clips first, the card's folders kept ------------------------------------------------

EVENTS = [("E_OLD.MP4", T0 - DAY), ("E_MID.MP4", T0 + 150), ("E_NEW.MP4", T0 + 450)]
NORMALS = [(f"N{n}.MP4", T0 + n * 100) for n in range(5)]


def stage_events_and_normals(cfg_path, events=EVENTS, normals=NORMALS, size=50_000):
    for name, mtime in events:
        stage(cfg_path, name, size, mtime, folder="Event/Front", event=True)
    for name, mtime in normals:
        stage(cfg_path, name, size, mtime, folder="Normal/Front")


@pytest.mark.parametrize("order", ["newest-first", "oldest-first"])
def test_event_clips_are_sent_and_proven_before_any_other_then_the_rest_in_the_configured_order(
        upload_config, server, monkeypatch, order):
    cfg_path = upload_config({"upload": {"order": order}})
    stage_events_and_normals(cfg_path)
    monkeypatch.setattr(upload, "ROUND_FILES", 2)
    sends = []

    class RecordedSends(rsync.Rsync):
        def send(self, items, **kw):
            with Ledger(self.cfg.paths.ledger) as ledger:
                unproven = [c.source_path for c in ledger.files() if c.event and c.state not in ("verified", "pruned")]
            sends.append(([os.path.basename(i.clip.source_path) for i in items], unproven))
            return super().send(items, **kw)

    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, rsync=RecordedSends(cfg))

    assert summary.files == 8 and not summary.problems and not summary.collisions
    if order == "newest-first":
        expected = [["E_NEW.MP4", "E_MID.MP4"], ["E_OLD.MP4"], ["N4.MP4", "N3.MP4"], ["N2.MP4", "N1.MP4"], ["N0.MP4"]]
    else:
        expected = [["E_OLD.MP4", "E_MID.MP4"], ["E_NEW.MP4"], ["N0.MP4", "N1.MP4"], ["N2.MP4", "N3.MP4"], ["N4.MP4"]]
    assert [names for names, _ in sends] == expected
    # no ordinary clip left while an event clip was not yet proven on the server
    assert [unproven for names, unproven in sends if names[0].startswith("N")] == [[], [], []]
    # the server's own clock says the same: every event clip arrived before any other
    events = [on_server(server, n, t, "Event/Front").stat().st_ctime_ns for n, t in EVENTS]
    normals = [on_server(server, n, t, "Normal/Front").stat().st_ctime_ns for n, t in NORMALS]
    assert max(events) < min(normals)
    assert assert_ledger_promises_hold(cfg, server) == 8


def test_a_send_of_events_that_fails_is_retried_before_any_other_clip_goes(upload_config, server, tmp_path,
                                                                              monkeypatch):
    """rsync itself (a wrapper in front of the real one) loses the link on the first send: the
    retry sends the same event clips again, and only then do the ordinary clips go."""
    log, failed = tmp_path / "sends.log", tmp_path / "failed-once"
    wrapper = tmp_path / "rsync"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# each send (--partial) logs its file list; the first fails as a dropped link does\n"
        'for a in "$@"; do case "$a" in --files-from=*) list="${a#--files-from=}";; esac; done\n'
        'case " $* " in *" --partial "*)\n'
        f'  {{ echo "-- send"; tr "\\000" "\\n" < "$list"; }} >> "{log}"\n'
        f'  if [ ! -e "{failed}" ]; then : > "{failed}"; echo "rsync: connection unexpectedly closed" >&2; exit 12; fi;;\n'
        "esac\n"
        'exec rsync "$@"\n')
    wrapper.chmod(0o755)
    cfg_path = upload_config({"tools": {"rsync": str(wrapper)}, "poll": {"upload_retries": 2}})
    stage_events_and_normals(cfg_path, events=EVENTS[:2], normals=NORMALS[:3])
    monkeypatch.setattr(upload, "ROUND_FILES", 2)
    cfg = config.load(str(cfg_path))

    summary, _ = run_bounded(cfg, sleep=lambda s: None)

    sends = [[os.path.basename(n) for n in block.strip().splitlines()] for block in log.read_text().split("-- send")[1:]]
    assert sends == [["E_MID.MP4", "E_OLD.MP4"], ["E_MID.MP4", "E_OLD.MP4"], ["N2.MP4", "N1.MP4"], ["N0.MP4"]]
    # the ordinary clips are proven; the events are on the server, proven once the session the
    # failed send may have left at the server has ended (upload.cut_session_seconds)
    rows, _ = clips(cfg_path)
    assert {p: c.state for p, c in rows.items()} == {
        "Event/Front/E_MID.MP4": "uploaded", "Event/Front/E_OLD.MP4": "uploaded",
        "Normal/Front/N0.MP4": "pruned", "Normal/Front/N1.MP4": "pruned", "Normal/Front/N2.MP4": "pruned"}
    assert summary.held == 2


def test_an_event_clip_staged_while_the_rest_goes_out_is_sent_before_the_next_round(upload_config, server,
                                                                                      monkeypatch):
    cfg_path = upload_config()
    stage_events_and_normals(cfg_path, events=EVENTS[:1], normals=NORMALS)
    monkeypatch.setattr(upload, "ROUND_FILES", 2)
    sends = []

    class SendWhileTheIngestStagesAnEvent(rsync.Rsync):
        def send(self, items, **kw):
            sends.append([os.path.basename(i.clip.source_path) for i in items])
            if len(sends) == 2:  # the first round of ordinary clips: an ingest stages an event meanwhile
                stage(cfg_path, "E_LATE.MP4", 50_000, T0 + 999, folder="Event/Front", event=True)
            return super().send(items, **kw)

    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, rsync=SendWhileTheIngestStagesAnEvent(cfg))

    assert sends == [["E_OLD.MP4"], ["N4.MP4", "N3.MP4"], ["E_LATE.MP4"], ["N2.MP4", "N1.MP4"], ["N0.MP4"]]
    assert summary.files == 7 and not summary.problems
    assert assert_ledger_promises_hold(cfg, server) == 7


def test_the_same_name_in_two_folders_of_the_card_lands_in_both_folders_on_the_server(upload_config, server):
    """Normal/Front/A.MP4 and Event/Front/A.MP4, different bytes, same day: each in its own folder,
    neither renamed, no collision; folders with odd names are kept byte for byte."""
    cfg_path = upload_config()
    normal = stage(cfg_path, "A.MP4", 30_000, T0, folder="Normal/Front")
    event = stage(cfg_path, "A.MP4", 30_001, T0, folder="Event/Front", event=True)
    odd_folders = ["Event/{name}", "with space/lf\nhere", "back\\slash/a\\#101", "Ünï ☃"]
    odd = {folder: stage(cfg_path, "A.MP4", 20_000 + n, T0, folder=folder) for n, folder in enumerate(odd_folders)}
    data = {"Normal/Front": normal.read_bytes(), "Event/Front": event.read_bytes(),
            **{folder: path.read_bytes() for folder, path in odd.items()}}
    cfg = config.load(str(cfg_path))

    summary, _ = run_bounded(cfg)

    assert summary.files == 6 and not summary.collisions and not summary.problems
    for folder, content in data.items():
        assert on_server(server, "A.MP4", T0, folder).read_bytes() == content, folder
    rows, _ = clips(cfg_path)
    assert {c.remote_path for c in rows.values()} == {remote_of("A.MP4", T0 * 10**9, f) for f in data}
    assert assert_ledger_promises_hold(cfg, server) == 6


def test_from_the_card_to_the_server_two_clips_of_one_name_keep_their_folders_and_events_go_first(
        upload_config, server, tmp_path, dashcamctl):
    """The whole way through the commands: a card with A.MP4 in Normal/Front and in Event/Front
    (other bytes), ingested, then uploaded: each lands in its own folder, the event one first."""
    card = tmp_path / "card"
    for n, folder in enumerate(("Normal/Front", "Event/Front", "Normal/Rear")):
        (card / folder).mkdir(parents=True)
        (card / folder / "A.MP4").write_bytes(os.urandom(40_000 + n))
        os.utime(card / folder / "A.MP4", (T0 + n, T0 + n))
    cfg_path = upload_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})
    assert dashcamctl("--config", str(cfg_path), "ingest", "--source", str(card)).returncode == 0
    res = dashcamctl("--config", str(cfg_path), "upload", timeout=120)
    assert res.returncode == 0, res.stderr

    arrived = {}
    for folder in ("Normal/Front", "Event/Front", "Normal/Rear"):
        there = on_server(server, "A.MP4", T0, folder)
        assert there.read_bytes() == (card / folder / "A.MP4").read_bytes(), folder
        arrived[folder] = there.stat().st_ctime_ns
    assert arrived["Event/Front"] < min(arrived["Normal/Front"], arrived["Normal/Rear"])
    assert "~1" not in res.stderr and "beside it" not in res.stderr
    rows, _ = clips(cfg_path)
    assert {c.state for c in rows.values()} == {"pruned"}
    assert sorted(c.remote_path for c in rows.values()) == sorted(
        remote_of("A.MP4", T0 * 10**9, f) for f in ("Normal/Front", "Event/Front", "Normal/Rear"))


def test_the_configured_layout_is_where_clips_land(upload_config, server):
    cfg_path = upload_config({"upload": {"layout": "{kind}/{camera}/{YYYY}-{MM}-{DD}/{folder}/{name}"}})
    stage(cfg_path, "E.MP4", 10_000, T0, folder="DCIM/Movie/RO", event=True)
    stage(cfg_path, "N.MP4", 10_000, T0, folder="DCIM/Movie")
    cfg = config.load(str(cfg_path))

    summary, _ = run_bounded(cfg)

    assert summary.files == 2
    day = datetime.datetime.fromtimestamp(T0, datetime.timezone.utc).strftime("%Y-%m-%d")
    root = server.restrict_dir / "footage"
    assert (root / f"Event/{CAMERA}/{day}/DCIM/Movie/RO/E.MP4").is_file()
    assert (root / f"Normal/{CAMERA}/{day}/DCIM/Movie/N.MP4").is_file()


def test_clips_staged_by_an_earlier_version_go_on_and_what_the_server_has_is_never_renamed(upload_config, server):
    """Staged as <camera>/<day>/<name> before the card's folders were kept: a clip whose send
    was cut is completed under its old name (the partial file there is ours); one never sent
    goes where new clips go; one already verified keeps its name, its file untouched."""
    cfg_path = upload_config()
    cfg = config.load(str(cfg_path))
    day = datetime.datetime.fromtimestamp(T0, datetime.timezone.utc)
    old_names = {}
    with Ledger(cfg.paths.ledger) as ledger:
        for name, state in (("CUT.MP4", "staged"), ("NEVER.MP4", "staged"), ("DONE.MP4", "pruned")):
            data = os.urandom(400_000)
            rel = f"{CAMERA}/{day:%Y-%m-%d}/{name}"
            old_names[name] = (f"{CAMERA}/{day:%Y/%m/%d}/{name}", data)
            if state == "staged":
                path = Path(cfg.paths.ready) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            clip_id = ledger.record_staged(CAMERA, f"Normal/Front/{name}", len(data), T0 * 10**9, event=False,
                                           sha256=hashlib.sha256(data).hexdigest(), staged_path=rel)
            if state == "pruned":
                for step in ("uploaded", "verified", "pruned"):
                    ledger.advance(clip_id, step, remote_path=old_names[name][0])
        ledger.put_state(upload.IN_FLIGHT_KEY, [old_names["CUT.MP4"][0]])
    root = server.restrict_dir / "footage"
    (root / old_names["CUT.MP4"][0]).parent.mkdir(parents=True)
    (root / old_names["CUT.MP4"][0]).write_bytes(old_names["CUT.MP4"][1][:150_000])   # the cut send's partial
    (root / old_names["DONE.MP4"][0]).write_bytes(old_names["DONE.MP4"][1])
    done_before = (root / old_names["DONE.MP4"][0]).stat()

    summary, _ = run_bounded(cfg)

    rows, _ = clips(cfg_path)
    assert rows["Normal/Front/CUT.MP4"].remote_path == old_names["CUT.MP4"][0]
    assert rows["Normal/Front/NEVER.MP4"].remote_path == remote_of("NEVER.MP4", T0 * 10**9, "Normal/Front")
    assert rows["Normal/Front/DONE.MP4"].remote_path == old_names["DONE.MP4"][0]
    assert {c.state for c in rows.values()} == {"pruned"} and summary.files == 2
    assert (root / old_names["CUT.MP4"][0]).read_bytes() == old_names["CUT.MP4"][1]
    assert summary.matched > 0   # the partial was completed, not sent again
    after = (root / old_names["DONE.MP4"][0]).stat()
    assert (after.st_ino, after.st_mtime_ns) == (done_before.st_ino, done_before.st_mtime_ns)
    assert assert_ledger_promises_hold(cfg, server) == 3


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

    class WatchedSends(rsync.Rsync):
        def send(self, items, **kw):
            overlapped.append(any(t.name == "upload-verify" and t.is_alive() for t in threading.enumerate()))
            return super().send(items, **kw)

    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        summary = upload.Uploader(cfg, ledger, rsync=WatchedSends(cfg)).run()
        assert {c.state for c in ledger.files()} == {"pruned"} and summary.files == 10
        assert ledger.get_state(upload.IN_FLIGHT_KEY) == []
    assert overlapped == [False, True, True, True, True]    # from the second round on, a verification runs
    for name, (data, mtime) in originals.items():
        assert on_server(server, name, mtime).read_bytes() == data


def test_a_rounds_checksum_pass_runs_as_two_sessions_at_once(upload_config, server, monkeypatch):
    """One --checksum rsync hashes the Pi's files first and the server's after: two sessions
    over halves of the round keep both ends busy. Both end with every clip verified."""
    cfg_path = upload_config()
    originals = {}
    for n in range(4):
        name, mtime = f"CLIP{n:04d}.MP4", T0 + n * 60
        originals[name] = (stage(cfg_path, name, 400_000 + n, mtime).read_bytes(), mtime)
    real_run = runner.run
    passes = []

    def run(argv, **kw):
        if "--checksum" not in argv:
            return real_run(argv, **kw)
        start = time.monotonic()
        try:
            return real_run(argv, **kw)
        finally:
            passes.append((start, time.monotonic()))

    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        summary = upload.Uploader(cfg, ledger, rsync=rsync.Rsync(cfg, run=run)).run()
        assert {c.state for c in ledger.files()} == {"pruned"} and summary.files == 4
    assert len(passes) == 2
    assert max(s for s, _ in passes) < min(e for _, e in passes), "the two parts did not overlap"
    for name, (data, mtime) in originals.items():
        assert on_server(server, name, mtime).read_bytes() == data


@pytest.mark.parametrize("server", ["-wo -no-del"], indirect=True)  # no -no-lock
def test_a_part_of_the_checksum_pass_refused_by_the_lock_runs_again_after_the_other(upload_config, server,
                                                                                      monkeypatch, caplog):
    """Through a key without -no-lock the second part's session is refused ("Another instance of
    rrsync"); it runs when the first is done, and the upload keeps to one session from then on."""
    cfg_path = upload_config()
    for n in range(4):
        stage(cfg_path, f"CLIP{n:04d}.MP4", 100_000, T0 + n * 60)
    caplog.set_level(logging.INFO, logger="dashcam.upload")
    real_run = runner.run
    checksum_passes = []

    def run(argv, **kw):
        if "--checksum" in argv:
            checksum_passes.append(threading.current_thread().name)
            if threading.current_thread().name == "upload-verify-part" and len(checksum_passes) <= 2:
                raise refused_by_rrsync(argv)
        return real_run(argv, **kw)

    cfg = config.load(str(cfg_path))
    summary, uploader = run_bounded(cfg, rsync=rsync.Rsync(cfg, run=run))
    assert states(cfg) == {"pruned"} and summary.files == 4
    assert uploader.single_session and "one session at a time" in caplog.text
    assert len(checksum_passes) == 3        # both parts, then the refused one again


@pytest.mark.parametrize("server", ["-wo -no-del"], indirect=True)  # no -no-lock
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
    real_run = runner.run
    sends, overlapped = [], []

    def run(argv, **kw):
        if "--stats" in argv:                                  # a send
            sends.append(argv)
            overlapped.append(any(t.name == "upload-verify" and t.is_alive() for t in threading.enumerate()))
            if len(sends) == 2:
                raise refused_by_rrsync(argv)
        return real_run(argv, **kw)

    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, rsync=rsync.Rsync(cfg, run=run))
    assert states(cfg) == {"pruned"} and summary.files == 8
    assert "one session at a time" in caplog.text
    # round 2 was refused once and sent again; rounds 3 and 4 started with no verification running
    assert len(sends) == 5 and overlapped[3:] == [False, False]
    for name, (data, mtime) in originals.items():
        assert on_server(server, name, mtime).read_bytes() == data


@pytest.mark.parametrize("server", ["-wo -no-del"], indirect=True)  # no -no-lock
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
    real_run = runner.run
    refusals = []

    def run(argv, **kw):
        if len(refusals) < 2:
            refusals.append(argv)
            raise refused_by_rrsync(argv)
        return real_run(argv, **kw)

    slept = []
    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, rsync=rsync.Rsync(cfg, sleep=slept.append, run=run))
    with Ledger(cfg.paths.ledger) as ledger:
        assert summary.files == 1 and {c.state for c in ledger.files()} == {"pruned"}
    assert len(slept) == 2 and all(0 < d <= rsync.LOCK_RETRY_MAX for d in slept)
    assert "busy with a session that is not ours" in caplog.text


def test_a_lock_that_stays_taken_ends_the_run_as_busy_not_failed(upload_config, server, monkeypatch):
    cfg_path = upload_config()
    stage(cfg_path, "CLIP0000.MP4", 100_000, T0)

    def run(argv, **kw):
        raise refused_by_rrsync(argv)

    slept = []
    cfg = config.load(str(cfg_path))
    with pytest.raises(upload.ServerBusy) as busy:
        upload.upload(cfg, rsync=rsync.Rsync(cfg, sleep=slept.append, run=run))
    assert isinstance(busy.value, TryLater) and "not ours" in str(busy.value)
    with Ledger(cfg.paths.ledger) as ledger:
        assert {c.state for c in ledger.files()} == {"staged"}
        # "busy", not "failed": the policy tries again at its next tick instead of pausing
        assert ledger.get_state("last_upload")["result"] == "busy"
        # refused sessions wrote nothing: no clip is held for them
        assert ledger.get_state(upload.HOLD_KEY) is None
    # waited about io_timeout + the grace, then gave up
    assert cfg.upload.io_timeout + rsync.LOCK_GRACE <= sum(max(d, 1.0) for d in slept) <= \
        cfg.upload.io_timeout + rsync.LOCK_GRACE + rsync.LOCK_RETRY_MAX


def test_when_a_later_round_fails_the_rounds_before_it_are_still_recorded(upload_config, server, monkeypatch):
    cfg_path = upload_config()
    paths = [stage(cfg_path, f"CLIP{n:04d}.MP4", 100_000, T0 + n * 60) for n in range(4)]
    monkeypatch.setattr(upload, "ROUND_FILES", 2)
    cfg = config.load(str(cfg_path))
    with Ledger(cfg.paths.ledger) as ledger:
        with pytest.raises(upload.UploadFailed):
            upload.Uploader(cfg, ledger, rsync=FailingSecondSend(cfg)).run()
        states = {c.source_path: c.state for c in ledger.files()}
    # round 1 (the newest two) was proven on the server while round 2 failed: pruned; round 2
    # untouched, staged
    assert states == {"Normal/CLIP0000.MP4": "staged", "Normal/CLIP0001.MP4": "staged",
                      "Normal/CLIP0002.MP4": "pruned", "Normal/CLIP0003.MP4": "pruned"}
    assert [p.exists() for p in paths] == [True, True, False, False]


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

    class SendCutThenRetriedAndALongPass(rsync.Rsync):
        def send(self, items, *, cut, **kw):
            out = super().send(items, cut=cut, **kw)
            cut([i.remote for i in items], "sending was cut off")  # as a retry after a cut leaves it
            return out

        def checksums(self, items):
            out = super().checksums(items)  # identical: the retry completed the file
            now[0] += 150  # the hold ends while the pass (or the next round's send) is on
            return out

    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, clock=lambda: now[0], rsync=SendCutThenRetriedAndALongPass(cfg))

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


def tree(path: Path):
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else None


def test_a_dry_run_on_a_fresh_machine_creates_nothing_no_ledger_no_lock_no_folder(upload_config, dashcamctl, tmp_path):
    cfg_path = upload_config()
    res = dashcamctl("--config", str(cfg_path), "--dry-run", "upload")
    assert res.returncode == 0, res.stderr
    assert "nothing to upload" in res.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "staging").exists()


def test_a_dry_run_with_a_ledger_leaves_the_state_and_staging_as_they_were(upload_config, server, dashcamctl, tmp_path):
    cfg_path = upload_config()
    stage(cfg_path, "E.MP4", 10_000, T0)
    before = tree(tmp_path / "state"), tree(tmp_path / "staging")
    res = dashcamctl("--config", str(cfg_path), "--dry-run", "upload")
    assert res.returncode == 0, res.stderr
    assert "would upload" in res.stderr
    assert (tree(tmp_path / "state"), tree(tmp_path / "staging")) == before
    assert not (tmp_path / "state" / "upload.lock").exists()


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
    assert line == f'command="/usr/bin/rrsync -wo -no-del -no-lock /srv/footage",restrict {public}'
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


# --- names: whatever a card's filesystem allows, proven byte for byte ---------------------------

# every odd kind of name a card or `ingest --source` can hold (and the ledger can record)
ODD_NAMES = {
    "space": "with space.MP4",
    "leading-dash": "-leading-dash.MP4",
    "non-ascii": "Ünïcødé 日本 ☃.MP4",
    "backslash": "back\\slash.MP4",
    "escape-like": "a\\#101.MP4",          # what rsync's own escape of "A" looks like
    "escape-like-2": "b\\#134#101.MP4",    # ... and of a backslash
    "tab": "tab\there.MP4",
    "cr": "cr\rhere.MP4",
    "lf": "lf\nhere.MP4",
    "control": "ctl\x01\x02\x7f.MP4",
    "esc": "esc\x1b]0;title\x07\x1b[2J.MP4",
    "len-240": "L" * 236 + ".MP4",
    "len-255": "M" * 251 + ".MP4",
    "len-255-multibyte": "é" * 125 + "N.MP4",   # 255 bytes, 131 characters
}


def server_file(server: SshServer, remote: str, dest: str = "footage") -> bytes:
    """The server's path of ``remote`` (relative to dest_path), as bytes (names are any bytes)."""
    return os.path.join(os.fsencode(str(server.restrict_dir)), os.fsencode(dest), os.fsencode(remote))


def sha256_of(path: bytes) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_ledger_promises_hold(cfg, server: SshServer, dest: str = "footage") -> int:
    """The invariant: every clip the ledger calls verified or pruned is on the server, with the
    SHA-256 the ledger holds. Returns how many clips it checked."""
    checked = 0
    with Ledger(cfg.paths.ledger) as ledger:
        for clip in ledger.files():
            if clip.state not in ("verified", "pruned"):
                continue
            assert clip.remote_path, f"{clip.source_path!r} is {clip.state} without a name on the server"
            path = server_file(server, clip.remote_path, dest)
            assert os.path.isfile(path), f"{clip.source_path!r} is {clip.state} but not on the server"
            assert sha256_of(path) == clip.sha256, f"{clip.source_path!r} is {clip.state} but differs on the server"
            checked += 1
    return checked


def test_every_odd_name_arrives_byte_identical_and_only_then_is_verified(upload_config, server):
    cfg_path = upload_config()
    staged = {}
    for n, (kind, name) in enumerate(sorted(ODD_NAMES.items())):
        staged[name] = (stage(cfg_path, name, 20_000 + n, T0 + n), T0 + n)
    stage(cfg_path, "PLAIN.MP4", 20_000, T0 + 100)
    cfg = config.load(str(cfg_path))

    summary, _ = run_bounded(cfg)

    assert assert_ledger_promises_hold(cfg, server) == len(ODD_NAMES) + 1
    rows, _ = clips(cfg_path)
    assert {c.state for c in rows.values()} == {"pruned"} and summary.files == len(ODD_NAMES) + 1
    assert not summary.problems


@pytest.mark.parametrize("kind", sorted(ODD_NAMES))
def test_a_clip_with_an_odd_name_beside_a_plain_one(upload_config, server, kind):
    """Each kind of name alone beside a plain clip: neither blocks the other, both are proven."""
    cfg_path = upload_config()
    odd = stage(cfg_path, ODD_NAMES[kind], 30_000, T0)
    plain = stage(cfg_path, "PLAIN.MP4", 30_000, T0 + 60)
    cfg = config.load(str(cfg_path))

    summary, _ = run_bounded(cfg)

    assert assert_ledger_promises_hold(cfg, server) == 2
    assert not odd.exists() and not plain.exists() and summary.files == 2


def test_an_answer_that_does_not_name_a_clip_leaves_it_unverified(upload_config, server, monkeypatch):
    """Silence is not proof: a checksum pass whose answer leaves a clip out (here: rsync's output
    cut to nothing) marks nothing verified; the clip stays in staging and goes next run."""
    cfg_path = upload_config()
    clip = stage(cfg_path, "SILENT.MP4", 20_000, T0)
    def run(argv, **kw):
        res = runner.run(argv, **kw)
        if "--checksum" in argv:
            return runner.Result(res.argv, res.returncode, "", res.stderr)
        return res

    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, rsync=rsync.Rsync(cfg, run=run))
    rows, _ = clips(cfg_path)
    assert rows["Normal/SILENT.MP4"].state == "uploaded" and clip.exists() and summary.files == 0
    assert "does not name" in summary.problems[0] and "does not name" in rows["Normal/SILENT.MP4"].reason
    summary, _ = run_bounded(cfg)
    assert assert_ledger_promises_hold(cfg, server) == 1 and not clip.exists()


def test_a_listing_that_does_not_name_a_clip_counts_it_as_missing(upload_config, server, monkeypatch):
    cfg_path = upload_config()
    stage(cfg_path, "UNLISTED.MP4", 20_000, T0)
    def run(argv, **kw):
        res = runner.run(argv, **kw)
        if "--dry-run" in argv and "--checksum" not in argv:
            return runner.Result(res.argv, res.returncode, "", res.stderr)
        return res

    cfg = config.load(str(cfg_path))
    summary, _ = run_bounded(cfg, rsync=rsync.Rsync(cfg, run=run))
    assert summary.files == 1 and assert_ledger_promises_hold(cfg, server) == 1
    with Ledger(cfg.paths.ledger) as ledger:     # sent, but never taken for our own partial file
        assert ledger.get_state(upload.IN_FLIGHT_KEY) == []


def test_invalid_utf8_names_go_through_the_transfer_byte_exact(upload_config, server):
    """The ledger holds text, so the ingest refuses a name that is not UTF-8; the transfer itself
    (lists, listing, send, checksum pass) still handles such a name's bytes exactly."""
    cfg = config.load(str(upload_config()))
    ready = Path(cfg.paths.ready)
    names = [os.fsdecode(b"bad\xff\xfe.MP4"), os.fsdecode(b"half\xc3.MP4"), "ok.MP4"]
    items = []
    for n, name in enumerate(names):
        local = os.path.join(os.fsencode(str(ready)), b"x", os.fsencode(name))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as f:
            f.write(os.urandom(5000 + n))
        clip = upload.Clip(id=n + 1, camera=CAMERA, source_path=name, size=5000 + n, mtime_ns=T0 * 10**9,
                           event=False, sha256=sha256_of(local), staged_path="x/" + name, remote_path=None,
                           state="staged", reason=None, retries=0, seen_at=None, staged_at=None, uploaded_at=None,
                           verified_at=None, pruned_at=None, updated_at=0.0)
        items.append(upload.Item(clip, f"{CAMERA}/{name}", os.fsdecode(local)))
    with Ledger(cfg.paths.ledger) as ledger:
        tool = rsync.Rsync(cfg)
        uploader = upload.Uploader(cfg, ledger, rsync=tool)
        try:
            tool.link(items)
            missing, said = uploader.missing_on_server(items)
            assert missing == said == {i.remote for i in items}
            uploader.send(items, resume=False)
            answer = tool.checksums(items)
        finally:
            tool.clean()
    assert all(rsync.identical(answer[i.remote]) for i in items), answer
    for item in items:
        assert sha256_of(server_file(server, item.remote)) == item.clip.sha256


def test_a_host_starting_with_a_dash_is_a_config_error(make_config, dashcamctl):
    res = dashcamctl("--config", str(make_config({"upload": {"host": "-oProxyCommand"}})), "check-config")
    assert res.returncode == 78 and "upload.host: '-oProxyCommand' is not valid" in res.stderr
    assert "never starting with -" in res.stderr


@pytest.mark.parametrize("server_dir", ['/srv/x",command="/bin/sh', "srv/relative", "/srv/a b", "/srv/a,b",
                                        "/srv/x;rm -rf ~", "/srv/$(id)", "/srv/\x1b[2J"])
def test_keygen_refuses_a_server_dir_that_is_not_one_plain_absolute_path(make_config, dashcamctl, tmp_path, server_dir):
    key = tmp_path / "home" / ".ssh" / "id_ed25519"
    res = dashcamctl("--config", str(make_config({"upload": {"ssh_key": str(key)}})), "keygen", "--server-dir", server_dir)
    assert res.returncode == 2 and "--server-dir" in res.stderr and "command=" not in res.stdout
    assert len(res.stderr.strip().splitlines()) == 1 and "\x1b" not in res.stderr
    assert not key.exists()


def test_the_keygen_line_refuses_delete_and_remove_and_the_servers_files_survive(server, upload_config, tmp_path):
    """Through the key line exactly as `dashcamctl keygen` prints it (the fixture's default), an
    attacker with the Pi's key tries to wipe the archive: rrsync refuses both options."""
    cfg = config.load(str(upload_config()))
    archive = server.restrict_dir / "footage" / CAMERA
    archive.mkdir(parents=True)
    (archive / "OLD.MP4").write_bytes(b"precious")
    empty = tmp_path / "empty"
    (empty / CAMERA).mkdir(parents=True)
    (empty / "x.MP4").write_bytes(b"x")
    base = [cfg.tools.rsync, "-e", " ".join(ssh.ssh_argv(cfg))]
    dest = f"{ssh.remote_host(cfg)}:footage/"
    for attack in (["-r", "--delete", f"{empty}/", dest], ["-r", "--delete-after", f"{empty}/", dest],
                   ["-r", "--remove-source-files", f"{empty}/", dest]):
        res = subprocess.run(base + attack, capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and "rrsync" in res.stderr, (attack, res.stderr)
        assert (archive / "OLD.MP4").read_bytes() == b"precious"
    assert (empty / "x.MP4").exists()
    assert ssh.authorized_keys_line("K", "/D") == 'command="/usr/bin/rrsync -wo -no-del -no-lock /D",restrict K'
    assert server.authorized_keys.read_text().strip() == ssh.authorized_keys_line(server.client_pub, str(server.restrict_dir))


# --- what really failed, said as such ------------------------------------------------------------


def can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["which", "mount"], capture_output=True).returncode == 0


@pytest.fixture
def server_on(tmp_path, make_config):
    """A server whose footage directory is a tmpfs mounted (with ``options``) before sshd starts
    (sshd runs in a mount namespace of its own, made when it starts); the config to go with it."""
    started = []

    def make(options: str, drop_dac_override: bool = False):
        footage = tmp_path / "server" / "footage"
        footage.mkdir(parents=True)
        if options:
            subprocess.run(["mount", "-t", "tmpfs", "-o", options, "dashcam-test", str(footage)], check=True)
            started.append(footage)
        srv = SshServer(tmp_path / "sshd", tmp_path / "server", rrsync_args=None, key_line=ssh.authorized_keys_line,
                        drop_dac_override=drop_dac_override).start()
        started.append(srv)
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(srv.known_hosts_line() + "\n")
        cfg_path = make_config({"camera": {"name": CAMERA}, "poll": {"upload_retries": 0}, "upload": {
            "host": "127.0.0.1", "port": srv.port, "user": srv.user, "dest_path": "footage",
            "ssh_key": str(srv.client_key), "known_hosts": str(known_hosts), "connect_timeout": 5, "io_timeout": 30}})
        return srv, cfg_path

    yield make
    for thing in reversed(started):
        if isinstance(thing, SshServer):
            thing.stop()
        else:
            subprocess.run(["umount", "-l", str(thing)], check=False)


def test_a_server_directory_the_user_may_not_write_is_said_as_such_not_as_a_refused_key(server_on, dashcamctl):
    srv, cfg_path = server_on("", drop_dac_override=True)
    day = srv.restrict_dir / "footage" / remote_of("X.MP4", T0 * 10**9)
    day.parent.mkdir(parents=True)
    day.parent.chmod(0o555)
    clip = stage(cfg_path, "DENIED.MP4", 20_000, T0)
    try:
        res = dashcamctl("--config", str(cfg_path), "upload")
    finally:
        day.parent.chmod(0o755)

    assert res.returncode == 1, res.stderr
    assert "accepted the key" in res.stderr and "may not write" in res.stderr and "Permission denied (13)" in res.stderr
    assert "refused the key" not in res.stderr and "authorized_keys" not in res.stderr
    rows, last = clips(cfg_path)
    assert rows["Normal/DENIED.MP4"].state != "verified" and clip.exists() and "may not write" in last["reason"]
    assert assert_ledger_promises_hold(config.load(str(cfg_path)), srv) == 0
    # fixed on the server: the next run sends it
    assert dashcamctl("--config", str(cfg_path), "upload").returncode == 0 and not clip.exists()


def test_one_clip_the_server_cannot_take_does_not_hold_back_the_others(server_on, dashcamctl):
    """rsync ends with status 23 for the one file it could not write; the others of the same
    send are proven and leave staging, the one stays with the reason."""
    srv, cfg_path = server_on("", drop_dac_override=True)
    blocked = stage(cfg_path, "BLOCKED.MP4", 20_000, T0 - DAY)
    fine = [stage(cfg_path, f"FINE{n}.MP4", 20_000, T0 + n) for n in range(3)]
    day = (srv.restrict_dir / "footage" / remote_of("X", (T0 - DAY) * 10**9)).parent
    day.mkdir(parents=True)
    day.chmod(0o555)
    try:
        res = dashcamctl("--config", str(cfg_path), "upload")
    finally:
        day.chmod(0o755)
    assert res.returncode == 1 and "may not write" in res.stderr
    assert blocked.exists() and not any(p.exists() for p in fine)
    assert assert_ledger_promises_hold(config.load(str(cfg_path)), srv) == 3


@pytest.mark.skipif(not can_mount(), reason="needs root to mount a tmpfs")
def test_a_full_server_disk_is_said_as_such(server_on, dashcamctl):
    srv, cfg_path = server_on("size=1m")
    big = stage(cfg_path, "BIG.MP4", 3_000_000, T0)
    res = dashcamctl("--config", str(cfg_path), "upload")
    assert res.returncode == 1, res.stderr
    assert "disk" in res.stderr and "is full" in res.stderr and "No space left on device (28)" in res.stderr
    assert "refused the key" not in res.stderr and big.exists()
    assert assert_ledger_promises_hold(config.load(str(cfg_path)), srv) == 0


@pytest.mark.skipif(not can_mount(), reason="needs root to mount a tmpfs")
def test_a_read_only_server_filesystem_is_said_as_such(server_on, dashcamctl):
    srv, cfg_path = server_on("ro,size=1m")
    clip = stage(cfg_path, "RO.MP4", 20_000, T0)
    res = dashcamctl("--config", str(cfg_path), "upload")
    assert res.returncode == 1, res.stderr
    assert "read-only" in res.stderr and "Read-only file system (30)" in res.stderr
    assert "refused the key" not in res.stderr and clip.exists()
    assert assert_ledger_promises_hold(config.load(str(cfg_path)), srv) == 0


def test_the_ledgers_promises_hold_after_a_failed_a_cut_and_a_good_run(upload_config, server, monkeypatch, dashcamctl):
    """The invariant after each kind of run, over every odd name: a run whose second round fails,
    a run whose connection is cut mid-send, then the run that completes."""
    cfg_path = upload_config({"upload": {"bwlimit": 4000, "order": "oldest-first"}})
    for n, name in enumerate(sorted(ODD_NAMES.values())):
        stage(cfg_path, name, 20_000 + n, T0 + n)
    big = stage(cfg_path, "cut \\#101\n" + ODD_NAMES["esc"], 30_000_000, T0 + 1000)   # sent last
    cfg = config.load(str(cfg_path))

    # 1. the second round's send fails
    monkeypatch.setattr(upload, "ROUND_FILES", 5)
    with pytest.raises(upload.UploadFailed):
        run_bounded(cfg, rsync=FailingSecondSend(cfg))
    assert assert_ledger_promises_hold(cfg, server) == 5
    monkeypatch.undo()

    # 2. the connection is cut while the big clip is sent
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "dashcam_helpers", "--config", str(cfg_path), "upload"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    remote_dir = server_file(server, remote_of("x", int((T0 + 1000) * 1e9)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        names = os.listdir(os.path.dirname(remote_dir)) if os.path.isdir(os.path.dirname(remote_dir)) else []
        if any(os.path.getsize(os.path.join(os.path.dirname(remote_dir), n)) > 4_000_000 for n in names):
            break
        time.sleep(0.05)
    assert server.cut_sessions() >= 1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert assert_ledger_promises_hold(cfg, server) >= 5     # the cut round proved nothing
    assert big.exists()

    # 3. once the cut session's hold has ended, the run that completes
    expire_hold(cfg)
    res = dashcamctl("--config", str(cfg_path), "upload", timeout=180)
    assert res.returncode == 0, res.stderr
    assert assert_ledger_promises_hold(cfg, server) == len(ODD_NAMES) + 1
    assert states(cfg) == {"pruned"}


# --- the same, over generated names (Hypothesis), against one sshd for the module ----------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")


def fits(name: str) -> bool:
    return name not in (".", "..") and 0 < len(name.encode("utf-8")) <= 255


# names of any character but "/" and NUL (the ledger holds text: no lone surrogates), up to 255
# bytes, with the characters rsync escapes or that split lines made likely
GENERATED_NAME = st.one_of(
    st.text(NAME_CHARS, min_size=1, max_size=40),
    st.lists(st.sampled_from(["\\", "#", "1", "0", "7", "\r", "\n", "\t", "\x1b", " ", "-", "é", "a"]),
             min_size=1, max_size=30).map("".join),
    st.text(NAME_CHARS, min_size=1, max_size=8).map(lambda s: (s * 255)[:200] + ".MP4"),
).filter(fits)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("shared-sshd")
    with SshServer(base / "sshd", base / "server", rrsync_args=None, key_line=ssh.authorized_keys_line) as srv:
        known_hosts = base / "known_hosts"
        known_hosts.write_text(srv.known_hosts_line() + "\n")
        srv.known_hosts_file = known_hosts
        yield srv


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(GENERATED_NAME, min_size=1, max_size=4, unique_by=lambda n: n.encode("utf-8").lower()))
def test_generated_names_all_arrive_and_the_ledgers_promises_hold(shared_server, tmp_path_factory, names):
    base = tmp_path_factory.mktemp("example")
    cfg_path = base / "config.yaml"
    import yaml
    cfg_path.write_text(yaml.safe_dump({
        "camera": {"name": CAMERA}, "poll": {"upload_retries": 0},
        "paths": {"local_staging": str(base / "staging"), "state_dir": str(base / "state")},
        "upload": {"host": "127.0.0.1", "port": shared_server.port, "user": shared_server.user,
                   "dest_path": base.name, "ssh_key": str(shared_server.client_key),
                   "known_hosts": str(shared_server.known_hosts_file), "connect_timeout": 5, "io_timeout": 30}}))
    for n, name in enumerate(names):
        stage(cfg_path, name, 1000 + n, T0 + n)
    cfg = config.load(str(cfg_path))

    summary, _ = run_bounded(cfg)

    assert assert_ledger_promises_hold(cfg, shared_server, base.name) == len(names)
    assert summary.files == len(names) and not summary.problems


def test_a_host_that_looks_like_an_option_never_reaches_ssh_as_one(make_config, tmp_path, caplog):
    """check-config refuses such a host; past it (a config made in code), ssh-keyscan and ssh get
    the host after "--", and rsync, which passes the host to ssh with no "--", is never started."""
    ran = tmp_path / "ran"
    cfg = config.load(str(make_config({"upload": {"port": free_port(), "connect_timeout": 2}})))
    cfg = cfg.replace(upload=cfg.upload.replace(host=f"-oProxyCommand=touch {ran}"))
    caplog.set_level(logging.DEBUG, logger="dashcam.runner")
    with pytest.raises(upload.DashcamError):
        ssh.scan_host_keys(cfg)
    assert f" -- '-oProxyCommand=touch {ran}'" in caplog.text      # the command as it was run
    with pytest.raises(upload.DashcamError) as refused:
        rsync.Rsync(cfg).destination()      # every rsync and ssh -O exit is given this
    assert "may not start with '-'" in str(refused.value)
    assert not ran.exists()


def test_the_last_upload_record_reads_what_the_upload_wrote_and_nothing_it_did_not(upload_config, server):
    cfg_path = upload_config()
    stage(cfg_path, "ONE.MP4", 20_000, T0)
    cfg = config.load(str(cfg_path))
    upload.upload(cfg)
    with Ledger(cfg.paths.ledger) as ledger:
        raw, last = ledger.get_state(records.LAST_UPLOAD_KEY), upload.LastUpload.read(ledger)
    assert last.asdict() == raw and (last.result, last.files, last.bytes) == ("ok", 1, 20_000)
    # a damaged or hand-edited ledger: no record, or one with nothing made up
    assert upload.LastUpload.parse(None) is None and upload.LastUpload.parse([1]) is None
    assert upload.LastUpload.parse({"result": 3}) is None
    odd = upload.LastUpload.parse({"result": "failed", "files": "many", "wall": float("nan"), "reason": 7,
                                   "collisions": "x", "held_until": True})
    assert (odd.result, odd.files, odd.wall, odd.reason, odd.collisions, odd.held_until) == ("failed", 0, 0.0, None, [], 0.0)
