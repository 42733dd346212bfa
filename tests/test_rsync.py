"""rsync as the upload drives it: its answers read byte-exact, its failures told apart."""

from __future__ import annotations

import os

from dashcam_helpers import config, rsync, ssh



def test_itemized_output_and_stats_are_parsed():
    out = (
        "cd+++++++++ cam/2026/\n<f+++++++++ cam/2026/03/07/a b.mp4\n<fc.T...... cam/2026/03/07/c.mp4\n"
        ".d..t...... cam/\n\nNumber of files: 3\nLiteral data: 1,234,567 bytes\nMatched data: 5,505,024 bytes\n"
        "Total bytes sent: 1,240,001\n"
    )
    assert rsync.parse_itemized(out) == {"cam/2026/03/07/a b.mp4": "<f+++++++++", "cam/2026/03/07/c.mp4": "<fc.T......"}
    assert rsync.parse_stats(out) == {"sent": 1240001, "literal": 1234567, "matched": 5505024}


def test_transient_and_fatal_failures_are_told_apart(make_config):
    cfg = config.load(str(make_config()))
    assert rsync.is_transient(12, "") and rsync.is_transient(30, "") and rsync.is_transient(35, "") and rsync.is_transient(10, "")
    assert rsync.is_transient(255, "ssh: connect to host 10.0.0.1 port 22: Connection refused")
    assert not rsync.is_transient(255, "Host key verification failed.")
    assert not rsync.is_transient(23, "some files could not be transferred")
    assert isinstance(rsync.classify(cfg, 255, "Permission denied (publickey)."), ssh.AuthProblem)
    assert "trust-host" in str(rsync.classify(cfg, 255, "No ED25519 host key is known for x\nHost key verification failed."))
    assert rsync.classify(cfg, 12, "rsync: connection unexpectedly closed") is None


def test_rsync_escapes_are_undone_byte_for_byte():
    assert rsync.unescape("cam/a\\#134#101.MP4") == "cam/a\\#101.MP4"
    assert rsync.unescape("a\\#101.MP4") == "aA.MP4"                 # what the old parser missed
    assert rsync.unescape("cr\\#015lf\\#012esc\\#033.MP4") == "cr\rlf\nesc\x1b.MP4"
    assert rsync.unescape("tab\there \\#12x \\#9999") == "tab\there \\#12x \\#9999"   # not escapes
    assert rsync.unescape("bad\\#377\\#376.MP4") == os.fsdecode(b"bad\xff\xfe.MP4")
    assert rsync.unescape("Ünï.MP4") == "Ünï.MP4"
    assert rsync.unescape("no\\#777") is None                          # no byte: not rsync's


def test_itemized_output_names_every_file_and_only_a_dot_f_proves_identical():
    out = (".d          cam/\n.f          cam/a\\#134#101.MP4\n<fcsT...... cam/b.MP4\n"
           "<f+++++++++ cam/lf\\#012x.MP4\ncreated directory /proc/self/fd/3/footage\n"
           ".f          cam/tab\tname \n*deleting   cam/gone.MP4\n")
    answer = rsync.parse_itemized(out)
    assert answer == {"cam/a\\#101.MP4": ".f         ", "cam/b.MP4": "<fcsT......", "cam/lf\nx.MP4": "<f+++++++++",
                      "cam/tab\tname ": ".f         "}
    assert [n for n, c in answer.items() if rsync.identical(c)] == ["cam/a\\#101.MP4", "cam/tab\tname "]
    assert not rsync.identical(None) and not rsync.identical(rsync.UNCLEAR)
    # the same name given twice with different codes proves nothing
    assert rsync.parse_itemized(".f          x\n<fc........ x\n") == {"x": rsync.UNCLEAR}


def test_receiver_errors_and_sshs_own_refusal_are_told_apart(make_config):
    cfg = config.load(str(make_config()))
    auth = rsync.classify(cfg, 255, "dashcam@srv: Permission denied (publickey).\r\nrsync: connection unexpectedly closed")
    assert isinstance(auth, ssh.AuthProblem) and "refused the key" in str(auth)
    for errno_, said in (("13", "may not write"), ("28", "is full"), ("122", "is full"), ("30", "read-only")):
        stderr = (f'rsync: [receiver] mkstemp "/proc/self/fd/3/footage/c/.a.MP4.Xy12Ab" failed: Something ({errno_})\n'
                  "rsync error: some files/attrs were not transferred (code 23) at main.c(1338) [sender=3.2.7]\n")
        problem = rsync.classify(cfg, 23, stderr)
        assert isinstance(problem, rsync.ServerCannotWrite) and said in str(problem), errno_
        assert "/proc/self/fd" not in str(problem) and 'mkstemp "footage/c/.a.MP4.Xy12Ab"' in str(problem)
