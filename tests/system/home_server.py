"""The home server for the system tests: the host's sshd on 127.0.0.1, a random port, an rrsync key.

The guest reaches it as 10.0.2.2:<port> through QEMU's user networking. The only key it accepts
is the dashcam's, forced to `rrsync -wo -no-del -no-lock <root>` (write-only, no deleting,
confined to <root>): the authorized_keys line exactly as `dashcamctl keygen` prints it.
"""
import os
import socket
import subprocess
import time

from dashcam_helpers.ssh import authorized_keys_line


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, workdir):
        self.workdir = workdir
        self.root = os.path.join(workdir, "server-root")       # what rrsync exposes
        self.proc = None

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)    # sshd's privilege-separation dir
        self.host_key = os.path.join(self.workdir, "ssh_host_ed25519_key")
        self.client_key = os.path.join(self.workdir, "dashcam_id_ed25519")
        for key, comment in ((self.host_key, "dashcam-test-host"), (self.client_key, "dashcam@vm")):
            if not os.path.exists(key):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key],
                               check=True)
        with open(self.client_key + ".pub") as f:
            pub = f.read().strip()
        self.authorized_keys = os.path.join(self.workdir, "authorized_keys")
        with open(self.authorized_keys, "w") as f:
            f.write(authorized_keys_line(pub, self.root) + "\n")
        self.port = free_port()
        cfg = os.path.join(self.workdir, "sshd_config")
        with open(cfg, "w") as f:
            f.write("\n".join([
                "ListenAddress 127.0.0.1",
                "Port %d" % self.port,
                "HostKey %s" % self.host_key,
                "AuthorizedKeysFile %s" % self.authorized_keys,
                "PermitRootLogin forced-commands-only",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PidFile %s" % os.path.join(self.workdir, "sshd.pid"),
                "LogLevel VERBOSE",
                # as the README has users set it (quicker here): the server's side of a session
                # whose client went away (a cut link) ends instead of holding rrsync's lock
                "ClientAliveInterval 5",
                "ClientAliveCountMax 3",
                "",
            ]))
        self.log = os.path.join(self.workdir, "sshd.log")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start: " + open(self.log).read()[-2000:])
                time.sleep(0.1)
        return self

    def known_hosts_line(self, host="10.0.2.2"):
        with open(self.host_key + ".pub") as f:
            kind, blob = f.read().split()[:2]
        return "[%s]:%d %s %s\n" % (host, self.port, kind, blob)

    def private_key(self):
        with open(self.client_key, "rb") as f:
            return f.read()

    def files(self):
        """{path relative to root: absolute path} of every regular file the server holds."""
        out = {}
        for d, _, names in os.walk(self.root):
            for n in names:
                full = os.path.join(d, n)
                out[os.path.relpath(full, self.root)] = full
        return out

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
