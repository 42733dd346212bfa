"""The policy's reachability probe: one TCP connect to the server's ssh port."""
import socket
import threading

import pytest

from dashcam_helpers import server


class Upload:
    def __init__(self, host, port, connect_timeout=2):
        self.host, self.port, self.connect_timeout = host, port, connect_timeout


class Cfg:
    def __init__(self, host, port):
        self.upload = Upload(host, port)


def listening(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(1)
    return s


def test_a_listening_server_is_reachable():
    with listening() as s:
        assert server.reachable(Cfg("127.0.0.1", s.getsockname()[1])) is True


def test_a_closed_port_is_not_reachable():
    with listening() as s:
        port = s.getsockname()[1]
    assert server.reachable(Cfg("127.0.0.1", port)) is False


def test_a_name_is_resolved_and_each_of_its_addresses_tried():
    # localhost resolves to ::1 and/or 127.0.0.1; a server on 127.0.0.1 only is found either way
    with listening() as s:
        assert server.reachable(Cfg("localhost", s.getsockname()[1])) is True


def test_ipv6():
    try:
        s = listening(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 on the loopback here")
    with s:
        assert server.reachable(Cfg("::1", s.getsockname()[1])) is True


def test_a_name_whose_resolver_does_not_answer_is_not_reachable_within_the_timeout():
    # leaving home, the WiFi fades: the DNS server (the home router) no longer answers and
    # getaddrinfo waits its own timeouts (5 s a try, two tries), which the connect timeout does not
    # bound. The ignition watcher probes every second for the car leaving: the probe must end
    # within its timeout, not when the resolver gives up
    released = []
    release, answered = threading.Event(), threading.Event()

    def resolve(*args):
        released.append(release.wait(30))  # True: the test let it go; False: the probe waited for it
        answered.set()
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    assert server.reachable(Cfg("nas.example", 22), 0.2, resolve=resolve) is False
    release.set()
    answered.wait(30)
    assert released == [True]  # the probe returned before the resolver did
