"""Virtual SD cards: vfat images laid out like the user's camera, built with mtools (no mount).

The host kernel has no vfat, so nothing here mounts anything: `mkfs.vfat` makes the file system,
`mmd`/`mcopy -m` fill it (keeping each clip's mtime). Every clip is random bytes with a known SHA-256.
"""
import hashlib
import os
import subprocess
import tempfile
import time

CAMERA_FS_UUID = "67EF-9CED"          # the user's card (their fstab)


class Clip:
    def __init__(self, path, size, mtime, sha256):
        self.path, self.size, self.mtime, self.sha256 = path, size, mtime, sha256

    @property
    def name(self):
        return os.path.basename(self.path)

    @property
    def event(self):
        return self.path.startswith("Event/")


def user_layout(normal=6, event=2, size=4 << 20, start=None, step=180):
    """(path, size, mtime) like the user's camera: Normal/Front/*.MP4 plus a few Event/Front/*.MP4."""
    start = start or (int(time.time()) - 86400)          # yesterday's drive
    total = normal + event
    event_at = set(list(range(1, total, max(1, total // max(1, event))))[:event])
    out = []
    t = start
    for i in range(total):
        folder = "Event/Front" if i in event_at else "Normal/Front"
        stamp = time.strftime("%Y_%m%d_%H%M%S", time.localtime(t))
        out.append(("%s/%s_%03dF.MP4" % (folder, stamp, i + 1), size + i * 4096, t))
        t += step
    return out


def make_card(image, clips, label="DASHCAM", fs_uuid=CAMERA_FS_UUID, extra_mib=16, tz=None):
    """Write a vfat image holding `clips` [(path, size, mtime)]; return [Clip] with SHA-256s.

    vfat keeps a wall-clock time without a zone: mtools writes each mtime as it reads in `tz`
    (the host's zone when None). tz="UTC" writes the camera's clock as the UTC breakdown of mtime."""
    total = sum(size for _, size, _ in clips)
    mib = max(64, total // (1 << 20) + extra_mib + len(clips) // 8 + 8)
    if os.path.exists(image):
        os.unlink(image)
    with open(image, "wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", label, "-i", fs_uuid.replace("-", ""), image],
                   check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    if tz is not None:
        env["TZ"] = tz
    made_dirs = set()
    result = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, size, mtime in clips:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made_dirs:
                    subprocess.run(["mmd", "-i", image, "::" + d], check=True, env=env)
                    made_dirs.add(d)
            src = os.path.join(tmp, os.path.basename(path))
            h = hashlib.sha256()
            with open(src, "wb") as f:
                left = size
                while left:
                    block = os.urandom(min(left, 1 << 20))
                    h.update(block)
                    f.write(block)
                    left -= len(block)
            os.utime(src, (mtime, mtime))
            subprocess.run(["mcopy", "-m", "-i", image, src, "::" + path], check=True, env=env)
            os.unlink(src)
            result.append(Clip(path, size, mtime, h.hexdigest()))
    return result


def card_listing(image):
    """What mtools sees on the card (used to check a card was built as intended)."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return subprocess.run(["mdir", "-/", "-b", "-i", image, "::"], check=True, env=env,
                          capture_output=True, text=True).stdout


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
