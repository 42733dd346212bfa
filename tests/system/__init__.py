"""System tests in a QEMU VM (a package so its conftest does not shadow tests/conftest.py)."""
