"""Is the home server there? One TCP connect to its ssh port, bounded by a timeout.

A module of its own because the policy tick asks every 30 s on battery and must not pay
for importing the uploader (ssh options, rsync parsing) to find out. For the same reason it
uses ``_socket``, the C module under ``socket``: one connect needs none of what the
``socket`` module adds (its enums and selectors cost a tenth of a tick's CPU).
"""

from __future__ import annotations

import _socket
import _thread

from .log import get as get_logger

log = get_logger("dashcam.server")


def reachable(cfg, timeout=None, *, resolve=_socket.getaddrinfo) -> bool:
    """True when a TCP connection to upload.host:upload.port succeeds within ``timeout``
    (default: upload.connect_timeout), trying each address the host name resolves to.
    ``resolve``: getaddrinfo (a test passes a resolver of its own)."""
    timeout = cfg.upload.connect_timeout if timeout is None else timeout
    # the host as bytes: a str makes getaddrinfo import the IDNA codec (the schema allows ASCII only)
    host = cfg.upload.host.encode("ascii")
    try:
        addresses = _resolve(resolve, host, cfg.upload.port, timeout)
    except OSError as e:                      # the name does not resolve (gaierror is an OSError)
        addresses, error = [], e
    for family, kind, proto, _, address in addresses:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return True
        except OSError as e:
            error = e
        finally:
            sock.close()
    log.debug("server %s:%s not reachable: %s", cfg.upload.host, cfg.upload.port, error)
    return False


def _resolve(resolve, host: bytes, port: int, timeout: float) -> list:
    """getaddrinfo within ``timeout`` seconds (OSError when it takes longer). The resolver's own
    timeouts (5 s a try, two tries, with a DNS server that no longer answers) are not bounded by
    the connect timeout: the resolver runs in a thread of its own, left behind when it is late."""
    answer: list = []
    done = _thread.allocate_lock()
    done.acquire()

    def work() -> None:
        try:
            answer.append(resolve(host, port, 0, _socket.SOCK_STREAM))
        except Exception as e:  # noqa: B902 - an answer like any other, handed to the prober
            answer.append(e if isinstance(e, OSError) else OSError(f"{type(e).__name__}: {e}"))
        finally:
            done.release()

    _thread.start_new_thread(work, ())
    if not done.acquire(timeout=max(timeout, 0.001)):
        raise OSError(f"{host.decode('ascii', 'replace')} did not resolve within {timeout} s")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]
