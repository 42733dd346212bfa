from setuptools import find_packages, setup

setup(
    name="dashcam-manager",
    version="0.1.0",
    description="Keeps a car's USB dashcam recording, brings its footage home, minds the UPS battery",
    license="MIT",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"dashcam_helpers": ["schema.yaml"]},
    python_requires=">=3.9",
    install_requires=["PyYAML", "pyudev"],
    entry_points={"console_scripts": ["dashcamctl = dashcam_helpers.cli:main"]},
)
