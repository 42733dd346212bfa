"""Is the home server there? One TCP connect to its ssh port, bounded by a timeout.

A module of its own because the policy tick asks every 30 s on battery and must not pay
for importing the uploader (ssh options, rsync parsing) to find out.
"""

from __future__ import annotations

import socket
from .log import get as get_logger

log = get_logger("dashcam.server")


def reachable(cfg, timeout=None) -> bool:
    """True when a TCP connection to upload.host:upload.port succeeds within ``timeout``
    (default: upload.connect_timeout)."""
    timeout = cfg.upload.connect_timeout if timeout is None else timeout
    # the host as bytes: a str makes getaddrinfo import the IDNA codec (the schema allows ASCII only)
    host = cfg.upload.host.encode("ascii")
    try:
        with socket.create_connection((host, cfg.upload.port), timeout=timeout):
            return True
    except OSError as e:
        log.debug("server %s:%s not reachable: %s", cfg.upload.host, cfg.upload.port, e)
        return False
