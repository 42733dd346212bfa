"""The launcher installed as /usr/bin/dashcamctl skips the interpreter's teardown only when nothing is
left for it to do: no exit handler registered, no thread that is not a daemon. Seen from outside
with a stand-in dashcam_helpers.cli: an object whose finaliser writes a file tells whether teardown
ran; an exit handler that writes a file tells whether handlers ran."""
import subprocess
import sys
import textwrap

from conftest import LAUNCHER

CLI = """
import atexit, os, threading, time

class Finalised:
    def __init__(self):
        self.path = os.environ["OUT"] + "/teardown"

    def __del__(self, open=open):  # teardown may have wiped the modules' names by then
        with open(self.path, "w") as f:
            f.write("ran")

kept = Finalised()

def handler():
    with open(os.environ["OUT"] + "/handler", "w") as f:
        f.write("ran")

def late():
    time.sleep(0.2)
    with open(os.environ["OUT"] + "/thread", "w") as f:
        f.write("ran")

def main():
    what = os.environ["WHAT"]
    if what in ("handler", "unregistered"):
        atexit.register(handler)
    if what == "unregistered":
        atexit.unregister(handler)
    if what == "thread":
        threading.Thread(target=late).start()
    print("done")
    return 3
"""


def run(tmp_path, what):
    pkg = tmp_path / "lib" / "dashcam_helpers"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(textwrap.dedent(CLI))
    out = tmp_path / what
    out.mkdir()
    done = subprocess.run([sys.executable, "-S", str(LAUNCHER)], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(tmp_path / "lib"), "OUT": str(out), "WHAT": what})
    return done, sorted(p.name for p in out.iterdir())


def test_nothing_registered_skips_teardown_and_keeps_the_exit_status_and_output(tmp_path):
    done, ran = run(tmp_path, "nothing")
    assert (done.returncode, done.stdout, ran) == (3, "done\n", [])


def test_a_registered_exit_handler_runs_and_teardown_with_it(tmp_path):
    done, ran = run(tmp_path, "handler")
    assert (done.returncode, done.stdout, ran) == (3, "done\n", ["handler", "teardown"])


def test_an_unregistered_handler_does_not_count(tmp_path):
    done, ran = run(tmp_path, "unregistered")
    assert (done.returncode, ran) == (3, [])


def test_a_thread_still_running_is_waited_for(tmp_path):
    done, ran = run(tmp_path, "thread")
    assert (done.returncode, ran) == (3, ["teardown", "thread"])
