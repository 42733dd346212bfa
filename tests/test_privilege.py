"""The ingest's privilege split: root mounts, a child with no privilege reads the card and writes staging."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from dashcam_helpers import card, config, ingest, privilege
from dashcam_helpers.errors import DashcamError, TryLater

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="drops root: run as root")

READER = (4321, 4322)


def identity():
    caps = privilege._capabilities()
    return {"res": list(os.getresuid()), "resg": list(os.getresgid()), "groups": os.getgroups(),
            "caps": {k: caps[k] for k in ("CapPrm", "CapEff", "CapAmb")}}


def test_the_child_runs_as_the_user_with_no_capabilities_and_root_stays_root():
    seen = privilege.run_as(READER, identity, encode=lambda d: d, decode=lambda d: d)
    assert seen == {"res": [4321] * 3, "resg": [4322] * 3, "groups": [4322],
                    "caps": {"CapPrm": 0, "CapEff": 0, "CapAmb": 0}}
    assert os.geteuid() == 0


def test_an_error_in_the_child_comes_back_as_one_line_with_its_kind():
    def later():
        raise TryLater("camera went away")

    def boom():
        raise ValueError("bad card")

    with pytest.raises(TryLater, match="camera went away"):
        privilege.run_as(READER, later, encode=str, decode=str)
    with pytest.raises(DashcamError, match=r"ValueError: bad card \(in \w+, test_privilege.py:\d+\)"):
        privilege.run_as(READER, boom, encode=str, decode=str)


def test_a_child_killed_without_an_answer_is_a_failure_not_a_result():
    def die():
        os.kill(os.getpid(), 9)

    with pytest.raises(DashcamError, match="ended without a result.*SIGKILL"):
        privilege.run_as(READER, die, encode=str, decode=str)


def test_a_stop_reaches_the_child():
    def wait_for_term():
        import signal
        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append(1))
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(got)

    assert privilege.run_as(READER, wait_for_term, encode=bool, decode=bool, should_stop=lambda: True) is True


STOP_WITHOUT_CAP_KILL = """
import signal, sys, time
from dashcam_helpers import privilege

def wait_for_term():
    got = []
    signal.signal(signal.SIGTERM, lambda *a: got.append(1))
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(got)

asked = []
def should_stop():
    asked.append(1)
    return len(asked) > 3   # after the child has set its handler
print(privilege.run_as((4321, 4322), wait_for_term, encode=bool, decode=bool, should_stop=should_stop))
"""


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_a_stop_reaches_the_child_from_a_root_without_cap_kill():
    """As in the ingest unit: root without CAP_KILL may not signal the dropped child."""
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parent.parent / "src")
    done = subprocess.run(["setpriv", "--bounding-set", "-kill", sys.executable, "-c", STOP_WITHOUT_CAP_KILL],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=src))
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr


@pytest.fixture
def public_tmp():
    """A tree the reader can reach (pytest's tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="dashcam-privilege-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top)


def reader_owns_staging(public_tmp, make_config):
    """(config, the card's clip folder holding A.MP4): staging and state belong to READER."""
    staging, state = public_tmp / "staging", public_tmp / "state"
    for d in (staging, state):
        d.mkdir()
        os.chown(d, *READER)
    cfg = config.load(str(make_config({"paths": {"local_staging": str(staging), "state_dir": str(state)},
                                       "ingest": {"reserve_bytes": 0, "reserve_percent": 0}})))
    card = public_tmp / "card/Normal/Front"
    card.mkdir(parents=True)
    (card / "A.MP4").write_bytes(b"x" * 1000)
    return cfg, card


def test_staging_owned_by_the_uploader_means_the_copy_runs_as_the_uploader(public_tmp, make_config):
    staging, state = public_tmp / "staging", public_tmp / "state"
    cfg, card = reader_owns_staging(public_tmp, make_config)
    reader = privilege.staging_user(cfg.paths.local_staging)
    assert reader == READER
    result = ingest.ingest_unprivileged(cfg, str(public_tmp / "card"), reader=reader)
    assert result.files == 1 and result.bytes == 1000
    made = list(staging.rglob("*")) + list(state.iterdir())
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in made} == {READER}


def test_the_reader_cannot_read_what_only_root_may(public_tmp, make_config):
    """The proof that the copy holds no privilege: a clip only root may read fails, it is not copied."""
    cfg, card = reader_owns_staging(public_tmp, make_config)
    (card / "A.MP4").chmod(0o600)
    result = ingest.ingest_unprivileged(cfg, str(public_tmp / "card"), reader=READER)
    assert result.files == 0
    assert [f for f, _ in result.failed] == ["Normal/Front/A.MP4"]


def test_a_symlinked_staging_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "staging").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DashcamError, match="symbolic link"):
        privilege.staging_user(str(tmp_path / "staging"))


def test_the_mount_gives_the_cards_files_to_the_reader_alone():
    argv = card.mount_argv("/dev/sda1", "exfat", "/run/dashcam/mnt/sda1", READER)
    assert argv[4] == "ro,nosuid,nodev,noexec,noatime,nosymfollow,time_offset=0,uid=4321,gid=4322,umask=0077"


def test_the_childs_progress_reaches_systemd_but_nothing_that_changes_the_units_state(tmp_path, monkeypatch):
    import socket

    from dashcam_helpers import notify

    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))

    def report():
        notify.notify(STATUS="ingest 1/2 files\x1b[2J", READY="1", MAINPID="1")
        time.sleep(0.5)  # the parent forwards while the child still runs
        return os.environ["NOTIFY_SOCKET"]

    used = privilege.run_as(READER, report, encode=str, decode=str)
    assert used.startswith("@dashcam-status-")  # the child never saw systemd's socket
    systemd.settimeout(5)
    assert systemd.recv(4096) == b"STATUS=ingest 1/2 files\\x1b[2J"
    systemd.close()


def test_root_without_dac_capabilities_takes_the_owner_of_the_state_directory(public_tmp):
    """The ingest's root cannot enter /var/lib/dashcam (0750, dashcam's): that directory's owner decides."""
    state = public_tmp / "state"
    (state / "staging").mkdir(parents=True)
    os.chown(state, *READER)
    state.chmod(0o750)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a root child without CAP_DAC_*, as the ingest unit runs
        try:
            os.write(w, repr(_drop_dac_and_ask(str(state / "staging"))).encode())
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 1000).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == repr(READER)


def _drop_dac_and_ask(staging):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: out of the bounding set, then effective
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    # capset: keep every capability but the two DAC ones
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    libc.capget(header, data)
    mask = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF
    data[0] &= mask  # effective
    data[1] &= mask  # permitted
    assert libc.capset(header, data) == 0, ctypes.get_errno()
    try:
        os.listdir(staging)
    except PermissionError:
        pass
    else:
        raise AssertionError("still able to enter the state directory")
    return privilege.staging_user(staging)


def test_a_source_the_reader_cannot_read_is_named_with_the_fix(public_tmp, make_config):
    staging = public_tmp / "staging"
    staging.mkdir()
    os.chown(staging, *READER)
    cfg = config.load(str(make_config({"paths": {"local_staging": str(staging), "state_dir": str(staging)}})))
    card = public_tmp / "card"
    card.mkdir(mode=0o700)
    with pytest.raises(DashcamError, match=rf"{card}: the copy runs as uid 4321 .*\(mount -o ro,uid=4321\)"):
        ingest.ingest_unprivileged(cfg, str(card), reader=READER)
