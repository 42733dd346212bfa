"""Clip dates: a clip's staging folder is the date the camera showed when it recorded it, whatever
the Pi's time zone, and the staged copy keeps the clip's own modification time.

The card is a vfat image (the camera's wall clock, no zone) with clips recorded just before and just
after midnight, named without a timestamp so only the card's time can date them. The guest, in a
zone west of UTC and then one east of it, ingests the card through the product's own mount
(`dashcamctl ingest /dev/vdX`). A date taken from the mtime in the Pi's zone puts the clip from just
after midnight in New York's folder of the day before, and the one from just before midnight in
Berlin's folder of the day after.
"""
import calendar

import pytest

import cards
import guest

pytestmark = pytest.mark.system

ZONES = ("America/New_York", "Europe/Berlin")  # UTC-5 and UTC+1 in November
# (path on the card, the camera's clock when it recorded, the folder it belongs in)
RECORDED = [
    ("Normal/Front/CLIPA.MP4", (2026, 11, 25, 23, 59, 30), "2026-11-25"),
    ("Normal/Front/CLIPB.MP4", (2026, 11, 26, 0, 0, 30), "2026-11-26"),
    ("Event/Front/CLIPC.MP4", (2026, 11, 26, 23, 58, 0), "2026-11-26"),
]


def test_staged_folders_carry_the_cameras_date_in_zones_on_either_side_of_utc(booted, tmp_path):
    vm = booted
    # mtools writes the DOS time as it reads the mtime in TZ: with UTC, the card says exactly RECORDED
    layout = [(path, 64 << 10, calendar.timegm(clock)) for path, clock, _ in RECORDED]
    clips = cards.make_card(str(tmp_path / "card.img"), layout, tz="UTC")
    cfg = guest.scenario_config(vm, unreachable_port=9, camera=guest.scripts_backend(vm))
    guest.write_config(vm, cfg)
    # a virtio disk: no USB, so the udev rule starts no ingest of its own; this test runs it
    devnode = vm.run(["/bin/readlink", "-f", vm.add_disk(str(tmp_path / "card.img"), "card", "card")]).out.strip()

    # the ledger is removed between the zones: nothing else may hold it open meanwhile (a policy
    # tick or an upload started by the staged clips would keep writing to the removed one)
    vm.run(["/bin/systemctl", "stop", "dashcam-policy.timer", "dashcam-upload.path", "dashcam-policy.service",
            "dashcam-upload.service", "dashcam-watch.service"])
    for zone in ZONES:
        vm.run(["/bin/ln", "-sf", "/usr/share/zoneinfo/" + zone, "/etc/localtime"])
        assert vm.run(["/bin/date", "+%Z"]).out.strip() in ("EST", "CET"), zone
        vm.sh("rm -rf /var/lib/dashcam/staging/ready /var/lib/dashcam/staging/incoming "
              "/var/lib/dashcam/ledger.sqlite3*")
        r = vm.run(["/usr/bin/dashcamctl", "ingest", devnode], timeout=300, check=False)
        assert r.rc == 0, "%s: %s" % (zone, r.err[-3000:])

        rows = {row["source_path"]: row for row in guest.ledger_rows(vm)}
        assert sorted(rows) == sorted(path for path, _, _ in RECORDED), zone
        for (path, clock, day), clip in zip(RECORDED, clips):
            row = rows[path]
            assert row["state"] == "staged" and row["sha256"] == clip.sha256, (zone, row)
            assert row["staged_path"] == "dashcam/%s/%s" % (day, path), (zone, row)   # the card's folders kept
            staged = "/var/lib/dashcam/staging/ready/" + row["staged_path"]
            # the staged copy keeps the camera's time (rsync --times carries it to the server)
            mtime = int(vm.run(["/usr/bin/stat", "-c", "%Y", staged]).out.strip())
            assert mtime == calendar.timegm(clock), (zone, path, mtime)
