"""Code rewards: the three test layouts, parallelism, HumanEval, and the no-execution heuristic."""

from __future__ import annotations

import gzip
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from prorl.rewards import build_rewards
from prorl.rewards.code import code_likeness, extract_code, run_asserts, run_stdio
from prorl.rewards.sandbox import SandboxUnavailableError, check_sandbox_level

HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"

ADD_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def test_humaneval_layout():
    rewards = build_rewards(["code"])
    completions = [
        "    return a + b\n",
        "    return a - b\n",
        "```python\ndef add(a, b):\n    return b + a\n```\nThis adds the numbers.",  # fenced full function
        "    return a + b\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n",  # demo block must not run
        "    return a +\n",  # syntax error
    ]
    n = len(completions)
    out = rewards([ADD_PROMPT] * n, completions, {"test": [ADD_TEST] * n, "entry_point": ["add"] * n})
    assert out.total == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert out.faults == {"code": 0}


def test_assert_layout_gives_the_pass_fraction():
    tests = ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 7"]
    assert run_asserts("def f(x):\n    return 2 * x\n", tests) == pytest.approx(2 / 3)
    assert run_asserts("def f(x):\n    return 2 * x\n", "assert f(1) == 2\nassert f(2) == 4") == 1.0  # one block
    # A test that hangs ends the run; the test before it still counts.
    hang = "def f(x):\n    while x == 2:\n        pass\n    return 2 * x\n"
    assert run_asserts(hang, tests, timeout_s=1) == pytest.approx(1 / 3)
    # A completion defining its own print/exec does not change how tests are reported.
    # (a no-op exec would pass all three, a silent print none).
    sneaky = "def f(x):\n    return 2 * x\ndef exec(*a, **k):\n    pass\nprint = lambda *a, **k: None\n"
    assert run_asserts(sneaky, tests) == pytest.approx(2 / 3)


def test_stdio_layout_gives_the_pass_fraction():
    program = "n = int(input())\nprint(n * n)\n"
    assert run_stdio(program, ["2\n", "3\n", "4\n"], ["4", "9\n", "15"]) == pytest.approx(2 / 3)
    assert run_stdio("print(' 1  2\\n3 ')", ["x"], ["1 2 3"]) == 1.0  # whitespace-insensitive tokens
    assert run_stdio("print(4)\nraise SystemExit(1)", [""], ["4"]) == 0.0  # must exit 0
    # After a timeout the remaining cases are not run.
    start = time.monotonic()
    assert run_stdio("while True:\n    pass", ["1", "2", "3"], ["1", "2", "3"], timeout_s=1) == 0.0
    assert time.monotonic() - start < 3


def test_layouts_are_picked_per_sample_and_missing_tests_fall_back():
    rewards = build_rewards(["code"], fallback=-1.0)
    columns = {
        "test": [ADD_TEST, None, None, None],
        "entry_point": ["add", None, None, None],
        "tests": [None, ["assert add(1, 1) == 2"], None, None],
        "inputs": [None, None, ["5"], None],
        "outputs": [None, None, ["10"], None],
    }
    completions = ["    return a + b\n", "def add(a, b):\n    return a + b\n", "print(int(input()) * 2)", "print(1)"]
    out = rewards([ADD_PROMPT, "", "", ""], completions, columns)
    assert out.total == [1.0, 1.0, 1.0, -1.0]
    assert out.faults == {"code": 1}
    none = rewards(["p"], ["x"], {"answer": ["1"]})
    assert none.faults == {"code": 1} and "needs columns 'test'+'entry_point'" in none.first_error["code"]


def test_completions_run_in_parallel():
    # Eight programs that each sleep 1 s: in series that is >= 8 s.
    rewards = build_rewards(["code"], kwargs={"code": {"max_workers": 8}})
    completions = ["import time\ntime.sleep(1)\ndef f():\n    return 1\n"] * 8
    start = time.monotonic()
    out = rewards(["p"] * 8, completions, {"tests": [["assert f() == 1"]] * 8})
    assert out.total == [1.0] * 8
    assert time.monotonic() - start < 6


def test_abandoned_code_reward_stops_starting_programs():
    rewards = build_rewards(["code"], kwargs={"code": {"max_workers": 1}}, timeout_s=1)
    completions = ["import time\ntime.sleep(0.5)\n"] * 20  # 10 s of work in series
    out = rewards(["p"] * 20, completions, {"tests": [["assert True"]] * 20})
    assert out.faults == {"code": 20} and out.first_error["code"].startswith("timed out after 1s")
    deadline = time.monotonic() + 3  # at most the program already running finishes
    while any(t.name == "reward-code" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "reward-code" for t in threading.enumerate())


def test_extract_code():
    assert extract_code("x = 1") == ("x = 1", False)
    assert extract_code("Here:\n```python\nx = 1\n```\nand ```bash\nls\n```") == ("x = 1\n", True)
    assert extract_code("```bash\nls\n```") == ("ls\n", True)
    assert extract_code("```py\nx = 1") == ("x = 1", True)  # unclosed fence (truncated output)


@pytest.mark.parametrize(
    "completion, score",
    [
        ("", 0.0),
        ("   \n", 0.0),
        ("The answer is 5.", 0.0),
        ("x = [1, 2, 3]", 0.5),
        ("    total = a + b\n    return total\n", 1.0),  # an indented body continuing a prompt
        ("def f(x):\n    return x\n", 1.0),
        ("```python\ndef f(x):\n    pass\n```", 1.0),
        ("def f(x:\n    return x\n", 0.0),
    ],
)
def test_code_heuristic(completion, score):
    assert code_likeness(completion) == score
    assert build_rewards(["code_heuristic"])(["p"], [completion], {}).total == [score]


@pytest.mark.slow
@pytest.mark.parametrize("level", ["strict", "basic"])
def test_humaneval_canonical_solutions_pass_and_bare_prompts_fail(level):
    """Nothing lost by running the tests apart from the candidate, at either isolation level."""
    if not HUMANEVAL.exists():
        pytest.skip(f"HumanEval data not found at {HUMANEVAL} (expected ../shared/data/humaneval/HumanEval.jsonl.gz)")
    try:
        check_sandbox_level(level)
    except SandboxUnavailableError as e:
        if sys.platform.startswith("linux") and os.getuid() == 0:
            pytest.fail(f"strict sandbox must work as root on Linux: {e}")
        pytest.skip(str(e))
    with gzip.open(HUMANEVAL, "rt") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 164
    rewards = build_rewards(["code"], kwargs={"code": {"sandbox": level}})
    prompts = [r["prompt"] for r in rows]
    columns = {"test": [r["test"] for r in rows], "entry_point": [r["entry_point"] for r in rows]}
    solved = rewards(prompts, [r["canonical_solution"] for r in rows], columns)
    assert [r["task_id"] for r, v in zip(rows, solved.total) if v != 1.0] == []
    bare = rewards(prompts, [""] * len(rows), columns)
    assert [r["task_id"] for r, v in zip(rows, bare.total) if v != 0.0] == []


def test_code_sandbox_option_reaches_the_code_reward(monkeypatch):
    """`code_sandbox` picks the code reward's isolation, in a flat list and per domain; the reward's
    own `sandbox` kwarg wins."""
    from prorl.config import load_config
    from prorl.rewards import code as code_module, rewards_from_config

    seen, real = [], code_module.check_sandbox_level
    monkeypatch.setattr(code_module, "check_sandbox_level", lambda level: seen.append(level) or real(level))
    rewards_from_config(load_config(None, {"reward_funcs": ["code", "format"], "code_sandbox": "basic"}))
    rewards_from_config(load_config(None, {"reward_funcs": ["code"], "code_sandbox": "basic",
                                           "reward_kwargs": {"code": {"sandbox": "auto"}}}))
    rewards_from_config(load_config(None, {"reward_funcs": {"py": ["code"], "m": ["math"]}, "code_sandbox": "basic"}))
    assert seen == ["basic", "auto", "basic"]
