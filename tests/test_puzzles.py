"""Reasoning Gym puzzles: the `reasoning_gym:TASKS` prompt source and the `reasoning_gym` reward."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (pip install 'prorl[puzzles]')")

import prorl.rewards.puzzles  # noqa: E402,F401  (registers the reward)
from prorl.config import ConfigError  # noqa: E402
from prorl.puzzles import decode_puzzle, encode_puzzle, generator_seed, load_reasoning_gym, parse_spec  # noqa: E402
from prorl.rewards import RewardConfigError, build_rewards  # noqa: E402
from prorl.rewards.puzzles import extract_puzzle_answer, score_puzzle  # noqa: E402

# Tasks with one reference answer, covering different scorers: numbers, words, True/False, grids,
# tuples in the metadata (rearc compares grids with tuples), Fractions (gsm_symbolic), set-order
# dependent generators (word_ladder, ransom_note).
TASKS = "leg_counting,basic_arithmetic,spell_backward,syllogism,word_ladder,ransom_note,rearc,gsm_symbolic"


@pytest.fixture(scope="module")
def train():
    return load_reasoning_gym(TASKS, split="train", seed=3, size=6)


@pytest.fixture(scope="module")
def eval_rows():
    return load_reasoning_gym(TASKS, split="test", seed=3, size=6)


def test_columns_and_round_robin_order(train):
    names = TASKS.split(",")
    assert train.column_names == ["prompt", "answer", "task", "puzzle"]
    assert all(train.features[c].dtype == "string" for c in train.column_names)
    assert len(train) == 6 * len(names)
    assert train["task"] == names * 6  # interleaved: task1 #0, task2 #0, ..., task1 #1, ...
    for row in train:
        task, entry = decode_puzzle(row["puzzle"])
        assert task == row["task"] and entry["question"] == row["prompt"] and entry["answer"] == row["answer"]
        assert row["prompt"].strip() and row["answer"].strip()


def test_reproducible_in_this_and_another_process(train):
    again = load_reasoning_gym(TASKS, split="train", seed=3, size=6)
    assert again.to_dict() == train.to_dict()
    # A fresh interpreter with a different string-hash seed gives the same rows.
    code = (
        "import json; from prorl.puzzles import load_reasoning_gym; "
        f"print(json.dumps(load_reasoning_gym({TASKS!r}, split='train', seed=3, size=6).to_dict()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == train.to_dict()


def test_seed_and_size_change_rows(train):
    other = load_reasoning_gym("leg_counting", split="train", seed=4, size=6)
    mine = [r["prompt"] for r in train if r["task"] == "leg_counting"]
    assert other["prompt"] != mine
    assert generator_seed(3, "train", "leg_counting") != generator_seed(3, "test", "leg_counting")
    assert generator_seed(3, "test", "a") == generator_seed(3, "test", "a") < 2**31


def test_splits_are_disjoint(train, eval_rows):
    assert len(eval_rows) == len(train)
    assert not set(train["prompt"]) & set(eval_rows["prompt"])
    assert eval_rows["task"] == train["task"]


@pytest.mark.parametrize("task", ["tower_of_hanoi", "string_synthesis"])
def test_eval_split_drops_train_questions_and_refills(task):
    # Tasks with few distinct questions: their eval stream repeats many train questions.
    from prorl.puzzles import _generate

    size = 60
    tr = load_reasoning_gym(task, split="train", seed=0, size=size)
    raw = [e["question"] for e in _generate(task, generator_seed(0, "validation", task), size)]
    assert set(raw) & set(tr["prompt"]), "expected the unfiltered streams to overlap for this task"
    ev = load_reasoning_gym(task, split="validation", seed=0, size=size)
    assert len(ev) == size and not set(tr["prompt"]) & set(ev["prompt"])
    assert ev.to_dict() == load_reasoning_gym(task, split="validation", seed=0, size=size).to_dict()
    # a larger train run is kept out when its size is given
    big = load_reasoning_gym(task, split="train", seed=0, size=2 * size)
    ev_small = load_reasoning_gym(task, split="test", seed=0, size=10, train_size=2 * size)
    assert len(ev_small) == 10 and not set(big["prompt"]) & set(ev_small["prompt"])


def test_too_few_distinct_questions_is_one_line():
    with pytest.raises(ConfigError, match="too few distinct questions") as info:
        load_reasoning_gym("tower_of_hanoi", split="test", seed=0, size=200)
    assert "\n" not in str(info.value)


def test_reference_answers_score_one_and_wrong_answers_zero(train):
    reward = build_rewards(["reasoning_gym"])
    completions = [f"<think>let me see</think>\n<answer>{a}</answer>" for a in train["answer"]]
    out = reward(train["prompt"], completions, {"puzzle": train["puzzle"], "task": train["task"], "answer": train["answer"]})
    assert out.per_func["reasoning_gym"] == [1.0] * len(train)
    assert out.faults["reasoning_gym"] == 0
    wrong = reward(train["prompt"], ["<answer>zzzz qqqq</answer>"] * len(train), {"puzzle": train["puzzle"]})
    assert wrong.per_func["reasoning_gym"] == [0.0] * len(train)
    assert wrong.faults["reasoning_gym"] == 0


def test_answer_extraction():
    assert extract_puzzle_answer("<answer>1</answer> then <answer> 2 </answer>") == "2"  # the last pair
    assert extract_puzzle_answer("<answer>\n7\n</answer>", "tag") == "7"
    assert extract_puzzle_answer("the answer is 7", "tag") is None
    assert extract_puzzle_answer("<answer>7", "tag") is None  # unclosed
    assert extract_puzzle_answer("<answer></answer>", "tag") == ""
    assert extract_puzzle_answer("so \\boxed{12} is it\nThanks", "auto") == "12"
    assert extract_puzzle_answer("work\n\n 42 \n\n", "auto") == "42"
    assert extract_puzzle_answer("<think>\\boxed{1}</think>\nfinal: 5", "auto") == "final: 5"
    assert extract_puzzle_answer("", "auto") is None and extract_puzzle_answer("   \n", "auto") is None


def test_tricky_completions(train):
    row = next(r for r in train if r["task"] == "leg_counting")
    ref, puzzle = row["answer"], row["puzzle"]
    assert score_puzzle(f"The legs total {ref}.\n{ref}", puzzle, "auto") == 1.0  # last line, no tags
    assert score_puzzle(f"{ref}", puzzle, "tag") == 0.0  # outside the tags: tag mode gives nothing
    assert score_puzzle(f"\\boxed{{{ref}}}", puzzle, "auto") == 1.0
    assert score_puzzle(f"<answer>{ref}</answer> wait no <answer>{int(ref) + 1}</answer>", puzzle, "tag") == 0.0
    assert score_puzzle(f"<answer>{int(ref) + 1}</answer> wait no <answer>{ref}</answer>", puzzle, "tag") == 1.0
    assert score_puzzle("<answer></answer>", puzzle, "tag") == 0.0
    assert score_puzzle("", puzzle, "auto") == 0.0
    assert score_puzzle(f"<answer>{ref}", puzzle, "tag") == 0.0  # truncated before the closing tag
    # unreadable puzzles cannot be scored: None (the trainer's fallback, counted as a fault)
    assert score_puzzle(f"<answer>{ref}</answer>", "not json", "tag") is None
    assert score_puzzle(f"<answer>{ref}</answer>", json.dumps({"task": "no_such_task", "entry": {"question": "q", "metadata": {}}}), "tag") is None
    reward = build_rewards(["reasoning_gym"], fallback=-1.0)
    out = reward(["q", "q"], [f"<answer>{ref}</answer>"] * 2, {"puzzle": [puzzle, "{}"]})
    assert out.per_func["reasoning_gym"] == [1.0, -1.0] and out.faults["reasoning_gym"] == 1


def test_scorer_that_raises_gives_zero():
    rows = load_reasoning_gym("prime_factorization", split="train", seed=0, size=2)
    # its scorer raises ValueError on text that is not "a × b × ..."
    assert score_puzzle("<answer>no idea</answer>", rows[0]["puzzle"], "tag") == 0.0
    assert score_puzzle(f"<answer>{rows[0]['answer']}</answer>", rows[0]["puzzle"], "tag") == 1.0


def test_puzzle_json_is_lossless():
    from fractions import Fraction

    entry = {"question": "q", "answer": "a", "metadata": {"grid": ((1, 2), (3, 4)), "edges": [(0, 1)], "map": {0: "x", (1, 2): "y"},
                                                       "$odd": 1, "f": Fraction(3, 4), "nested": {"$tuple": [1]}}}
    task, back = decode_puzzle(json.loads(json.dumps(encode_puzzle("t", entry))))
    assert task == "t" and back == entry
    assert isinstance(back["metadata"]["grid"][0], tuple) and 0 in back["metadata"]["map"]


def test_reward_options_and_columns():
    with pytest.raises(RewardConfigError, match="answer_format"):
        build_rewards(["reasoning_gym"], kwargs={"reasoning_gym": {"answer_format": "xml"}})
    tag = build_rewards(["reasoning_gym"], kwargs={"reasoning_gym": {"answer_format": "tag"}})
    with pytest.raises(RewardConfigError, match="'puzzle'"):
        tag.check_columns(["prompt", "answer"], "some.jsonl")
    tag.check_columns(["prompt", "puzzle"], "reasoning_gym:leg_counting")


@pytest.mark.parametrize(
    "spec, size, match",
    [
        ("", 5, "no task given"),
        ("  ", 5, "no task given"),
        ("reasoning_gym:", 5, "no task given"),
        ("leg_countin", 5, "unknown task 'leg_countin'; did you mean leg_counting"),
        ("leg_counting,,gcd", 5, "empty task name"),
        ("gcd,gcd", 5, "listed twice"),
        ("leg_counting", 0, "positive integer"),
        ("leg_counting", -3, "positive integer"),
        ("composite", 2, "cannot be generated with its default settings"),
    ],
)
def test_one_line_errors(spec, size, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_reasoning_gym(spec, split="train", seed=0, size=size)
    assert "\n" not in str(info.value)


def test_spec_parsing_tolerates_spaces_and_prefix():
    assert parse_spec(" leg_counting , gcd ") == ["leg_counting", "gcd"]
    assert parse_spec("reasoning_gym:gcd") == ["gcd"]


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # makes `import reasoning_gym` fail
    with pytest.raises(ConfigError, match=r"pip install 'prorl\[puzzles\]'") as info:
        load_reasoning_gym("leg_counting", split="train", seed=0, size=1)
    assert "\n" not in str(info.value)
    with pytest.raises(RewardConfigError, match="reasoning-gym"):
        build_rewards(["reasoning_gym"])
