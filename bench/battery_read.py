#!/usr/bin/python3
"""What one battery reading costs the policy tick (it runs every 30 s on battery).

Prints, as medians over N runs:
  - importing dashcam_helpers.battery in a fresh interpreter, beside importing what every
    dashcamctl run loads anyway (the CLI, the config, logging)
  - battery.read(cfg) in-process against the fake lifepo4wered-cli, beside running that
    fake directly (the floor: one fork+exec of the tool)
Usage: bench/battery_read.py [N]   (default 20)
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
FAKES = os.path.join(ROOT, "tests", "fakes")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def median_of(fn, n=N):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), PATH=FAKES + os.pathsep + os.environ["PATH"])
BASE = "import logging, dashcam_helpers.cli, dashcam_helpers.config"
bare = median_of(lambda: subprocess.run([sys.executable, "-c", BASE], env=env, check=True))
imp = median_of(lambda: subprocess.run([sys.executable, "-c", BASE + ", dashcam_helpers.battery"], env=env, check=True))
print(f"import cli, config (every run)     {bare:7.1f} ms   (baseline)")
print(f"  + dashcam_helpers.battery        {imp:7.1f} ms   ({imp - bare:+.1f} ms over baseline)")

os.environ["PATH"] = env["PATH"]
from dashcam_helpers import battery, config  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    cfg = config.validate({"upload": {"host": "h", "user": "u", "dest_path": "x"}, "paths": {"state_dir": d, "local_staging": d}})
    tool = median_of(lambda: subprocess.run([os.path.join(FAKES, "lifepo4wered-cli"), "get"], capture_output=True, check=True))
    reading = median_of(lambda: battery.read(cfg))
print(f"fake lifepo4wered-cli get          {tool:7.1f} ms   (baseline: the tool alone)")
print(f"battery.read(cfg)                  {reading:7.1f} ms   ({reading / tool:.2f}x the tool alone)")
