"""sd_notify(3) for progress: STATUS= lines that `systemctl status` shows while a unit works."""

from __future__ import annotations

import os
import socket


def notify(**fields: str) -> bool:
    """Send fields (STATUS=..., READY=1) to systemd; a no-op outside a unit. Returns True if sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message)
        return True
    except OSError:
        return False


def status(text: str) -> bool:
    return notify(STATUS=text)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def progress_line(verb: str, done_files: int, total_files: int, done_bytes: int, total_bytes: int, elapsed: float) -> str:
    """e.g. 'ingest 12/40 files, 1.2/3.4 GB, 31 MB/s, ETA 1m10s'."""
    rate = done_bytes / elapsed if elapsed > 0 else 0.0
    eta = (total_bytes - done_bytes) / rate if rate > 0 else None
    total = human_bytes(total_bytes)
    done = human_bytes(done_bytes).split(" ")[0] if total.split(" ")[1] == human_bytes(done_bytes).split(" ")[1] else human_bytes(done_bytes)
    return (
        f"{verb} {done_files}/{total_files} files, {done}/{total}, "
        f"{human_bytes(rate)}/s, ETA {human_duration(eta) if eta is not None else '?'}"
    )
