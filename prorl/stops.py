"""How a run stops early: the one-line abort (`TrainingAborted`), a scheduler's or the user's stop
signal (`StopSignal`), and out-of-memory errors turned into advice (`explain_oom`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

import torch


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps; the message says what to change."""


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (what SLURM and Kubernetes send before pre-emption) and a first Ctrl-C
    (SIGINT) so the loop can finish its step, checkpoint and exit. A second Ctrl-C aborts at once
    (KeyboardInterrupt: the steps since the last checkpoint are lost). Only the main thread can
    install handlers; elsewhere a no-op."""

    def __init__(self):
        self.received, self.name, self._old = False, None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            sys.stderr.write("\nprorl: Ctrl-C: finishing this step, then saving it and exiting; continue with --resume latest "
                             "(Ctrl-C again aborts without saving)\n")
        self.received, self.name = True, signal.Signals(signum).name

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@contextlib.contextmanager
def explain_oom(what: str):
    """Turn an out-of-memory error into one line that names the option to lower."""
    try:
        yield
    except _OOM:
        raise TrainingAborted(f"out of memory during {what}") from None
