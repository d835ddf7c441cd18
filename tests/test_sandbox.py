"""The sandbox against hostile snippets: each limit is shown to hold, and each test can fail.

Most tests run at both isolation levels. "strict" needs Linux namespaces: where it is unavailable
its tests are skipped, except as root on Linux (CI), where they fail: there it must work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from prorl.rewards import _sandbox_child
from prorl.rewards import _sandbox_wire as wire
from prorl.rewards import sandbox
from prorl.rewards.code import run_asserts, run_humaneval
from prorl.rewards.sandbox import SandboxUnavailableError, check_sandbox_level, run_python, run_tests
from .conftest import require

REPO = Path(__file__).resolve().parents[1]
LEVELS = pytest.mark.parametrize("level", ["basic", "strict"])




# Each process of a snippet prints "<pid> <pid namespace>": under "strict" the pid is the one inside
# the namespace, so what must be gone is every process of that namespace.
WHO = "str(os.getpid()) + ' ' + os.readlink('/proc/self/ns/pid')"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's bookkeeping is left


def _in_namespace(inode: str) -> list[int]:
    members = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.readlink(f"/proc/{pid}/ns/pid") == inode and _alive(int(pid)):
                members.append(int(pid))
        except OSError:
            pass
    return members


def _survivors(who: list[str], within_s: float = 3.0) -> list:
    """Which of the processes described by WHO lines are still running."""
    own = os.readlink("/proc/self/ns/pid")

    def alive():
        found = []
        for line in who:
            pid, inode = line.split()
            found += ([int(pid)] if _alive(int(pid)) else []) if inode == own else _in_namespace(inode)
        return sorted(set(found))

    deadline = time.monotonic() + within_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive()


@LEVELS
def test_normal_program_gets_stdin_and_passes(level):
    r = run_python("import sys\nprint(sys.stdin.read().upper())", stdin="hello", isolation=require(level))
    assert (r.passed, r.returncode, r.stdout, r.timed_out, r.reason) == (True, 0, "HELLO\n", False, "ok")
    assert r.isolation == level


@LEVELS
def test_standard_modules_import_under_the_guard_however_the_interpreter_started(level):
    """`random` (and threading, concurrent.futures, ...) register at-fork hooks when first imported.
    Whether an interpreter already imported them before the guard depends on its site-packages (a
    fresh venv does not), so the program re-imports them here, after the guard."""
    code = (
        "import sys\n"
        "for m in ('random', 'concurrent.futures', 'concurrent.futures.process', 'logging'):\n"
        "    sys.modules.pop(m, None)\n"
        "import random, logging, concurrent.futures.process\n"
        "print(random.Random(1).randint(0, 9))\n"
        "import json, decimal, hashlib, sqlite3, numpy\n"  # C extensions and site-packages load too
        "exit(0)"  # the builtin `site` would add
    )
    r = run_python(code, isolation=require(level))
    assert r.passed, r.stderr


@LEVELS
def test_large_stdin_and_stdout_do_not_deadlock(level):
    data = "x" * 300_000  # larger than a pipe buffer in both directions
    r = run_python("import sys\nsys.stdout.write(sys.stdin.read())", stdin=data, isolation=require(level))
    assert r.passed and r.stdout == data


@LEVELS
def test_exception_fails_with_traceback(level):
    r = run_python("def f():\n    raise ValueError('boom')\nf()", isolation=require(level))
    assert not r.passed and r.returncode == 1 and r.reason == "exit status 1"
    assert "ValueError: boom" in r.stderr and "main.py" in r.stderr


@LEVELS
def test_infinite_loop_times_out_and_process_is_gone(level):
    r = run_python(f"import os\nprint({WHO}, flush=True)\nwhile True:\n    pass", timeout_s=1, isolation=require(level))
    assert r.timed_out and not r.passed and r.reason == "timeout after 1s"
    assert 1.0 <= r.elapsed_s < 3.0
    assert _survivors(r.stdout.splitlines()) == []


@LEVELS
def test_closing_stdout_does_not_escape_the_timeout(level):
    r = run_python("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass", timeout_s=1, isolation=require(level))
    assert r.timed_out and not r.passed and r.elapsed_s < 3.0


@LEVELS
def test_cpu_limit_kills_busy_loop_before_the_wall_clock_limit(level):
    r = run_python("while True:\n    pass", cpu_s=1, timeout_s=20, isolation=require(level))
    assert not r.passed and not r.timed_out
    assert r.reason.startswith("killed by SIGXCPU") or r.reason == "killed by SIGKILL"
    assert r.elapsed_s < 10


@LEVELS
def test_children_left_behind_after_a_normal_exit_are_killed(level):
    # guard=False lets the snippet fork: this checks the process-group (or namespace) kill on its own.
    # The parent exits only once every child has printed (else the kill can beat a child's print).
    code = f"""
        import os, time
        ready, tell = os.pipe()
        for _ in range(3):
            if os.fork() == 0:
                print({WHO}, flush=True)
                os.write(tell, b"x")
                time.sleep(60)
                os._exit(0)
        got = b""
        while len(got) < 3:
            got += os.read(ready, 3)
    """
    r = run_python(textwrap.dedent(code), timeout_s=20, guard=False, isolation=require(level))
    who = r.stdout.splitlines()
    assert r.passed and len(who) == 3
    assert r.elapsed_s < 5  # did not wait for the sleeping children or the timeout
    assert _survivors(who) == []


@LEVELS
def test_bounded_fork_tree_is_killed_at_the_timeout(level):
    # A fork bomb with a bound (2**4 = 16 processes), unguarded: containment by group kill alone.
    code = f"""
        import os, time
        for _ in range(4):
            os.fork()
        print({WHO}, flush=True)
        time.sleep(60)
    """
    r = run_python(textwrap.dedent(code), timeout_s=4, guard=False, isolation=require(level))
    who = r.stdout.splitlines()
    assert r.timed_out and len(who) == 16
    assert _survivors(who) == []


@LEVELS
def test_fork_bomb_is_stopped_by_the_guard(level):
    r = run_python("import os\nwhile True:\n    os.fork()", timeout_s=10, isolation=require(level))
    assert not r.passed and not r.timed_out and r.elapsed_s < 5
    assert "PermissionError: os.fork is disabled" in r.stderr


@LEVELS
def test_other_ways_to_start_processes_are_blocked(level):
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
    r = run_python(code, isolation=require(level))
    assert r.passed, r.stderr
    assert "escaped" not in r.stdout
    assert r.stdout.split("\n")[:-1] == [f"{name}: blocked" for name in attempts]


@LEVELS
def test_huge_allocation_fails_inside_the_child(level):
    r = run_python("b = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256, isolation=require(level))
    assert not r.passed and "MemoryError" in r.stderr and "allocated" not in r.stdout
    # ...while a modest allocation under the same limit is fine, so the limit is what stopped it.
    ok = run_python("b = bytearray(64 * 1024**2)\nprint('allocated')", memory_mb=256, isolation=level)
    assert ok.passed and ok.stdout == "allocated\n"


@LEVELS
def test_writes_outside_the_work_dir_are_refused(tmp_path, level):
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
    r = run_python(textwrap.dedent(code), isolation=require(level))
    assert r.passed, r.stderr
    workdir, results = r.stdout.splitlines()
    assert results.split(";") == [
        "open: refused", "pathlib: refused", "os.open: refused", "shutil.copy: refused", "mkdir: refused", "inside: wrote",
    ]
    assert [p.name for p in tmp_path.iterdir()] == []
    assert workdir.startswith(os.path.realpath(os.environ.get("TMPDIR", "/tmp"))) or "prorl-sandbox-" in workdir
    assert not Path(workdir).exists()  # the fresh work dir was removed afterwards


@LEVELS
def test_file_size_limit(level):
    r = run_python("open('big.bin', 'wb').write(b'x' * (64 * 2**20))", isolation=require(level))
    assert not r.passed and "File too large" in r.stderr


@LEVELS
def test_environment_secrets_are_not_inherited(monkeypatch, level):
    monkeypatch.setenv("PRORL_TEST_SECRET", "hunter2-secret")
    r = run_python("import os\nprint(dict(os.environ))\nprint(os.environ.get('PRORL_TEST_SECRET'))", isolation=require(level))
    assert r.passed
    assert "hunter2-secret" not in r.stdout and r.stdout.splitlines()[-1] == "None"
    assert "PATH" in r.stdout and "AWS" not in r.stdout


@LEVELS
def test_reading_other_processes_through_proc_is_refused(level):
    code = textwrap.dedent("""
        import os
        for name in ("environ", "mem", "fd/0", "cmdline"):
            try:
                open(f'/proc/{os.getppid()}/{name}', 'rb').read(1)
                print('read')
            except PermissionError:
                print('refused')
        print(len(open('/proc/self/cmdline', 'rb').read()) > 0)  # its own entries stay readable
    """)
    r = run_python(code, isolation=require(level))
    assert r.passed and r.stdout.split() == ["refused"] * 4 + ["True"], r.stderr


@LEVELS
def test_printing_gigabytes_is_capped_and_killed_quickly(level):
    for stream in ("stdout", "stderr"):
        code = f"import sys\nchunk = 'x' * 65536\nwhile True:\n    sys.{stream}.write(chunk)"
        r = run_python(code, timeout_s=30, max_output_bytes=200_000, isolation=require(level))
        assert not r.passed and not r.timed_out
        assert r.reason == "output exceeded 200000 bytes"
        assert r.elapsed_s < 5
        assert len(r.stdout) <= 200_000 and len(r.stderr) <= 20_000


@LEVELS
def test_killing_the_parent_is_refused(level):
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
        f"r = run_python({snippet!r}, isolation={require(level)!r})\nprint('HELPER-ALIVE', r.stdout.strip(), r.stderr[-300:])\n"
    )
    done = subprocess.run([sys.executable, "-c", helper], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HELPER-ALIVE kill: refused;killpg: refused;pidfd: refused" in done.stdout


@LEVELS
def test_exit_before_the_tests_is_not_a_pass(level):
    require(level)
    prompt = "def add(a, b):\n"
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    good = "    return a + b\n"
    # The plain sandbox would call an early exit a success...
    assert run_python(prompt + "    pass\nimport sys\nsys.exit(0)\n" + test + "check(add)", isolation=level).passed
    # ...so a pass is reported by a separate tester process, after the tests ran.
    assert run_humaneval(prompt, good, test, "add", isolation=level) == 1.0
    for cheat in (
        "    return 0\nimport sys\nsys.exit(0)\n",
        "    return 0\nimport os\nos._exit(0)\n",
        "    raise SystemExit(0)\n",
        "    return 0\nprint('PRORL-PASS-0123456789abcdef0123456789abcdef 0')\n",  # a forged marker
    ):
        assert run_humaneval(prompt, cheat, test, "add", isolation=level) == 0.0, cheat
        assert run_asserts("def add(a, b):\n" + cheat, ["assert add(2, 3) == 5"], isolation=level) == 0.0, cheat


@LEVELS
def test_parallel_runs_are_independent(level):
    results = [None] * 8
    require(level)

    def work(i):
        results[i] = run_python(f"import sys\nprint(int(sys.stdin.read()) * {i})", stdin="7", isolation=level)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{7 * i}\n" for i in range(8)]


# ---------------------------------------------------------------------------------------------
# The strict level: what the kernel enforces even for a program that bypasses the guard.

BYPASS = "import _io, sys\nfor _m in ('ctypes', '_ctypes'):\n    sys.modules.pop(_m, None)\n"  # undo the guard's import block


def test_strict_hides_the_trainer_network_and_privileges(tmp_path):
    require("strict")
    secret = tmp_path / "secret.txt"
    secret.write_text("the answers")
    shown = [path for path, kind in sandbox._strict_binds() if kind == "dir"]  # e.g. the Python installation
    home = sandbox._hidden_samples(str(Path.home()), shown, k=5)  # the home's entries outside of them
    hidden = [str(secret), str(REPO / "README.md"), *home, "/etc/shadow", "/etc/hostname", "/sys", "/var"]
    code = BYPASS + textwrap.dedent(f"""
        import os, socket
        out = {{}}
        out['visible'] = [p for p in {hidden!r} if os.path.lexists(p)]
        for host, port in (('1.1.1.1', 53), ('127.0.0.1', 22)):
            try:
                socket.create_connection((host, port), timeout=2).close()
                out['connected'] = host
            except OSError:
                pass
        out['interfaces'] = [n for _, n in socket.if_nameindex()]
        writable = []
        for d in ('/', '/usr', '/tmp', '/dev', '/proc', sys.prefix):
            try:
                _io.FileIO(os.path.join(d, 'planted'), 'w').close()
                writable.append(d)
            except OSError:
                pass
        out['writable'] = writable
        _io.FileIO('inside.txt', 'w').close()  # its own run directory
        out['uid'] = os.getuid()
        out['caps'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]
        out['pids'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        import ctypes
        libc = ctypes.CDLL(None)
        out['setuid0'] = libc.setuid(0)
        out['mount'] = libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None)
        print(out)
    """)
    r = run_python(code, guard=False, isolation="strict")
    assert r.passed, r.stderr
    out = eval(r.stdout)
    assert out["visible"] == [] and "connected" not in out
    assert out["interfaces"] == ["lo"] and out["writable"] == []
    assert out["uid"] != 0 or os.getuid() != 0  # as root: a fresh unprivileged id
    assert out["caps"] == "0000000000000000"
    assert out["pids"] == [1, 2]  # the namespace's init and the program
    assert out["setuid0"] == -1 and out["mount"] == -1
    assert not (REPO / "planted").exists() and not Path("/tmp/planted").exists()


def test_strict_runs_do_not_see_each_other():
    require("strict")
    code = "import os, time\nopen('mine.txt', 'w').write('x')\ntime.sleep(0.5)\nprint(sorted(os.listdir('.')))\nprint(os.getcwd())"
    results = [None] * 2

    def work(i):
        results[i] = run_python(code, isolation="strict")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    listings = [r.stdout.splitlines() for r in results]
    assert [files for files, _ in listings] == ["['main.py', 'mine.txt']"] * 2  # not the other's file
    assert listings[0][1] != listings[1][1]  # two run directories


def test_sandbox_levels_and_the_strict_requirement(monkeypatch):
    with pytest.raises(ValueError, match="one of auto, strict, basic"):
        check_sandbox_level("paranoid")
    assert check_sandbox_level("basic") == "basic"
    assert check_sandbox_level("auto") in ("strict", "basic")
    monkeypatch.setattr(sandbox, "_strict_status", (False, "unshare(CLONE_NEWUSER): Operation not permitted; user namespaces are disabled"))
    assert check_sandbox_level("auto") == "basic"
    with pytest.raises(SandboxUnavailableError) as e:
        check_sandbox_level("strict")
    assert str(e.value) == ("code sandbox 'strict' is unavailable on this machine: unshare(CLONE_NEWUSER): "
                            "Operation not permitted; user namespaces are disabled")
    assert "\n" not in str(e.value)
    from prorl.rewards import RewardConfigError, build_rewards

    with pytest.raises(RewardConfigError, match="'strict' is unavailable"):
        build_rewards(["code"], kwargs={"code": {"sandbox": "strict"}})
    with pytest.raises(RewardConfigError, match="sandbox must be one of"):
        build_rewards(["code"], kwargs={"code": {"sandbox": "none"}})
    assert build_rewards(["code"], kwargs={"code": {"sandbox": "basic"}})(
        ["def f():\n"], ["    return 1\n"], {"test": ["def check(c):\n    assert c() == 1\n"], "entry_point": ["f"]}).total == [1.0]


@pytest.mark.skipif(not shutil.which("unshare") or os.getuid() != 0, reason="needs root and util-linux unshare to act as a non-root user")
def test_strict_works_for_a_non_root_user_through_a_user_namespace():
    """The trainer as an unprivileged user (uid 65534 in a user namespace, no capabilities)."""
    helper = textwrap.dedent("""
        import os
        from prorl.rewards.sandbox import check_sandbox_level, run_python
        from prorl.rewards.code import run_asserts
        print(os.getuid(), check_sandbox_level('strict'))
        r = run_python("import os\\nprint(os.path.exists('/work'), [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])", isolation='strict')
        print(r.stdout.strip(), r.reason)
        print(run_asserts('def f(x):\\n    return 2 * x\\n', ['assert f(1) == 2', 'assert f(2) == 5'], isolation='strict'))
    """)
    cmd = ["unshare", "--user", "--map-user=65534", "--map-group=65534", sys.executable, "-c", helper]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot create a user namespace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["65534 strict", "False 0000000000000000 ok", "0.5"]


# ---------------------------------------------------------------------------------------------
# The wire between tester and candidate, and the tester.


def test_plain_data_round_trips_exactly():
    values = [None, True, False, 0, -1, 2**200, 1.5, -0.0, float("inf"), float("-inf"), "", "héllo\ud800", b"\x00\xff",
              [1, [2, (3,)]], (1, "a"), {1, 2}, frozenset({"x"}), {"k": [None], (1, 2): {3.5}, frozenset(): b""}]
    for v in values:
        back = wire.decode(wire.encode(v))
        assert back == v and type(back) is type(v) and repr(back) == repr(v)
    nan = wire.decode(wire.encode(float("nan")))
    assert nan != nan
    assert type(wire.decode(wire.encode([True, 1]))[0]) is bool


@pytest.mark.parametrize("make, why", [
    pytest.param(lambda: type("Int", (int,), {})(3), "Int is not plain", id="int-subclass"),
    pytest.param(lambda: (lambda: 1), "function is not plain", id="function"),
    pytest.param(lambda: (i for i in range(3)), "generator is not plain", id="generator"),
    pytest.param(lambda: object(), "object is not plain", id="object"),
    pytest.param(lambda: 10**5000, "4300 digits", id="huge-int"),
    pytest.param(lambda: [0] * (wire.MAX_ITEMS + 100), "more than", id="too-many-items"),
    pytest.param(lambda: "x" * (wire.MAX_MESSAGE_BYTES + 1), "larger than", id="too-many-bytes"),
])
def test_non_plain_or_oversized_values_are_refused(make, why):
    with pytest.raises(wire.WireError, match=why):
        wire.encode(make())


def test_nesting_limit_and_malformed_messages():
    deep = []
    for _ in range(wire.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(wire.WireError, match="nested deeper"):
        wire.encode(deep)
    loop = []
    loop.append(loop)
    with pytest.raises(wire.WireError, match="nested deeper"):
        wire.encode(loop)
    for bad in (b"", b"X", b"i12", b"i1_0;", b"i\xd9\xa3;", b"s5:ab", b"l2:N", b"NN", b"S1:l0:", b"d1:l0:N",
                b"l9999999999:", b"f0x1p+;", b"i" + b"9" * 5000 + b";", b"l" * 10, b"\xff", ("l1:" * 100 + "N").encode()):
        with pytest.raises(wire.WireError):
            wire.decode(bad)


def test_tester_binds_names_and_reraises_builtin_exceptions():
    code = textwrap.dedent("""
        import math
        import collections as cl
        def f(x, scale=1):
            return x * scale
        def fails(kind):
            raise {"value": ValueError, "key": KeyError, "custom": type("Custom", (Exception,), {}), "stop": StopIteration}[kind]("why")
        def nested():
            return {"a": [1, (2, 3)], "b": {4}}
        print = abs = None  # built-in names are never bound on the tester's side
    """)
    tests = [
        "assert f(3, scale=2) == 6 and f('ab') == 'ab'",
        "try:\n    fails('value')\nexcept ValueError as e:\n    assert str(e) == 'why'",
        "try:\n    fails('key')\nexcept KeyError:\n    pass",
        "try:\n    fails('custom')\nexcept Exception as e:\n    assert type(e).__name__ == 'CandidateError' and 'Custom' in str(e)",
        "try:\n    fails('stop')\nexcept StopIteration:\n    raise AssertionError('StopIteration must not be re-raised as such')\nexcept Exception:\n    pass",
        "assert nested() == {'a': [1, (2, 3)], 'b': {4}}",
        "assert math.isclose(f(0.1), 0.1) and abs(-1) == 1 and cl.Counter('aa')['a'] == 2",
        "print('tests may print')",
        "assert f(1) == 2",  # fails
    ]
    for level in ("basic", "strict"):
        require(level)
        run = run_tests(code, tests, isolation=level)
        assert sorted(run.passed) == list(range(8)), (level, run.result.stderr[-2000:])


def test_a_broken_candidate_fails_every_test_and_a_hanging_call_ends_the_run():
    assert run_tests("raise ValueError('at import')", ["assert True"]).passed == frozenset()
    assert run_tests("import sys\nsys.exit(0)", ["assert True"]).passed == frozenset()
    hang = "def f(x):\n    while x == 2:\n        pass\n    return x\n"
    run = run_tests(hang, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"], timeout_s=1)
    assert run.passed == frozenset({0}) and run.result.timed_out


def test_a_strict_setup_failure_never_runs_the_program(monkeypatch, caplog):
    require("strict")
    monkeypatch.setattr(sandbox, "_binds_cache", sandbox._strict_binds() + [("/nonexistent-prorl-dir", "dir")])
    r = run_python("print('ran')", isolation="strict")
    assert not r.passed and r.stdout == "" and r.returncode == _sandbox_child.SETUP_FAILED
    assert r.reason.startswith("sandbox setup failed: ") and "/nonexistent-prorl-dir" in r.reason
    assert "failed before the program started" in caplog.text
    assert run_tests("def f():\n    return 1\n", ["assert f() == 1"], isolation="strict").passed == frozenset()
