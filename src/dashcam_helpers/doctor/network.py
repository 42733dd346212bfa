"""doctor's checks of what the Pi talks to: the home server (reachable, its host key pinned, our key
accepted, rrsync refusing --delete) and the MQTT broker. Every probe is bounded (SERVER_BUDGET)."""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from .. import runner
from .check import Check, fail, ok, tool, warn

SERVER_TIMEOUT = 3  # seconds for one connection to the server (TCP connect, ssh-keyscan, ssh)
SERVER_BUDGET = 8.0  # seconds for the two rsync probes together (each is one ssh session)
SECOND_PROBE_MIN = 2.0  # seconds the second probe (--delete refused?) gets at least
MQTT_BUDGET = 2.0  # seconds for the broker to accept us
# upload.host as the package ships it (etc/dashcam/config.yaml): a placeholder until the user sets it
SHIPPED_UPLOAD_HOST = "homeserver.lan"
RESTRICT_PROBE = ".dashcam-doctor-probe"  # a folder the --delete probe names: it deletes nothing anyway


def connection_timeout(budget: float) -> float:
    """Seconds for one connection to the server: SERVER_TIMEOUT, more with a longer --server-timeout."""
    return max(SERVER_TIMEOUT, budget * SERVER_TIMEOUT / SERVER_BUDGET)


def _quick(cfg, timeout: float = SERVER_TIMEOUT):
    """The configuration with the server's timeouts cut to ``timeout``: doctor must stay short."""
    up = cfg.upload
    t = int(round(timeout))
    return cfg.replace(upload=up.replace(connect_timeout=min(up.connect_timeout, t),
                                         io_timeout=min(up.io_timeout, t * 2)))


def pinned_keys(cfg) -> Optional[List[Tuple[str, str]]]:
    """(keytype, key) pinned for the server in upload.known_hosts; None when the file is missing."""
    from .. import ssh

    if not os.path.exists(cfg.upload.known_hosts):
        return None
    name = ssh.known_hosts_name(cfg.upload.host, cfg.upload.port)
    res = tool(["ssh-keygen", "-F", name, "-f", cfg.upload.known_hosts])  # also finds hashed entries
    out = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            out.append((parts[1], parts[2]))
    return out


def check_server(cfg, shipped_host: str = SHIPPED_UPLOAD_HOST, budget: float = SERVER_BUDGET) -> List[Check]:
    """``budget``: seconds for the key probes (--server-timeout); one connection gets connection_timeout()."""
    from .. import server, ssh
    from ..errors import DashcamError

    timeout = int(round(connection_timeout(budget)))
    quick = _quick(cfg, timeout)
    up = cfg.upload
    where = f"{up.host}:{up.port}"
    if not server.reachable(quick, timeout):
        if up.host == shipped_host:
            return [fail("server", f"upload.host is still the shipped example {up.host!r}, and {where} does not answer",
                         f"sudoedit {cfg.path}: set upload.host, upload.user and upload.dest_path to your server's "
                         "(README: Setting up the home server)")]
        return [warn("server", f"{where} does not answer (normal away from home)",
                     "at home: check upload.host and upload.port, and that the server is on")]
    checks = [ok("server", f"{where} answers")]
    try:
        pinned = pinned_keys(cfg)
    except runner.CommandError as e:  # no ssh-keygen: the tool check says why
        checks.append(warn("host key", f"cannot read {up.known_hosts}: {e}", "sudo apt install openssh-client"))
        return checks
    if pinned is None:
        checks.append(fail("host key", f"{up.known_hosts} does not exist", "sudo dashcamctl trust-host"))
        return checks
    if not pinned:
        checks.append(fail("host key", f"no key for {ssh.known_hosts_name(up.host, up.port)} in {up.known_hosts}",
                           "sudo dashcamctl trust-host"))
        return checks
    try:
        offered = {tuple(line.split()[1:3]) for line in ssh.scan_host_keys(quick, timeout)}
    except DashcamError as e:
        checks.append(warn("host key", f"cannot fetch the server's host key: {e}"))
        offered = None
    if offered is not None:
        if offered & set(pinned):
            checks.append(ok("host key", f"pinned in {up.known_hosts} and matching"))
        else:
            checks.append(fail("host key", f"the server's host key differs from the one pinned in {up.known_hosts}",
                               "if the server was reinstalled, check its fingerprint on the server "
                               "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then sudo dashcamctl trust-host"))
            return checks
    checks.extend(check_key(quick, budget))
    return checks


def _rsync_probe(cfg, options: List[str], dest: str, timeout: float) -> runner.Result:
    """A dry-run rsync of an empty folder to ``dest`` on the server, as the upload connects."""
    from .. import rsync

    return rsync.probe(cfg, options, dest, timeout)


def check_key(cfg, budget: float = SERVER_BUDGET) -> List[Check]:
    """The key is accepted and the destination takes a (dry-run) write; then the key is restricted:
    an rrsync -wo -no-del key refuses --delete (refusal expected; acceptance is a warning)."""
    import time

    from .. import rsync

    deadline = time.monotonic() + budget
    dest = cfg.upload.dest_path.rstrip("/") or "."
    try:
        # the first probe may take most of the budget: on a slow or busy machine the ssh handshake
        # alone takes seconds, and the second probe reuses what the first proved (the key works)
        res = _rsync_probe(cfg, [], dest + "/", budget - SECOND_PROBE_MIN)
    except runner.CommandTimeout as e:  # no answer proves nothing: neither accepted nor refused
        return [warn("ssh key accepted", f"cannot tell: {e}", "run sudo dashcamctl doctor again; "
                     "if it keeps timing out, check the server's load and sshd (UseDNS no)")]
    except runner.CommandError as e:
        return [fail("ssh key accepted", str(e))]
    if res.returncode != 0:
        problem = rsync.classify(cfg, res.returncode, res.stderr)
        said = str(problem) if problem else (runner.last_line(res.stderr) or runner.describe_returncode(res.returncode))
        return [fail("ssh key accepted", said, None if problem else "see README: Setting up the home server")]
    checks = [ok("ssh key accepted", f"{cfg.upload.user}@{cfg.upload.host} took a dry-run write to {dest}/")]
    try:
        res = _rsync_probe(cfg, ["--delete"], f"{dest}/{RESTRICT_PROBE}/", max(SECOND_PROBE_MIN, deadline - time.monotonic()))
    except runner.CommandError as e:
        return checks + [warn("ssh key restricted", f"cannot tell: {e}")]
    if res.returncode != 0 and rsync.refuses_delete(res.stderr):
        checks.append(ok("ssh key restricted", "the server refuses --delete with this key (rrsync -no-del)"))
    elif res.returncode == 0:
        checks.append(warn("ssh key restricted", "the key may delete on the server (a dry-run --delete was accepted)",
                           "on the server, use the authorized_keys line `dashcamctl keygen` prints "
                           "(command=\"/usr/bin/rrsync -wo -no-del -no-lock DIR\",restrict)"))
    else:
        checks.append(warn("ssh key restricted", f"cannot tell: {runner.last_line(res.stderr) or runner.describe_returncode(res.returncode)}"))
    return checks


# ---------------------------------------------------------------------------- MQTT


def check_mqtt(cfg) -> List[Check]:
    from .. import mqtt

    if cfg.mqtt is None:
        return [ok("mqtt", "not configured")]
    outcome = mqtt.send(cfg, [], budget=MQTT_BUDGET)
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    if outcome.ok:
        return [ok("mqtt", f"broker {where} accepted us")]
    if outcome.misconfigured:
        return [fail("mqtt", outcome.why, "check mqtt.username and mqtt.password_file")]
    return [warn("mqtt", outcome.why, "check mqtt.host and mqtt.port, and that the broker runs")]
