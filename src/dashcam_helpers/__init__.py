"""dashcam-manager: keeps a car's USB dashcam recording and brings its footage home."""

import os as _os


def _version() -> str:
    """The version has one home, the first line of debian/changelog. setup.py reads it from
    there, so the installed package's metadata directory beside this one carries it in its name
    (dashcam_manager-<version>.egg-info or .dist-info); a source checkout reads the changelog.
    Not importlib.metadata: importing it costs more than a whole policy tick."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    try:
        with open(_os.path.join(here, "..", "..", "debian", "changelog"), encoding="utf-8") as f:
            first = f.readline()
        return first.split("(", 1)[1].split(")", 1)[0]
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    try:
        names = _os.listdir(_os.path.dirname(here))
    except OSError:
        names = []
    for name in names:
        for suffix in (".egg-info", ".dist-info"):
            if name.startswith("dashcam_manager-") and name.endswith(suffix):
                return name[len("dashcam_manager-"):-len(suffix)]
    return "unknown"


__version__ = _version()
