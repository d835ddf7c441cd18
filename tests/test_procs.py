"""The multi-process tests' launcher helper: a hang must fail with the stacks of every process."""

import sys

import pytest

from .procs import run_tree

HANG = ("import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time\\ndef stuck_child():\\n    time.sleep(120)\\nstuck_child()'])\n"
        "def stuck_parent():\n    time.sleep(120)\n"
        "stuck_parent()\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_hung_tree_fails_with_every_process_stack():
    with pytest.raises(AssertionError) as err:
        run_tree([sys.executable, "-c", HANG], cwd=".", env={"PATH": "/usr/bin:/bin"}, timeout=3)
    text = str(err.value)
    assert "timed out after 3s" in text
    assert "stuck_parent" in text and "stuck_child" in text, text  # both processes' stacks
    assert text.count(sys.executable) >= 2, text  # the tree lists both


def test_a_finished_run_returns_its_output():
    r = run_tree([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                 cwd=".", env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
