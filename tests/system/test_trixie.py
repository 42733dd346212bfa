"""The package on Debian 13 "trixie" (Python 3.13, systemd 257, Linux 6.12), which Raspberry Pi OS
is now based on: the package's install / upgrade / purge test, scenarios B and C and doctor, their
bodies as the bookworm modules have them, on guests of the trixie image (conftest: SUITE).

Left to bookworm alone (CI's time): scenario A, the faults, clip dates, ignition and the interval;
they exercise the product's own logic, which the suite does not change, more than the OS under it.
"""
import pytest

from test_doctor_vm import test_doctor_before_and_after_the_readme_setup_then_without_camera_then_without_server as doctor
from test_package import test_install_purge_install_upgrade_purge_as_piuparts_does
from test_scenarios import (
    test_B_at_home_footage_goes_from_the_camera_to_the_server_byte_identical as scenario_B,
    test_C_on_battery_the_camera_loses_power_then_the_pi_shuts_down_cleanly,
    test_C_on_external_power_a_low_battery_changes_nothing,
)

pytestmark = pytest.mark.system

SUITE = "trixie"

# collected here as tests of this module, so on this module's guests
__all__ = [
    "test_install_purge_install_upgrade_purge_as_piuparts_does",
    "test_C_on_battery_the_camera_loses_power_then_the_pi_shuts_down_cleanly",
    "test_C_on_external_power_a_low_battery_changes_nothing",
]



def test_B_at_home_footage_goes_from_the_camera_to_the_server_byte_identical(booted, tmp_path, server, figure):
    scenario_B(booted, tmp_path, server, figure)


def test_doctor_before_and_after_the_readme_setup_then_without_camera_then_without_server(
        make_vm, deb_path, server, tmp_path, figure):
    doctor(make_vm, deb_path, server, tmp_path, figure)
