"""ssh for the upload: the options every connection uses, reading ssh's failures, and onboarding.

rsync (rsync.py) runs over it; what rsync and the server's rrsync say is read there.

Every connection pins the server's host key (``StrictHostKeyChecking=yes`` against
``upload.known_hosts`` only), never asks anything (``BatchMode=yes``) and offers only the
configured key. ``dashcamctl keygen`` makes that key and prints the exact ``authorized_keys``
line for the server; ``dashcamctl trust-host`` fetches the server's host key, shows its
fingerprint and pins it. Nobody has to hand-craft ssh options.
"""

from __future__ import annotations

import argparse
import errno
import os
import pwd
import re
import socket
import tempfile
from typing import List, Optional

from . import runner, server
from .config import Config
from .errors import EX_FAILURE, EX_OK, DashcamError, TryLater
from .log import get as get_logger

log = get_logger("dashcam.ssh")

RRSYNC = "/usr/bin/rrsync"
DEFAULT_SERVER_DIR = "/srv/dashcam"
DASHCAM_USER = "dashcam"
CONTROL_PERSIST = 60  # seconds a shared connection outlives its last use (if close_shared never runs)


# --- ssh options -----------------------------------------------------------------------------


def ssh_argv(cfg: Config, control_path: Optional[str] = None) -> List[str]:
    """ssh and the options of every connection to the server (without the destination).

    ``control_path``: share one authenticated connection between the rsync runs of one upload
    (the first starts it and it lingers ``CONTROL_PERSIST`` seconds idle; `close_shared`
    ends it). Each rsync still gets its own session, so rrsync checks every one.
    """
    up = cfg.upload
    alive = max(5, up.io_timeout // 4)
    shared = []
    if control_path:
        shared = [
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control_path}",
            "-o", f"ControlPersist={CONTROL_PERSIST}",
        ]
    return [
        cfg.tools.ssh,
        "-F", "none",  # no user or system ssh_config: the same behaviour on every machine
        *shared,
        "-o", "BatchMode=yes",  # never prompt: a unit has nobody to answer
        "-o", "StrictHostKeyChecking=yes",  # only the pinned host key (dashcamctl trust-host)
        "-o", f"UserKnownHostsFile={up.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "UpdateHostKeys=no",
        "-o", "IdentitiesOnly=yes",
        "-o", f"IdentityFile={up.ssh_key}",
        "-o", f"ConnectTimeout={up.connect_timeout}",
        "-o", f"ServerAliveInterval={alive}",
        "-o", "ServerAliveCountMax=3",
        "-o", "ClearAllForwardings=yes",
        "-p", str(up.port),
    ]


def close_shared(cfg: Config, control_path: str) -> None:
    """End the shared connection of ``control_path`` (if one is running)."""
    if not os.path.exists(control_path):
        return
    try:
        runner.run(
            ssh_argv(cfg, control_path) + ["-O", "exit", "--", remote_host(cfg)],
            timeout=10,
            changes_state=False,
            check=False,
        )
    except runner.CommandError as e:
        log.debug("closing the shared ssh connection: %s", e)


def remote_host(cfg: Config) -> str:
    """user@host as rsync wants it (an IPv6 address in brackets).

    rsync hands the host to ssh as an argument of its own, after ssh's options and with no
    ``--`` before it: a host starting with "-" would be read as an ssh option (for instance
    -oProxyCommand=...). check-config refuses such a host; this refuses it once more."""
    host = cfg.upload.host
    if host.startswith("-") or cfg.upload.user.startswith("-"):
        raise DashcamError(f"upload.host {host!r} / upload.user {cfg.upload.user!r}: may not start with '-'")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{cfg.upload.user}@{host}"


def known_hosts_name(host: str, port: int) -> str:
    """The name ssh looks up in known_hosts: host for port 22, [host]:port otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


# --- ssh's failures --------------------------------------------------------------------------


class HostKeyProblem(DashcamError):
    """The server's host key is unknown or differs from the pinned one: never retried."""


class AuthProblem(DashcamError):
    """The server refused our key: never retried."""


# what ssh itself says when the server refuses every key it offered (not rsync's "Permission denied (13)")
SSH_AUTH_FAILED = re.compile(r"Permission denied \((publickey|password|keyboard-interactive|hostbased|gssapi)"
                             r"|Too many authentication failures")
# ssh's words for a connection that failed or dropped: it may work a little later
TRANSIENT = re.compile(
    r"Connection (refused|timed out|reset|closed)|closed by remote host|No route to host|"
    r"Network is unreachable|Broken pipe|client_loop|kex_exchange_identification|"
    r"Connection to \S+ closed|Could not resolve hostname|Temporary failure in name resolution|"
    r"connection unexpectedly closed|Timeout, server .* not responding",
    re.IGNORECASE,
)


def authorized_keys_line(public_key: str, server_dir: str = DEFAULT_SERVER_DIR) -> str:
    """-wo: write only, under server_dir. -no-del: no --delete* or --remove-* option (without
    it a write-only key can still delete the whole archive with rsync --delete). -no-lock: let
    two sessions of the key run at once (the upload verifies one round while it sends the
    next); without it the upload still works, one session at a time."""
    return f'command="{RRSYNC} -wo -no-del -no-lock {server_dir}",restrict {public_key.strip()}'


class BadServerDir(DashcamError):
    """A --server-dir that cannot stand in the key's line: a command-line error, as argparse's own."""

    exit_code = 2


def check_server_dir(server_dir: str) -> str:
    """``server_dir`` if it can stand in the authorized_keys line's command="..." as one plain
    absolute path; a BadServerDir saying why not otherwise. A quote would end the command (and
    let a second option such as command="/bin/sh" follow), a comma separates options,
    whitespace splits rrsync's arguments, and sshd runs the command through the account's
    shell, so no character the shell reads ($ ` ; | & < > * ? ! ...) may be in it either."""
    if not server_dir.startswith("/"):
        raise BadServerDir(f"--server-dir {server_dir!r}: must be an absolute path (starting with /)")
    bad = sorted({c for c in server_dir if not SERVER_DIR_CHAR.fullmatch(c)})
    if bad:
        raise BadServerDir(f"--server-dir {server_dir!r}: may hold only letters, digits and / . _ - + @ % = : "
                           f"(no quotes, commas, whitespace or shell characters; found {''.join(bad)!r})")
    return server_dir


SERVER_DIR_CHAR = re.compile(r"[\w/.+@%=:-]")


def refused(cfg: Config, stderr: str) -> Optional[DashcamError]:
    """The server's host key is not the pinned one, or the server refused our key: never retried."""
    up = cfg.upload
    name = known_hosts_name(up.host, up.port)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            return HostKeyProblem(
                f"the server {name} offers a host key that differs from the one pinned in {up.known_hosts}: "
                "refusing to upload. If the server was reinstalled, check its fingerprint on the server "
                f"(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and run: dashcamctl trust-host"
            )
        return HostKeyProblem(
            f"the host key of {name} is not pinned in {up.known_hosts}: refusing to upload. "
            "Run: dashcamctl trust-host (it shows the fingerprint and asks before pinning)"
        )
    if SSH_AUTH_FAILED.search(stderr):  # ssh's own words, never those of rsync's receiver
        return AuthProblem(
            f"the server {name} refused the key {up.ssh_key} for user {up.user}. Add its line to "
            f"~{up.user}/.ssh/authorized_keys on the server; `dashcamctl keygen` prints it, of the form: "
            + authorized_keys_line("ssh-ed25519 AAAA... dashcam@pi", "<DIR>")
        )
    return None


def key_missing(cfg: Config, stderr: str) -> Optional[AuthProblem]:
    """ssh could not read our key: never retried."""
    if ("Identity file" in stderr and "not accessible" in stderr) or "no such identity" in stderr.lower():
        return AuthProblem(f"the ssh key {cfg.upload.ssh_key} is missing or unreadable: run dashcamctl keygen")
    return None


# --- keygen ----------------------------------------------------------------------------------


def _chown_to_dashcam(paths: List[str]) -> None:
    """As root, hand the key to the dashcam user (when it exists): the upload runs as that user."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(DASHCAM_USER)
    except KeyError:
        return
    for path in paths:
        # through an O_NOFOLLOW fd: the dashcam user can write /var/lib/dashcam, so a link there
        # (.ssh, or the key) could point root's chown at any file; it is refused, not followed
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise DashcamError(f"refusing to give {path} to {DASHCAM_USER}: "
                               f"{'it is a symbolic link' if e.errno == errno.ELOOP else e.strerror}") from e
        try:
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
        finally:
            os.close(fd)


def _refuse_links(paths: List[str]) -> None:
    """keygen runs as root in the dashcam user's home: a link there is refused before any read or write."""
    for path in paths:
        if os.path.islink(path):
            raise DashcamError(f"refusing {path}: it is a symbolic link (root follows no links here; remove it)")


def keygen(cfg: Config, *, server_dir: str = DEFAULT_SERVER_DIR, dry_run: bool = False) -> str:
    """Create the ed25519 key at upload.ssh_key unless it exists; return the authorized_keys line."""
    check_server_dir(server_dir)
    key = cfg.upload.ssh_key
    pub = key + ".pub"
    _refuse_links([os.path.dirname(key), key, pub])
    if os.path.exists(key):
        log.info("%s exists; keeping it", key)
        if not os.path.exists(pub):
            res = runner.run(["ssh-keygen", "-y", "-f", key], timeout=30, changes_state=False)
            public = res.stdout.strip()
        else:
            with open(pub, encoding="ascii") as f:
                public = f.read().strip()
        return authorized_keys_line(public, server_dir)
    directory = os.path.dirname(key)
    comment = f"{DASHCAM_USER}@{socket.gethostname()}"
    if dry_run:
        log.info("dry run, not creating %s", key)
        return authorized_keys_line(f"ssh-ed25519 AAAA...(not created: dry run) {comment}", server_dir)
    created_dir = not os.path.isdir(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key], timeout=60)
    _chown_to_dashcam(([directory] if created_dir else []) + [key, pub])
    with open(pub, encoding="ascii") as f:
        public = f.read().strip()
    log.info("created %s", key)
    return authorized_keys_line(public, server_dir)


# --- trust-host ------------------------------------------------------------------------------


def scan_host_keys(cfg: Config, timeout: Optional[int] = None) -> List[str]:
    """The server's host keys as known_hosts lines ([host]:port keytype key), via ssh-keyscan."""
    up = cfg.upload
    timeout = timeout or up.connect_timeout
    try:
        res = runner.run(
            ["ssh-keyscan", "-p", str(up.port), "-T", str(timeout), "--", up.host],
            timeout=timeout * 3 + 5,
            changes_state=False,
            check=False,
        )
    except runner.CommandTimeout:
        raise TryLater(f"ssh-keyscan of {up.host}:{up.port} did not answer in time")
    lines = [l.strip() for l in res.stdout.splitlines() if l.strip() and not l.startswith("#")]
    if not lines:
        if not server.reachable(cfg):
            raise TryLater(f"the server {up.host}:{up.port} is not reachable; is it on and is the port right?")
        raise DashcamError(f"ssh-keyscan got no host key from {up.host}:{up.port}: {runner.last_line(res.stderr)}")
    name = known_hosts_name(up.host, up.port)
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            raise DashcamError(f"ssh-keyscan printed an unexpected line: {line!r}")
        out.append(f"{name} {parts[1]} {parts[2]}")
    return out


def fingerprints(lines: List[str]) -> List[str]:
    """ssh-keygen -lf of known_hosts lines: '256 SHA256:... [host]:port (ED25519)'."""
    with tempfile.NamedTemporaryFile("w", prefix="dashcam-hostkeys-", suffix=".txt") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        res = runner.run(["ssh-keygen", "-lf", f.name], timeout=30, changes_state=False)
    return [l for l in res.stdout.splitlines() if l.strip()]


def pin_host_keys(known_hosts: str, name: str, lines: List[str]) -> None:
    """Replace ``name``'s entries in ``known_hosts`` with ``lines``, atomically (tmp, fsync, rename)."""
    kept: List[str] = []
    if os.path.exists(known_hosts):
        with open(known_hosts, encoding="utf-8") as f:
            for line in f:
                hosts = line.split(None, 1)[0] if line.strip() and not line.startswith("#") else ""
                if name in hosts.split(","):
                    continue
                kept.append(line.rstrip("\n"))
    directory = os.path.dirname(known_hosts) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(kept + lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # public keys; the dashcam user must read it
        os.rename(tmp, known_hosts)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- commands ---------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace, load_config) -> int:
    check_server_dir(args.server_dir)  # before anything is created
    cfg = load_config(args)
    line = keygen(cfg, server_dir=args.server_dir, dry_run=args.dry_run)
    print(f"# Add this line to ~{cfg.upload.user}/.ssh/authorized_keys on {cfg.upload.host}")
    print(f"# (footage goes to {args.server_dir}/{cfg.upload.dest_path.lstrip('/')}/{cfg.upload.layout}):")
    print(line)
    return EX_OK


def cmd_trust_host(args: argparse.Namespace, cfg) -> int:
    up = cfg.upload
    lines = scan_host_keys(cfg)
    name = known_hosts_name(up.host, up.port)
    print(f"The server {name} offers these host keys:")
    for fp in fingerprints(lines):
        print(f"  {fp}")
    print("Compare with the server's own (run there): ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
    if args.dry_run:
        log.info("dry run, not pinning them in %s", up.known_hosts)
        return EX_OK
    if not args.yes:
        try:
            answer = input(f"Pin them in {up.known_hosts}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Not pinned.")
            return EX_FAILURE
    pin_host_keys(up.known_hosts, name, lines)
    print(f"Pinned {len(lines)} host key(s) of {name} in {up.known_hosts}")
    return EX_OK
