"""The README's admin instructions work as written: every shell block of its admin sections (from
"Installing on a Pi" to "Troubleshooting") is read from README.md when the test runs and run
exactly as it stands, line by line as a person pastes it into a root shell.

Where that is faithful on this machine, the block runs here (HOST): in a sandbox of its own, a
mount namespace where /etc, /srv and /var/lib/dashcam are private copies, so `adduser`, keygen's
key in /var/lib/dashcam/.ssh or the ledger's recovery act on those and nothing else. The Pi's
namespace has the package's user, config and state as the package installs them, dashcamctl is
this tree's launcher, and the camera's hub and the UPS are the fakes of tests/fakes (fake sysfs).
The home server's namespace is set up by the README's own server block, and serves its
`/srv/dashcam/.ssh/authorized_keys` with a real sshd (tests/sshd.py), so the line keygen prints
is proven against rrsync. `sudo` and `sudoedit` are small stand-ins (this machine has no sudo):
root already, `-u USER` runs as USER, sudoedit runs $EDITOR, which the test sets to make the edit
the README asks for.

Blocks that only make sense on a Pi (systemd, the package installed by apt, a camera on USB) run
in one booted guest in tests/system/test_readme_vm.py (VM). Every block is in exactly one of
the two lists, with its reason; a block added to the README fails the test until it is placed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import pytest

from conftest import FAKES, LAUNCHER, ROOT, SRC

README = ROOT / "README.md"
ADMIN_FIRST, ADMIN_LAST = "Installing on a Pi", "Troubleshooting"
SHELL = ("sh", "shell", "bash", "console")

# (section heading, its shell blocks counted from 1) -> why it runs where it does
HOST: Dict[str, str] = {
    "Installing on a Pi #3": "doctor against the fakes, after the server blocks below set up a real sshd",
    "Configuring #1": "check-config of the shipped config as a person edits it",
    "The camera and the battery #1": "status, mode and match against the fake hub, UPS and sysfs",
    "Setting up the home server (upload) #1": "the server's account and folder, in the server's namespace "
                                              "(apt finds both packages installed; adduser writes the private /etc)",
    "Setting up the home server (upload) #2": "keygen; the line it prints goes into the server's authorized_keys "
                                              "and a real sshd with rrsync must accept it",
    "Setting up the home server (upload) #3": "trust-host against that sshd, answering y",
    "Home Assistant (MQTT) #1": "the password file's owner and mode, then check-config with it",
    "Troubleshooting #1": "recovering a ledger the product itself set aside as damaged",
}
VM: Dict[str, str] = {
    "Installing on a Pi #1": "apt install of the .deb: dpkg, the sysusers user, systemd units",
    "Installing on a Pi #2": "one policy tick, started through systemd",
    "USB hubs: what can switch the camera #1": "uhubctl, lsusb and udevadm need a USB camera on a real bus",
    "The camera records whenever the car can move #1": "journalctl and systemctl list-timers need the units running",
    "Changing the interval #1": "policy-interval writes a drop-in and restarts the timer with systemctl",
    "Changing the interval #2": "policy-interval --show/--reset read systemd's loaded timer",
}
# what a command block starts with; a block without a language must not look like one
COMMAND_WORDS = ("sudo", "sudoedit", "dashcamctl", "systemctl", "journalctl", "apt", "cd ", "uhubctl", "ssh")


class Block(NamedTuple):
    section: str  # the ## heading it is under
    heading: str  # the nearest heading (## or ###)
    number: int  # its place among the shell blocks under that heading, from 1
    lang: str
    text: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.heading} #{self.number}"


def readme_blocks(text: str) -> List[Block]:
    """Every fenced block of the README, with the headings it is under (indented blocks too)."""
    blocks: List[Block] = []
    section = heading = ""
    counts: Dict[str, int] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        mt = re.match(r"^(#{2,3}) (.*)$", lines[i])
        if mt:
            heading = mt.group(2).strip()
            if len(mt.group(1)) == 2:
                section = heading
        fence = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if fence:
            indent, lang, start = fence.group(1), fence.group(2), i + 1
            body = []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                i += 1
            number = 0
            if lang in SHELL:
                counts[heading] = number = counts.get(heading, 0) + 1
            blocks.append(Block(section, heading, number, lang, "\n".join(body), start))
        i += 1
    return blocks


def admin_blocks() -> List[Block]:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    sections = [b.section for b in blocks]
    headings = re.findall(r"^## (.*)$", README.read_text(encoding="utf-8"), re.M)
    assert ADMIN_FIRST in headings and ADMIN_LAST in headings, headings
    admin = headings[headings.index(ADMIN_FIRST): headings.index(ADMIN_LAST) + 1]
    assert sections  # the parser found blocks at all
    return [b for b in blocks if b.section in admin]


def block(block_id: str) -> Block:
    found = [b for b in admin_blocks() if b.lang in SHELL and b.id == block_id]
    assert len(found) == 1, f"README: no shell block {block_id!r} in the admin sections"
    return found[0]


def commands(text: str) -> List[str]:
    """The block's commands as a person pastes them: one per line (a trailing \\ joins lines);
    blank and comment-only lines are no commands."""
    out: List[str] = []
    pending = ""
    for line in text.split("\n"):
        if pending:
            line = pending + "\n" + line
            pending = ""
        if line.rstrip().endswith("\\"):
            pending = line
            continue
        if line.strip() and not line.strip().startswith("#"):
            out.append(line)
    if pending:
        out.append(pending)
    return out


def as_pasted(text: str) -> str:
    """A script that runs each command of the block in one shell (cd and variables carry on, as in
    a terminal) and stops at the first that fails, naming it."""
    script = []
    for n, cmd in enumerate(commands(text), 1):
        script.append(f"{{\n{cmd}\n}}\nstatus=$?\n"
                      f'[ "$status" -eq 0 ] || {{ echo "README command {n} exited with $status" >&2; exit 1; }}')
    return "\n".join(script) + "\n"


# ---------------------------------------------------------------------------- what the README holds


def test_every_shell_block_of_the_admin_sections_runs_here_or_in_the_vm():
    found = {b.id for b in admin_blocks() if b.lang in SHELL}
    assert not set(HOST) & set(VM)
    assert found - set(HOST) - set(VM) == set(), "README blocks no test runs: add them to HOST or VM"
    assert (set(HOST) | set(VM)) - found == set(), "listed blocks the README no longer has"
    assert all(HOST.values()) and all(VM.values())


def test_a_block_without_a_shell_language_holds_no_command():
    for b in admin_blocks():
        if b.lang not in SHELL:
            first = b.text.strip().split("\n")[0]
            assert not first.startswith(COMMAND_WORDS), f"README line {b.line}: a command block must say ```sh"


def test_the_parser_reads_commands_as_pasted():
    text = "cd /x   # go\n\n# a comment\nls \\\n  -l\nfalse; echo $?\n"
    assert commands(text) == ["cd /x   # go", "ls \\\n  -l", "false; echo $?"]
    blocks = readme_blocks("## A\n```sh\nls\n```\n### B\n  ```sh\n  pwd\n  ```\n```text\nout\n```\n")
    assert [(b.section, b.heading, b.number, b.lang, b.text) for b in blocks] == [
        ("A", "A", 1, "sh", "ls"), ("A", "B", 1, "sh", "pwd"), ("A", "B", 0, "text", "out")]


# ---------------------------------------------------------------------------- the sandbox

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
                                reason="the sandbox is a mount namespace: root, unshare and nsenter")

SUDO = """#!/bin/sh
# sudo in the README sandbox: already root; -u USER runs the command as USER, as sudo does
if [ "$1" = "-u" ]; then
    user=$2; shift 2
    exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
fi
exec "$@"
"""
SUDOEDIT = """#!/bin/sh
# sudoedit in the README sandbox: $EDITOR on a copy, written back into the file (owner and mode kept)
for f in "$@"; do
    t=$(mktemp)
    [ -e "$f" ] && cat "$f" >"$t"
    $EDITOR "$t" || exit 1
    cat "$t" >"$f" && rm -f "$t"
done
"""


class Namespace:
    """A mount namespace held open by a sleeping process; commands enter it with nsenter."""

    def __init__(self, work: Path, env: Dict[str, str]):
        self.work, self.env = work, env
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sleep", "3600"],
                                     stdin=subprocess.DEVNULL)
        mine = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.readlink(f"/proc/{self.proc.pid}/ns/mnt") != mine and \
                        Path(f"/proc/{self.proc.pid}/comm").read_text().strip() == "sleep":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.02)

    @property
    def enter(self) -> List[str]:
        return ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--"]

    def sh(self, script: str, input: Optional[str] = None, env: Optional[Dict[str, str]] = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, "/bin/sh", "-c", script], input=input, capture_output=True, text=True,
                              env={**self.env, **(env or {})}, timeout=timeout, cwd="/")

    def run_block(self, b: Block, **kw) -> subprocess.CompletedProcess:
        r = self.sh(as_pasted(b.text), **kw)
        assert r.returncode == 0, f"README line {b.line} ({b.id}) as written:\n{b.text}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
        return r

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def private(ns: Namespace, work: Path, bindir: Path, *, dashcam_user: bool) -> None:
    """/etc, /srv, /media and /var/lib/dashcam of the namespace become copies under ``work``, the
    stand-ins (sudo, dashcamctl) are /usr/local/sbin; with ``dashcam_user`` the Pi's side as the
    package installs it (user, config, state)."""
    etc = work / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
    for d in ("srv", "media", "dashcam-state", "log"):
        (work / d).mkdir()
    script = [f"mount --bind {etc} /etc", f"mount --bind {work / 'srv'} /srv", f"mount --bind {work / 'log'} /var/log",
              f"mount --bind {work / 'media'} /media", f"mount --bind {bindir} /usr/local/sbin"]
    # /var/lib/dashcam does not exist here: a private /var/lib, with the host's entries bound back
    varlib = work / "varlib"
    varlib.mkdir()
    (work / "orig-varlib").mkdir()
    for name in os.listdir("/var/lib"):
        if name != "dashcam":
            (varlib / name).mkdir()
    (varlib / "dashcam").mkdir()
    script += [f"mount --bind /var/lib {work / 'orig-varlib'}", f"mount --bind {varlib} /var/lib"]
    for name in os.listdir("/var/lib"):
        if name == "dpkg" and not dashcam_user:  # the server's apt takes dpkg's lock: a private copy
            subprocess.run(["cp", "-a", "/var/lib/dpkg", str(work / "dpkg")], check=True)
            script.append(f"mount --bind {work / 'dpkg'} /var/lib/dpkg")
        elif name != "dashcam" and os.path.isdir(f"/var/lib/{name}"):
            script.append(f"mount --bind {work / 'orig-varlib' / name} /var/lib/{name}")
    script.append(f"mount --bind {work / 'dashcam-state'} /var/lib/dashcam")
    script.append("mount -t tmpfs tmpfs /var/cache/apt")
    r = ns.sh(" && ".join(script))
    assert r.returncode == 0, r.stderr
    if dashcam_user:
        # as debian/dashcam-manager.sysusers and .tmpfiles make them, and the shipped config
        r = ns.sh(textwrap.dedent(f"""\
            set -e
            groupadd --system dashcam
            useradd --system --gid dashcam --home-dir /var/lib/dashcam --shell /usr/sbin/nologin dashcam
            install -d -o dashcam -g dashcam -m 0750 /var/lib/dashcam/staging /var/lib/dashcam/staging/ready \\
                /var/lib/dashcam/staging/incoming
            install -d -o dashcam -g dashcam -m 0700 /var/lib/dashcam/.ssh
            chown dashcam:dashcam /var/lib/dashcam && chmod 0750 /var/lib/dashcam
            install -d -m 0755 /etc/dashcam
            install -m 0640 -o root -g dashcam {ROOT / 'etc' / 'dashcam' / 'config.yaml'} /etc/dashcam/config.yaml
            """))
        assert r.returncode == 0, r.stderr


@pytest.fixture
def sandbox(tmp_path, fake_hw):
    """(the Pi's namespace, make_server()): the Pi with the package's user, config and state, the
    fake hub and UPS; make_server() gives the home server's namespace, as bare as a new Debian."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("sudo", SUDO), ("sudoedit", SUDOEDIT),
                       ("dashcamctl", f'#!/bin/sh\nPYTHONPATH="{SRC}" exec "{LAUNCHER}" "$@"\n')):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    fake_hw.usb_device("1-1", authorized="0")
    env = {k: v for k, v in os.environ.items() if k not in ("DASHCAM_CONFIG", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
    env.update(fake_hw.env)
    env["PATH"] = f"/usr/local/sbin{os.pathsep}{FAKES}{os.pathsep}/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["CACHE_DIRECTORY"] = str(tmp_path / "cache")
    made: List[Namespace] = []

    def make(name: str, dashcam_user: bool) -> Namespace:
        work = tmp_path / name
        work.mkdir()
        ns = Namespace(work, env)
        made.append(ns)
        private(ns, work, bindir, dashcam_user=dashcam_user)
        return ns

    pi = make("pi", True)
    yield pi, lambda: make("server", False)
    for ns in made:
        ns.close()


def editor(tmp_path: Path, name: str, python: str) -> str:
    """An $EDITOR that makes the README's edit: ``python`` with ``path`` the file being edited."""
    script = tmp_path / f"edit-{name}.py"
    script.write_text(f"import sys\nimport yaml\npath = sys.argv[1]\n{textwrap.dedent(python)}")
    return f"/usr/bin/python3 {script}"


def set_config(tmp_path: Path, values: Dict[str, Dict[str, object]]) -> str:
    """An $EDITOR that sets ``values`` ({section: {key: value}}) in the YAML file it edits."""
    return editor(tmp_path, "config", f"""
        data = yaml.safe_load(open(path)) or {{}}
        for section, keys in {values!r}.items():
            data.setdefault(section, {{}}).update(keys)
        open(path, "w").write(yaml.safe_dump(data, sort_keys=False))
    """)


# ---------------------------------------------------------------------------- the blocks, run


@needs_root
def test_configuring_check_config_passes_once_the_upload_keys_are_set(sandbox, tmp_path):
    pi, _ = sandbox
    # the install section's edit: at least upload.host, upload.user, upload.dest_path
    r = pi.sh("sudoedit /etc/dashcam/config.yaml", env={"EDITOR": set_config(tmp_path, {
        "upload": {"host": "192.168.1.10", "user": "dashcam", "dest_path": "footage"}})})
    assert r.returncode == 0, r.stderr
    out = pi.run_block(block("Configuring #1"))
    assert "/etc/dashcam/config.yaml" in out.stdout + out.stderr
    # and it does fail on the README's own example of a bad value, naming the key
    pi.sh("sudoedit /etc/dashcam/config.yaml", env={"EDITOR": set_config(tmp_path, {"upload": {"port": "ssh"}})})
    r = pi.sh(as_pasted(block("Configuring #1").text))
    assert r.returncode != 0 and "upload.port" in r.stdout + r.stderr


@needs_root
def test_the_camera_and_battery_commands_run_against_the_fake_hub_and_ups(sandbox, fake_hw):
    pi, _ = sandbox
    fake_hw.usb_device("1-1", authorized="1")  # the camera in data mode before `mode record`
    r = pi.run_block(block("The camera and the battery #1"))
    assert fake_hw.authorized("1-1") == "0", "mode record switched the data off"
    assert not [argv for argv in fake_hw.uhubctl_argvs() if argv[-2:] == ["-a", "off"]], "--dry-run mode off switched"
    assert '"battery"' in r.stdout and "camera" in r.stdout
    assert r.stdout.rstrip().endswith("1"), "match /dev/sda1; echo $? says 1 (no such camera here)"


@needs_root
def test_the_server_blocks_give_a_key_the_servers_rrsync_accepts_and_restricts(sandbox, tmp_path):
    from sshd import SshServer

    pi, make_server = sandbox
    server = make_server()
    server.run_block(block("Setting up the home server (upload) #1"))
    r = server.sh("getent passwd dashcam && stat -c '%U:%G %a' /srv/dashcam /srv/dashcam/.ssh")
    assert r.returncode == 0 and r.stdout.split("\n")[1:3] == ["dashcam:dashcam 750", "dashcam:dashcam 750"], r.stdout
    assert r.stdout.split(":")[5] == "/srv/dashcam" and r.stdout.split("\n")[0].endswith(":/bin/sh")

    srv = SshServer(tmp_path / "sshd", tmp_path / "unused", user="dashcam",
                    authorized_keys_file="/srv/dashcam/.ssh/authorized_keys", strict_modes=True, login_shell=None,
                    prefix=server.enter)
    with srv:
        r = pi.sh("sudoedit /etc/dashcam/config.yaml", env={"EDITOR": set_config(tmp_path, {
            "upload": {"host": "127.0.0.1", "port": srv.port, "user": "dashcam", "dest_path": "footage"}})})
        assert r.returncode == 0, r.stderr
        printed = pi.run_block(block("Setting up the home server (upload) #2")).stdout
        line = printed.strip().split("\n")[-1]
        assert re.fullmatch(documented_key_line(), line), (line, documented_key_line())
        # step 4: that line, unchanged, in the server user's authorized_keys (dashcam's, 0600)
        r = server.sh('printf "%s\\n" "$0" >>/srv/dashcam/.ssh/authorized_keys && '
                      "chown dashcam:dashcam /srv/dashcam/.ssh/authorized_keys && "
                      "chmod 0600 /srv/dashcam/.ssh/authorized_keys".replace("$0", line.replace('"', '\\"')))
        assert r.returncode == 0, r.stderr
        pinned = pi.run_block(block("Setting up the home server (upload) #3"), input="y\n").stdout
        assert "Pinned" in pinned

        doctor = pi.sh(as_pasted(block("Installing on a Pi #3").text))
        lines = doctor.stdout.strip().split("\n")
        found = {ln.split()[1] + (" " + ln.split()[2] if ln.split()[1] in ("host", "ssh") else ""): ln.split()[0]
                 for ln in lines[:-1]}
        for name in ("server", "host key", "ssh key"):
            assert found.get(name) == "ok", doctor.stdout
        assert "ssh key accepted" in doctor.stdout and "ssh key restricted" in doctor.stdout
        assert all(("ssh key accepted" not in ln and "ssh key restricted" not in ln) or ln.startswith("ok") for ln in lines)
        assert re.fullmatch(r"\d+ checks: \d+ FAIL, \d+ warn", lines[-1])
        assert doctor.returncode == (1 if re.search(r" [1-9]\d* FAIL", lines[-1]) else 0)

        # step 6, "Try it", after a card was ingested as the Administering table says
        card = tmp_path / "pi" / "media" / "card" / "Normal" / "Front"
        card.mkdir(parents=True)
        (card / "2026_1125_233000_001F.MP4").write_bytes(os.urandom(4096))
        r = pi.sh("dashcamctl ingest --source /media/card && sudo -u dashcam dashcamctl upload")
        assert r.returncode == 0, r.stdout + r.stderr
        r = server.sh("find /srv/dashcam/footage -name '*.MP4'")
        assert r.stdout.strip().endswith("/2026/11/25/Normal/Front/2026_1125_233000_001F.MP4"), r.stdout + r.stderr


def documented_key_line() -> str:
    """The form of keygen's line as README step 3 shows it (its key and comment as wildcards)."""
    shown = [b for b in admin_blocks() if b.heading == "Setting up the home server (upload)" and b.lang == ""
             and b.text.strip().startswith("command=")]
    assert len(shown) == 1, "README step 3 shows the authorized_keys line"
    words = shown[0].text.strip().rsplit(" ", 2)
    return re.escape(words[0]) + r" AAAAC3NzaC1lZDI1NTE5AAAA\S+ \S+"


@needs_root
def test_the_mqtt_password_file_is_made_as_the_readme_says_and_accepted(sandbox, tmp_path):
    pi, _ = sandbox
    r = pi.run_block(block("Home Assistant (MQTT) #1"),
                     env={"EDITOR": editor(tmp_path, "password", 'open(path, "w").write("s3cret-pw\\n")')})
    r = pi.sh("stat -c '%U:%G %a' /etc/dashcam/mqtt.password && cat /etc/dashcam/mqtt.password")
    assert r.stdout.split("\n")[:2] == ["root:dashcam 640", "s3cret-pw"], r.stdout
    r = pi.sh("sudoedit /etc/dashcam/config.yaml && sudo dashcamctl check-config", env={"EDITOR": set_config(tmp_path, {
        "mqtt": {"enabled": True, "host": "homeassistant.lan", "username": "dashcam",
                 "password_file": "/etc/dashcam/mqtt.password"},
        "upload": {"host": "192.168.1.10", "user": "dashcam", "dest_path": "footage"}})})
    assert r.returncode == 0, r.stdout + r.stderr


@needs_root
def test_the_ledger_recovery_leaves_a_working_ledger_and_lifts_the_stop(sandbox, tmp_path):
    pi, _ = sandbox
    r = pi.sh("sudoedit /etc/dashcam/config.yaml", env={"EDITOR": set_config(tmp_path, {
        "upload": {"host": "127.0.0.1", "port": 9, "user": "dashcam", "dest_path": "footage"}})})
    card = tmp_path / "pi" / "media" / "card" / "Normal" / "Front"
    card.mkdir(parents=True)
    for n in range(3):
        (card / f"2026_1125_23300{n}_001F.MP4").write_bytes(os.urandom(2048))
    r = pi.sh("dashcamctl ingest --source /media/card")
    assert r.returncode == 0, r.stdout + r.stderr
    # damage the ledger's header: SQLite finds no database there, the next ingest sets it aside
    r = pi.sh("cd /var/lib/dashcam && sqlite3 ledger.sqlite3 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null && "
              "printf 'no ledger here..' | dd of=ledger.sqlite3 conv=notrunc 2>/dev/null")
    assert r.returncode == 0, r.stderr
    (card / "2026_1126_080000_001F.MP4").write_bytes(os.urandom(2048))
    r = pi.sh("dashcamctl ingest --source /media/card; dashcamctl status")
    assert "DAMAGED" in r.stdout + r.stderr, r.stdout + r.stderr
    pi.run_block(block("Troubleshooting #1"))
    r = pi.sh("dashcamctl status && stat -c '%U:%G %a' /var/lib/dashcam/ledger.sqlite3 && "
              "sqlite3 /var/lib/dashcam/ledger.sqlite3 'PRAGMA quick_check'")
    assert r.returncode == 0 and "DAMAGED" not in r.stdout, r.stdout + r.stderr
    assert "dashcam:dashcam 640" in r.stdout and r.stdout.strip().endswith("ok")
    r = pi.sh("dashcamctl ingest --source /media/card")
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------- the Administering table


def administering_commands() -> List[str]:
    """Every `dashcamctl ...` of the Administering table, as the table writes it (read at test time)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Administering\n")
    table = text[start: text.index("\n## ", start + 1)]
    found = []
    for row in table.splitlines():
        if row.startswith("|"):
            for code in re.findall(r"`([^`]+)`", row.replace("\\|", "\x00")):
                code = code.replace("\x00", "|")
                if code.startswith(("dashcamctl ", "sudo dashcamctl ")):
                    found.append(code)
    return found


def variants(command: str) -> List[List[str]]:
    """The argument lists a synopsis stands for: each [optional] part left out and put in, each
    a|b alternative; without `sudo` and `dashcamctl`."""
    words = command.split()
    words = words[words.index("dashcamctl") + 1:]
    text = " ".join(words)
    optional = re.findall(r"\[([^\]]+)\]", text)
    base = re.sub(r"\s*\[[^\]]+\]", "", text)
    out = []
    for alt in (base.split()[-1].split("|") if "|" in base else [None]):
        head = base if alt is None else " ".join(base.split()[:-1] + [alt])
        out.append(head.split())
        out.append((head + " " + " ".join(optional)).split())
    return out


def test_every_dashcamctl_command_of_the_administering_table_parses_as_written():
    from dashcam_helpers import cli

    found = administering_commands()
    assert len(found) >= 8, found
    parser = cli.build_parser()
    for command in found:
        for argv in variants(command):
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"README, Administering: `{command}` ({' '.join(argv)}) is no dashcamctl command")
            assert args.command in cli.COMMANDS


def test_the_table_synopses_expand_to_every_variant():
    assert variants("dashcamctl mode record|data|off") == [["mode", "record"]] * 2 + [["mode", "data"]] * 2 + \
        [["mode", "off"]] * 2
    assert variants("sudo dashcamctl files [--state staged] [--json]") == [["files"], ["files", "--state", "staged", "--json"]]
