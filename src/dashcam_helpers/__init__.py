"""dashcam-manager: keeps a car's USB dashcam recording and brings its footage home."""

__version__ = "0.1.0"
