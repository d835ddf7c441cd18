"""The reward manager: loading specs, config errors, fault handling, and the shaping built-ins."""

from __future__ import annotations

import math
import threading
import time
import textwrap

import pytest

from prorl.rewards import RewardConfigError, RewardError, RewardOutput, build_rewards, builtin_names
from prorl.rewards.shaping import format_ok, overlong_punishment

PROMPTS = ["q1", "q2", "q3", "q4"]
COMPLETIONS = ["... #### 18", "it is 7", "<think>hm</think> 3", "nothing"]
ANSWERS = ["#### 18", "8", "3", "5"]


def _write(tmp_path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


# --------------------------------------------------------------------------- building


def test_builtins_are_registered():
    assert builtin_names() == ["choice", "code", "code_heuristic", "exact_match", "format", "ifeval", "length_penalty", "math",
                               "overlong", "reasoning_gym"]


def test_weighted_total_and_names():
    rewards = build_rewards(["exact_match", "format"], [2.0, 0.5])
    assert rewards.names == ["exact_match", "format"] and rewards.weights == [2.0, 0.5]
    out = rewards(PROMPTS, COMPLETIONS, {"answer": ANSWERS})
    assert isinstance(out, RewardOutput)
    assert out.per_func == {"exact_match": [1.0, 0.0, 1.0, 0.0], "format": [0.0, 0.0, 1.0, 0.0]}
    assert out.total == [2.0, 0.0, 2.5, 0.0]
    assert out.faults == {"exact_match": 0, "format": 0} and out.first_error == {}


@pytest.mark.parametrize(
    "specs, weights, kwargs, message",
    [
        (["exact_match", "nope"], None, None, "unknown built-in reward 'nope'; available: choice, code, code_heuristic, exact_match"),
        (["exact_match", "format"], [1.0], None, "got 1 reward weights for 2 reward functions"),
        (["exact_match"], [float("nan")], None, "must be a finite number"),
        (["exact_match", "exact_match"], None, None, "listed twice"),
        (["format"], None, {"fromat": {}}, "reward kwargs given for ['fromat']"),
        (["format"], None, {"format": {"tag": "x"}}, "reward 'format': unknown option(s) ['tag']; valid options"),
        (["length_penalty"], None, {"length_penalty": {"coefficient": -1}}, "bad option value"),
        (["no_such_module_xyz:fn"], None, None, "cannot import module 'no_such_module_xyz'"),
        (["math:nope"], None, None, "'math' has no attribute 'nope'"),
        (["math:pi"], None, None, "'pi' is a float, not a function"),
        (["does/not/exist.py:fn"], None, None, "file 'does/not/exist.py' not found"),
        ([], None, None, "no reward functions given"),
    ],
)
def test_config_errors_are_one_clear_line(specs, weights, kwargs, message):
    with pytest.raises(RewardConfigError) as info:
        build_rewards(specs, weights, kwargs=kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_wrong_signature_is_a_config_error(tmp_path):
    path = _write(tmp_path, "bad.py", "def one_arg(completions):\n    return [0.0] * len(completions)\n")
    with pytest.raises(RewardConfigError, match=r"has the wrong signature \(completions\); it must be fn\(prompts, completions"):
        build_rewards([f"{path}:one_arg"])


def test_broken_file_is_a_config_error(tmp_path):
    path = _write(tmp_path, "broken.py", "def f(:\n")
    with pytest.raises(RewardConfigError, match="importing .*broken.py failed: SyntaxError"):
        build_rewards([f"{path}:f"])


def test_file_and_module_specs_with_signature_filtering(tmp_path, monkeypatch):
    source = """
        seen = {}
        def named(prompts, completions, answer, max_length):
            seen['named'] = (answer, max_length)
            return [float(len(c) <= max_length) for c in completions]
        def anything(prompts, completions, **kwargs):
            seen['anything'] = sorted(kwargs)
            return [1.0] * len(completions)
        def scaled(prompts, completions, *, scale=1.0):
            return [scale] * len(completions)
    """
    path = _write(tmp_path, "my_rewards.py", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = build_rewards(
        [f"{path}:named", "my_rewards:anything", "my_rewards:scaled"], kwargs={"my_rewards:scaled": {"scale": 3.0}}
    )
    assert rewards.names == ["my_rewards.named", "my_rewards.anything", "my_rewards.scaled"]
    out = rewards(["p", "p"], ["abc", "abcdef"], {"answer": ["x", "y"], "other": [1, 2]},
                  completion_lengths=[3, 6], truncated=[False, True], max_length=4)
    assert out.per_func == {"my_rewards.named": [1.0, 0.0], "my_rewards.anything": [1.0, 1.0], "my_rewards.scaled": [3.0, 3.0]}
    import my_rewards

    assert my_rewards.seen["anything"] == ["answer", "completion_lengths", "max_length", "other", "truncated"]
    file_module = [m for name, m in __import__("sys").modules.items() if name.startswith("prorl_user_reward_my_rewards")][0]
    assert file_module.seen["named"] == (["x", "y"], 4)  # only what its signature names


def test_user_kwargs_must_fit_the_signature(tmp_path):
    path = _write(tmp_path, "r.py", "def f(prompts, completions):\n    return [0.0] * len(completions)\n")
    with pytest.raises(RewardConfigError, match=r"does not take the keyword argument\(s\) \['scale'\]"):
        build_rewards([f"{path}:f"], kwargs={f"{path}:f": {"scale": 2}})


# --------------------------------------------------------------------------- faults


def _faulty_rewards(tmp_path, **options):
    source = """
        import math, time
        def raises(prompts, completions, **kw):
            return [1.0 / 0 for _ in completions]
        def short(prompts, completions, **kw):
            return [1.0, 1.0, 1.0]
        def scalar(prompts, completions, **kw):
            return 1.0
        def some_bad(prompts, completions, **kw):
            return [1.0, float('nan'), None, 'x']
        def exits(prompts, completions, **kw):
            raise SystemExit(3)
        def good_tuple(prompts, completions, **kw):
            return (True, 0, 0.5, 2)
    """
    path = _write(tmp_path, "faulty.py", source)
    names = ["raises", "short", "scalar", "some_bad", "exits", "good_tuple"]
    return build_rewards([f"{path}:{n}" for n in names], **options)


def test_faults_fall_back_per_sample_and_are_reported(tmp_path):
    rewards = _faulty_rewards(tmp_path, fallback=-1.0)
    out = rewards(PROMPTS, COMPLETIONS, {})
    assert out.per_func["faulty.raises"] == [-1.0] * 4
    assert out.per_func["faulty.short"] == [-1.0] * 4  # never padded or broadcast
    assert out.per_func["faulty.scalar"] == [-1.0] * 4
    assert out.per_func["faulty.some_bad"] == [1.0, -1.0, -1.0, -1.0]
    assert out.per_func["faulty.exits"] == [-1.0] * 4
    assert out.per_func["faulty.good_tuple"] == [1.0, 0.0, 0.5, 2.0]
    assert out.faults == {"faulty.raises": 4, "faulty.short": 4, "faulty.scalar": 4, "faulty.some_bad": 3, "faulty.exits": 4, "faulty.good_tuple": 0}
    assert out.first_error == {
        "faulty.raises": "raised ZeroDivisionError: float division by zero",
        "faulty.short": "returned 3 values for 4 completions",
        "faulty.scalar": "returned float, expected a list of 4 numbers",
        "faulty.some_bad": "returned nan at index 1, which is not a finite number",
        "faulty.exits": "raised SystemExit: 3",
    }
    # Four functions faulted on every sample (-1 each), plus some_bad and good_tuple:
    assert out.total == [-4 + 1.0 + 1.0, -4 - 1.0 + 0.0, -4 - 1.0 + 0.5, -4 - 1.0 + 2.0]
    assert all(math.isfinite(t) for t in out.total)


def test_strict_mode_raises(tmp_path):
    rewards = _faulty_rewards(tmp_path, strict=True)
    with pytest.raises(RewardError, match=r"reward 'faulty.raises' raised ZeroDivisionError"):
        rewards(PROMPTS, COMPLETIONS, {})


def test_hung_function_times_out_and_is_told_to_stop(tmp_path):
    source = """
        import time
        from prorl.rewards import cancellation_event
        state = {}
        def hangs(prompts, completions, **kw):
            event = cancellation_event()
            state['cancelled'] = event.wait(30)  # returns True as soon as the manager gives up
            return [1.0] * len(completions)
    """
    path = _write(tmp_path, "hang.py", source)
    rewards = build_rewards([f"{path}:hangs", "format"], timeout_s=0.5, fallback=0.25)
    start = time.monotonic()
    out = rewards(PROMPTS, COMPLETIONS, {})
    assert time.monotonic() - start < 3
    assert out.per_func["hang.hangs"] == [0.25] * 4 and out.faults["hang.hangs"] == 4
    assert out.first_error["hang.hangs"] == "timed out after 0.5s (its thread was abandoned, not killed)"
    assert out.per_func["format"] == [0.0, 0.0, 1.0, 0.0]  # the other functions still ran
    module = [m for n, m in __import__("sys").modules.items() if n.startswith("prorl_user_reward_hang")][0]
    for _ in range(100):
        if "cancelled" in module.state:
            break
        time.sleep(0.02)
    assert module.state["cancelled"] is True
    assert not any(t.name == "reward-hang.hangs" and t.is_alive() for t in threading.enumerate())


def test_caller_bugs_raise_value_error():
    rewards = build_rewards(["format"])
    with pytest.raises(ValueError, match="got 3 prompts for 4 completions"):
        rewards(PROMPTS[:3], COMPLETIONS, {})
    with pytest.raises(ValueError, match=r"column 'answer' must be a list with one value per completion \(4\), got 2 values"):
        rewards(PROMPTS, COMPLETIONS, {"answer": ["1", "2"]})
    with pytest.raises(ValueError, match="truncated has 1 values for 4 completions"):
        rewards(PROMPTS, COMPLETIONS, {}, truncated=[True])


def test_bad_reference_gets_fallback_not_a_crash():
    rewards = build_rewards(["exact_match", "math"], fallback=0.0)
    out = rewards(["q", "q"], ["18", "18"], {"answer": ["18", None]})
    assert out.per_func == {"exact_match": [1.0, 0.0], "math": [1.0, 0.0]}
    assert out.faults == {"exact_match": 1, "math": 1}
    missing = rewards(["q"], ["18"], {})
    assert missing.first_error["math"] == "raised ValueError: the 'math' reward needs an 'answer' column; columns given: []"


# --------------------------------------------------------------------------- shaping built-ins


@pytest.mark.parametrize(
    "prompt, completion, expected",
    [
        ("q", "<think>reason</think>42", True),
        ("q", "  <think>\nreason\n</think>\nThe answer is 42.", True),
        ("q", "<think></think>42", False),  # empty reasoning
        ("q", "<think>reason</think>   ", False),  # no answer
        ("q", "42 <think>reason</think> 42", False),  # answer before reasoning
        ("q", "<think>a</think><think>b</think>42", False),
        ("q", "reason</think>42", False),
        ("Solve.<think>\n", "reason</think>42", True),  # the template pre-filled <think>
        ("q", "<think>...</think>42", False),  # punctuation is no reasoning
        ("q", "<think>reason</think> .", False),  # punctuation is no answer
        ("q", "<think>so the answer is 42</think>", False),  # the answer left inside the block
        ("q", "<think>a<think>b</think>c</think>42", False),  # nested blocks
        ("q", "<think>reason", False),  # never closed
        ("q", "<think>reason</think>```\n<think>\n```", False),  # a tag counts inside code fences too
        ("q", "<think>reason</think>```python\nprint(42)\n```", True),  # code is an answer
        ("q", "<Think>reason</Think>42", False),  # tags match exactly
        ("q", "<think>\u6a21\u578b</think>\u56db\u5341\u4e8c", True),  # letters of any script count
    ],
)
def test_format(prompt, completion, expected):
    assert format_ok(prompt, completion) is expected


def test_format_with_custom_and_answer_tags():
    rewards = build_rewards(["format"], kwargs={"format": {"open_tag": "<r>", "close_tag": "</r>", "answer_open_tag": "<a>", "answer_close_tag": "</a>"}})
    completions = ["<r>x</r><a>4</a>", "<r>x</r>4", "<r>x</r><a> </a>", "<think>x</think><a>4</a>"]
    assert rewards(["q"] * 4, completions, {}).total == [1.0, 0.0, 0.0, 0.0]


def test_length_penalty():
    rewards = build_rewards(["length_penalty"], kwargs={"length_penalty": {"coefficient": 0.5}})
    out = rewards(["q"] * 3, ["a", "b", "c"], {}, completion_lengths=[0, 50, 100], truncated=[False, False, True], max_length=100)
    assert out.total == [0.0, -0.25, -0.5]
    missing = rewards(["q"], ["a"], {})
    assert missing.faults == {"length_penalty": 1} and "needs completion_lengths and max_length" in missing.first_error["length_penalty"]


def test_overlong_follows_dapo():
    # L_max = 100, L_cache = 20: free up to 80 tokens, then linear to -1 at 100; truncated = -1.
    assert [overlong_punishment(n, 100, 20) for n in (0, 80, 81, 90, 99, 100)] == [0.0, 0.0, -0.05, -0.5, -0.95, -1.0]
    assert overlong_punishment(10, 100, 20, truncated=True) == -1.0
    rewards = build_rewards(["overlong"])  # default buffer = max_length // 4 = 25
    out = rewards(["q"] * 4, ["a"] * 4, {}, completion_lengths=[75, 80, 100, 100], truncated=[False, False, False, True], max_length=100)
    assert out.total == [0.0, -0.2, -1.0, -1.0]
