"""Root follows no links where the dashcam user can write: each file root opens, chowns or writes
under /var/lib/dashcam that is a symlink is refused with a clear message, and its target is left
exactly as it was (content, owner, mode)."""

from __future__ import annotations

import os
import time

import pytest

from dashcam_helpers import config, ingest, ssh
from dashcam_helpers.errors import DashcamError
from dashcam_helpers.ledger import Ledger, LedgerError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="proves what root does: run as root")

DASHCAM = (4321, 4321)


def fingerprint(path):
    st = os.lstat(path)
    return path.read_bytes(), st.st_uid, st.st_gid, st.st_mode, st.st_ino


@pytest.fixture
def state(tmp_path):
    """A state directory owned by another user, as /var/lib/dashcam is; a root file beside it."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, *DASHCAM)
    target = tmp_path / "root-only"
    target.write_bytes(b"root's own file\n")
    target.chmod(0o600)
    return state, target


@pytest.mark.parametrize("name", ["ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"])
def test_a_symlinked_ledger_file_is_refused_and_its_target_untouched(state, name):
    state, target = state
    before = fingerprint(target)
    (state / name).symlink_to(target)
    with pytest.raises(LedgerError, match=f"{name} is a symbolic link"):
        Ledger(str(state / "ledger.sqlite3"))
    assert fingerprint(target) == before


def test_the_ledger_root_opens_is_given_to_the_directory_owner_through_its_fd(state):
    state, _ = state
    with Ledger(str(state / "ledger.sqlite3")) as ledger:
        ledger.put_state("k", 1)
        names = [n for n in os.listdir(state) if n.startswith("ledger.sqlite3")]
        assert sorted(names) == ["ledger.sqlite3", "ledger.sqlite3-shm", "ledger.sqlite3-wal"]
        assert {(os.stat(state / n).st_uid, os.stat(state / n).st_gid) for n in names} == {DASHCAM}


def key_config(make_config, tmp_path):
    return config.load(str(make_config({"upload": {"ssh_key": str(tmp_path / "home/.ssh/id_ed25519")}})))


def test_keygen_refuses_a_symlinked_ssh_directory_and_writes_nothing_there(make_config, tmp_path):
    cfg = key_config(make_config, tmp_path)
    elsewhere = tmp_path / "root-ssh"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "home").mkdir()
    (tmp_path / "home/.ssh").symlink_to(elsewhere)
    with pytest.raises(DashcamError, match=r"\.ssh: it is a symbolic link"):
        ssh.keygen(cfg)
    assert os.listdir(elsewhere) == []
    assert os.stat(elsewhere).st_uid == 0


@pytest.mark.parametrize("name", ["id_ed25519", "id_ed25519.pub"])
def test_keygen_refuses_a_symlinked_key_file_and_leaves_its_target_alone(make_config, tmp_path, name):
    cfg = key_config(make_config, tmp_path)
    target = tmp_path / "root-only"
    target.write_bytes(b"root's secret\n")
    target.chmod(0o600)
    before = fingerprint(target)
    (tmp_path / "home/.ssh").mkdir(parents=True)
    (tmp_path / "home/.ssh" / name).symlink_to(target)
    with pytest.raises(DashcamError, match=f"{name}: it is a symbolic link"):
        ssh.keygen(cfg)
    assert fingerprint(target) == before


@pytest.mark.parametrize("sub", ["incoming", "ready", "ready/front"])
def test_a_symlinked_staging_folder_is_refused_and_nothing_is_written_through_it(make_config, tmp_path, sub):
    cfg = config.load(str(make_config({"camera": {"name": "front"}})))
    card = tmp_path / "card"
    clip = card / "Normal/Front/A.MP4"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"x" * 100)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "staging" / sub
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    with pytest.raises(DashcamError, match="symbolic link"):
        ingest.ingest_source(cfg, str(card))
    assert list(elsewhere.rglob("*")) == []


def test_the_ledger_root_creates_for_a_first_ingest_goes_to_the_state_owner(make_config, tmp_path):
    cfg = config.load(str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})))
    os.makedirs(cfg.paths.state_dir)
    os.chown(cfg.paths.state_dir, *DASHCAM)
    card = tmp_path / "card"
    (card / "Normal/Front").mkdir(parents=True)
    (card / "Normal/Front/A.MP4").write_bytes(b"x" * 100)
    os.utime(card / "Normal/Front/A.MP4", (time.time(), time.time()))
    assert ingest.ingest_source(cfg, str(card)).files == 1
    st = os.stat(cfg.paths.ledger)
    assert (st.st_uid, st.st_gid) == DASHCAM
