#!/usr/bin/python3
"""make demo: the whole job in a VM, narrated. Usage: tests/system/demo.py dist/dashcam-manager_<v>_all.deb

A Debian 12 VM gets the package, a virtual camera (the user's 0603:8612 identity, a vfat card full
of footage, its power and data switchable) and a home server (this host's sshd on 127.0.0.1, an
rrsync-restricted key). Then nothing is touched: the product's own units do the work, and this
script says what it sees. It ends with the directory where the footage arrived. Everything it
started (QEMU, sshd) is stopped at the end; the footage stays for you to look at.
"""
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "..", "src"))  # the key line as dashcamctl keygen prints it
sys.path.insert(2, os.path.join(HERE, ".."))  # tests/: the sshd and deep_merge the tests share

import cards  # noqa: E402
import guest  # noqa: E402
import image  # noqa: E402
import scenario  # noqa: E402
from home_server import Server  # noqa: E402
from vm import VM, VMError  # noqa: E402

T0 = time.monotonic()


def say(text):
    print("[%5.0f s] %s" % (time.monotonic() - T0, text), flush=True)


def main(deb):
    deb = os.path.abspath(deb)
    work = tempfile.mkdtemp(prefix="dashcam-demo-")
    server = vm = None
    try:
        say("guest image: Debian 12 (cached in %s; built on first use, about 3 minutes)" % image.CACHE_ROOT)
        img = image.ensure_image()
        vm = VM(img, os.path.join(work, "vm"))
        say("booting the VM (QEMU, software emulation: about a minute)")
        vm.start()
        say("VM up in %.0f s; installing %s" % (vm.boot_seconds, os.path.basename(deb)))
        guest.install_package(vm, deb)
        guest.install_tools(vm)

        os.makedirs(os.path.join(work, "server"))
        server = Server(os.path.join(work, "server")).start()
        say("home server: sshd on 127.0.0.1:%d (the VM sees 10.0.2.2), key restricted to rrsync -wo -no-del -no-lock %s"
            % (server.port, server.root))

        layout = cards.user_layout(normal=10, event=2, size=6 << 20)
        say("camera: NOVATEKN vt-DSC 0603:8612, serial %s, recording; its card holds %d clips (%.0f MB)"
            % (guest.CAMERA_SERIAL, len(layout), sum(s for _, s, _ in layout) / 1e6))
        setup = scenario.prepare_gadget_camera(vm, work, layout, server=server)
        say("the car is out: no network, on external power; the policy ticks every 15 s here (30 s on a Pi)")
        scenario.arrive_home(vm)
        say("the car pulls in at home: the network is up, the server answers")

        seen_mode, copied_said, upload_said, deadline = "record", False, False, time.monotonic() + 900
        t_data = None
        while time.monotonic() < deadline:
            events = guest.monitor_events(vm)
            mode = events[-1]["mode"] if events else seen_mode
            if mode != seen_mode:
                if mode == "data":
                    t_data = time.monotonic()
                    say("camera switched to data mode (USB storage on, not recording)")
                elif mode == "record":
                    gap = scenario.recording_gap(events)
                    say("camera back to record mode%s" % (" (it was not recording for %.0f s)" % gap if gap else ""))
                elif mode == "off":
                    say("camera powered off")
                seen_mode = mode
            last = guest.ledger_state(vm, "last_ingest")
            if last and not copied_said:
                secs = scenario.ingest_seconds(events) or (time.monotonic() - (t_data or T0))
                say("ingest: %d clips copied to staging with SHA-256 (%.0f MB at %.1f MB/s, result %s)"
                    % (last.get("files", 0), last.get("bytes", 0) / 1e6, last.get("bytes", 0) / 1e6 / max(secs, 0.1),
                       last.get("result")))
                first = scenario.attach_to_first_byte(events)
                if first is not None:
                    say("first byte copied %.1f s after the camera's disk appeared" % first)
                copied_said = True
            if server.files() and not upload_said:
                say("upload: rsync over ssh to the home server has started")
                upload_said = True
            if copied_said and not scenario.server_matches(server, setup.clips) and \
                    scenario.ledger_done(vm, setup.clips):
                say("verified: all %d clips on the server are byte-identical to the card; the ledger says verified"
                    % len(setup.clips))
                if not guest.staged_files(vm):
                    say("staging on the Pi is empty again (verified footage is pruned at once by default)")
                break
            time.sleep(1)
        else:
            say("the demo did not finish in 15 minutes; the guest's journal follows")
            print(vm.journal())
            return 1
        days = sorted({os.path.dirname(rel) for rel in server.files() if "partial" not in rel})
        say("the footage arrived on this host in:")
        for d in days:
            print("    " + os.path.join(server.root, d))
        return 0
    except VMError as exc:
        say("demo failed: %s" % exc)
        if vm is not None and vm.running():
            print(vm.journal()[-5000:])
        return 1
    finally:
        if vm is not None:
            vm.kill()
            shutil.rmtree(vm.workdir, ignore_errors=True)
        if server is not None:
            server.stop()
        say("stopped the VM and the server; the footage stays in %s" % work)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n")[0])
    sys.exit(main(sys.argv[1]))
