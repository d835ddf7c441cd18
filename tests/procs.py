"""Running `torchrun` (or any process tree) from a test so that a hang fails with evidence: every
Python process still alive is made to print its threads' stacks (faulthandler, SIGABRT), and the
failure message carries the process tree and those stacks. A plain `subprocess.run(timeout=...)`
only says "timed out", which is useless for a hang seen once in CI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc; [] elsewhere), parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def _describe(pid: int) -> str:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} [{state}] {cmd[:200]}"


def run_tree(cmd: list[str], *, cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)` in its own session. On timeout: dump the
    stacks of every process in the tree, kill the tree, and raise AssertionError with the tree, the
    stacks and the output so far."""
    env = dict(env, PYTHONFAULTHANDLER="1")  # SIGABRT then prints every thread's Python stack
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        pids = [proc.pid, *descendants(proc.pid)]
        tree = "\n".join(_describe(p) for p in pids)
        for pid in reversed(pids):  # workers first: the launcher may react to their deaths
            try:
                os.kill(pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        time.sleep(3)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a process outside the session still holds the pipes
            out, err = "", "(no output: the pipes stayed open)"
        raise AssertionError(
            f"timed out after {timeout:.0f}s: {' '.join(map(str, cmd))}\nprocess tree at the timeout:\n{tree}\n"
            f"--- stdout ---\n{out[-3000:]}\n--- stderr (with each process's stacks) ---\n{err[-12000:]}"
        ) from None
