"""The field scenarios of the original plan, end to end in the VM, against the installed package.

The camera is the gadget camera (0603:8612, serial 96680-00000-001) on dummy_hcd: uhubctl really
powers it off, sysfs `authorized` really switches its data, and its card is a vfat image with the
user's layout. The home server is the host's sshd on 127.0.0.1 (10.0.2.2 from the guest) with an
rrsync-restricted key. The UPS is a fake lifepo4wered-cli whose readings the test sets.
"""
import os
import re

import pytest

import cards
import guest
import scenario
from scenario import wait_for

pytestmark = pytest.mark.system

# percent from the shipped voltage table: 3611 mV -> 95 %, 3260 -> 40 %, 3050 -> 5 %
FULL, BELOW_DISCONNECT, BELOW_SHUTDOWN = 3611, 3260, 3050


def test_A_away_from_home_the_camera_keeps_recording_and_nothing_is_copied(booted, tmp_path):
    setup = scenario.prepare_gadget_camera(booted, str(tmp_path), cards.user_layout(normal=4, event=1,
                                                                                     size=1 << 20))
    # the camera settles in record; then the policy decides several times with the server unreachable
    wait_for(lambda: (guest.monitor_events(booted) or [{}])[-1].get("mode") == "record", 120,
             "the camera in record mode")
    scenario.wait_policy_ticks(booted, 4, timeout=300)
    events = guest.monitor_events(booted)
    assert [e for e in events if e["mode"] == "data"] == [], "the camera left record for data: %s" % events
    assert events[-1]["mode"] == "record"
    assert guest.staged_files(booted) == []
    assert guest.ledger_rows(booted) == []
    assert scenario.unit_instances(booted) == {}
    last = guest.ledger_state(booted, "last_policy")
    assert last, "the policy recorded no decision"
    assert guest.failed_units(booted) == ""
    assert len(setup.clips) == 5


def test_B_at_home_footage_goes_from_the_camera_to_the_server_byte_identical(booted, tmp_path, server, figure):
    setup = scenario.prepare_gadget_camera(booted, str(tmp_path), cards.user_layout(normal=6, event=2,
                                                                                     size=3 << 20),
                                           server=server)
    scenario.arrive_home(booted)
    # camera to data -> ingest -> camera back -> upload -> verified -> staging pruned
    scenario.wait_server_has(server, setup.clips, timeout=600)
    wait_for(lambda: scenario.ledger_done(booted, setup.clips), 180, "every clip verified in the ledger")
    wait_for(lambda: guest.staged_files(booted) == [], 120, "staging emptied after verification")
    # each clip in its folder of the card below its day; event clips sent, and proven, first:
    # the server's clock shows every event clip there before any other
    held = {rel: full for rel, full in server.files().items() if "partial" not in rel}
    assert sorted(held) == sorted(scenario.server_name(c) for c in setup.clips)
    arrived = {c.path: os.stat(held[scenario.server_name(c)]).st_ctime_ns for c in setup.clips}
    assert max(t for p, t in arrived.items() if p.startswith("Event/")) < \
        min(t for p, t in arrived.items() if not p.startswith("Event/")), arrived
    # the camera went back to recording (external power) and stayed there
    wait_for(lambda: guest.monitor_events(booted)[-1]["mode"] == "record", 60, "the camera back in record")
    events = guest.monitor_events(booted)
    gap = scenario.recording_gap(events)
    first_byte = scenario.attach_to_first_byte(events)
    assert gap is not None and first_byte is not None, events
    figure("recording gap (scenario B, %d clips, %.0f MB)" % (len(setup.clips), setup.total_bytes / 1e6),
           "%.1f s" % gap)
    figure("attach to first byte copied (scenario B)", "%.1f s" % first_byte)
    last_ingest = guest.ledger_state(booted, "last_ingest")
    assert last_ingest and last_ingest["result"] == "ok" and last_ingest["files"] == len(setup.clips)
    last_upload = guest.ledger_state(booted, "last_upload")
    assert last_upload and last_upload["result"] == "ok"
    assert guest.failed_units(booted) == ""


def test_C_on_battery_the_camera_loses_power_then_the_pi_shuts_down_cleanly(booted, tmp_path):
    scenario.prepare_gadget_camera(booted, str(tmp_path), cards.user_layout(normal=2, event=1, size=1 << 20),
                                   external=False, vbat=FULL, thresholds={"shutdown_debounce": 2})
    wait_for(lambda: (guest.monitor_events(booted) or [{}])[-1].get("mode") == "record", 120,
             "the camera recording on a full battery")
    scenario.wait_policy_ticks(booted, 2, timeout=120)
    assert guest.monitor_events(booted)[-1]["mode"] == "record"

    # below disconnect_percent: the camera loses power (it leaves the bus; uhubctl reads the port off)
    guest.set_ups(booted, external=False, vbat=BELOW_DISCONNECT)
    wait_for(lambda: guest.monitor_events(booted)[-1]["mode"] == "off", 120, "the camera powered off")
    port = booted.run(["/usr/sbin/uhubctl", "-l", str(guest.camera_bus(booted)), "-p", "1"]).out
    assert "Port 1: 0000 off" in port
    assert booted.running()

    # below shutdown_percent: the guest unmounts and powers off by itself
    guest.set_ups(booted, external=False, vbat=BELOW_SHUTDOWN)
    booted.wait_exit(300, "the guest to power itself off")
    console = booted.console_text()[-1]
    assert "reboot: Power down" in console, console[-3000:]
    # the next boot finds a cleanly unmounted root file system, and the journal says who shut it down.
    # The fake UPS still reads 5 % on that boot, so the policy would rightly power it off again, racing
    # the reads below: the policy timer is masked for this boot on the kernel command line.
    booted.start(append="systemd.mask=dashcam-policy.timer")
    assert "recovery complete" not in booted.console_text()[-1]
    previous = booted.run(["/bin/journalctl", "--no-pager", "-b", "-1", "-u", "dashcam-policy.service"]).out
    assert re.search(r"shut ?down|power ?off", previous, re.I), previous[-3000:]


def test_C_on_external_power_a_low_battery_changes_nothing(booted, tmp_path):
    scenario.prepare_gadget_camera(booted, str(tmp_path), cards.user_layout(normal=2, event=1, size=1 << 20),
                                   external=True, vbat=BELOW_SHUTDOWN, thresholds={"shutdown_debounce": 1})
    wait_for(lambda: (guest.monitor_events(booted) or [{}])[-1].get("mode") == "record", 120,
             "the camera recording")
    scenario.wait_policy_ticks(booted, 5, timeout=300)
    events = guest.monitor_events(booted)
    start = next(i for i, e in enumerate(events) if e["mode"] == "record")
    assert all(e["mode"] == "record" for e in events[start:]), events
    assert booted.running()
    assert guest.failed_units(booted) == ""
