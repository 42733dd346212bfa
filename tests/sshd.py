"""A real OpenSSH server on 127.0.0.1 for tests: own config, host key and authorized_keys in a temp dir.

Importable on its own (the VM tests' home server, tests/system/home_server.py, and bench/upload
reuse it):

    with SshServer(base_dir, restrict_dir=server_root) as server:
        server.port, server.host_key_pub, server.user, server.client_key

The client key is restricted as `dashcamctl keygen` prints it for the user's home server:
``command="/usr/bin/rrsync -wo -no-del -no-lock DIR",restrict`` (``key_line``: the function that
makes that line, e.g. dashcam_helpers.ssh.authorized_keys_line itself; ``rrsync_args``: other
options, for a key without -no-lock). The server logs in the user
running the tests (root in CI: allowed with ``PermitRootLogin prohibit-password``, keys only),
so no system user has to be created and nothing outside ``base_dir`` changes except
``/run/sshd`` (sshd's privilege-separation directory, which it insists on).

The account's login shell is /bin/sh, as for the account the README has users create
(``adduser --system --shell /bin/sh dashcam``): sshd runs every session's command through
that shell, and the bash of a development machine sources ~/.bashrc for commands that come
over ssh (Debian builds it so), which can cost more than the session itself (a pyenv init
there: about 0.13 s and a hundred processes a session). As root, sshd runs in a mount
namespace of its own where /etc/passwd is a copy naming /bin/sh; nothing else changes.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

SSHD = "/usr/sbin/sshd"
RRSYNC = "/usr/bin/rrsync"
KEYGEN_RRSYNC_ARGS = "-wo -no-del -no-lock"  # the options of the line `dashcamctl keygen` prints


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "") -> str:
    """A new ed25519 key pair at ``path`` (+ .pub), replacing any; returns the public key line."""
    for old in (Path(path), Path(str(path) + ".pub")):
        if old.exists():
            old.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    return Path(str(path) + ".pub").read_text().strip()


class SshServer:
    def __init__(self, base_dir: Path, restrict_dir: Path, *, rrsync_args: Optional[str] = KEYGEN_RRSYNC_ARGS,
                 login_shell: Optional[str] = "/bin/sh", key_line: Optional[Callable[[str, str], str]] = None,
                 drop_dac_override: bool = False, user: Optional[str] = None,
                 authorized_keys_file: Optional[str] = None, strict_modes: bool = False, prefix: Sequence[str] = ()):
        self.base = Path(base_dir)
        self.login_shell = login_shell
        self.restrict_dir = Path(restrict_dir)
        self.rrsync_args = rrsync_args
        self.key_line = key_line
        # as root, file permissions bind the server's rsync only without CAP_DAC_OVERRIDE (for
        # tests of a directory the server's user may not write): sshd runs without it then
        self.drop_dac_override = drop_dac_override
        self.port = free_port()
        self.user = user or getpass.getuser()
        # sshd's AuthorizedKeysFile (e.g. the server user's own .ssh/authorized_keys); None: the line above
        self.authorized_keys_file = authorized_keys_file
        self.strict_modes = strict_modes
        self.prefix = list(prefix)  # before sshd's argv, e.g. nsenter into a mount namespace
        self.host_key = self.base / "ssh_host_ed25519_key"
        self.client_key = self.base / "client_ed25519"
        self.authorized_keys = self.base / "authorized_keys"
        self.config = self.base / "sshd_config"
        self.pid_file = self.base / "sshd.pid"
        self.log_file = self.base / "sshd.log"
        self.proc: Optional[subprocess.Popen] = None

    # --- set up --------------------------------------------------------------------------

    def authorized_line(self, public_key: str) -> str:
        if self.key_line is not None:  # (public key, DIR) -> the line, exactly as keygen makes it
            return self.key_line(public_key, str(self.restrict_dir))
        if self.rrsync_args is None:  # an unrestricted key, for comparisons (the benchmark's plain rsync)
            return f"restrict {public_key}"
        return f'command="{RRSYNC} {self.rrsync_args} {self.restrict_dir}",restrict {public_key}'

    def start(self) -> "SshServer":
        self.base.mkdir(parents=True, exist_ok=True)
        self.restrict_dir.mkdir(parents=True, exist_ok=True)
        self.host_key_pub = keygen(self.host_key, "test-host")
        self.client_pub = keygen(self.client_key, "dashcam@test")
        self.authorized_keys.write_text(self.authorized_line(self.client_pub) + "\n")
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.pid_file}",
                    f"AuthorizedKeysFile {self.authorized_keys_file or self.authorized_keys}",
                    "AuthenticationMethods publickey",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    # tmp_path is not owned the way sshd wants a home directory
                    f"StrictModes {'yes' if self.strict_modes else 'no'}",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    "UseDNS no",
                    "LogLevel VERBOSE",
                    "MaxStartups 100",
                    # as the README recommends: a session whose client vanished ends
                    "ClientAliveInterval 5",
                    "ClientAliveCountMax 3",
                    "",
                ]
            )
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        # -D: stay in the foreground (our child, so we can stop it); -e: log to stderr (our log file)
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            self.prefix + self.with_login_shell(self.without_dac_override([SSHD, "-D", "-e", "-f", str(self.config)])),
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 20  # a bound, not a measure: a VM beside it can load the host
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log_file.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log_file.read_text()}")

    def with_login_shell(self, argv: List[str]) -> List[str]:
        """``argv`` run where the user's passwd entry names ``login_shell`` (as root; else unchanged).
        unshare and sh exec, so the process started is sshd itself."""
        if self.login_shell is None or os.geteuid() != 0 or shutil.which("unshare") is None:
            return argv
        passwd = self.base / "passwd"
        lines = []
        with open("/etc/passwd", encoding="utf-8") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) == 7 and fields[0] == self.user:
                    fields[6] = self.login_shell
                lines.append(":".join(fields) + "\n")
        passwd.write_text("".join(lines))
        passwd.chmod(0o644)
        return ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', str(passwd), *argv]

    def without_dac_override(self, argv: List[str]) -> List[str]:
        """``argv`` with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH out of its bounding set (as root,
        when asked): every process sshd starts then obeys file modes, as a normal user does."""
        if not self.drop_dac_override or os.geteuid() != 0:
            return argv
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]

    def known_hosts_line(self, host: str = "127.0.0.1") -> str:
        """The pinned host key as a client that reaches this server as ``host`` names it."""
        keytype, key = self.host_key_pub.split()[:2]
        return f"[{host}]:{self.port} {keytype} {key}"

    # --- faults --------------------------------------------------------------------------

    def session_pids(self) -> List[int]:
        """Per-connection sshd processes (children of the listener), i.e. live ssh sessions."""
        if self.proc is None:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                out.append(int(entry))
        return out

    def cut_sessions(self) -> int:
        """Kill every live session the way a dropped link ends it: the server side dies at once."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    # --- tear down -----------------------------------------------------------------------

    def stop(self) -> None:
        if self.proc is None:
            return
        self.cut_sessions()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "SshServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
