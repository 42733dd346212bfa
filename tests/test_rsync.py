"""rsync as the upload drives it: its answers read byte-exact, its failures told apart."""

from __future__ import annotations

import os

import pytest

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


class File:
    def __init__(self, remote, local="/nonexistent", size=1000):
        self.remote, self.local, self.size = remote, local, size


def failing_run(stderrs, calls):
    """A command runner whose rsync fails with each of ``stderrs`` (status 12 or 255), then succeeds."""
    def run(argv, **kw):
        calls.append(argv)
        if len(calls) <= len(stderrs):
            code = 255 if "ssh" in stderrs[len(calls) - 1] or "Host key" in stderrs[len(calls) - 1] else 12
            raise rsync.runner.CommandFailed(argv, code, "", stderrs[len(calls) - 1], "rsync ...")
        return rsync.runner.Result(argv, 0, "Literal data: 1,000 bytes\nTotal bytes sent: 1,100\n", "")
    return run


def test_a_send_that_may_pass_is_retried_with_backoff_and_its_cut_names_are_reported(make_config):
    cfg = config.load(str(make_config({"poll": {"upload_retries": 2}})))
    calls, slept, sending, cut = [], [], [], []
    tool = rsync.Rsync(cfg, sleep=slept.append, run=failing_run(["rsync: connection unexpectedly closed"] * 2, calls))
    sent = tool.send([File("cam/a.MP4"), File("cam/b.MP4")], resume=False, sending=sending.append,
                     cut=lambda names, why: cut.append((names, why)))
    assert sent.failure is None and sent.stats["literal"] == 1000 and len(calls) == 3
    assert slept == [2.0, 4.0]                                   # exponential backoff between the tries
    assert cut == [(["cam/a.MP4", "cam/b.MP4"], "sending was cut off")] * 2
    assert sending[-1] == []                                     # the last session ended in order
    # the first try skips what the server has; a retry completes our own partial files
    assert "--ignore-existing" in calls[0] and "--ignore-existing" not in calls[1]
    tool.clean()


def test_a_failure_retrying_cannot_fix_is_raised_at_once_and_one_that_may_pass_after_the_retries(make_config):
    cfg = config.load(str(make_config({"poll": {"upload_retries": 1}})))
    calls = []
    tool = rsync.Rsync(cfg, sleep=lambda s: None, run=failing_run(["Host key verification failed."], calls))
    with pytest.raises(ssh.HostKeyProblem):
        tool.checksums([File("cam/a.MP4")])
    assert len(calls) == 1
    tool.clean()
    calls.clear()
    tool = rsync.Rsync(cfg, sleep=lambda s: None, run=failing_run(["rsync: connection unexpectedly closed"] * 3, calls))
    with pytest.raises(rsync.UploadFailed) as failed:
        tool.listing([File("cam/a.MP4")])
    assert failed.value.transient and "(after 1 retries)" in str(failed.value) and len(calls) == 2
    tool.clean()
