#!/usr/bin/python3
"""What one policy tick pays to publish to MQTT, broker up and broker away.

Starts its own Mosquitto on 127.0.0.1 (random port), publishes the state N times and
prints the median and worst time per case beside its baseline: the issue's requirement
that a dead broker costs the tick less than 1 s, and mqtt.TICK_BUDGET (0.7 s) that
publish_state allows itself. Run: /usr/bin/python3 bench/mqtt_publish.py [N]
"""

from __future__ import annotations

import os
import pwd
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dashcam_helpers import config, mqtt  # noqa: E402

FACTS = {
    "battery": {"source": "lifepo4wered", "millivolts": 3611, "percent": 95, "external": True,
                "raw": {"VIN": 5208, "VOUT": 4979, "IOUT": 857}},
    "camera": {"mode": "record", "attached": None},
    "staging": {"backlog_files": 12, "backlog_bytes": 1800000000, "free_bytes": 25000000000},
    "server": {"reachable": True},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cfg_for(tmp: str, port: int):
    raw = {
        "upload": {"host": "127.0.0.1", "user": "dashcam", "dest_path": "footage"},
        "paths": {"local_staging": f"{tmp}/staging", "state_dir": f"{tmp}/state"},
        "mqtt": {"host": "127.0.0.1", "port": port, "base_topic": "dashcam/bench"},
    }
    return config.validate(raw, "bench")


def measure(cfg, n: int):
    times = []
    for _ in range(n):
        start = time.monotonic()
        mqtt.publish_state(cfg, FACTS)
        times.append(time.monotonic() - start)
    return statistics.median(times), max(times)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp, "mosquitto.conf")
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"user {pwd.getpwuid(os.getuid()).pw_name}\n")
        broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            up = measure(cfg_for(tmp, port), n)
        finally:
            broker.terminate()
            broker.wait()
        refused = measure(cfg_for(tmp, free_port()), n)
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            quiet = measure(cfg_for(tmp, silent.getsockname()[1]), max(3, n // 5))
    print(f"publish_state, {len(mqtt.state_messages(cfg_for('/tmp', 1), FACTS))} messages per tick "
          f"(baseline: < 1.0 s required, {mqtt.TICK_BUDGET} s budget)")
    for name, (median, worst) in (("broker up", up), ("nothing listening", refused), ("accepts, never answers", quiet)):
        print(f"  {name:<24} median {median * 1000:7.1f} ms   worst {worst * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
