"""Code rewards: `code` runs each completion against its tests in the sandbox; `code_heuristic` only looks.

`code` picks the test layout per sample from the columns present:

* HumanEval (``test`` + ``entry_point``): program = prompt + completion, then the ``test`` source and
  ``check(entry_point)``. Reward 1 or 0.
* assert list (``tests``: list of assert statements, or one string = one test): program = the
  completion, then each test; reward = fraction of tests passed. One process runs all tests, so
  a test that hangs ends the run at the timeout; tests that passed before it still count.
* stdin/stdout (``inputs`` / ``outputs``: lists of strings): the completion runs once per case with
  that stdin; a case passes if it exits 0 and prints the expected output, compared token by token
  (whitespace-insensitive). Reward = fraction of cases passed. After a case times out, the
  remaining cases of that completion are counted as failed without running (bounds the time).

If the completion contains a Markdown code fence, the first ```python (or unlabelled) block is
used, else the first block; otherwise the completion is used as is. For the HumanEval and assert
layouts the program runs with ``__name__`` set to something other than "__main__", so a
completion's ``if __name__ == "__main__":`` demo block (often calling ``input()``) does not run.

A test counts only when the harness prints a random per-run marker after it succeeds, so
``sys.exit(0)`` / ``os._exit(0)`` before or inside the tests cannot pass them. The harness runs in
the same process as the completion, so code that deliberately reads its own source for the marker,
or returns objects whose ``__eq__`` always says True, can still fake passes: this stops accidents
and cheap hacks, not an adversary.

`code_heuristic` (no execution): 0 for an empty completion or one that does not parse as Python
(as is or dedented, so a function body continuing a prompt counts); 0.5 if it parses; 1.0 if it
parses and contains a function definition or a return statement.
"""

from __future__ import annotations

import ast
import os
import re
import secrets
import textwrap
from concurrent.futures import ThreadPoolExecutor

from .base import cancellation_event, register
from .sandbox import run_python

__all__ = ["code_likeness", "extract_code", "run_asserts", "run_humaneval", "run_stdio"]

_NOT_MAIN = "__prorl_solution__"
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)

# Defined before the completion runs, holding its own references to the builtins it needs, so a
# completion that defines `print` or `exec` does not change how tests are run or reported.
_HARNESS_HEAD = """\
def __prorl_run_tests(tests, marker, _b=__builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__):
    _exec, _compile, _print, _enumerate, _BaseException = _b["exec"], _b["compile"], _b["print"], _b["enumerate"], _b["BaseException"]
    scope = globals()  # the program's module namespace, where the completion's functions will live
    def run():
        for i, source in _enumerate(tests):
            try:
                _exec(_compile(source, "<test %d>" % i, "exec"), scope)
            except _BaseException:  # includes SystemExit raised by the code under test
                continue
            _print(marker, i, flush=True)
    return run
__prorl_run_tests = __prorl_run_tests({tests!r}, {marker!r})
__name__ = {not_main!r}
"""
_HARNESS_TAIL = "\n\n__prorl_run_tests()\n"


def extract_code(completion: str) -> tuple[str, bool]:
    """(code, came from a fence): the first python/unlabelled fenced block, else the text itself."""
    blocks = _FENCE.findall(completion)
    if not blocks:
        return completion, False
    for lang, body in blocks:
        if lang.lower() in ("", "python", "py", "python3"):
            return body, True
    return blocks[0][1], True


def _passed_tests(code: str, tests: list[str], timeout_s: float, memory_mb: int) -> int:
    """Run code then each test in one sandboxed process; return how many tests passed."""
    marker = "PRORL-PASS-" + secrets.token_hex(16)
    program = _HARNESS_HEAD.format(tests=list(tests), marker=marker, not_main=_NOT_MAIN) + code + _HARNESS_TAIL
    result = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
    passed = set()
    for line in result.stdout.splitlines():
        head, _, index = line.partition(" ")
        if head == marker and index.isdigit():
            passed.add(int(index))
    return len(passed & set(range(len(tests))))


def run_humaneval(prompt: str, completion: str, test: str, entry_point: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> float:
    code, fenced = extract_code(completion)
    program = prompt + ("\n" if fenced else "") + code
    check = f"{test}\n\ncheck({entry_point})\n"
    return float(_passed_tests(program, [check], timeout_s, memory_mb))


def run_asserts(completion: str, tests, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> float:
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not tests:
        raise ValueError("empty test list")
    return _passed_tests(extract_code(completion)[0], tests, timeout_s, memory_mb) / len(tests)


def run_stdio(completion: str, inputs, outputs, *, timeout_s: float = 10.0, memory_mb: int = 1024, cancel=None) -> float:
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"{len(inputs)} inputs for {len(outputs)} outputs")
    code = extract_code(completion)[0]
    passed = 0
    for stdin, expected in zip(inputs, outputs):
        if cancel is not None and cancel.is_set():
            break
        result = run_python(code, stdin=str(stdin), timeout_s=timeout_s, memory_mb=memory_mb)
        if result.timed_out:
            break  # a program that hangs on one input very likely hangs on the rest
        passed += result.passed and result.stdout.split() == str(expected).split()
    return passed / len(inputs)


def _job(prompt: str, completion: str, columns: dict, i: int, timeout_s: float, memory_mb: int, cancel):
    """A zero-argument callable scoring sample i, or None if the sample has no tests."""

    def get(key):
        values = columns.get(key)
        return None if values is None else values[i]

    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb}
    if get("test") and get("entry_point"):
        return lambda: run_humaneval(prompt, completion, get("test"), get("entry_point"), **limits)
    if get("tests"):
        return lambda: run_asserts(completion, get("tests"), **limits)
    if get("inputs") is not None and get("outputs") is not None:
        return lambda: run_stdio(completion, get("inputs"), get("outputs"), cancel=cancel, **limits)
    return None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@register("code")
def make_code(timeout_s: float = 10.0, memory_mb: int = 1024, max_workers: int | None = None):
    """timeout_s: wall-clock limit per program run; max_workers: parallel sandboxes (default min(8, CPUs))."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError("timeout_s and memory_mb must be positive")
    workers = max_workers or min(8, _cpu_count())

    def code_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        cancel = cancellation_event()
        jobs = [_job(p, c, columns, i, timeout_s, memory_mb, cancel) for i, (p, c) in enumerate(zip(prompts, completions))]
        if completions and all(job is None for job in jobs):
            raise ValueError(
                "the 'code' reward needs columns 'test'+'entry_point' (HumanEval), 'tests' (asserts) "
                f"or 'inputs'+'outputs' (stdin/stdout); columns given: {sorted(columns)}"
            )

        def run(job):
            # Once the manager has given up on this call, start nothing new; samples get the fallback.
            return None if job is None or cancel.is_set() else job()

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prorl-code") as pool:
            return list(pool.map(run, jobs))

    code_reward.required_columns = [("test", "entry_point"), ("tests",), ("inputs", "outputs")]
    return code_reward


def code_likeness(completion: str) -> float:
    """The `code_heuristic` score (see module docs)."""
    code, _ = extract_code(completion)
    if not code.strip():
        return 0.0
    tree = _parse(code) or _parse(textwrap.dedent(code))
    if tree is None:
        return 0.0
    computes = any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Return)) for node in ast.walk(tree))
    return 1.0 if computes else 0.5


def _parse(code: str) -> ast.AST | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


@register("code_heuristic")
def make_code_heuristic():
    def code_heuristic(prompts: list[str], completions: list[str], **_) -> list[float]:
        return [code_likeness(c) for c in completions]

    return code_heuristic
