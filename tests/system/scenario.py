"""Building blocks of the field scenarios (used by the tests and by `make demo`)."""
import os
import socket
import time

import cards
import guest
from vm import wait_for


def server_name(clip, dest="footage", camera="dashcam"):
    """Where the default upload.layout puts a card's clip: <camera>/YYYY/MM/DD/<folder>/<name>,
    the day from the Novatek timestamp in its name (2026_1125_233000_001F.MP4)."""
    n = clip.name
    return "%s/%s/%s/%s/%s/%s" % (dest, camera, n[0:4], n[5:7], n[7:9], clip.path)


class Setup:
    def __init__(self, bus, clips, card):
        self.bus, self.clips, self.card = bus, clips, card

    @property
    def total_bytes(self):
        return sum(c.size for c in self.clips)


def unreachable_port():
    """A port on the host's 127.0.0.1 where nothing listens: 'the home server is not there'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_gadget_camera(vm, workdir, layout, server=None, external=True, vbat=3611, **sections):
    """Card + config + fake UPS + fast policy tick + monitor, then plug the camera in (recording).

    With a server, the car starts away from home (the network cable is out) and arrive_home()
    brings it home: the policy fetches footage when the server *becomes* reachable."""
    card = os.path.join(workdir, "camera-card.img")
    clips = cards.make_card(card, layout)
    if server is not None:
        vm.set_link(False)
    guest.set_ups(vm, external=external, vbat=vbat)
    bus = guest.camera_bus(vm)
    cfg = guest.scenario_config(vm, bus=bus, server=server,
                                unreachable_port=None if server else unreachable_port(), **sections)
    guest.write_config(vm, cfg, server)
    guest.start_monitor(vm, bus)
    guest.camera_up(vm, card)
    guest.fast_policy(vm)
    vm.run(["/bin/systemctl", "restart", "dashcam-policy.timer"])
    # one tick now: OnUnitActiveSec= counts from the service's last run, and a timer restarted
    # after its OnBootSec= has passed but before the first tick would otherwise never fire
    vm.run(["/bin/systemctl", "start", "--no-block", "dashcam-policy.service"])
    return Setup(bus, clips, card)


def arrive_home(vm, timeout=600):
    """The car pulls in: once the camera records and the policy has seen the server unreachable,
    the link comes up (the WiFi at home). Returns the guest's monotonic time of arrival."""
    wait_for(lambda: (guest.monitor_events(vm) or [{}])[-1].get("mode") == "record", timeout,
             "the camera recording while away")
    wait_policy_ticks(vm, 1, timeout)
    vm.set_link(True)
    return float(vm.run(["/bin/cat", "/proc/uptime"]).out.split()[0])


def prepare_stick_camera(vm, workdir, layout, serial, server=None, **sections):
    """A QMP usb-storage camera (not plugged yet): its port cannot be switched, so the camera
    backend is three scripts that only log; match by serial. Returns Setup (bus None)."""
    card = os.path.join(workdir, "stick-card.img")
    clips = cards.make_card(card, layout)
    guest.set_ups(vm, external=True, vbat=3611)
    camera = dict(guest.scripts_backend(vm), match_serial=serial)
    camera.update(sections.pop("camera", {}))
    cfg = guest.scenario_config(vm, server=server, unreachable_port=None if server else unreachable_port(),
                                camera=camera, **sections)
    guest.write_config(vm, cfg, server)
    guest.start_monitor(vm, 0)                  # no gadget: records the staging count only
    return Setup(None, clips, card)


def policy_ticks(vm):
    """How often the policy has recorded a decision (ledger state 'last_policy' updated_at changes)."""
    r = guest.ledger_sql(vm, "SELECT updated_at FROM state WHERE key = 'last_policy'")
    return r.out.strip() if r.rc == 0 else ""


def wait_policy_ticks(vm, n, timeout):
    """Wait until the policy has decided n more times (a duration measured in decisions, not seconds)."""
    seen = set()

    def more():
        t = policy_ticks(vm)
        if t:
            seen.add(t)
        return len(seen) >= n + 1
    wait_for(more, timeout, "%d policy decisions" % n, interval=1)


def server_matches(server, clips):
    """Every clip on the server, under DEST/<camera>/YYYY/MM/DD/, byte-identical (SHA-256)."""
    held = {}
    for rel, full in server.files().items():
        if "partial" in rel or os.path.basename(rel).startswith("."):
            continue
        held.setdefault(os.path.basename(rel), []).append((rel, full))
    missing = []
    for clip in clips:
        found = [(rel, full) for rel, full in held.get(clip.name, [])
                 if os.path.getsize(full) == clip.size and cards.sha256_file(full) == clip.sha256]
        if not found:
            missing.append(clip.name)
    return missing


def wait_server_has(server, clips, timeout):
    wait_for(lambda: not server_matches(server, clips), timeout,
             "every clip on the server, byte-identical", interval=2)


def ledger_done(vm, clips):
    rows = guest.ledger_rows(vm)
    return len(rows) == len(clips) and all(r["state"] in ("verified", "pruned") for r in rows)


def staged_matches(vm, clips):
    """Clips missing from staging/ready (by name, checked by SHA-256 in the guest)."""
    files = [f for f in guest.staged_files(vm) if f.startswith("ready/")]
    by_name = {os.path.basename(f): "/var/lib/dashcam/staging/" + f for f in files}
    sums = guest.sha256_in_guest(vm, sorted(by_name.values()))
    return [c.name for c in clips if sums.get(by_name.get(c.name, "")) != c.sha256]


def recording_gap(events):
    """Seconds the camera spent out of record around its (first) data period, or None."""
    first_data = next((i for i, e in enumerate(events) if e["mode"] == "data"), None)
    if first_data is None:
        return None
    start = events[first_data]["t"]
    j = first_data
    while j > 0 and events[j - 1]["mode"] != "record":
        j -= 1
    if j > 0:                            # it was recording before: the gap starts when it stopped
        start = events[j]["t"]
    back = next((e for e in events[first_data:] if e["mode"] == "record"), None)
    return None if back is None else back["t"] - start


def attach_to_first_byte(events):
    """Seconds from the camera's block device appearing to the first file in staging, or None."""
    attach = next((e for e in events if e.get("block")), None)
    if attach is None:
        return None
    first = next((e for e in events if e["t"] >= attach["t"] and e["staged"] > 0), None)
    return None if first is None else first["t"] - attach["t"]


def ingest_seconds(events):
    """From the block device appearing to it going away (the ingest window), or None."""
    attach = next((i for i, e in enumerate(events) if e.get("block")), None)
    if attach is None:
        return None
    gone = next((e for e in events[attach:] if not e.get("block")), None)
    return None if gone is None else gone["t"] - events[attach]["t"]


def unit_instances(vm, pattern="dashcam-ingest@*"):
    out = vm.run(["/bin/systemctl", "list-units", "--all", "--no-legend", "--plain", pattern]).out
    return {line.split()[0]: line.split()[2] for line in out.splitlines() if line.strip()}


def mounts_of(vm, what):
    """Lines of every mount namespace's mountinfo mentioning `what` (a stale private mount counts too)."""
    r = vm.sh("cat /proc/[0-9]*/mountinfo 2>/dev/null | grep -F -- '%s' | sort -u" % what, check=False)
    return r.out.strip()


def now():
    return time.monotonic()
