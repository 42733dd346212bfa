"""Home on battery, in the VM: the car pulls in, the engine is off, the UPS's cell carries the Pi and
the camera while footage is copied and sent, and the cell runs down.

The fake UPS discharges as the guest's clock goes by (DISCHARGE, a script in the guest): VBAT
along a LiFePO4 cell's curve under load (the cell of tests/test_budget_simulation.py: flat, then
steep below about 3.2 V), its percent read from the shipped voltage table by the product. The
budget's knobs are sized so that a few minutes of it tell the whole story: the power budget lets
the data cycle copy the event clips only (the normal clips are larger than the runtime left can
carry at budget.read_bytes_per_second), the upload sends them, the battery falls below
disconnect_percent and shutdown_percent, and the policy powers the guest off. Powered on again by
external power (the engine starts: AUTO_BOOT), the rest follows.

Figures: when each event clip and the first normal clip reached the server (seconds after the
arrival), the battery at the data switch and at the shutdown.
"""
import json
import os
import re
import time

import pytest

import cards
import guest
import scenario
from scenario import wait_for

pytestmark = pytest.mark.system

# state of charge (%) -> VBAT (mV) under the Pi's load: tests/test_budget_simulation.py's CURVE.
# With the shipped voltage table it reads 80 % full, 50 % from about 67 % of the charge, and below
# shutdown_percent (20 % and less) from 17.5 %.
CURVE = [(100, 3420), (95, 3360), (90, 3340), (80, 3320), (70, 3305), (60, 3290), (50, 3280), (40, 3270),
         (30, 3255), (20, 3235), (15, 3215), (10, 3190), (7, 3150), (5, 3100), (3, 3000), (0, 2800)]
EMPTY_SECONDS = 300      # the cell from full to empty, in guest seconds: the shutdown about 5 min after arriving
FULL = 3420              # mV: 80 % on the shipped table, the cell as the car arrives
EVENT_BYTES, NORMAL_BYTES = 1536 * 1024, 16 << 20
UPS_LOG = "ups.jsonl"    # in the 9p share: the discharge as the guest wrote it
CARD = "/var/lib/vcam-card.img"

# what the budget plans with (README: Home on battery). The UPS fixture reports VOUT x IOUT = 4.27 W;
# a 1 Wh cell at 4.27 W leaves ~7 s per percent point: at 60 % ~72 s above disconnect_percent 50,
# 70 % of it planned with, at 250 kB/s ~12 MB -- the event clips fit, ~48 MB of normal clips never do.
# bytes_per_minute 1 MB: the estimate before the first scan of the card lets the data cycle start.
BUDGET = {"capacity_wh": 1.0, "read_bytes_per_second": 250000, "overhead_seconds": 0, "bytes_per_minute": 1000000}

DISCHARGE = r"""#!/usr/bin/python3
# fake UPS for the system tests: the cell discharging, VBAT along CURVE as the guest's clock goes by
import json, os, sys, time
template, seconds, curve, log = open(sys.argv[1]).read(), float(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
values = "/var/lib/fake-lifepo4wered/values"
def uptime():
    return float(open("/proc/uptime").read().split()[0])
def mv(soc):
    for (s_hi, v_hi), (s_lo, v_lo) in zip(curve, curve[1:]):
        if soc >= s_lo:
            return v_lo + (v_hi - v_lo) * (soc - s_lo) / (s_hi - s_lo)
    return curve[-1][1]
t0 = uptime()
with open(log, "a", buffering=1) as f:
    while True:
        t = uptime()
        soc = max(0.0, 100.0 * (1 - (t - t0) / seconds))
        v = int(round(mv(soc)))
        with open(values + ".new", "w") as out:
            out.write(template.replace("VBAT = 0\n", "VBAT = %d\n" % v))
        os.rename(values + ".new", values)
        f.write(json.dumps({"t": t, "soc": round(soc, 1), "mv": v}) + "\n")
        time.sleep(2)
"""

# the LiFePO4wered powers the Pi on when external power appears (AUTO_BOOT): the next boot is the
# engine starting, and the fake UPS reports it from the start of that boot
UPS_AT_BOOT = """[Unit]
Description=test UPS: this boot was started by external power (the engine)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target dashcam-boot.service
ConditionPathExists=/var/lib/fake-lifepo4wered/at-boot

[Service]
Type=oneshot
ExecStart=/bin/mv /var/lib/fake-lifepo4wered/at-boot /var/lib/fake-lifepo4wered/values

[Install]
WantedBy=sysinit.target
"""

# the camera present from power-on on the next boot, its card the same image in the guest
VCAM_BOOT = """[Unit]
Description=test camera present from power-on (as a Pi's hub gives it)
DefaultDependencies=no
After=systemd-modules-load.service local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vcam-gadget up %s %s 1

[Install]
WantedBy=sysinit.target
""" % (CARD, guest.CAMERA_SERIAL)


# the gadget's backing file lives on the guest's root file system and the kernel holds it open for
# writing: let it go at shutdown, or the root cannot be remounted read-only and the next boot
# replays its journal (what the test checks to prove the shutdown clean)
VCAM_EJECT = """[Unit]
Description=test camera: close the card's backing file at shutdown
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'L=/sys/kernel/config/usb_gadget/dashcam/functions/mass_storage.0/lun.0; \\
  echo 1 > $$L/forced_eject 2>/dev/null || echo > $$L/file || true'

[Install]
WantedBy=multi-user.target
"""


def layout():
    """Two small event clips among three large normal ones (the camera's user layout)."""
    return [(path, EVENT_BYTES if path.startswith("Event/") else NORMAL_BYTES, mtime)
            for path, _, mtime in cards.user_layout(normal=3, event=2)]


def prepare(vm, workdir, server):
    """Away from home on battery, recording: the card as an image in the guest (the camera must be
    there from power-on on the next boot too), config, fake UPS, monitor, fast policy."""
    image = os.path.join(workdir, "camera-card.img")
    clips = cards.make_card(image, layout())
    vm.sh("cp %s %s" % (vm.put(image), CARD), timeout=300)
    vm.set_link(False)
    guest.set_ups(vm, external=False, vbat=FULL)
    vm.write_file("/var/lib/fake-lifepo4wered/at-boot", guest.ups_values(external=True, vbat=3611))
    vm.write_file("/usr/local/sbin/fake-ups-discharge", DISCHARGE, 0o755)
    vm.write_file("/var/lib/fake-lifepo4wered/on-battery", guest.ups_values(external=False, vbat=0))
    for name, text in (("fake-ups-at-boot.service", UPS_AT_BOOT), ("vcam-boot.service", VCAM_BOOT),
                       ("vcam-eject.service", VCAM_EJECT)):
        vm.write_file("/etc/systemd/system/" + name, text)
        vm.run(["/bin/systemctl", "enable", name])
    vm.run(["/bin/systemctl", "start", "vcam-eject.service"])
    bus = guest.camera_bus(vm)
    guest.write_config(vm, guest.scenario_config(vm, bus=bus, server=server, budget=BUDGET), server)
    guest.start_monitor(vm, bus)
    vm.run(["/usr/local/sbin/vcam-gadget", "up", CARD, guest.CAMERA_SERIAL, "0"])
    guest.fast_policy(vm)
    vm.run(["/bin/systemctl", "restart", "dashcam-policy.timer"])
    vm.run(["/bin/systemctl", "start", "--no-block", "dashcam-policy.service"])
    vm.run(["/bin/sync"])
    return clips


def discharge(vm):
    vm.spawn(["/usr/local/sbin/fake-ups-discharge", "/var/lib/fake-lifepo4wered/on-battery", str(EMPTY_SECONDS),
              json.dumps(CURVE), "/mnt/host/" + UPS_LOG])


def policy_lines(vm, boot="0"):
    """The policy's journal lines of a boot (0: this one, -1: the one before), monotonic stamps."""
    return vm.run(["/bin/journalctl", "--no-pager", "-b", boot, "-o", "short-monotonic",
                   "-u", "dashcam-policy.service"]).out.splitlines()


def did(line):
    """What a policy line says it did ("" for another line)."""
    return line.split(" -- why:", 1)[0].split(" -> did ", 1)[1] if " -> did " in line else ""


def stamped(line):
    """(guest monotonic seconds, percent, mV) of a policy line."""
    t = float(re.match(r"\[\s*([\d.]+)\]", line).group(1))
    m = re.search(r"saw battery (\d+)% (\d+) mV", line)
    return t, int(m.group(1)), int(m.group(2))


def arrived_on_server(server):
    """{file name: host time it arrived (ctime)} of the clips on the server."""
    return {os.path.basename(rel): os.stat(full).st_ctime for rel, full in server.files().items()
            if "partial" not in rel and not os.path.basename(rel).startswith(".")}


def test_home_on_battery_events_first_clean_shutdown_and_the_rest_on_external_power(booted, tmp_path, server,
                                                                                     figure):
    t_test = time.monotonic()
    vm = booted
    clips = prepare(vm, str(tmp_path), server)
    events = [c for c in clips if c.event]
    normal = [c for c in clips if not c.event]
    assert len(events) == 2 and len(normal) == 3

    scenario.arrive_home(vm)
    discharge(vm)
    t_arrive_host = time.time()
    t_arrive = float(vm.run(["/bin/cat", "/proc/uptime"]).out.split()[0])

    # on battery the cell runs down: the policy's low-battery poweroff, the guest powers off by itself
    vm.wait_exit(EMPTY_SECONDS + 300, "the policy's low-battery poweroff")
    t_off_host = time.time()
    assert "reboot: Power down" in vm.console_text()[-1], vm.console_text()[-1][-3000:]
    # the event clips were on the server, byte-identical, before the power went; no normal clip was
    on_battery = arrived_on_server(server)
    assert scenario.server_matches(server, events) == [], on_battery
    assert not [c.name for c in normal if c.name in on_battery], on_battery

    # the engine starts: the Pi is powered on by external power, the camera there from power-on
    vm.start()
    guest.start_monitor(vm, guest.camera_bus(vm))
    assert "recovery complete" not in vm.console_text()[-1]
    before = policy_lines(vm, "-1")
    data = [ln for ln in before if "camera data" in did(ln)]
    down = [ln for ln in before if "poweroff" in did(ln)]
    assert data and down, "\n".join(before[-40:])
    assert "shutdown: battery" in down[-1], down[-1]
    previous = vm.run(["/bin/journalctl", "--no-pager", "-b", "-1", "-o", "cat"]).out
    # the budget stopped the copy before the first normal clip (whole clips only), and nothing failed
    assert re.search(r"budget on battery: stopping before the next clip \(\d+ MB\): .* 3 clips \(", previous), \
        previous[-5000:]
    assert not re.search(r"dashcam\S*\.service: Failed with result", previous), \
        [ln for ln in previous.splitlines() if "Failed with result" in ln]

    # on external power the rest follows: copied, sent, verified; nothing lost, doubled or failed
    scenario.wait_server_has(server, clips, timeout=600)
    wait_for(lambda: scenario.ledger_done(vm, clips), 180, "every clip verified in the ledger")
    rows = guest.ledger_rows(vm)
    assert sorted(r["source_path"] for r in rows) == sorted(c.path for c in clips)
    assert all(r["state"] in ("verified", "pruned") for r in rows), rows
    assert guest.failed_units(vm) == ""

    # the server's clock: every event clip there before any other
    arrived = arrived_on_server(server)
    assert max(arrived[c.name] for c in events) < min(arrived[c.name] for c in normal), arrived
    assert max(arrived[c.name] for c in events) < t_off_host < min(arrived[c.name] for c in normal)

    for c in events:
        figure("home on battery: event clip %s on the server" % c.name,
               "%.0f s after arriving" % (arrived[c.name] - t_arrive_host))
    first = min(normal, key=lambda c: arrived[c.name])
    figure("home on battery: first normal clip on the server",
           "%.0f s after arriving (after the poweroff at %.0f s and the restart on external power)"
           % (arrived[first.name] - t_arrive_host, t_off_host - t_arrive_host))
    t, pct, mv = stamped(data[0])
    figure("home on battery: battery at the data switch", "%d %% (%d mV), %.0f s after arriving" % (pct, mv, t - t_arrive))
    t, pct, mv = stamped(down[-1])
    figure("home on battery: battery at the shutdown", "%d %% (%d mV), %.0f s after arriving" % (pct, mv, t - t_arrive))
    figure("home on battery: test wall time", "%.0f s" % (time.monotonic() - t_test))
