"""doctor's checks of what this Pi holds: the configuration and its file mode, the ssh key's mode,
the tools and the programs the units run, staging, the ledger, the clock."""

from __future__ import annotations

import os
import stat
from typing import Any, List, Optional, Sequence, Tuple

from .. import runner
from .check import DASHCAM_USER, TOOL_TIMEOUT, Check, Machine, fail, first_line, ok, tool, warn

def check_config(path: Optional[str]) -> Tuple[Any, List[Check]]:
    """(the Config or None, checks): the check-config result and its warnings (deprecated keys)."""
    from .. import config

    name = config.config_path(path)
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        checks = [fail("config", f"{e.path}: {p}", f"sudoedit {e.path}, then dashcamctl check-config") for p in e.problems]
        return None, checks
    checks = [ok("config", f"{name} is valid")]
    for w in cfg.warnings:
        checks.append(warn("config", f"{name}: {w}", f"sudoedit {name}: remove or rename the key"))
    return cfg, checks


def _mode_text(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _uid_of(user: str) -> Optional[int]:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def check_config_mode(path: str) -> Check:
    """The configuration: root:dashcam 0640; never writable by anyone but root."""
    try:
        st = os.stat(path)
    except OSError as e:
        return fail("config file mode", f"{path}: {e.strerror}")
    mode = _mode_text(st.st_mode)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_uid != 0:
        return fail("config file mode", f"{path} is {mode}, owner {_owner_name(st.st_uid)}: others can change what root runs",
                    f"sudo chown root:{DASHCAM_USER} {path} && sudo chmod 0640 {path}")
    if st.st_mode & stat.S_IROTH:
        return warn("config file mode", f"{path} is {mode}: every user can read it",
                    f"sudo chown root:{DASHCAM_USER} {path} && sudo chmod 0640 {path}")
    return ok("config file mode", f"{path} is {mode}, owner root")


def check_key_mode(cfg, m: Machine) -> Check:
    """The upload's private key: present, the dashcam user's, 0600 (ssh refuses a key others can read)."""
    key = cfg.upload.ssh_key
    try:
        st = os.stat(key)
    except FileNotFoundError:
        return fail("ssh key", f"{key} does not exist", "sudo dashcamctl keygen (then add the line it prints on the server)")
    except OSError as e:
        return fail("ssh key", f"{key}: {e.strerror}", "sudo dashcamctl doctor (run as root)")
    mode = _mode_text(st.st_mode)
    if st.st_mode & 0o077:
        return fail("ssh key", f"{key} is {mode}: ssh refuses a private key others can read", f"sudo chmod 0600 {key}")
    uid = _uid_of(m.user)
    if uid is not None and st.st_uid != uid:
        return fail("ssh key", f"{key} belongs to {_owner_name(st.st_uid)}: the upload runs as {m.user} and cannot read it",
                    f"sudo chown {m.user}: {key}")
    return ok("ssh key", f"{key} is {mode}, owner {_owner_name(st.st_uid)}")


# ---------------------------------------------------------------------------- tools and programs

VERSION_ARGS = {"uhubctl": ["-v"], "rsync": ["--version"], "ssh": ["-V"], "mount": ["--version"]}


def _version(argv: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """(version text, None) or (None, why not)."""
    try:
        res = tool(argv)
    except runner.CommandError as e:
        return None, str(e)
    text = first_line(res.stdout) or first_line(res.stderr)
    if res.returncode != 0 and not text:
        return None, f"{argv[0]} exited with {runner.describe_returncode(res.returncode)}"
    return text or "(no version printed)", None


def check_tools(cfg) -> List[Check]:
    t = cfg.tools
    wanted: List[Tuple[str, str, str]] = [  # (label, program, the key or package that fixes it)
        ("rsync", t.rsync, "sudo apt install rsync (or set tools.rsync)"),
        ("ssh", t.ssh, "sudo apt install openssh-client (or set tools.ssh)"),
        ("mount", "mount", "sudo apt install mount"),
    ]
    if cfg.camera.backend == "uhubctl":
        wanted.insert(0, ("uhubctl", t.uhubctl, "sudo apt install uhubctl (or set tools.uhubctl)"))
    checks = []
    for label, program, fix in wanted:
        if runner.hidden_from_units(program):
            checks.append(check_program(f"tools.{label}", program))
            continue
        version, why = _version([program] + VERSION_ARGS[label])
        if version is None:
            checks.append(fail(f"tool {label}", why or "", fix))
        else:
            checks.append(ok(f"tool {label}", f"{program}: {version}"))
    if cfg.battery.source == "lifepo4wered" and runner.hidden_from_units(t.lifepo4wered_cli):
        checks.append(check_program("tools.lifepo4wered_cli", t.lifepo4wered_cli))
    elif cfg.battery.source == "lifepo4wered":
        # it has no --version: `get VBAT` proves it runs (the full read follows in the battery check)
        path = _which(t.lifepo4wered_cli)
        if path is None:
            checks.append(fail("tool lifepo4wered-cli", f"{t.lifepo4wered_cli}: not found on PATH",
                               "install the UPS vendor's lifepo4wered-cli, or set tools.lifepo4wered_cli"))
        else:
            checks.append(ok("tool lifepo4wered-cli", path))
    return checks


def _which(name: str) -> Optional[str]:
    import shutil

    return shutil.which(name)


def programs(cfg) -> List[Tuple[str, str]]:
    """(config key, program) of every program a unit runs, as configured."""
    out = []
    if cfg.battery.source == "command" and cfg.battery.command:
        out.append(("battery.command", cfg.battery.command))
    if cfg.camera.backend == "scripts":
        for key in ("record_script", "data_script", "off_script"):
            value = getattr(cfg.camera, key)
            if value:
                out.append((f"camera.{key}", value))
    return out


def check_program(key: str, program: str) -> Check:
    """Present, executable, and visible to the unit that runs it (not behind ProtectHome=yes)."""
    name = f"program {key}"
    hidden = runner.hidden_from_units(program)
    if hidden:
        return fail(name, f"{program} is under {hidden}, which the units cannot see (ProtectHome=yes)",
                    f"sudo install -m 0755 {program} /usr/local/bin/ and set {key}: /usr/local/bin/{os.path.basename(program)}")
    path = program if "/" in program else _which(program)
    if path is None:
        return fail(name, f"{program}: not found on PATH", f"install it, or set {key} to its absolute path")
    if not os.path.isfile(path):
        return fail(name, f"{path} does not exist", f"set {key} to the program's path")
    if not os.access(path, os.X_OK):
        return fail(name, f"{path} is not executable", f"sudo chmod +x {path}")
    st = os.stat(path)
    if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        return warn(name, f"{path} is {_mode_text(st.st_mode)}: others can change what a unit runs",
                    f"sudo chmod go-w {path}")
    return ok(name, path)


def check_programs(cfg) -> List[Check]:
    return [check_program(key, program) for key, program in programs(cfg)]


# ---------------------------------------------------------------------------- staging and ledger


def check_staging(cfg, m: Machine) -> List[Check]:
    from .. import staging

    checks = []
    path = cfg.paths.local_staging
    try:
        free, reserve = staging.space(cfg)
    except OSError as e:
        return [fail("staging space", f"{path}: {e.strerror}")]
    gib = 1024 ** 3
    if free < reserve:
        checks.append(warn("staging space", f"{free / gib:.1f} GiB free, below the reserve of {reserve / gib:.1f} GiB: ingest copies nothing",
                           "free space there, or lower ingest.reserve_bytes / ingest.reserve_percent"))
    else:
        checks.append(ok("staging space", f"{free / gib:.1f} GiB free, reserve {reserve / gib:.1f} GiB"))
    uid = _uid_of(m.user)
    for label, d in (("staging", path), ("state dir", cfg.paths.state_dir)):
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            checks.append(fail(f"{label} owner", f"{d} does not exist", f"sudo install -d -o {m.user} -g {m.user} -m 0750 {d}"))
            continue
        except OSError as e:
            checks.append(fail(f"{label} owner", f"{d}: {e.strerror}"))
            continue
        mode = _mode_text(st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            checks.append(fail(f"{label} owner", f"{d} is not a directory", f"move it away, then sudo install -d -o {m.user} -g {m.user} -m 0750 {d}"))
        elif st.st_mode & stat.S_IWOTH:
            checks.append(fail(f"{label} owner", f"{d} is {mode}: every user can write there", f"sudo chmod 0750 {d}"))
        elif uid is not None and st.st_uid != uid:
            checks.append(fail(f"{label} owner", f"{d} belongs to {_owner_name(st.st_uid)}: the upload ({m.user}) cannot prune it",
                               f"sudo chown -R {m.user}: {d}"))
        else:
            checks.append(ok(f"{label} owner", f"{d} is {mode}, owner {_owner_name(st.st_uid)}"))
    checks.append(check_ledger(cfg.paths.ledger))
    return checks


def check_ledger(path: str) -> Check:
    """Readable, and SQLite's own PRAGMA quick_check says ok; opened read-only."""
    import sqlite3

    from ..ledger import damage_marker, damage_message

    marker = damage_marker(path)
    if marker is not None:
        return fail("ledger", damage_message(path, marker))
    if not os.path.exists(path):
        return ok("ledger", f"{path} not created yet (the first ingest creates it)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TOOL_TIMEOUT)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        return fail("ledger", f"{path}: {e}", "sudo dashcamctl doctor (as root); a damaged ledger: README, Troubleshooting")
    said = [str(r[0]) for r in rows]
    if said == ["ok"]:
        return ok("ledger", f"{path}: quick_check ok")
    return fail("ledger", f"{path}: quick_check: {'; '.join(said[:3])[:160]}",
                "stop the units, keep a copy, see README: Troubleshooting (a damaged ledger)")


# ---------------------------------------------------------------------------- clock


def check_clock(m: Machine) -> Check:
    try:
        res = tool([m.timedatectl, "show", "-p", "NTPSynchronized", "--value"])
    except runner.CommandError as e:
        return warn("clock", f"cannot ask timedatectl: {e}")
    said = res.stdout.strip()
    if res.returncode == 0 and said == "yes":
        return ok("clock", "NTP synchronised")
    if res.returncode == 0 and said == "no":
        return warn("clock", "not NTP synchronised: the Pi has no RTC, clip dates and the policy's time window depend on it",
                    "sudo timedatectl set-ntp true (and give the Pi a network with NTP)")
    return warn("clock", f"timedatectl said {first_line(said or res.stderr)!r}")
