"""The home server for the system tests: tests/sshd.py's sshd on the host's 127.0.0.1, a random port.

The guest reaches it as 10.0.2.2:<port> through QEMU's user networking. The only key it accepts
is the dashcam's, forced to `rrsync -wo -no-del -no-lock <root>` (write-only, no deleting,
confined to <root>): the authorized_keys line exactly as `dashcamctl keygen` prints it.
"""
import os

from dashcam_helpers.ssh import authorized_keys_line
from sshd import SshServer

GUEST_SEES_HOST_AS = "10.0.2.2"


class Server(SshServer):
    def __init__(self, workdir):
        # the login shell stays the host user's own, as the guest's scenarios were measured with
        super().__init__(workdir, os.path.join(workdir, "server-root"), key_line=authorized_keys_line,
                         login_shell=None)
        self.workdir = workdir
        self.root = str(self.restrict_dir)      # what rrsync exposes
        self.log = str(self.log_file)

    def known_hosts_line(self, host=GUEST_SEES_HOST_AS):
        return super().known_hosts_line(host) + "\n"

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
