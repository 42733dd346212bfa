"""The log module: the journal's native protocol, stderr lines, and the standard library before setup()."""
import logging
import os
import socket
import subprocess
import sys

import pytest

from dashcam_helpers import log

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def parse_native(datagram: bytes) -> dict:
    """The journal's reading of a native-protocol datagram (KEY=value, or KEY\\n<le64 size><value>\\n)."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            size = int.from_bytes(datagram[nl + 1:nl + 9], "little")
            value = datagram[nl + 9:nl + 9 + size]
            assert datagram[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def journald(tmp_path, monkeypatch):
    """A datagram socket standing in for /run/systemd/journal/socket."""
    path = str(tmp_path / "journal.socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setattr(log, "JOURNAL_SOCKET", path)
    yield sock
    sock.close()


@pytest.fixture
def restore_sink():
    saved = log._sink
    yield
    log._sink = saved


def test_a_record_reaches_the_journal_with_its_priority_identifier_and_fields(journald, restore_sink):
    log._sink = log._Journal(log.INFO)
    log.get("dashcam.policy").warning("battery %d %%", 12, extra={"DASHCAM_BATTERY_PERCENT": 12, "other": "x"})
    fields = parse_native(journald.recv(65536))
    assert fields == {"MESSAGE": "battery 12 %", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "dashcam",
                      "LOGGER": "dashcam.policy", "DASHCAM_BATTERY_PERCENT": "12"}


def test_a_message_of_several_lines_uses_the_length_prefixed_form(journald, restore_sink):
    log._sink = log._Journal(log.DEBUG)
    try:
        raise ValueError("bad card")
    except ValueError:
        log.get("dashcam").debug("traceback follows", exc_info=True)
    message = parse_native(journald.recv(65536))["MESSAGE"]
    assert message.startswith("traceback follows\nTraceback (most recent call last):")
    assert message.endswith("ValueError: bad card")


def test_below_the_level_nothing_is_sent(journald, restore_sink):
    log._sink = log._Journal(log.INFO)
    log.get("dashcam").debug("noise")
    log.get("dashcam").error("signal")
    assert parse_native(journald.recv(65536))["MESSAGE"] == "signal"


def test_without_a_journal_socket_the_record_goes_to_stderr_with_a_syslog_prefix(tmp_path, monkeypatch,
                                                                                    capsys, restore_sink):
    monkeypatch.setattr(log, "JOURNAL_SOCKET", str(tmp_path / "nobody-listens"))
    log._sink = log._Journal(log.INFO)
    log.get("dashcam").error("two\nlines")
    assert capsys.readouterr().err == "<3>two\n<3>lines\n"


def test_before_setup_records_go_to_the_standard_library(caplog, restore_sink):
    log._sink = log._Stdlib()
    caplog.set_level(logging.DEBUG, logger="dashcam")
    log.get("dashcam.camera").info("camera %s", "off", extra={"DASHCAM_CAMERA": "off"})
    (rec,) = [r for r in caplog.records if r.name == "dashcam.camera"]
    assert rec.getMessage() == "camera off" and rec.levelno == logging.INFO and rec.DASHCAM_CAMERA == "off"


def test_the_command_line_writes_readable_lines_to_stderr_and_does_not_import_logging(tmp_path):
    probe = ("import sys; from dashcam_helpers import cli, log; log.setup(False); "
             "log.get('dashcam').warning('hello %s', 'there'); log.get('dashcam').debug('hidden'); "
             "print('logging' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("JOURNAL_STREAM", None)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert r.stdout.strip() == "False"
    assert r.stderr.endswith(" WARNING hello there\n") and "hidden" not in r.stderr


def test_under_systemd_the_stderr_stream_identifies_the_journal(tmp_path):
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        probe = "from dashcam_helpers import log; print(log.under_journal())"
        for stream, expected in (("%d:%d" % (st.st_dev, st.st_ino), "True"), ("%d:%d" % (st.st_dev, st.st_ino + 1),
                                                                                  "False"), ("junk", "False")):
            env = dict(os.environ, PYTHONPATH=SRC, JOURNAL_STREAM=stream)
            r = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=f, text=True,
                               env=env, check=True)
            assert r.stdout.strip() == expected, stream
