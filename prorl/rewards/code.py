"""Code rewards: `code` runs each completion against its tests in the sandbox; `code_heuristic` only looks.

`code` picks the test layout per sample from the columns present:

* HumanEval (``test`` + ``entry_point``): the candidate program is prompt + completion; the tests
  are ``test`` then ``check(entry_point)``. Reward 1 or 0.
* assert list (``tests``: list of assert statements, or one string = one test): the candidate is
  the completion; reward = fraction of tests passed. A test that hangs ends the run at the
  timeout; tests that passed before it still count.
* stdin/stdout (``inputs`` / ``outputs``: lists of strings): the completion runs once per case with
  that stdin; a case passes if it exits 0 and prints the expected output, compared token by token
  (whitespace-insensitive) here in the trainer. Reward = fraction of cases passed. After a case
  times out, the remaining cases of that completion are counted as failed without running.

If the completion contains a Markdown code fence, the first ```python (or unlabelled) block is
used, else the first block; otherwise the completion is used as is. The candidate program runs
with ``__name__`` set to something other than "__main__", so a completion's ``if __name__ ==
"__main__":`` demo block (often calling ``input()``) does not run.

A pass means the tests passed. For the HumanEval and assert layouts the candidate runs in one
sandboxed process and the tests in another, trusted one (`prorl.rewards.sandbox.run_tests`):

* The tester executes the tests with the candidate's functions bound to proxies. A call sends its
  arguments to the candidate's process as plain data (None, bool, int, float, str, bytes and
  lists, tuples, sets, frozensets and dicts of them, with limits on depth, element count and
  size) and gets back plain data, or the name and message of the exception raised (re-raised in
  the tester as that built-in exception, else as ``CandidateError``). No object of the
  candidate's reaches a comparison: ``__eq__``/``__hash__``/``__bool__`` overrides, subclasses of
  ``int``/``str``/``list``, generators or functions as results fail the test (numpy scalars are
  converted to their plain value).
* Nothing the grader knows exists in the candidate's process: the tests, the expected values
  and the pass report's nonce reach the tester only after the candidate's process was forked.
  The verdict travels on a pipe only the tester holds. So exiting early (``sys.exit``,
  ``os._exit``, ``atexit``), printing fake results, patching builtins, ``sys.modules`` or the
  wire code, redefining ``check``, reading its own stack, ``gc`` or source, cannot pass a test:
  the candidate can only influence the values it returns.
* HumanEval helpers the tests call (e.g. ``poly``, ``encode_cyclic``) come from running the
  prompt on the tester's side, not from the candidate. For the assert layout, every top-level
  function of the candidate is bound by name except names of built-ins (so redefining ``abs``,
  ``isinstance`` or ``print`` changes nothing for the tests), as are standard-library modules the
  solution imported (``math`` ...).

Limits of this design: results must be plain data (tests of classes or methods, e.g.
``Solution().f(x)``, fail); arguments are copies, so a test checking that the function mutated its
argument fails; the candidate's process persists between the calls of one run (module state is
kept, as in one Python program), so it can notice repeated calls; and what a test reveals through
its arguments the candidate sees. Isolation of the candidate's process (network, files, other
processes) is the sandbox's level: see `prorl.rewards.sandbox` and the ``sandbox`` option.

`code_heuristic` (no execution): 0 for an empty completion or one that does not parse as Python
(as is or dedented, so a function body continuing a prompt counts); 0.5 if it parses; 1.0 if it
parses and contains a function definition or a return statement.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from concurrent.futures import ThreadPoolExecutor

from .base import cancellation_event, register
from .sandbox import LEVELS, SandboxUnavailableError, check_sandbox_level, run_python, run_tests

__all__ = ["code_likeness", "extract_code", "run_asserts", "run_humaneval", "run_stdio"]

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> tuple[str, bool]:
    """(code, came from a fence): the first python/unlabelled fenced block, else the text itself."""
    blocks = _FENCE.findall(completion)
    if not blocks:
        return completion, False
    for lang, body in blocks:
        if lang.lower() in ("", "python", "py", "python3"):
            return body, True
    return blocks[0][1], True


def run_humaneval(prompt: str, completion: str, test: str, entry_point: str, *, timeout_s: float = 10.0,
                  memory_mb: int = 1024, isolation: str = "auto") -> float:
    code, fenced = extract_code(completion)
    program = prompt + ("\n" if fenced else "") + code
    check = f"{test}\n\ncheck({entry_point})\n"
    run = run_tests(program, [check], setup=prompt, bind={entry_point: entry_point}, timeout_s=timeout_s,
                    memory_mb=memory_mb, isolation=isolation)
    return 1.0 if 0 in run.passed else 0.0


def run_asserts(completion: str, tests, *, timeout_s: float = 10.0, memory_mb: int = 1024, isolation: str = "auto") -> float:
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not tests:
        raise ValueError("empty test list")
    run = run_tests(extract_code(completion)[0], tests, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation)
    return len(run.passed) / len(tests)


def run_stdio(completion: str, inputs, outputs, *, timeout_s: float = 10.0, memory_mb: int = 1024, cancel=None,
              isolation: str = "auto") -> float:
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"{len(inputs)} inputs for {len(outputs)} outputs")
    code = extract_code(completion)[0]
    passed = 0
    for stdin, expected in zip(inputs, outputs):
        if cancel is not None and cancel.is_set():
            break
        result = run_python(code, stdin=str(stdin), timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation)
        if result.timed_out:
            break  # a program that hangs on one input very likely hangs on the rest
        passed += result.passed and result.stdout.split() == str(expected).split()
    return passed / len(inputs)


def _job(prompt: str, completion: str, columns: dict, i: int, limits: dict, cancel):
    """A zero-argument callable scoring sample i, or None if the sample has no tests."""

    def get(key):
        values = columns.get(key)
        return None if values is None else values[i]

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
def make_code(timeout_s: float = 10.0, memory_mb: int = 1024, max_workers: int | None = None, sandbox: str = "auto"):
    """timeout_s: wall-clock limit per program run; max_workers: parallel sandboxes (default min(8, CPUs));
    sandbox: isolation level, "auto" (strict where the machine allows it), "strict" (refuse to
    start without it) or "basic" (see `prorl.rewards.sandbox`)."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError("timeout_s and memory_mb must be positive")
    if sandbox not in LEVELS:
        raise ValueError(f"sandbox must be one of {', '.join(LEVELS)}; got {sandbox!r}")
    try:
        level = check_sandbox_level(sandbox)
    except SandboxUnavailableError as e:
        raise ValueError(str(e)) from None  # a configuration error: reported when the rewards are built
    workers = max_workers or min(8, _cpu_count())
    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "isolation": level}

    def code_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        cancel = cancellation_event()
        jobs = [_job(p, c, columns, i, limits, cancel) for i, (p, c) in enumerate(zip(prompts, completions))]
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
    code_reward.sandbox_level = level
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
