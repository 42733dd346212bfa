import os
import sys

from setuptools import find_packages, setup

# the version has one home, debian/changelog: the package reads it the same way
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
from dashcam_helpers import __version__  # noqa: E402

setup(
    name="dashcam-manager",
    version=__version__,
    description="Keeps a car's USB dashcam recording, brings its footage home, minds the UPS battery",
    license="MIT",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"dashcam_helpers": ["schema.yaml"]},
    python_requires=">=3.9",
    install_requires=["PyYAML", "pyudev"],
    entry_points={"console_scripts": ["dashcamctl = dashcam_helpers.cli:main"]},
)
