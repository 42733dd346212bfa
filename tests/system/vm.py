"""Drive a QEMU guest for the system tests: boot, run commands, move files, plug and yank devices.

One `VM` is one QEMU process on a throw-away qcow2 overlay of the cached image (see image.py):
- QMP (unix socket) for the machine: hot-plug usb-storage, device_del, set_link, kill;
- qemu-guest-agent over virtio-serial for the guest: run a command, read and write files;
- a 9p share (tag `host`, mounted at /mnt/host in the guest) for bulk files and live logs;
- user networking: the guest reaches the host's 127.0.0.1 as 10.0.2.2.
Every wait has a timeout and polls a condition; nothing sleeps a fixed time hoping it is done.
"""
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

QEMU = "qemu-system-x86_64"
HOST_FROM_GUEST = "10.0.2.2"
SHARE_IN_GUEST = "/mnt/host"


class VMError(Exception):
    pass


def wait_for(predicate, timeout, what, interval=0.2):
    """Poll predicate() until it returns a true value; return it, or raise naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (VMError, OSError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise VMError("timed out after %.0f s waiting for %s%s"
                          % (timeout, what, " (last error: %s)" % last_exc if last_exc else ""))
        time.sleep(interval)


def kvm_works():
    """KVM is used only when DASHCAM_VM_ACCEL=kvm: a stock Debian kernel did not boot on it here."""
    return os.environ.get("DASHCAM_VM_ACCEL") == "kvm" and os.access("/dev/kvm", os.R_OK | os.W_OK)


class _Json:
    """A line-oriented JSON socket (QMP and the guest agent both speak it)."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise VMError("socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip(b"\xff").strip()
        return json.loads(line) if line else self.recv(timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class QMP:
    """QEMU's monitor: commands answered in order; asynchronous events kept for wait_event()."""

    def __init__(self, path):
        self.conn = _Json(path, 10)
        self.events = []
        self.lock = threading.Lock()
        self.conn.recv(10)                       # greeting
        self.command("qmp_capabilities")

    def command(self, cmd, **args):
        with self.lock:
            self.conn.send({"execute": cmd, "arguments": args} if args else {"execute": cmd})
            while True:
                msg = self.conn.recv(30)
                if "event" in msg:
                    self.events.append(msg)
                    continue
                if "error" in msg:
                    raise VMError("QMP %s: %s" % (cmd, msg["error"].get("desc")))
                return msg.get("return")

    def wait_event(self, name, timeout, match=None):
        deadline = time.monotonic() + timeout
        while True:
            for ev in list(self.events):
                if ev["event"] == name and (match is None or match(ev.get("data", {}))):
                    self.events.remove(ev)
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMError("no QMP event %s within %.0f s" % (name, timeout))
            with self.lock:
                try:
                    msg = self.conn.recv(min(left, 1.0))
                    if "event" in msg:
                        self.events.append(msg)
                except socket.timeout:
                    pass

    def close(self):
        self.conn.close()


class Agent:
    """qemu-guest-agent: guest-exec, guest-file-*; re-synchronised after every (re)connect."""

    def __init__(self, path):
        self.path = path
        self.conn = None

    def connect(self, timeout=5):
        self.close()
        self.conn = _Json(self.path, timeout)
        token = int(time.time() * 1000) % 2**31
        # guest-sync-delimited flushes anything stale; the agent answers with a 0xff marker first
        self.conn.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while True:
            msg = self.conn.recv(timeout)
            if msg.get("return") == token:
                return

    def call(self, name, timeout=30, **args):
        if self.conn is None:
            self.connect()
        self.conn.send({"execute": name, "arguments": args} if args else {"execute": name})
        try:
            msg = self.conn.recv(timeout)
        except (socket.timeout, OSError, VMError) as exc:
            self.close()
            raise VMError("guest agent %s: %s" % (name, exc))
        if "error" in msg:
            raise VMError("guest agent %s: %s" % (name, msg["error"].get("desc")))
        return msg.get("return")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Result:
    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    def __repr__(self):
        return "Result(%r, rc=%s, out=%r, err=%r)" % (self.argv, self.rc, self.out[-2000:], self.err[-2000:])


class VM:
    def __init__(self, image_dir, workdir, base=None, memory_mib=1024, cpus=2):
        self.image_dir = image_dir
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.share = os.path.join(workdir, "share")
        os.makedirs(self.share, exist_ok=True)
        self.base = base or os.path.join(image_dir, "rootfs.img")
        self.disk = os.path.join(workdir, "disk.qcow2")
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.proc = None
        self.qmp = None
        self.agent = None
        self.console = os.path.join(workdir, "console.log")
        self.boots = 0
        self._plugged = {}

    # -- the machine ------------------------------------------------------------------------------

    def create_disk(self):
        fmt = "qcow2" if self.base.endswith(".qcow2") else "raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base, "-F", fmt, self.disk],
                       check=True)

    def start(self, wait=True, timeout=240):
        """Boot (creating the overlay on the first boot; later boots keep the disk, like a real Pi)."""
        if not os.path.exists(self.disk):
            self.create_disk()
        self.boots += 1
        qmp_path = os.path.join(self.workdir, "qmp.sock")
        qga_path = os.path.join(self.workdir, "qga.sock")
        for p in (qmp_path, qga_path):
            if os.path.exists(p):
                os.unlink(p)
        accel = "kvm" if kvm_works() else "tcg"
        argv = [
            QEMU, "-machine", "q35", "-accel", accel, "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", os.path.join(self.image_dir, "vmlinuz"),
            "-initrd", os.path.join(self.image_dir, "initrd.img"),
            # the journal goes to the serial console too: console.log.N is a live post-mortem
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=false"
                       " systemd.journald.forward_to_console=1 systemd.journald.max_level_console=info",
            "-drive", "file=%s,if=virtio,format=qcow2,discard=unmap" % self.disk,
            "-serial", "file:%s.%d" % (self.console, self.boots),
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path,
            "-chardev", "socket,path=%s,server=on,wait=off,id=qga0" % qga_path,
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-netdev", "user,id=net0,net=10.0.2.0/24",
            "-device", "virtio-net-pci,netdev=net0,id=nic0",
            "-device", "qemu-xhci,id=xhci",
            # q35's root bus takes no hot-plug: free root ports for disks plugged while running
            "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
            "-device", "pcie-root-port,id=rp2,chassis=2,slot=2",
            "-virtfs", "local,path=%s,mount_tag=host,security_model=none,id=share0" % self.share,
        ]
        self.argv = argv
        log = open(os.path.join(self.workdir, "qemu.log"), "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.started = time.monotonic()
        wait_for(lambda: os.path.exists(qmp_path) or self._died(), 30, "the QMP socket")
        self._died(raise_=True)
        self.qmp = QMP(qmp_path)
        self.agent = Agent(qga_path)
        self._plugged = {}
        if wait:
            self.wait_booted(timeout)
        return self

    def _died(self, raise_=False):
        if self.proc is not None and self.proc.poll() is not None:
            if raise_:
                raise VMError("QEMU exited with %s; see %s" % (self.proc.returncode, self.workdir))
            return True
        return False

    def wait_booted(self, timeout=240):
        def agent_up():
            self._died(raise_=True)
            try:
                self.agent.connect(timeout=3)
                self.agent.call("guest-ping", timeout=5)
                return True
            except (OSError, VMError, socket.timeout):
                self.agent.close()
                return False
        wait_for(agent_up, timeout, "the guest agent (boot)", interval=1)
        self.boot_seconds = time.monotonic() - self.started
        self._mount_share()
        return self.boot_seconds

    def _mount_share(self, timeout=90):
        """Mount the 9p share (it carries the .deb and the tests' tools in, and live logs out).

        The guest agent can answer before udev's coldplug has bound the share's virtio device to
        9pnet_virtio (seen on trixie guests: "special device host does not exist"): load the
        transport, let udev settle, and try again until the share is there."""
        script = ("mkdir -p {d} && (mountpoint -q {d} || {{ modprobe -q 9pnet_virtio; udevadm settle --timeout=10;"
                  " mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host {d}; }})").format(d=SHARE_IN_GUEST)
        deadline = time.monotonic() + timeout
        while True:
            res = self.sh(script, check=False)
            if res.rc == 0:
                return
            if time.monotonic() > deadline:
                raise VMError("the guest could not mount the host share in %s s: %r" % (timeout, res))
            time.sleep(2)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout, what="the guest to power off"):
        wait_for(lambda: not self.running(), timeout, what, interval=0.5)
        self._closed()

    def kill(self):
        """Power cut: the QEMU process dies at once, nothing is flushed by the guest."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._closed()

    def shutdown(self, timeout=120):
        """Clean poweroff from inside the guest; a power cut if that does not finish in time."""
        if not self.running():
            self._closed()
            return
        try:
            self.agent.call("guest-shutdown", timeout=5, mode="powerdown")
        except VMError:
            pass                                  # the agent dies with the guest: no answer is normal
        try:
            self.wait_exit(timeout)
        except VMError:
            self.kill()

    def _closed(self):
        for c in (self.qmp, self.agent):
            if c is not None:
                c.close()
        self.qmp = None

    def console_text(self):
        parts = []
        for n in range(1, self.boots + 1):
            try:
                with open("%s.%d" % (self.console, n), errors="replace") as f:
                    parts.append(f.read())
            except FileNotFoundError:
                pass
        return parts

    # -- the guest ------------------------------------------------------------------------------------

    def run(self, argv, timeout=120, check=True, input_data=None):
        """Run argv in the guest (as root) through the agent; wait for it; return a Result."""
        args = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if input_data is not None:
            args["input-data"] = base64.b64encode(input_data.encode()).decode()
        pid = self.agent.call("guest-exec", **args)["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            st = self.agent.call("guest-exec-status", pid=pid)
            if st.get("exited"):
                break
            if time.monotonic() > deadline:
                self.agent.call("guest-exec", path="/bin/kill", arg=["-9", str(pid)], **{"capture-output": False})
                raise VMError("guest command %r still running after %s s" % (argv, timeout))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
        rc = st.get("exitcode", -st.get("signal", 0) or -1)
        res = Result(argv, rc, out, err)
        if check and rc != 0:
            raise VMError("guest command failed: %r" % res)
        return res

    def sh(self, script, timeout=120, check=True):
        return self.run(["/bin/sh", "-c", script], timeout=timeout, check=check)

    def spawn(self, argv):
        """Start a guest process in the background (e.g. a monitor); returns its pid."""
        return self.agent.call("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": False})["pid"]

    def write_file(self, path, data, mode=0o644):
        if isinstance(data, str):
            data = data.encode()
        self.sh("mkdir -p \"$(dirname '%s')\"" % path)
        handle = self.agent.call("guest-file-open", path=path, mode="wb")
        try:
            for i in range(0, len(data), 48 * 1024):
                self.agent.call("guest-file-write", handle=handle,
                                **{"buf-b64": base64.b64encode(data[i:i + 48 * 1024]).decode()})
        finally:
            self.agent.call("guest-file-close", handle=handle)
        self.run(["/bin/chmod", "%o" % mode, path])

    def read_file(self, path):
        handle = self.agent.call("guest-file-open", path=path, mode="rb")
        chunks = []
        try:
            while True:
                r = self.agent.call("guest-file-read", handle=handle, count=1 << 20)
                chunks.append(base64.b64decode(r.get("buf-b64", "")))
                if r.get("eof"):
                    break
        finally:
            self.agent.call("guest-file-close", handle=handle)
        return b"".join(chunks)

    def exists(self, path):
        return self.run(["/usr/bin/test", "-e", path], check=False).rc == 0

    def put(self, host_path, name=None):
        """Copy a host file into the share; return its path in the guest."""
        name = name or os.path.basename(host_path)
        shutil.copy(host_path, os.path.join(self.share, name))
        return SHARE_IN_GUEST + "/" + name

    def journal(self, unit=None, since_boot=True):
        argv = ["/bin/journalctl", "--no-pager", "-o", "short-monotonic"]
        if unit:
            argv += ["-u", unit]
        if since_boot:
            argv += ["-b"]
        return self.run(argv, check=False).out

    # -- devices ----------------------------------------------------------------------------------------

    def plug_usb_storage(self, image, dev_id, serial, port=None, readonly=False):
        """Hot-plug a usb-storage stick (vendor:product 46f4:0001) on the xhci bus; serial= -> ID_SERIAL_SHORT."""
        node = "blk-" + dev_id
        self.qmp.command("blockdev-add", **{"node-name": node, "driver": "raw", "read-only": readonly,
                                             "file": {"driver": "file", "filename": image}})
        args = {"driver": "usb-storage", "id": dev_id, "bus": "xhci.0", "drive": node, "serial": serial,
                "removable": True}
        if port is not None:
            args["port"] = str(port)
        self.qmp.command("device_add", **args)
        self._plugged[dev_id] = node
        self.plugged_at = time.monotonic()

    def yank_usb(self, dev_id, timeout=30):
        """Pull the stick out: device_del, wait until QEMU says it is gone, drop its backing node."""
        self.qmp.command("device_del", id=dev_id)
        self.qmp.wait_event("DEVICE_DELETED", timeout, match=lambda d: d.get("device") == dev_id)
        node = self._plugged.pop(dev_id, None)
        if node:
            self.qmp.command("blockdev-del", **{"node-name": node})

    def add_disk(self, image, dev_id, serial, bus="rp1"):
        """Hot-plug a virtio disk (the backing store of the gadget camera); /dev/disk/by-id/virtio-<serial>."""
        node = "blk-" + dev_id
        self.qmp.command("blockdev-add", **{"node-name": node, "driver": "raw",
                                             "file": {"driver": "file", "filename": image}})
        self.qmp.command("device_add", driver="virtio-blk-pci", id=dev_id, drive=node, serial=serial,
                         bus=bus)
        path = "/dev/disk/by-id/virtio-" + serial
        wait_for(lambda: self.exists(path), 30, path)
        return path

    def set_link(self, up, name="nic0"):
        """Cut (up=False) or restore the guest's network cable."""
        self.qmp.command("set_link", name=name, up=up)
