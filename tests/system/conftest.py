"""Fixtures for the system tests: the cached image, the built .deb, an installed base, a VM, a server."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from _pytest.runner import runtestprotocol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: sshd, merge

import guest  # noqa: E402
import image  # noqa: E402
from home_server import Server  # noqa: E402
from vm import VM  # noqa: E402

REPO = guest.REPO
KEEP = os.environ.get("DASHCAM_VM_KEEP")          # keep VM work dirs (console, journal) for a post-mortem


def pytest_collection_modifyitems(items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.system)


FIGURES = []
POSTMORTEMS = []        # (test, the guest's last dashcam lines): printed at the very end, where CI's excerpt is
# what a post-mortem leaves out: the guest agent's own lines (one per command the test runs)
AGENT_NOISE = ("qemu-ga[",)


def _figure(name, value):
    """Figures a person wants from a run (recording gap, attach-to-copy): in pytest's summary at the
    end (captured output would hide them) and appended to a file."""
    line = "FIGURE %s: %s" % (name, value)
    FIGURES.append(line)
    print("\n" + line, flush=True)
    with open(os.path.join(tempfile.gettempdir(), "dashcam-system-figures.txt"), "a") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")


def module_suite(request):
    """The Debian suite a test module's guests run: its SUITE, else bookworm (image.DEFAULT_SUITE)."""
    return getattr(request.module, "SUITE", image.DEFAULT_SUITE)


@pytest.fixture
def suite(request):
    return module_suite(request)


@pytest.fixture
def figure(suite):
    """figure(name, value); on another suite than the default the name says which."""
    if suite == image.DEFAULT_SUITE:
        return _figure
    return lambda name, value: _figure("%s on %s" % (name, suite), value)


@pytest.fixture(scope="session")
def images():
    """images(suite) -> the suite's cached image directory, built on first use (and timed)."""
    found = {}

    def get(suite):
        if suite not in found:
            t0 = time.monotonic()
            found[suite] = image.ensure_image(suite)
            took = time.monotonic() - t0
            if took > 5:
                _figure("image build" if suite == image.DEFAULT_SUITE else "image build (%s)" % suite,
                        "%.0f s" % took)
        return found[suite]
    return get


@pytest.fixture(scope="module")
def vm_image(images, request):
    """The image of the module's suite (see module_suite)."""
    return images(module_suite(request))


@pytest.fixture(scope="session")
def deb_path():
    """The .deb `make deb` built (DASHCAM_DEB overrides); built here when a test file runs alone."""
    path = os.environ.get("DASHCAM_DEB")
    if not path:
        found = sorted(glob.glob(os.path.join(REPO, "dist", "dashcam-manager_*_all.deb")), key=os.path.getmtime)
        if not found:
            subprocess.run(["make", "-C", REPO, "deb"], check=True)
            found = sorted(glob.glob(os.path.join(REPO, "dist", "dashcam-manager_*_all.deb")))
        path = found[-1]
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def workroot():
    d = tempfile.mkdtemp(prefix="dashcam-vm-")
    yield d
    if not KEEP:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def installed_bases(images, deb_path, workroot):
    """installed_bases(suite) -> that suite's installed base, made once a session."""
    made = {}

    def get(suite):
        if suite not in made:
            name = "installed" if suite == image.DEFAULT_SUITE else "installed-" + suite
            made[suite] = _installed_base(images(suite), deb_path, os.path.join(workroot, name))
        return made[suite]
    return get


@pytest.fixture(scope="module")
def installed_base(installed_bases, request):
    """A qcow2 over the module's suite's image with the package and the tests' tools installed."""
    return installed_bases(module_suite(request))


def _installed_base(vm_image, deb_path, d):
    """A qcow2 (over the cached image) with the package and the tests' tools installed, cleanly shut down."""
    vm = VM(vm_image, d)
    vm.start()
    try:
        guest.install_package(vm, deb_path)
        guest.install_tools(vm)
        # the camera's hub exists from boot on, as on the Pi (dashcam-boot.service switches it off);
        # loaded by systemd-modules-load before udev's coldplug, dummy_hcd gets the same bus every boot
        vm.write_file("/etc/modules-load.d/dashcam-test-camera.conf", "dummy_hcd\n")
        vm.shutdown()
        vm.start()
        # a config for this hardware (camera on dummy_hcd, server unreachable: the car is away)
        guest.write_config(vm, guest.scenario_config(vm, bus=guest.camera_bus(vm), unreachable_port=9))
        vm.run(["/bin/sync"])
    finally:
        vm.shutdown()
    return vm.disk


def _ours(line):
    """A journal line from the package, its units or networkd: "[ts] host ident[pid]: text" as
    journalctl prints it, or "[ts] ident[pid]: text" as the serial console does."""
    words = line.split("] ", 1)[-1].split(" ", 2)
    # the speaker is the first word that ends in ":" among the first two (host names do not)
    said = next((" ".join(words[n:]) for n in range(min(2, len(words))) if words[n].endswith(":")), "")
    return said.startswith(("dashcam", "systemd-networkd")) or (said.startswith("systemd[1]") and "dashcam" in said)


# The guest's kernel dying under the emulation, not under the package: a test learns of it only
# by its own timeout, and what it set out to check (a clean poweroff, a copy) never happened.
# Two kinds are known:
# - Debian's 6.1 kernel oopses inside dummy_hcd, the USB emulation behind the test camera, when
#   the camera's port power goes off while the emulated controller's timer runs
#   ("general protection fault ... dummy_timer [dummy_hcd]");
# - Debian 13's 6.12 kernel, during a poweroff under TCG, executed one byte into a 5-byte NOP
#   of its own live-patched text ("RIP: proc_sys_call_handler+0x1a0", "Code: ... 0f <1f> 44 00
#   00"), most likely the instruction-patching hazard of multi-threaded TCG (seen once, in CI).
# A test whose guest printed "Kernel panic - not syncing" runs once more (the summary names it
# and the oops); any other failure, and a second panic, stands.
KERNEL_PANIC = "Kernel panic - not syncing"
OOPS_MARKS = ("Oops:", "general protection fault", "BUG:", "invalid opcode", "RIP: 0010:")
RERUNS = []  # (test, why): said in the summary


def _guest_kernel_panic(vm):
    """The guest kernel's oops line (and where it died) when it panicked, else None."""
    text = "".join(vm.console_text())
    if KERNEL_PANIC not in text:
        return None
    lines = text.splitlines()
    oops = next((ln.strip() for ln in lines if any(m in ln for m in OOPS_MARKS[:4])), KERNEL_PANIC)
    rip = next((ln.strip() for ln in lines if OOPS_MARKS[4] in ln), "")
    return "%s; %s" % (oops, rip) if rip else oops


def _postmortem(vm):
    """(where the lines come from, the guest's last lines of ours). Never raises: the agent may
    be gone with the guest, and the serial console (the journal goes there too) still tells."""
    why = None
    if vm.running():
        try:
            text = vm.journal()
            with open(os.path.join(vm.workdir, "journal.txt"), "w") as f:
                f.write(text)
            lines = [ln for ln in text.splitlines() if not any(n in ln for n in AGENT_NOISE)]
            print("\n--- guest journal (last 80 lines, agent lines left out) ---\n" + "\n".join(lines[-80:]))
            return "journal", [ln for ln in lines if _ours(ln)][-40:]
        except Exception as exc:        # a post-mortem must not hide the failure itself
            why = "no journal from the agent (%s)" % exc
    else:
        why = "QEMU had exited (%s)" % (vm.proc.returncode if vm.proc is not None else "never started")
    console = "".join(vm.console_text()).splitlines()
    return "%s; serial console" % why, [ln for ln in console if _ours(ln)][-40:] or console[-20:]


@pytest.fixture
def make_vm(vm_image, workroot, request):
    """make_vm(base=None) -> a VM (not yet started) on a throw-away overlay; killed after the test."""
    made = []
    # a test run on two suites (test_trixie.py reuses bookworm's tests) gets a directory per suite:
    # a VM finds an existing overlay in its directory and boots it
    suite = module_suite(request)
    prefix = "" if suite == image.DEFAULT_SUITE else suite + "-"

    def make(base=None):
        name = "%s%s-%d" % (prefix, request.node.name.replace("/", "_")[:60], len(made))
        workdir = os.path.join(workroot, name)
        # a test run again (a guest kernel panic) gets new directories: a VM boots the overlay it
        # finds in its directory, and the first run's is kept for its post-mortem
        again = 1
        while os.path.exists(workdir):
            again += 1
            workdir = os.path.join(workroot, "%s-run%d" % (name, again))
        vm = VM(vm_image, workdir, base=base)
        made.append(vm)
        return vm

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for vm in made:
        if failed:
            source, lines = _postmortem(vm)
            POSTMORTEMS.append(("%s (%s, %s)" % (request.node.name, os.path.basename(vm.workdir), source), lines))
            panic = _guest_kernel_panic(vm)
            if panic:
                request.node.guest_kernel_panic = panic
        vm.kill()
        if not KEEP and not failed:
            shutil.rmtree(vm.workdir, ignore_errors=True)


@pytest.fixture
def booted(make_vm, installed_base):
    """A started VM with the package installed (a fresh overlay for this test)."""
    vm = make_vm(base=installed_base)
    vm.start()
    return vm


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    s = Server(str(tmp_path / "server")).start()
    yield s
    s.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """A system test whose guest's kernel panicked (KERNEL_PANIC) runs once more, with fresh
    fixtures; its reports are those of the last run."""
    if item.get_closest_marker("system") is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for attempt in (1, 2):
        item.guest_kernel_panic = None
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        panic = item.guest_kernel_panic
        if attempt == 2 or not panic or not any(r.failed for r in reports):
            break
        RERUNS.append((item.nodeid, panic))
        print("\n%s: the guest's kernel panicked (%s); running it again"
              % (item.nodeid, panic), flush=True)
        item._initrequest()             # fresh fixtures for the second run
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_terminal_summary(terminalreporter):
    if RERUNS:
        terminalreporter.section("system tests run again (the guest kernel panicked)")
        for nodeid, panic in RERUNS:
            terminalreporter.write_line("%s: %s" % (nodeid, panic[:200]))
    for name, lines in POSTMORTEMS:
        terminalreporter.section("guest post-mortem: " + name)
        for line in lines:
            terminalreporter.write_line(line[:220])
    if FIGURES:
        terminalreporter.section("system test figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
