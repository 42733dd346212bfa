"""Errors that end a dashcamctl run, each with the exit code it means (sysexits.h)."""

EX_OK = 0
EX_FAILURE = 1
EX_TEMPFAIL = 75  # try later: the server is unreachable, the camera is gone
EX_CONFIG = 78  # the configuration is wrong


class DashcamError(Exception):
    """A failure to report in one line, without a traceback."""

    exit_code = EX_FAILURE


class TryLater(DashcamError):
    """Nothing is broken, but the work cannot be done now (systemd and the policy retry)."""

    exit_code = EX_TEMPFAIL


class BadConfig(DashcamError):
    exit_code = EX_CONFIG
