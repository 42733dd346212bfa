"""The camera records whenever the car can move, in the VM: the engine starting (the fake UPS
reporting input voltage) puts the camera back to record within seconds, an ingest in flight is
stopped cleanly and completed at the next arrival; and at power-on on external power the camera
records early in the boot, long before multi-user.

Figures: "ignition -> recording" (the UPS reporting external power, as the guest's monotonic
clock says, to the monitor seeing the camera powered with data off), and "power-on -> recording"
beside the boot's own floor, "power-on -> multi-user" (both from the QEMU process start).
"""
import re
import time

import pytest

import cards
import guest
import scenario
from scenario import wait_for
from test_faults import no_partial_files, started_copying

pytestmark = pytest.mark.system

FULL = 3611  # mV: 95 % on the shipped voltage table
LIMIT = 10.0  # seconds: ignition -> recording


def guest_now(vm):
    return float(vm.run(["/bin/cat", "/proc/uptime"]).out.split()[0])


def engine(vm, running):
    """The fake UPS reports input voltage (engine on) or none; returns the guest's monotonic time of
    the change (the file is renamed into place, then /proc/uptime read in the same shell)."""
    guest.set_ups(vm, external=running, vbat=FULL)
    return guest_now(vm)


def recording_after(vm, t):
    """The monitor's first "record" (camera powered, data off) at or after guest time t."""
    return next((e["t"] for e in guest.monitor_events(vm) if e["t"] >= t and e["mode"] == "record"), None)


def back_to_record_within_limit(vm, t_engine, what, figure):
    wait_for(lambda: recording_after(vm, t_engine) is not None, 120, "the camera back in record", interval=0.2)
    took = recording_after(vm, t_engine) - t_engine
    figure("ignition -> recording (%s)" % what, "%.1f s" % took)
    assert took <= LIMIT, "the camera recorded %.1f s after the engine started (%s)" % (took, what)
    return took


VCAM_BOOT = """[Unit]
Description=test camera present from power-on, its data on (as a Pi's hub gives it)
DefaultDependencies=no
After=systemd-modules-load.service local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vcam-gadget up /var/lib/vcam-card.img %s 1

[Install]
WantedBy=sysinit.target
""" % guest.CAMERA_SERIAL


def journal_stamp(text, pattern):
    """The monotonic stamp of the first line of `journalctl -o short-monotonic` matching pattern."""
    for line in text.splitlines():
        if re.search(pattern, line):
            m = re.match(r"\[\s*([\d.]+)\]", line)
            if m:
                return float(m.group(1))
    return None


def test_at_power_on_on_external_power_the_camera_records_long_before_multi_user(booted, figure):
    vm = booted
    vm.run(["/usr/bin/truncate", "-s", "16M", "/var/lib/vcam-card.img"])
    bus = guest.camera_bus(vm)
    guest.write_config(vm, guest.scenario_config(vm, bus=bus, unreachable_port=9))
    vm.write_file("/etc/systemd/system/vcam-boot.service", VCAM_BOOT)
    vm.run(["/bin/systemctl", "enable", "vcam-boot.service"])
    guest.fast_policy(vm)                              # after the reboot its timer must fire by itself
    guest.set_ups(vm, external=True, vbat=FULL)
    vm.run(["/bin/sync"])
    vm.shutdown()

    t0 = time.monotonic()                               # power-on: the QEMU process starts
    vm.start()
    uptime = guest_now(vm)
    kernel_at = time.monotonic() - uptime - t0          # QEMU start -> the guest kernel's clock at 0

    def journal():
        return vm.run(["/bin/journalctl", "--no-pager", "-b", "-o", "short-monotonic"]).out

    # the boot unit's "camera: record" (logged once the switch is confirmed), and multi-user
    wait_for(lambda: journal_stamp(journal(), r"\S+\[\d+\]: camera: record$") is not None
             and journal_stamp(journal(), r"Reached target multi-user\.target") is not None, 120,
             "the boot unit's camera: record and multi-user.target")
    text = journal()
    t_record = journal_stamp(text, r"\S+\[\d+\]: camera: record$")
    t_multi = journal_stamp(text, r"Reached target multi-user\.target")
    t_camera = journal_stamp(text, r"usb %d-1: New USB device found" % bus)  # the test camera enumerates
    figure("power-on -> recording (external power)", "%.1f s (QEMU start -> kernel %.1f s + kernel -> camera recording"
           " %.1f s; the test camera enumerated at %.1f s)" % (kernel_at + t_record, kernel_at, t_record, t_camera or -1))
    figure("boot floor: power-on -> multi-user", "%.1f s (kernel -> multi-user %.1f s)"
           % (kernel_at + t_multi, t_multi))
    # ordered early: started within sysinit, not after the network
    t_start = journal_stamp(text, r"Starting dashcam-boot\.service")
    t_sysinit = journal_stamp(text, r"Reached target sysinit\.target")
    assert t_start is not None and t_sysinit is not None and t_start < t_sysinit, text[-5000:]
    after = vm.run(["/bin/systemctl", "show", "-p", "After", "dashcam-boot.service"]).out
    assert "network" not in after and "basic.target" not in after, after
    port = vm.run(["/usr/sbin/uhubctl", "-l", str(bus), "-p", "1"]).out
    assert re.search(r"Port 1: \S+ power", port), port
    assert vm.read_file("/sys/bus/usb/devices/%d-1/authorized" % bus).strip() == b"0"
    # the fast-policy drop-in kept OnBootSec= and OnUnitActiveSec=: the policy ticks by itself
    scenario.wait_policy_ticks(vm, 0, timeout=180)
    timer = vm.run(["/bin/systemctl", "show", "-p", "TimersMonotonic", "dashcam-policy.timer"]).out
    assert "OnBootUSec" in timer and "OnUnitActiveUSec" in timer, timer


def test_the_engine_starting_during_an_ingest_on_battery_puts_the_camera_back_to_record(booted, tmp_path,
                                                                                          server, figure):
    setup = scenario.prepare_gadget_camera(booted, str(tmp_path), cards.user_layout(normal=12, event=1,
                                                                                     size=32 << 20),
                                           server=server, external=False, vbat=FULL)
    scenario.arrive_home(booted)                       # on battery: data mode at once, the ingest starts
    wait_for(lambda: started_copying(booted, setup.clips), 300, "the ingest to start copying", interval=0.2)
    t_engine = engine(booted, True)
    back_to_record_within_limit(booted, t_engine, "during an ingest on battery", figure)

    # the ingest unit ended cleanly: stopped, not failed; no partial file; some clips left on the card
    wait_for(lambda: all(s not in ("active", "activating", "deactivating", "reloading")
                         for s in scenario.unit_instances(booted).values()), 60, "the ingest unit to end",
             interval=0.5)
    assert guest.failed_units(booted) == ""
    assert no_partial_files(booted) == []
    done = [r for r in guest.ledger_rows(booted) if r["state"] != "failed"]
    assert len(done) < len(setup.clips), "the copy finished before the engine started: make the card bigger"
    # said by the watcher (or by a policy tick that ran at the same moment)
    said = booted.run(["/bin/journalctl", "--no-pager", "-b", "-u", "dashcam-watch.service",
                       "-u", "dashcam-policy.service"]).out
    assert re.search(r"engine started: ingest stopped after \d+ of %d clips, camera back to record"
                     % len(setup.clips), said), said[-3000:]
    returns = guest.ledger_state(booted, "back_to_record")
    assert returns and returns["counts"].get("engine_started") == 1, returns  # once: by the watcher or a tick
    first = returns["counts"]["engine_started"]

    # the engine stops, the car leaves and comes back: the next arrival completes the copy
    engine(booted, False)
    booted.set_link(False)
    scenario.wait_policy_ticks(booted, 2, timeout=300)
    booted.set_link(True)
    wait_for(lambda: len(guest.ledger_rows(booted)) >= len(setup.clips)
             and (guest.ledger_state(booted, "last_ingest") or {}).get("result") == "ok", 900,
             "every clip in the ledger after the next arrival", interval=2)
    rows = guest.ledger_rows(booted)
    assert sorted(r["source_path"] for r in rows) == sorted(c.path for c in setup.clips)  # none lost or doubled
    assert {r["sha256"] for r in rows} == {c.sha256 for c in setup.clips}
    assert all(r["state"] != "failed" for r in rows)

    # on battery the ingest leaves the camera off (camera.after_ingest); the engine starts again
    wait_for(lambda: guest.monitor_events(booted)[-1]["mode"] == "off", 180, "the camera off after the ingest")
    t_engine = engine(booted, True)
    back_to_record_within_limit(booted, t_engine, "camera off after an ingest", figure)
    # counted once the switch is confirmed: a moment after the monitor sees the port powered
    wait_for(lambda: guest.ledger_state(booted, "back_to_record")["counts"]["engine_started"] == first + 1, 30,
             "the second return counted", interval=0.5)
    scenario.wait_policy_ticks(booted, 1, timeout=120)  # a tick that read the same engine start counts nothing
    assert guest.ledger_state(booted, "back_to_record")["counts"]["engine_started"] == first + 1
