"""Home on battery: an arrival with 12 GB on the camera (600 MB of events), simulated second by second.

The real policy tick (every 30 s, its state in a real ledger) against a simulated world: a
LiFePO4 cell discharging under the Pi's load, the camera, an ingest that asks the power budget
before each clip (budget.IngestGate, as ingest.py does) and an upload that asks it before each
clip (budget.allowance and budget.upload_fit, as upload.py does; rounds of one clip here).

The cell: the LiFePO4wered/Pi+'s 18650, 1500 mAh (4.8 Wh, budget.capacity_wh), read as VBAT under
the Pi's load of 3-5 W. Its curve (CURVE, state of charge -> millivolts) has the shape of a
LiFePO4 cell's published discharge curves: 3.42 V full, a plateau falling only 80 mV from 95 %
to 30 %, then the knee: steep below about 3.2 V, 2.8 V empty. The loads: the Pi 2.7 W, a copy
from the card +1.0 W, an upload +0.8 W, the camera recording 1.5 W, in data mode 1.2 W (through
the UPS's 5 V output, measured as VOUT x IOUT like lifepo4wered-cli reports them; the converter
85 % efficient). Card reads at 12 MB/s, uploads at 2.5 MB/s (the budget starts from its
defaults, 10 and 2 MB/s).

Run with -s to see the timeline (what was copied and sent when, the battery at each step).
"""

from __future__ import annotations

import random

import pytest

from conftest import MINIMAL, Reading, deep_merge
from dashcam_helpers import budget, config, footage, tick
from dashcam_helpers.ledger import Ledger
from dashcam_helpers.policy import INGEST_UNITS, UPLOAD_UNIT

# a charger at home may hold the car on external power for longer than the default watchdog
CFG = config.validate(deep_merge(MINIMAL, {"camera": {"max_data_minutes_external": 60}}), "test.yaml")
MB = 10**6
CAPACITY_WH = 4.8
EFFICIENCY = 0.85
CURVE = [(100, 3420), (95, 3360), (90, 3340), (80, 3320), (70, 3305), (60, 3290), (50, 3280), (40, 3270),
         (30, 3255), (20, 3235), (15, 3215), (10, 3190), (7, 3150), (5, 3100), (3, 3000), (0, 2800)]
PI, COPY, SEND = 2.7, 1.0, 0.8
CAMERA = {"record": 1.5, "data": 1.2, "off": 0.0}
READ_BPS, SEND_BPS = 12 * MB, 2.5 * MB
CLIP = 100 * MB


def cell_mv(soc: float) -> float:
    """Millivolts at a state of charge (0-100), linear between the points of CURVE."""
    for (s_hi, v_hi), (s_lo, v_lo) in zip(CURVE, CURVE[1:]):
        if soc >= s_lo:
            return v_lo + (v_hi - v_lo) * (soc - s_lo) / (s_hi - s_lo)
    return CURVE[-1][1]


class Clip:
    def __init__(self, n: int, event: bool, t: int):
        folder = "Event/Front" if event else "Normal/Front"
        self.path = f"{folder}/2026_1130_{t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d}_{n:03d}F.MP4"
        self.size, self.event, self.mtime_ns = CLIP, event, (1_764_400_000 + t) * 10**9
        self.staged = self.verified = False

    @property
    def kind(self) -> str:
        return "event" if self.event else "normal"


class World:
    """The car at home: the clock, the cell, the camera, its ingest and the upload; tick()'s facts,
    actions and clock."""

    def __init__(self, ledger, boot: str, *, external: bool, soc: float = 100.0, seed: int = 1, clips=()):
        self.ledger, self.boot, self.external, self.soc = ledger, boot, external, soc
        self.rng = random.Random(seed)
        self.t, self.mono, self.wall0 = 0, 50.0, 1.7644e9
        self.mode = "record"
        self.clips = list(clips)
        self.ingest = None      # {"todo": [Clip], "i": next index, "left": bytes of the clip in hand, "gate": ...}
        self.ingest_at = None
        self.upload = None      # {"clip": Clip in hand, "left": bytes}
        self.cut = []           # clips abandoned mid-copy or mid-send: (what, clip, why)
        self.shutdown_at = None
        self.timeline = []
        self.last_line = -1e9
        self.quiet = False  # on the road: no battery lines
        self.copied = []  # clips the ingest copied, in order
        self.sent = []  # clips verified on the server, in order

    # --- the clock and the cell ----------------------------------------------------------------
    def watts(self) -> float:
        return PI + CAMERA[self.mode] + (COPY if self.ingest else 0) + (SEND if self.upload else 0)

    def mv(self) -> float:
        return 3600.0 if self.external else cell_mv(self.soc)

    def step(self) -> None:
        self.t += 1
        if self.external:
            self.soc = min(100.0, self.soc + 100.0 / 3600)  # charging: full within an hour
        else:
            self.soc -= self.watts() / EFFICIENCY / 3600.0 / CAPACITY_WH * 100.0
        self._ingest_second()
        self._upload_second()
        if self.t % 30 == 0:
            tick.tick(CFG, self, self, ledger=self.ledger, clock=self)
        if self.t - self.last_line >= 120 and not self.quiet:
            self.note("")

    def note(self, what: str) -> None:
        last = (self.ledger.get_state("last_policy") or {}).get("saw", {})  # the reading as the tick last saw it
        b = last.get("battery") or {}
        pct = b.get("percent")
        run = (last.get("budget") or {}).get("runtime_minutes")
        line = (f"{self.t // 60:4d}:{self.t % 60:02d}  cell {self.soc:5.1f} % {self.mv():4.0f} mV | read "
                f"{pct if pct is not None else '--':>3} % | est {run if run is not None else '--':>5} min"
                f" | camera {self.mode:6s} | {what}")
        self.timeline.append(line)
        self.last_line = self.t

    # --- the ingest (started by udev 10 s after data mode, like dashcam-ingest@) ------------------
    def _ingest_second(self) -> None:
        if self.ingest_at is not None and self.t >= self.ingest_at and self.mode == "data":
            self.ingest_at = None
            todo = [c for c in self.clips if not c.staged]
            cands = {footage.Candidate(c.path, c.size, c.mtime_ns, footage.is_event(c.path)): c for c in todo}
            order = [cands[c] for c in footage.order(cands, CFG.ingest.newest_first)]
            gate = budget.IngestGate(self.ledger.get_state, self.ledger.put_state, CFG.camera.name,
                                     [(c.size, c.event) for c in order], self.boot, self.monotonic)
            self.ingest = {"todo": order, "i": 0, "left": None, "gate": gate, "bytes": 0, "files": 0, "t0": self.t}
            self.note(f"ingest starts: {len(order)} clips on the card "
                      f"({sum(c.size for c in order) / 1e9:.1f} GB, {sum(c.size for c in order if c.event) // MB} MB of events)")
        run = self.ingest
        if run is None:
            return
        if run["left"] is None:  # a clip boundary: ask the budget
            if run["i"] >= len(run["todo"]):
                run["gate"].finished()
                return self._end_ingest("all copied")
            if not run["gate"].may_start(run["i"]):
                return self._end_ingest("power budget: the rest waits on the card")
            run["left"] = run["todo"][run["i"]].size
        run["left"] -= READ_BPS
        if run["left"] <= 0:
            clip = run["todo"][run["i"]]
            self.ledger.record_staged(CFG.camera.name, clip.path, clip.size, clip.mtime_ns, event=clip.event,
                                      sha256="0" * 64, staged_path=f"dashcam/2026-11-30/{clip.path.rsplit('/', 1)[1]}")
            clip.staged = True
            self.copied.append(clip)
            run["i"] += 1
            run["left"] = None
            run["bytes"] += clip.size
            run["files"] += 1
            if clip.event or run["files"] % 10 == 0:
                self.note(f"copied {clip.kind} clip {run['files']} ({run['bytes'] // MB} MB so far)")
            if self.upload is None:  # dashcam-upload.path: a clip staged starts the upload
                self.start_upload()

    def _end_ingest(self, why: str, result: str = "ok") -> None:
        run, self.ingest = self.ingest, None
        pending = len(run["todo"]) - run["i"]
        self.ledger.put_state("last_ingest", {"wall": self.time(), "result": result, "files": run["files"],
                                              "bytes": run["bytes"], "pending": pending,
                                              "seconds": float(self.t - run["t0"]), "failed": 0})
        self.note(f"ingest ends ({why}): {run['files']} clips, {run['bytes'] // MB} MB; {pending} left on the card")
        if result == "ok":  # the ingest puts the camera back (ingest.put_camera_back)
            self.mode = "record" if self.external else CFG.camera.after_ingest

    # --- the upload (dashcam-upload.service) -------------------------------------------------------------
    def _upload_second(self) -> None:
        run = self.upload
        if run is None:
            return
        if run["clip"] is None:  # a clip boundary: what may start now?
            backlog = sorted((c for c in self.clips if c.staged and not c.verified),
                             key=lambda c: (not c.event, c.mtime_ns))  # events first, then oldest first
            allowed = budget.allowance(self.ledger.get_state(budget.BUDGET_KEY), "upload", self.boot, self.monotonic())
            keep = budget.upload_fit([(c.size, c.event) for c in backlog], allowed)
            if not keep:
                why = "nothing left to send" if not backlog else \
                    f"power budget: ~{(allowed or 0) // MB:.0f} MB can be sent, {len(backlog)} clips wait"
                return self._end_upload(why)
            run["clip"], run["left"] = backlog[keep[0]], backlog[keep[0]].size
        run["left"] -= SEND_BPS
        if run["left"] <= 0:
            clip = run["clip"]
            clip.verified = True
            self.sent.append(clip)
            row_id = self.ledger.db.execute(
                "SELECT id FROM footage WHERE camera = ? AND source_path = ? AND size = ? AND mtime_ns = ?",
                (CFG.camera.name, clip.path, clip.size, clip.mtime_ns)).fetchone()[0]
            self.ledger.advance(row_id, "verified", remote_path=clip.path)
            run["clip"] = None
            run["files"] += 1
            run["bytes"] += clip.size
            if clip.event or run["files"] % 10 == 0:
                self.note(f"verified on the server: {clip.kind} clip ({run['files']} this run)")

    def _end_upload(self, why: str) -> None:
        run, self.upload = self.upload, None
        if run["files"]:
            self.ledger.put_state("last_upload", {"wall": self.time(), "result": "ok", "files": run["files"],
                                                  "bytes": run["bytes"], "seconds": float(self.t - run["t0"])})
            self.note(f"upload ends ({why}): {run['files']} clips, {run['bytes'] // MB} MB verified")

    # --- tick()'s clock -----------------------------------------------------------------------------
    def monotonic(self) -> float:
        return self.mono + self.t

    def time(self) -> float:
        return self.wall0 + self.t

    def boot_id(self) -> str:
        return self.boot

    # --- tick()'s facts -------------------------------------------------------------------------------
    def battery(self):
        if self.external:
            return Reading(external=True, percent=95, millivolts=3600, raw={"VOUT": 5000, "IOUT": int(self.watts() / 5 * 1000)})
        mv = int(self.mv() + self.rng.gauss(0, 3))
        return Reading(external=False, percent=battery_percent(mv), millivolts=mv,
                       raw={"VOUT": 5000, "IOUT": int(self.watts() / 5 * 1000)})

    def camera_mode(self):
        return self.mode

    def camera_attached(self):
        return self.mode == "data"

    def server_reachable(self):
        return True

    def units_running(self):
        return self.ingest is not None, self.upload is not None

    def staging_space(self):
        return 2**40, 2**30

    # --- tick()'s actions -----------------------------------------------------------------------------
    def stop_units(self, units):
        if INGEST_UNITS in units and self.ingest is not None:
            if self.ingest["left"] is not None:
                self.cut.append(("copy", self.ingest["todo"][self.ingest["i"]], "policy stopped the ingest"))
            self._end_ingest("stopped by the policy", "interrupted")
        if UPLOAD_UNIT in units and self.upload is not None:
            if self.upload["clip"] is not None:
                self.cut.append(("send", self.upload["clip"], "policy stopped the upload"))
            self._end_upload("stopped by the policy")

    def set_camera(self, mode):
        if mode != self.mode:
            self.note(f"policy: camera {self.mode} -> {mode}")
        self.mode = mode
        self.ingest_at = self.t + 10 if mode == "data" else None

    def start_upload(self):
        if self.upload is None:
            self.upload = {"clip": None, "left": 0, "files": 0, "bytes": 0, "t0": self.t}

    def poweroff(self):
        self.shutdown_at = self.t
        self.note("policy: clean shutdown (battery below shutdown_percent)")

    def start_watch(self):
        pass


def battery_percent(mv: int) -> int:
    from dashcam_helpers.battery import percent_from_millivolts

    return percent_from_millivolts(mv, CFG.battery.voltage_table)


def drive(world: World, minutes: int) -> None:
    """The camera records on the road (external power, server out of reach): the policy counts it."""
    reach, world.server_reachable = world.server_reachable, lambda: False
    world.quiet = True
    for _ in range(minutes * 60):
        world.step()
    world.server_reachable, world.quiet = reach, False


def a_card(events: int, normal: int, t0: int = 0):
    """Clips recorded a minute apart; the events spread among them."""
    clips, every = [], max(1, (events + normal) // max(1, events))
    for n in range(events + normal):
        clips.append(Clip(n, n % every == every // 2 and sum(c.event for c in clips) < events, t0 + n * 60))
    return clips


def policy_lines(ledger, what: str):
    last = ledger.get_state("last_policy") or {}
    return what in (last.get("decision") or {}).get("reason", "")


@pytest.fixture(scope="module", params=["camera", "staging"])
def evening(request, tmp_path_factory):
    """The backlog of 12 GB, 600 MB of them events, on the camera (two hours of driving) or in staging
    (days the server was away; then a ten-minute drive); home on battery until the Pi shuts down; the
    next arrival on external power."""
    path = str(tmp_path_factory.mktemp("budget") / "ledger.sqlite3")
    with Ledger(path) as ledger:
        ledger.put_state("last_ingest", {"wall": 1.0, "result": "ok", "files": 0, "bytes": 0, "pending": 0})
        backlog = a_card(6, 114)  # 12 GB, 600 MB of them events
        if request.param == "camera":
            card, minutes = backlog, 120
        else:
            for clip in backlog:
                ledger.record_staged(CFG.camera.name, clip.path, clip.size, clip.mtime_ns, event=clip.event,
                                     sha256="0" * 64, staged_path=f"dashcam/2026-11-29/{clip.path.rsplit('/', 1)[1]}")
                clip.staged = True
            card, minutes = backlog + a_card(0, 10, t0=80000), 10
        first = World(ledger, "boot-1", external=True, clips=card)
        first.where = request.param
        drive(first, minutes)
        first.external = False  # home: the engine stops, the car's power goes
        first.note("arrived home, engine off: on battery")
        decisions = []
        while first.shutdown_at is None and first.t < 6 * 3600:
            first.step()
            reason = ((ledger.get_state("last_policy") or {}).get("decision") or {}).get("reason", "")
            if first.t % 30 == 0 and ("copy" in reason or "power budget" in reason):
                decisions.append(reason)
        sent_before = list(first.sent)
        staged_before = list(first.copied)
        # the next day: a new boot, charged; the camera records 20 min more and the car arrives on external power
        second = World(ledger, "boot-2", external=True, clips=card + a_card(1, 19, t0=86400))
        drive(second, 20)
        second.note("arrived home on external power (the engine runs, then a charger)")
        while second.t < 5 * 3600 and not all(c.verified for c in second.clips):
            second.step()
        yield first, second, decisions, sent_before, staged_before


def test_on_battery_the_events_are_copied_and_sent_before_the_clean_shutdown(evening):
    first, second, decisions, sent, staged = evening
    print(f"\n--- home on battery, the backlog on the {first.where} ---\n" + "\n".join(first.timeline))
    print("\n--- the next arrival, on external power ---\n" + "\n".join(second.timeline))
    seen = []
    for d in decisions:
        if d.split(" (")[0] not in [s.split(" (")[0] for s in seen]:
            seen.append(d)
    print("\nthe policy's reasons on battery (the first of each kind):\n" + "\n".join(seen[:8]))
    events = [c for c in first.clips if c.event]
    assert first.shutdown_at is not None, "the battery ran down: the Pi must shut down"
    assert all(c in sent for c in events), "every event clip reached the server before the shutdown"
    assert len(sent) < len(first.clips), "not everything fit: the rest waited"
    assert first.upload is None and first.ingest is None, "nothing ran at the shutdown: it was clean"
    assert first.cut == [], "no clip was cut mid-copy or mid-send"


def test_on_battery_what_does_not_fit_waits_events_only_from_the_camera_an_upload_stopped_between_clips(evening):
    first, _, decisions, sent, staged = evening
    if first.where == "camera":
        # the events were copied, the normal clips stayed on the card
        assert staged and all(c.event for c in staged)
        assert any("copy events only:" in d and "of normal clips do not" in d for d in decisions)
        assert any("rest waits on the card" in line for line in first.timeline)
    else:
        # the ten minutes on the camera fit; the upload sent the events first, then normal clips until the
        # budget ran out, and stopped between two clips before the shutdown
        assert any("copy all:" in d for d in decisions)
        assert len(staged) == 10, "the ten minutes on the camera were copied"
        assert [c.event for c in sent[:6]] == [True] * 6 and len(sent) > 6
        stop = [n for n, line in enumerate(first.timeline) if "upload ends (power budget" in line]
        assert stop and stop[0] < len(first.timeline) - 1, "the budget stopped the upload before the shutdown"


def test_at_the_next_arrival_on_external_power_the_rest_follows(evening):
    _, second, _, _, _ = evening
    assert all(c.staged and c.verified for c in second.clips)
    assert second.cut == [] and second.shutdown_at is None
