"""Names from the card are any bytes: wherever a person reads them (files, status, the log's
message text) terminal escapes are shown escaped; structured journal fields keep the raw name."""

from __future__ import annotations

import os
import time

from dashcam_helpers import log
from dashcam_helpers.ledger import Ledger

HOSTILE = "Normal/Front/\x1b]0;owned\x07\x1b[2J\u202eA.MP4"
SHOWN = "Normal/Front/\\x1b]0;owned\\x07\\x1b[2J\\u202eA.MP4"


def assert_harmless(text):
    assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)


def test_files_prints_a_hostile_name_escaped(dashcamctl, make_config, tmp_path):
    cfg = make_config()
    with Ledger(str(tmp_path / "state/ledger.sqlite3")) as ledger:
        ledger.record_staged("front", HOSTILE, 10, 1, event=False, sha256="ab" * 32, staged_path="front/x")
        ledger.record_failed("front", HOSTILE + "2", 10, 1, event=False, reason=f"read: {HOSTILE}: I/O error")
    r = dashcamctl("--config", str(cfg), "files")
    assert r.returncode == 0, r.stderr
    assert_harmless(r.stdout)
    assert SHOWN in r.stdout and f"(read: {SHOWN}: I/O error)" in r.stdout
    r = dashcamctl("--config", str(cfg), "files", "--json")
    assert_harmless(r.stdout)  # JSON escapes control characters itself


def test_status_prints_a_hostile_name_escaped(dashcamctl, make_config, tmp_path):
    cfg = make_config({"upload": {"port": 9, "connect_timeout": 1}})
    with Ledger(str(tmp_path / "state/ledger.sqlite3")) as ledger:
        ledger.put_state("last_ingest", {"wall": time.time(), "files": 0, "bytes": 0, "result": "failed",
                                         "reason": f"cannot read {HOSTILE}"})
    r = dashcamctl("--config", str(cfg), "status")
    assert_harmless(r.stdout)
    assert f"(cannot read {SHOWN})" in r.stdout


def test_the_log_shows_a_staged_hostile_name_escaped(dashcamctl, make_config, tmp_path):
    card = tmp_path / "card/Normal/Front"
    card.mkdir(parents=True)
    (card / os.path.basename(HOSTILE)).write_bytes(b"x" * 100)
    r = dashcamctl("--config", str(make_config({"ingest": {"reserve_bytes": 0, "reserve_percent": 0}})),
                   "ingest", "--source", str(tmp_path / "card"))
    assert r.returncode == 0, r.stderr
    assert_harmless(r.stderr)
    assert f"staged {SHOWN}" in r.stderr


def test_the_journal_message_is_escaped_and_the_structured_field_keeps_the_raw_name():
    text = log._text("staged %s", (HOSTILE,), False)
    datagram = log.journal_datagram(text, 6, "dashcam.ingest", {"DASHCAM_FILE": HOSTILE})
    fields = dict(line.split(b"=", 1) for line in datagram.splitlines())
    assert fields[b"MESSAGE"] == f"staged {SHOWN}".encode()
    assert fields[b"DASHCAM_FILE"] == HOSTILE.encode()


def test_printable_leaves_ordinary_names_alone_and_escapes_what_a_terminal_would_obey():
    assert log.printable("Normal/Front/2024_0101_120000_F.MP4") == "Normal/Front/2024_0101_120000_F.MP4"
    assert log.printable("Ünïcode ok.mp4") == "Ünïcode ok.mp4"
    assert log.printable("a\nb\tc\x9bd\\e") == "a\\x0ab\\x09c\\x9bd\\\\e"
    assert log.printable("bad\udcffbyte") == "bad\\xffbyte"
    assert log.printable("line\nnext", keep="\n") == "line\nnext"
