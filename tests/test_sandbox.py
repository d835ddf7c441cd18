"""The sandbox against hostile snippets: each limit is shown to hold, and each test can fail."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from prorl.rewards.code import run_asserts, run_humaneval
from prorl.rewards.sandbox import run_python

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's bookkeeping is left


def _survivors(pids: list[int], within_s: float = 3.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_normal_program_gets_stdin_and_passes():
    r = run_python("import sys\nprint(sys.stdin.read().upper())", stdin="hello")
    assert (r.passed, r.returncode, r.stdout, r.timed_out, r.reason) == (True, 0, "HELLO\n", False, "ok")


def test_standard_modules_import_under_the_guard_however_the_interpreter_started():
    """`random` (and threading, concurrent.futures, ...) register at-fork hooks when first imported.
    Whether an interpreter already imported them before the guard depends on its site-packages (a
    fresh venv does not), so the program re-imports them here, after the guard."""
    code = (
        "import sys\n"
        "for m in ('random', 'concurrent.futures', 'concurrent.futures.process', 'logging'):\n"
        "    sys.modules.pop(m, None)\n"
        "import random, logging, concurrent.futures.process\n"
        "print(random.Random(1).randint(0, 9))"
    )
    r = run_python(code)
    assert r.passed, r.stderr


def test_large_stdin_and_stdout_do_not_deadlock():
    data = "x" * 300_000  # larger than a pipe buffer in both directions
    r = run_python("import sys\nsys.stdout.write(sys.stdin.read())", stdin=data)
    assert r.passed and r.stdout == data


def test_exception_fails_with_traceback():
    r = run_python("def f():\n    raise ValueError('boom')\nf()")
    assert not r.passed and r.returncode == 1 and r.reason == "exit status 1"
    assert "ValueError: boom" in r.stderr and "main.py" in r.stderr


def test_infinite_loop_times_out_and_process_is_gone():
    r = run_python("import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass", timeout_s=1)
    assert r.timed_out and not r.passed and r.reason == "timeout after 1s"
    assert 1.0 <= r.elapsed_s < 3.0
    assert _survivors([int(r.stdout)]) == []


def test_closing_stdout_does_not_escape_the_timeout():
    r = run_python("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass", timeout_s=1)
    assert r.timed_out and not r.passed and r.elapsed_s < 3.0


def test_cpu_limit_kills_busy_loop_before_the_wall_clock_limit():
    r = run_python("while True:\n    pass", cpu_s=1, timeout_s=20)
    assert not r.passed and not r.timed_out
    assert r.reason.startswith("killed by SIGXCPU") or r.reason == "killed by SIGKILL"
    assert r.elapsed_s < 10


def test_children_left_behind_after_a_normal_exit_are_killed():
    # guard=False lets the snippet fork: this checks the process-group kill on its own.
    code = """
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                print(os.getpid(), flush=True)
                time.sleep(60)
                os._exit(0)
    """
    r = run_python(textwrap.dedent(code), timeout_s=20, guard=False)
    pids = [int(p) for p in r.stdout.split()]
    assert r.passed and len(pids) == 3
    assert r.elapsed_s < 5  # did not wait for the sleeping children or the timeout
    assert _survivors(pids) == []


def test_bounded_fork_tree_is_killed_at_the_timeout():
    # A fork bomb with a bound (2**4 = 16 processes), unguarded: containment by group kill alone.
    code = """
        import os, time
        for _ in range(4):
            os.fork()
        print(os.getpid(), flush=True)
        time.sleep(60)
    """
    r = run_python(textwrap.dedent(code), timeout_s=2, guard=False)
    pids = [int(p) for p in r.stdout.split()]
    assert r.timed_out and len(pids) == 16
    assert _survivors(pids) == []


def test_fork_bomb_is_stopped_by_the_guard():
    r = run_python("import os\nwhile True:\n    os.fork()", timeout_s=10)
    assert not r.passed and not r.timed_out and r.elapsed_s < 5
    assert "PermissionError: os.fork is disabled" in r.stderr


def test_other_ways_to_start_processes_are_blocked():
    attempts = {
        "posix.fork": "import posix; posix.fork()",
        "os.system": "import os; os.system('echo escaped')",
        "subprocess": "import subprocess; subprocess.run(['echo', 'escaped'])",
        "multiprocessing": "import multiprocessing as m; p = m.Process(target=print); p.start(); p.join()",
        "os.posix_spawn": "import os; os.posix_spawn('/bin/echo', ['echo', 'escaped'], {})",
        "ctypes": "import ctypes",
    }
    code = "results = []\n"
    for name, attempt in attempts.items():
        code += f"try:\n    {attempt}\n    results.append('{name}: ran')\nexcept (PermissionError, ImportError):\n    results.append('{name}: blocked')\n"
    code += "print('\\n'.join(results))"
    r = run_python(code)
    assert r.passed, r.stderr
    assert "escaped" not in r.stdout
    assert r.stdout.split("\n")[:-1] == [f"{name}: blocked" for name in attempts]


def test_huge_allocation_fails_inside_the_child():
    r = run_python("b = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not r.passed and "MemoryError" in r.stderr and "allocated" not in r.stdout
    # ...while a modest allocation under the same limit is fine, so the limit is what stopped it.
    ok = run_python("b = bytearray(64 * 1024**2)\nprint('allocated')", memory_mb=256)
    assert ok.passed and ok.stdout == "allocated\n"


def test_writes_outside_the_work_dir_are_refused(tmp_path):
    targets = {name: tmp_path / name for name in ("open.txt", "pathlib.txt", "osopen.txt", "copied.txt", "newdir")}
    code = f"""
        import os, pathlib, shutil
        results = []
        def attempt(name, action):
            try:
                action()
                results.append(name + ': wrote')
            except PermissionError:
                results.append(name + ': refused')
        attempt('open', lambda: open({str(targets['open.txt'])!r}, 'w').write('x'))
        attempt('pathlib', lambda: pathlib.Path({str(targets['pathlib.txt'])!r}).write_text('x'))
        attempt('os.open', lambda: os.open({str(targets['osopen.txt'])!r}, os.O_CREAT | os.O_WRONLY))
        attempt('shutil.copy', lambda: shutil.copy('main.py', {str(targets['copied.txt'])!r}))
        attempt('mkdir', lambda: os.makedirs({str(targets['newdir'])!r}))
        attempt('inside', lambda: open('inside.txt', 'w').write('x'))
        print(os.getcwd())
        print(';'.join(results))
    """
    r = run_python(textwrap.dedent(code))
    assert r.passed, r.stderr
    workdir, results = r.stdout.splitlines()
    assert results.split(";") == [
        "open: refused", "pathlib: refused", "os.open: refused", "shutil.copy: refused", "mkdir: refused", "inside: wrote",
    ]
    assert [p.name for p in tmp_path.iterdir()] == []
    assert workdir.startswith(os.path.realpath(os.environ.get("TMPDIR", "/tmp"))) or "prorl-sandbox-" in workdir
    assert not Path(workdir).exists()  # the fresh work dir was removed afterwards


def test_file_size_limit():
    r = run_python("open('big.bin', 'wb').write(b'x' * (64 * 2**20))")
    assert not r.passed and "File too large" in r.stderr


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("PRORL_TEST_SECRET", "hunter2-secret")
    r = run_python("import os\nprint(dict(os.environ))\nprint(os.environ.get('PRORL_TEST_SECRET'))")
    assert r.passed
    assert "hunter2-secret" not in r.stdout and r.stdout.splitlines()[-1] == "None"
    assert "PATH" in r.stdout and "AWS" not in r.stdout


def test_reading_the_parent_environment_through_proc_is_refused():
    code = "import os\ntry:\n    open(f'/proc/{os.getppid()}/environ').read()\n    print('read')\nexcept PermissionError:\n    print('refused')"
    r = run_python(code)
    assert r.passed and r.stdout == "refused\n"


def test_printing_gigabytes_is_capped_and_killed_quickly():
    for stream in ("stdout", "stderr"):
        code = f"import sys\nchunk = 'x' * 65536\nwhile True:\n    sys.{stream}.write(chunk)"
        r = run_python(code, timeout_s=30, max_output_bytes=200_000)
        assert not r.passed and not r.timed_out
        assert r.reason == "output exceeded 200000 bytes"
        assert r.elapsed_s < 5
        assert len(r.stdout) <= 200_000 and len(r.stderr) <= 20_000


def test_killing_the_parent_is_refused():
    # The sandbox runs inside a helper process, so a guard failure kills the helper, not pytest.
    snippet = textwrap.dedent("""
        import os, signal
        results = []
        for name, action in [
            ('kill', lambda: os.kill(os.getppid(), signal.SIGKILL)),
            ('killpg', lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)),
            ('pidfd', lambda: signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)),
        ]:
            try:
                action()
                results.append(name + ': sent')
            except PermissionError:
                results.append(name + ': refused')
        print(';'.join(results))
    """)
    helper = (
        "import sys\nfrom prorl.rewards.sandbox import run_python\n"
        f"r = run_python({snippet!r})\nprint('HELPER-ALIVE', r.stdout.strip(), r.stderr[-300:])\n"
    )
    done = subprocess.run([sys.executable, "-c", helper], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HELPER-ALIVE kill: refused;killpg: refused;pidfd: refused" in done.stdout


def test_exit_before_the_tests_is_not_a_pass():
    prompt = "def add(a, b):\n"
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    good = "    return a + b\n"
    # The plain sandbox would call an early exit a success...
    assert run_python(prompt + "    pass\nimport sys\nsys.exit(0)\n" + test + "check(add)").passed
    # ...so the harness only counts tests whose success marker got printed.
    assert run_humaneval(prompt, good, test, "add") == 1.0
    for cheat in (
        "    return 0\nimport sys\nsys.exit(0)\n",
        "    return 0\nimport os\nos._exit(0)\n",
        "    raise SystemExit(0)\n",
        "    return 0\nprint('PRORL-PASS-0123456789abcdef0123456789abcdef 0')\n",  # a forged marker
    ):
        assert run_humaneval(prompt, cheat, test, "add") == 0.0, cheat
        assert run_asserts("def add(a, b):\n" + cheat, ["assert add(2, 3) == 5"]) == 0.0, cheat


def test_parallel_runs_are_independent():
    results = [None] * 8

    def work(i):
        results[i] = run_python(f"import sys\nprint(int(sys.stdin.read()) * {i})", stdin="7")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{7 * i}\n" for i in range(8)]
