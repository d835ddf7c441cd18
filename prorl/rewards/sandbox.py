"""Run untrusted Python (model-written code) in a separate, resource-limited process.

What `run_python` does, in order:

1. Writes the program to ``main.py`` in a fresh temporary directory, which becomes the child's
   working directory and is deleted afterwards.
2. Starts ``python -I -B`` (isolated mode: no PYTHON* variables, no user site, no script dir on
   sys.path; no .pyc writes) with an environment that inherits NOTHING from the trainer (only a
   minimal PATH, HOME/TMPDIR pointing at the temp dir, a UTF-8 locale and one-thread BLAS
   settings), in a new session, so the child and everything it spawns share one process group.
3. Before any untrusted line runs, a small trusted boot script in the child lowers its resource
   limits (address space, CPU seconds, file size, core dumps, open files, processes) and, unless
   ``guard=False``, disables dangerous functions (see below). Limits are set by the child itself
   rather than through ``preexec_fn`` because rewards spawn sandboxes from worker threads and
   Python documents ``preexec_fn`` as unsafe in threaded programs (it can deadlock the child).
4. Streams stdin in and stdout/stderr out with a byte cap; exceeding the cap or the wall-clock
   timeout kills the whole process group with SIGKILL at once. When the main process exits, any
   process it left behind in the group is killed too. The group is killed while the main
   process is still an unreaped zombie, so its id (= the group id) cannot have been reused.

The guard is a speed bump against accidents and lazy reward hacks, NOT a security boundary:
it replaces ``os.kill``/``os.fork``/``os.system``/``subprocess``/file deletion and the like with
functions that raise ``PermissionError``, blocks ``import ctypes``, and refuses writes outside
the working directory through ``open``/``os.open``/``os.mkdir``. Determined code can get around
all of it (e.g. ``_io.FileIO``, ``/proc/self/mem``, a C extension).

What this sandbox does NOT protect against (use a container / nsjail / gVisor / a separate VM
for that): reading any file the trainer's user can read (keys in ``~/.aws``, the dataset, the
model); network access; writing outside the temp dir once the guard is bypassed; killing or
signalling other processes of the same user once the guard is bypassed (as root: any process);
a fork bomb once the guard is bypassed when running as root (RLIMIT_NPROC does not apply to
root; the group kill still ends it at the timeout); processes that leave the process group
(``setsid`` via a bypass) surviving the group kill; disk filling within the time limit;
CPU/memory contention with the trainer until the limits trigger.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["SandboxResult", "run_python"]

_FILE_SIZE_LIMIT = 16 * 2**20  # largest file the child may write (RLIMIT_FSIZE)
_OPEN_FILES_LIMIT = 256
# RLIMIT_NPROC counts every process and thread of the user, so it is a loose backstop for
# non-root users; the kernel ignores it for root.
_PROCESS_LIMIT = 512
_STDERR_KEEP = 20_000  # characters of stderr kept in the result (the tail: tracebacks end there)
_READ_CHUNK = 65536

# Runs in the child before the untrusted program. argv[1] is a JSON config from the parent.
_BOOT = r"""
import json, os, sys, resource, types
_cfg = json.loads(sys.argv[1])
for _name, (_soft, _hard) in _cfg["limits"].items():
    _which = getattr(resource, _name)
    _current_hard = resource.getrlimit(_which)[1]
    if _current_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise it
        _soft, _hard = min(_soft, _current_hard), min(_hard, _current_hard)
    resource.setrlimit(_which, (_soft, _hard))
_root = os.path.realpath(os.getcwd())
if _cfg["guard"]:
    import builtins, io, posix, shutil, signal, subprocess
    def _blocked(name):
        def blocked(*args, **kwargs):
            raise PermissionError(name + " is disabled in the prorl sandbox")
        return blocked
    _os_names = (
        "kill killpg system popen fork forkpty setsid setpgid setpgrp setuid setgid seteuid setegid "
        "setreuid setregid setresuid setresgid execv execve execl execle execlp execlpe execvp "
        "execvpe spawnv spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe posix_spawn "
        "posix_spawnp remove unlink rmdir removedirs rename renames replace truncate chmod fchmod "
        "lchmod chown fchown lchown link symlink chdir fchdir chroot pidfd_open"
    )
    for _mod, _names in (
        (os, _os_names),
        (posix, _os_names),  # os re-exports these from posix; patch both
        (shutil, "rmtree move chown"),
        (subprocess, "Popen call run check_call check_output getoutput getstatusoutput"),
        (signal, "pidfd_send_signal"),
        (resource, "setrlimit prlimit"),
    ):
        for _n in _names.split():
            if hasattr(_mod, _n):
                setattr(_mod, _n, _blocked(_mod.__name__ + "." + _n))
    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = _blocked("_posixsubprocess.fork_exec")
    except ImportError:
        pass
    sys.modules["ctypes"] = None  # `import ctypes` now raises ImportError
    sys.modules["_ctypes"] = None

    def _check_path(path, writing):
        if isinstance(path, int):
            return
        real = os.path.realpath(os.fsdecode(path))
        if writing and os.path.commonpath([real, _root]) != _root:
            raise PermissionError("writing outside the sandbox directory is disabled: " + real)
        parts = real.split(os.sep)
        if len(parts) > 3 and parts[1] == "proc" and parts[-1] == "environ" and parts[2] != str(os.getpid()):
            raise PermissionError("reading other processes' environment is disabled")

    _real_open, _real_os_open, _real_mkdir = io.open, os.open, os.mkdir
    def _open(file, mode="r", *args, **kwargs):
        _check_path(file, writing=any(c in str(mode) for c in "wax+"))
        return _real_open(file, mode, *args, **kwargs)
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    def _os_open(path, flags, *args, **kwargs):
        if kwargs.get("dir_fd") is not None and flags & _WRITE_FLAGS:
            raise PermissionError("os.open with dir_fd for writing is disabled in the prorl sandbox")
        _check_path(path, writing=bool(flags & _WRITE_FLAGS))
        return _real_os_open(path, flags, *args, **kwargs)
    def _mkdir(path, *args, **kwargs):
        _check_path(path, writing=True)
        return _real_mkdir(path, *args, **kwargs)
    builtins.open = io.open = _open
    os.open = posix.open = _os_open
    os.mkdir = posix.mkdir = _mkdir

_path = os.path.join(_root, "main.py")
with open(_path, encoding="utf-8") as _f:
    _source = _f.read()
sys.argv = [_path]
_main = types.ModuleType("__main__")
_main.__file__ = _path
sys.modules["__main__"] = _main
exec(compile(_source, _path, "exec"), _main.__dict__)
"""


@dataclass
class SandboxResult:
    passed: bool  # exited with status 0, within the time, CPU and output limits
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str  # the last _STDERR_KEEP characters
    timed_out: bool
    reason: str  # "ok", "timeout after 2s", "exit status 1", "killed by SIGXCPU (cpu time limit)", ...
    elapsed_s: float = 0.0


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 10,
    memory_mb: int = 1024,
    cpu_s: float | None = None,
    max_output_bytes: int = 1_000_000,
    guard: bool = True,
) -> SandboxResult:
    """Run `code` as a Python program in a fresh, limited child process; never raises for bad code."""
    if timeout_s <= 0 or memory_mb <= 0 or max_output_bytes <= 0:
        raise ValueError("timeout_s, memory_mb and max_output_bytes must be positive")
    cpu_limit = math.ceil(cpu_s if cpu_s is not None else timeout_s + 1)
    config = {
        "guard": guard,
        "limits": {
            # (soft, hard). Over the soft CPU limit the kernel sends SIGXCPU, at the hard one SIGKILL.
            "RLIMIT_AS": (memory_mb * 2**20,) * 2,
            "RLIMIT_CPU": (cpu_limit, cpu_limit + 1),
            "RLIMIT_FSIZE": (_FILE_SIZE_LIMIT,) * 2,
            "RLIMIT_CORE": (0, 0),
            "RLIMIT_NOFILE": (_OPEN_FILES_LIMIT,) * 2,
            "RLIMIT_NPROC": (_PROCESS_LIMIT,) * 2,
        },
    }
    workdir = tempfile.mkdtemp(prefix="prorl-sandbox-")
    start = time.monotonic()
    try:
        # errors="replace": text a model wrote may hold lone surrogates; that must not crash us.
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _BOOT, json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=_minimal_env(workdir),
                start_new_session=True,  # own process group, killed as a whole
                close_fds=True,
            )
        except OSError as e:
            return SandboxResult(False, None, "", "", False, f"failed to start: {e}")
        try:
            out, err, status = _exchange(proc, stdin.encode("utf-8", errors="replace"), start + timeout_s, max_output_bytes)
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
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - start
    rc = proc.returncode
    if status == "timeout":
        reason = f"timeout after {timeout_s:g}s"
    elif status == "overflow":
        reason = f"output exceeded {max_output_bytes} bytes"
    elif rc == 0:
        reason = "ok"
    elif rc < 0:
        reason = f"killed by {_signal_name(-rc)}"
    else:
        reason = f"exit status {rc}"
    return SandboxResult(
        passed=status == "ok" and rc == 0,
        returncode=rc,
        stdout=out[:max_output_bytes].decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace")[-_STDERR_KEEP:],
        timed_out=status == "timeout",
        reason=reason,
        elapsed_s=elapsed,
    )


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


def _exchange(proc: subprocess.Popen, data: bytes, deadline: float, cap: int) -> tuple[bytes, bytes, str]:
    """Feed stdin and collect stdout/stderr until both close; status "ok", "timeout" or "overflow"."""
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    stdin_fd = proc.stdin.fileno()
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
                return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), "timeout"
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
                if len(buffers[fd]) > cap:
                    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), "overflow"
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), "ok"


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
