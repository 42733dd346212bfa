"""The world the policy sees and acts on: the real gatherers and actors of a tick.

``SystemFacts`` reads the battery, the camera's mode and storage, the server, staging and our
units; ``SystemActions`` stops and starts units, switches the camera and powers off. Each
goes to the module of its concern (battery, camera, device, server, staging, systemd),
imported when it is called: the timer runs a tick every 30 s on battery. The tick
(tick.py) and the ignition watcher take them by parameter; tests pass fakes.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Optional, Sequence, Tuple

from .log import get as get_logger
from .policy import INGEST_UNITS, UPLOAD_UNIT, WATCH_UNIT, ours_running
from .staging import space as staging_space

log = get_logger("dashcam.policy")


class SystemFacts:
    """The real gatherers, against the modules of the other concerns (imported on use)."""

    def __init__(self, cfg, systemctl=None, probe_timeout=None):
        from .systemd import Systemctl

        self.cfg = cfg
        self.probe_timeout = probe_timeout  # seconds for the server probe (None: upload.connect_timeout)
        self.reading = None  # the last battery reading
        self.systemctl = systemctl or Systemctl()  # systemd.Systemctl, or a fake with its units()

    def battery(self):
        from . import battery

        self.reading = battery.read(self.cfg)  # never raises: an unknown reading carries its reason
        return self.reading

    def camera_mode(self) -> str:
        from . import camera

        try:
            return camera.current_mode(self.cfg)
        except Exception as e:  # a broken hub or a missing tool: the mode is unknown, the tick goes on
            log.debug("camera mode unknown: %s", e)
            return "unknown"

    def camera_attached(self) -> Optional[bool]:
        from . import device

        try:
            return device.camera_attached(self.cfg) is not None
        except Exception as e:
            log.debug("camera attachment unknown: %s", e)
            return None

    def server_reachable(self) -> bool:
        from . import server  # not the uploader: a tick must not pay for importing it

        try:
            return bool(server.reachable(self.cfg, self.probe_timeout))
        except Exception as e:
            log.debug("reachability probe failed: %s", e)
            return False

    def units_running(self) -> Tuple[bool, bool]:
        """(an ingest unit is running, the upload unit is running), from one systemctl call."""
        from .runner import CommandError

        try:
            return ours_running(self.systemctl.units(INGEST_UNITS, UPLOAD_UNIT))
        except CommandError as e:  # no systemctl (not a systemd system): nothing of ours runs
            log.debug("cannot list units: %s", e)
            return False, False

    def staging_space(self) -> Tuple[int, int]:
        return staging_space(self.cfg)


class SystemActions:
    """The real actors: systemd through systemd.Systemctl, the camera through camera.set_mode."""

    def __init__(self, cfg, dry_run: bool = False, facts: Optional[SystemFacts] = None, systemctl=None):
        from .systemd import Systemctl

        self.cfg = cfg
        self.dry_run = dry_run
        self.facts = facts  # what the tick read the battery with: checked again before leaving record
        self.systemctl = systemctl or Systemctl(dry_run=dry_run)  # or a fake with start/stop/poweroff

    def stop_units(self, units: Sequence[str]) -> None:
        # blocks until they have stopped: ingest deletes its .part and unmounts, upload ends rsync
        self.systemctl.stop(list(units))

    def set_camera(self, mode: str) -> Optional[bool]:
        """Switch the camera; False when it was already recording (nothing done)."""
        from . import camera
        from .ignition import LOCK_PATH, PolicyLock

        if self.facts is None or (mode != "record" and self.facts.reading is None):
            camera.set_mode(self.cfg, mode, dry_run=self.dry_run)
            return None
        if mode == "record":
            # under the watcher's lock: it may have put the camera back (and counted the return)
            # since this tick read the mode
            with PolicyLock(None if self.dry_run else LOCK_PATH):
                if not self.dry_run and self.facts.camera_mode() == "record":
                    return False
                camera.set_mode(self.cfg, mode, dry_run=self.dry_run)
            return None
        # leaving record: under the lock the ignition watcher acts with, one more battery read. The
        # engine may have started since this tick's reading (a tick takes seconds); the watcher, or
        # the next tick, has the camera then.
        seen = self.facts.reading.external
        with PolicyLock(None if self.dry_run else LOCK_PATH):
            if seen is not True and self.facts.battery().external is True:
                raise camera.CameraError(
                    f"camera {mode}: not switched: external power since this tick's reading (the engine started)"
                )
            camera.set_mode(self.cfg, mode, dry_run=self.dry_run)
        return None

    def start_upload(self) -> None:
        self.systemctl.start(UPLOAD_UNIT)

    def poweroff(self) -> None:
        self.systemctl.poweroff()

    def start_watch(self) -> None:
        self.systemctl.start(WATCH_UNIT)
