"""Run untrusted Python (model-written code) in isolated, resource-limited processes.

Threat model. A policy trained for thousands of steps finds any shortcut its reward allows, so
the code it writes is treated as hostile: it may try to fake a pass, read the tests or answers,
reach the network, or damage the trainer. How a pass is kept honest (the candidate and the tests
in separate processes, only plain data between them) is described in `prorl.rewards.code`; this
module isolates the processes. Two levels exist; `check_sandbox_level` finds out once per
process which one this machine gives (by running a probe in a strict sandbox) and logs it.

``strict`` (Linux namespaces; what ``auto`` picks when the probe passes). The program runs in new
pid, mount, network, IPC and UTS namespaces (directly as root; otherwise inside a user namespace
of its own), as an unprivileged user id (as root: a fresh random one per run) with no
capabilities and ``no_new_privs``. Its file system is a new read-only root holding only /usr,
/bin, /lib*, /etc/ld.so.cache, the Python installation and its site-packages, /dev/null & co., its
own /proc, and a private 64 MiB tmpfs as the run directory: the only place it can write. So a
program can NOT, even after getting around the guard with ctypes or a C extension: connect
anywhere (there is no network interface but a down loopback); see the trainer's files (home,
working directory, data, checkpoints, the rest of /tmp, /work, /root ...); write outside its run
directory; see, trace or signal a process outside its namespace (the tester included); gain
privileges (setuid binaries, mounts); or leave anything running: killing the namespace's init
kills every process in it, ``setsid`` and double forks included.

``basic`` (no namespaces: the kernel refused them, or it was asked for). The program runs as the
trainer's user with the limits and the guard below. A program that gets around the guard (it is
plain Python: ``_io.FileIO``, ``del sys.modules["ctypes"]``, a C extension) can read every file
that user can (the dataset and its answers included), use the network, write anywhere that user
can, signal that user's processes (as root: any), read other processes' memory where the kernel
lets that user (as root, or without Yama's ptrace restrictions: the tester's and the trainer's,
and so the tests), and survive the end of the run by leaving the process group (``setsid``).
What holds without namespaces is what the two-process design gives: no object, exit, print or
patch inside the program's own process can fake a pass.

At both levels: a wall-clock timeout; limits on CPU seconds, address space, file size (16 MiB),
open files and processes (per user id; the kernel ignores it for root); an environment that
inherits nothing from the trainer; capped stdout/stderr (killed at the cap); the whole process
group killed at the end; and the guard, a speed bump that turns accidents and lazy hacks into
clear errors: it replaces ``os.kill``/``os.fork``/``os.system``/``subprocess``/file deletion and the
like with functions raising ``PermissionError``, blocks ``import ctypes``, refuses writes outside
the run directory through ``open``/``os.open``/``os.mkdir``, and refuses opening other processes'
``/proc`` entries.

What remains under ``strict``: CPU and memory contention with the trainer until a limit
triggers (there is no cgroup: a program that bypasses the guard can start up to 512 processes,
each within the address-space limit); bugs in the kernel itself (no seccomp filter narrows the
system calls); and what is deliberately shown read-only (system libraries, the Python
installation and site-packages: public code, but whatever else you keep there is readable).

How a run works: the trainer starts ``python -I -S -B`` (the launcher), sends it the compiled
`prorl.rewards._sandbox_child` module over stdin (so no file the program could change is ever
executed by the trusted side), and the launcher forks the processes; see that module. No
``preexec_fn`` is used: rewards start sandboxes from worker threads, where Python documents
``preexec_fn`` as unsafe.
"""

from __future__ import annotations

import logging
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import _sandbox_child as _child
from . import _sandbox_wire as _wire

__all__ = ["SandboxResult", "SandboxUnavailableError", "TestRun", "check_sandbox_level", "run_python", "run_tests"]

logger = logging.getLogger(__name__)

LEVELS = ("auto", "strict", "basic")
_FILE_SIZE_LIMIT = 16 * 2**20  # largest file the child may write (RLIMIT_FSIZE)
_OPEN_FILES_LIMIT = 256
# RLIMIT_NPROC counts every process and thread of the user id; under "strict" as root each run
# has its own user id, so it bounds that run alone. The kernel ignores it for root.
_PROCESS_LIMIT = 512
_RUN_DIR_MB = 64  # the run directory's tmpfs under "strict"
_STDERR_KEEP = 20_000  # characters of stderr kept in the result (the tail: tracebacks end there)
_REPORT_CAP = 1_000_000
_READ_CHUNK = 65536
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

# Reads the marshalled launcher code from stdin and runs it; stdin then carries the messages.
_BOOTSTRAP = (
    "import os,marshal\n"
    "def _r(n):\n"
    " b=b''\n"
    " while len(b)<n:\n"
    "  c=os.read(0,n-len(b))\n"
    "  if not c:raise SystemExit(125)\n"
    "  b+=c\n"
    " return b\n"
    "exec(marshal.loads(_r(int.from_bytes(_r(4),'big'))),{'__name__':'__main__'})\n"
)


class SandboxUnavailableError(RuntimeError):
    """The "strict" isolation level was required but this machine does not allow it."""


@dataclass
class SandboxResult:
    passed: bool  # exited with status 0, within the time, CPU and output limits
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str  # the last _STDERR_KEEP characters
    timed_out: bool
    reason: str  # "ok", "timeout after 2s", "exit status 1", "killed by SIGXCPU (cpu time limit)", ...
    elapsed_s: float = 0.0
    isolation: str = "basic"  # the level it ran under


@dataclass
class TestRun:
    passed: frozenset = field(default_factory=frozenset)  # indices of the tests that passed
    result: SandboxResult | None = None  # the launcher's run (stdout/stderr: the program's and the tests' output)


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 10,
    memory_mb: int = 1024,
    cpu_s: float | None = None,
    max_output_bytes: int = 1_000_000,
    guard: bool = True,
    isolation: str = "auto",
) -> SandboxResult:
    """Run `code` as a Python program in a fresh, limited, isolated process; never raises for bad code.

    isolation: "auto" (strict where available), "strict" (raise SandboxUnavailableError if
    unavailable) or "basic"."""
    level = _level(isolation)
    result, _ = _launch("run", code, stdin.encode("utf-8", errors="replace"), level, timeout_s=timeout_s,
                        memory_mb=memory_mb, cpu_s=cpu_s, max_output_bytes=max_output_bytes, guard=guard)
    return result


def run_tests(
    code: str,
    tests: list[str],
    *,
    setup: str = "",
    bind: dict[str, str] | None = None,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    max_output_bytes: int = 1_000_000,
    isolation: str = "auto",
) -> TestRun:
    """Run `code` (the candidate) in one sandboxed process and `tests` in another, trusted one.

    The tests run with the candidate's functions bound to proxies that pass plain data only:
    `bind` maps test-side names to the candidate's function names (HumanEval: {entry_point:
    entry_point}); None binds every function the candidate defines at top level, except names of
    built-ins. `setup` (e.g. a HumanEval prompt, for helpers the tests use) runs on the tester's
    side first. Each test is a source string run in one shared namespace; it passes if it runs
    without an exception and no call to the candidate broke the protocol."""
    level = _level(isolation)
    nonce = secrets.token_hex(16)
    job = {"setup": setup, "bind": bind, "tests": list(tests), "nonce": nonce}
    try:
        job_msg = _frame(_wire.encode(job))
    except _wire.WireError as e:
        raise ValueError(f"tests cannot be sent to the sandbox: {e}") from None
    result, report = _launch("test", code, job_msg, level, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=None,
                             max_output_bytes=max_output_bytes, guard=True)
    passed = set()
    for line in report.decode("ascii", errors="replace").splitlines():
        head, _, rest = line.partition(" ")
        if head != nonce:  # only the tester writes here, and only it knows the nonce
            return TestRun(frozenset(), result)
        word, _, index = rest.partition(" ")
        if word == "PASS" and index.isdigit() and int(index) < len(job["tests"]):
            passed.add(int(index))
    return TestRun(frozenset(passed), result)


# ---------------------------------------------------------------------------------------------
# Isolation levels.

_probe_lock = threading.Lock()
_strict_status: tuple[bool, str] | None = None  # (available, why not / what it is)
_logged: set[str] = set()


def check_sandbox_level(required: str = "auto") -> str:
    """The isolation level code runs under: "strict" or "basic".

    required: "auto" (strict if this machine allows it, else basic, with a warning), "strict"
    (raise SandboxUnavailableError, one line saying why, if it is unavailable) or "basic". The
    first call that needs it runs a probe in a strict sandbox (tens of milliseconds), cached
    for the process."""
    if required not in LEVELS:
        raise ValueError(f"code sandbox level must be one of {', '.join(LEVELS)}; got {required!r}")
    if required == "basic":
        _log_once("basic", "code sandbox: basic isolation (resource limits and a Python guard; no namespaces), as configured")
        return "basic"
    available, detail = _strict_probe()
    if available:
        _log_once("strict", f"code sandbox: strict isolation ({detail})")
        return "strict"
    if required == "strict":
        raise SandboxUnavailableError(f"code sandbox 'strict' is unavailable on this machine: {detail}")
    _log_once("auto-basic", f"code sandbox: strict isolation unavailable ({detail}); using basic (resource limits "
              "and a Python guard only: a program that bypasses the guard can read the trainer's files and use the network)",
              level=logging.WARNING)
    return "basic"


def _level(isolation: str) -> str:
    return isolation if isolation == "basic" else check_sandbox_level(isolation)


def _log_once(key: str, message: str, level: int = logging.INFO) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.log(level, message)


def _strict_probe() -> tuple[bool, str]:
    global _strict_status
    with _probe_lock:
        if _strict_status is None:
            try:
                _strict_status = _run_probe()
            except Exception as e:  # never let the probe itself break training
                _strict_status = (False, f"probe failed: {type(e).__name__}: {e}")
        return _strict_status


_PROBE = r"""
import os, socket, sys
fails = []
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(("1.1.1.1", 53))
    fails.append("network: connected to 1.1.1.1:53")
except OSError:
    pass
try:
    names = [n for _, n in socket.if_nameindex() if n != "lo"]
    if names:
        fails.append("network: interfaces " + ",".join(names))
except OSError:
    pass
for p in HIDDEN:
    if os.path.lexists(p):
        fails.append("file system: the trainer's " + p + " is visible")
for d in ("/", "/usr", "/tmp", sys.prefix):
    try:
        open(os.path.join(d, ".prorl-probe"), "w").close()
        fails.append("file system: " + d + " is writable")
    except OSError:
        pass
with open("/proc/self/status") as f:
    caps = [line.split()[1] for line in f if line.startswith("CapEff:")]
if not caps or int(caps[0], 16):
    fails.append("privileges: capabilities " + (caps[0] if caps else "unknown"))
with open("/proc/self/uid_map") as f:
    if os.getuid() == 0 and f.read().split() == ["0", "0", "4294967295"]:
        fails.append("privileges: running as the host's root")
pids = [p for p in os.listdir("/proc") if p.isdigit()]
if len(pids) > 2:
    fails.append("processes: %d visible" % len(pids))
with open("written.txt", "w") as f:
    f.write("ok")
import json, math, hashlib, decimal, re, collections
print("PRORL-PROBE-OK" if not fails else "PRORL-PROBE-FAIL " + "; ".join(fails))
"""


def _run_probe() -> tuple[bool, str]:
    if not sys.platform.startswith("linux"):
        return False, f"namespaces need Linux (this is {sys.platform})"
    try:
        binds = _strict_binds()
    except SandboxUnavailableError as e:
        return False, str(e)
    exposed = [p for p, kind in binds if kind == "dir"]
    sentinel_dir = tempfile.mkdtemp(prefix="prorl-probe-")
    try:
        sentinel = os.path.join(sentinel_dir, "secret")
        Path(sentinel).write_text("x")
        hidden = [sentinel] + _hidden_samples(os.getcwd(), exposed) + _hidden_samples(os.path.expanduser("~"), exposed)
        code = f"HIDDEN = {hidden!r}\n" + _PROBE
        result, _ = _launch("run", code, b"", "strict", timeout_s=30, memory_mb=1024, cpu_s=None,
                            max_output_bytes=100_000, guard=False, warn_setup=False)
    finally:
        shutil.rmtree(sentinel_dir, ignore_errors=True)
    out = result.stdout.strip()
    if result.passed and out == "PRORL-PROBE-OK":
        who = "as root, each run under its own user id" if os.getuid() == 0 else "in a user namespace, without capabilities"
        return True, f"new pid, mount, network, IPC and UTS namespaces; read-only system view; {who}"
    setup = [line for line in result.stderr.splitlines() if line.startswith(_child.SETUP_PREFIX)]
    if setup:
        return False, setup[-1][len(_child.SETUP_PREFIX):]
    if out.startswith("PRORL-PROBE-FAIL "):
        return False, out[len("PRORL-PROBE-FAIL "):]
    tail = result.stderr.strip().splitlines()[-1:] or [result.reason]
    return False, f"the probe program failed ({result.reason}): {tail[0][:300]}"


def _hidden_samples(directory: str, exposed: list[str], k: int = 2) -> list[str]:
    """A few entries of `directory` that the strict sandbox must not show."""
    if not directory or directory == "/":
        return []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    picked = []
    for name in names:
        path = os.path.join(os.path.abspath(directory), name)
        if any(_within(path, e) or _within(e, path) for e in exposed):
            continue
        picked.append(path)
        if len(picked) == k:
            break
    return picked


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


_binds_cache: list | None = None


def _strict_binds() -> list[tuple[str, str]]:
    """(path, kind) to show read-only inside the strict sandbox; kind: dir, file, link or dev."""
    global _binds_cache
    if _binds_cache is not None:
        return _binds_cache
    wanted: dict[str, str] = {}

    def add(path: str) -> None:
        path = os.path.abspath(path)
        if path in wanted or not os.path.lexists(path):
            return
        if path == "/":
            raise SandboxUnavailableError("the Python installation is at / and cannot be shown without the whole file system")
        if os.path.islink(path):
            wanted[path] = "link"
            add(os.path.realpath(path))
        elif os.path.isdir(path):
            wanted[path] = "dir"
        elif os.path.isfile(path):
            wanted[path] = "file"

    for path in _SYSTEM_PATHS:
        add(path)
    paths = sysconfig.get_paths()
    for path in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, paths.get("stdlib"),
                 paths.get("platstdlib"), *_site_dirs(), os.path.dirname(os.path.realpath(sys.executable))):
        if path:
            add(path)
    binds: list[tuple[str, str]] = []
    dirs: list[str] = []
    for path in sorted(wanted):  # parents before children; a child of a shown directory is shown already
        if any(_within(path, d) for d in dirs):
            continue
        binds.append((path, wanted[path]))
        if wanted[path] == "dir":
            dirs.append(path)
    binds += [(d, "dev") for d in _DEVICES if os.path.exists(d)]
    _binds_cache = binds
    return binds


def _site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    return [d for d in dirs if os.path.isdir(d)]


# ---------------------------------------------------------------------------------------------
# Launching.

_boot_lock = threading.Lock()
_boot_message: bytes | None = None


def _boot() -> bytes:
    global _boot_message
    with _boot_lock:
        if _boot_message is None:
            # the launcher gets one code object: the wire format's module, then the child's (whose
            # relative import of it then fails and is skipped; its __future__ line must go first)
            future = "from __future__ import annotations\n"
            wire, child = (Path(m.__file__).read_text(encoding="utf-8") for m in (_wire, _child))
            source = future + wire.replace(future, "", 1) + "\n" + child.replace(future, "", 1)
            code = compile(source, "<prorl sandbox launcher>", "exec", dont_inherit=True, optimize=2)
            _boot_message = _frame(marshal.dumps(code))
        return _boot_message


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _launch(mode: str, code: str, after_config: bytes, level: str, *, timeout_s: float, memory_mb: int,
            cpu_s: float | None, max_output_bytes: int, guard: bool, warn_setup: bool = True) -> tuple[SandboxResult, bytes]:
    if timeout_s <= 0 or memory_mb <= 0 or max_output_bytes <= 0:
        raise ValueError("timeout_s, memory_mb and max_output_bytes must be positive")
    cpu_limit = math.ceil(cpu_s if cpu_s is not None else timeout_s + 1)
    common = {
        # (soft, hard). Over the soft CPU limit the kernel sends SIGXCPU, at the hard one SIGKILL.
        "RLIMIT_AS": (memory_mb * 2**20,) * 2,
        "RLIMIT_CPU": (cpu_limit, cpu_limit + 1),
        "RLIMIT_FSIZE": (_FILE_SIZE_LIMIT,) * 2,
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_NOFILE": (_OPEN_FILES_LIMIT,) * 2,
    }
    workdir = tempfile.mkdtemp(prefix="prorl-sandbox-")
    if os.getuid() == 0:  # root: each strict run gets a fresh unprivileged user id
        uid = gid = 0x7F000000 + secrets.randbelow(0x00FFFFFF)
    else:
        uid = gid = 0  # the root of the run's own user namespace, without capabilities
    config = {
        "mode": mode,
        "level": level,
        "guard": guard,
        "code": code,
        "not_main": mode == "test",
        "workdir": os.path.realpath(workdir),
        "site": _site_dirs(),
        "prefix": (sys.prefix, sys.exec_prefix),
        "limits": {**common, "RLIMIT_NPROC": (_PROCESS_LIMIT,) * 2},
        "launcher_limits": common,
        "binds": _strict_binds() if level == "strict" else [],
        "uid": uid,
        "gid": gid,
        "run_dir_mb": _RUN_DIR_MB,
    }
    report_r = report_w = -1
    start = time.monotonic()
    proc = None
    try:
        if mode == "test":
            report_r, report_w = os.pipe()
            config["report_fd"] = report_w
        try:
            # errors: text a model wrote may hold lone surrogates; they travel as they are.
            stdin_data = _boot() + _frame(_wire.encode(config)) + after_config
        except _wire.WireError as e:
            return SandboxResult(False, None, "", f"program cannot be sent to the sandbox: {e}", False,
                                 f"failed to start: {e}", isolation=level), b""
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=_minimal_env(config["workdir"]),
                start_new_session=True,  # own process group, killed as a whole
                close_fds=True,
                pass_fds=(report_w,) if report_w >= 0 else (),
            )
        except OSError as e:
            return SandboxResult(False, None, "", "", False, f"failed to start: {e}", isolation=level), b""
        if report_w >= 0:
            os.close(report_w)  # only the launcher holds the writing end now
            report_w = -1
        try:
            out, err, report, status = _exchange(proc, stdin_data, start + timeout_s, max_output_bytes, report_r)
            if status == "ok" and not _wait_exit(proc.pid, start + timeout_s):
                status = "timeout"
        finally:
            _kill_group(proc.pid)  # stragglers too; the leader is not reaped yet, so the id is safe
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - start
    rc = proc.returncode
    stderr = err.decode("utf-8", errors="replace")
    if status == "timeout":
        reason = f"timeout after {timeout_s:g}s"
    elif status == "overflow":
        reason = f"output exceeded {max_output_bytes} bytes"
    elif rc == 0:
        reason = "ok"
    elif rc < 0:
        reason = f"killed by {_signal_name(-rc)}"
    elif rc == _child.SETUP_FAILED and _child.SETUP_PREFIX in stderr:
        reason = "sandbox setup failed: " + stderr.rpartition(_child.SETUP_PREFIX)[2].strip()[:500]
        if warn_setup:  # the program never ran (e.g. a namespace limit was reached): say so once
            _log_once(reason, f"code sandbox: a run failed before the program started ({reason})", logging.WARNING)
    else:
        reason = f"exit status {rc}"
    result = SandboxResult(
        passed=status == "ok" and rc == 0,
        returncode=rc,
        stdout=out[:max_output_bytes].decode("utf-8", errors="replace"),
        stderr=stderr[-_STDERR_KEEP:],
        timed_out=status == "timeout",
        reason=reason,
        elapsed_s=elapsed,
        isolation=level,
    )
    return result, report


def _minimal_env(workdir: str) -> dict[str, str]:
    # Deliberately not based on os.environ: the child must not see the trainer's secrets.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _exchange(proc: subprocess.Popen, data: bytes, deadline: float, cap: int, report_fd: int = -1) -> tuple[bytes, bytes, bytes, str]:
    """Feed stdin and collect stdout/stderr (and the report pipe) until they close.

    Status "ok", "timeout" or "overflow" (stdout or stderr over `cap` bytes)."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out_fd: bytearray(), err_fd: bytearray()}
    if report_fd >= 0:
        buffers[report_fd] = bytearray()
    stdin_fd = proc.stdin.fileno()

    def result(status: str):
        return bytes(buffers[out_fd]), bytes(buffers[err_fd]), bytes(buffers.get(report_fd, b"")), status

    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            sel.register(fd, selectors.EVENT_READ)
        if data:
            os.set_blocking(stdin_fd, False)
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        offset = 0
        while len(sel.get_map()) > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result("timeout")
            events = sel.select(min(remaining, 0.1))
            if not events and _exited(proc.pid):
                # The main process is gone but something it spawned still holds the pipes open.
                _kill_group(proc.pid)
            for key, _ in events:
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        offset += os.write(fd, data[offset : offset + _READ_CHUNK])
                    except BlockingIOError:
                        continue
                    except OSError:  # BrokenPipe: the child stopped reading, which is its right
                        offset = len(data)
                    if offset >= len(data):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    sel.unregister(fd)
                    continue
                buffers[fd] += chunk
                if len(buffers[fd]) > (_REPORT_CAP if fd == report_fd else cap):
                    return result("overflow")
    return result("ok")


def _exited(pid: int) -> bool:
    """True once the child has exited, without reaping it (WNOWAIT keeps its pid reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait_exit(pid: int, deadline: float) -> bool:
    """Wait (without reaping) for the child to exit; False if the deadline passes first.

    Needed because a program can close stdout/stderr and keep running."""
    delay = 0.001
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    notes = {"SIGXCPU": " (cpu time limit)", "SIGXFSZ": " (file size limit)", "SIGKILL": ""}
    return name + notes.get(name, "")
