#!/usr/bin/python3
"""Bench: how long the system tests' guest takes to boot (the unit cost of every VM scenario).

    /usr/bin/python3 bench/vm_boot.py [RUNS]

Boots the cached image (tests/system/image.py builds it) RUNS times (default 3) on throw-away
overlays and prints each boot-to-guest-agent time, their median, and the baseline beside it.
Baseline measured on the 2-core development machine: 37 s idle, 70-110 s while other builds ran.
"""
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "system"))

import image  # noqa: E402
from vm import VM  # noqa: E402

BASELINE_S = 37.0


def main(runs):
    img = image.ensure_image()
    times = []
    for i in range(runs):
        work = tempfile.mkdtemp(prefix="dashcam-bench-boot-")
        vm = VM(img, work)
        try:
            vm.start()
            times.append(vm.boot_seconds)
            print("boot %d: %.1f s" % (i + 1, vm.boot_seconds), flush=True)
        finally:
            vm.kill()
            shutil.rmtree(work, ignore_errors=True)
    print("median boot to guest agent: %.1f s (baseline %.0f s, ratio %.2f)"
          % (statistics.median(times), BASELINE_S, statistics.median(times) / BASELINE_S))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
