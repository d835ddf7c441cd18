"""Math answer rewards on hand-checked cases and on all of GSM8K test."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from prorl.rewards import RewardConfigError, build_rewards
from prorl.rewards.math import extract_answer, final_number, is_equivalent, math_verify_available, reference_answer

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Janet makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18", Fraction(18)),
        ("#### 1,450,000", Fraction(1450000)),
        ("#### -10", Fraction(-10)),
        ("16-3-4 = 9 eggs", Fraction(9)),
        ("He pays $18.50.", Fraction(37, 2)),
        ("the result is 0.5", Fraction(1, 2)),
        ("no number here", None),
    ],
)
def test_final_number(text, expected):
    assert final_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{1}{\sqrt{2}}} is it", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{1} then \boxed{\{1,2\}}", r"\{1,2\}"),
        ("steps\n#### 1,234\n", "1,234"),
        ("Thus the final answer is: 42 apples. Done", "42 apples"),
        ("The answer is $\\frac{3}{4}$.", "$\\frac{3}{4}$"),
        ("I think 3 + 4 = 7", "7"),
        (r"half is \dfrac{1}{2}", r"\dfrac{1}{2}"),
        ("nothing here", None),
        (r"unclosed \boxed{5", "5"),  # falls back to the last number
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("1,000", "1000", True),
        ("1{,}000", "1000", True),
        (r"1\,000", "1000", True),
        ("0.5", "1/2", True),
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac12", "1/2", True),
        (r"\tfrac{3}{4}", "0.75", True),
        (r"-\frac{1}{2}", "-0.5", True),
        (r"\frac{-1}{2}", "-1/2", True),
        (r"2\frac{1}{2}", "2.5", True),
        ("$18", "18", True),
        (r"\$18.00", "18", True),
        ("18 dollars", "18", True),
        (r"18 \text{ cm}", "18", True),
        (r"45^\circ", "45", True),
        ("45°", "45", True),
        (r"\left(3\right)", "3", True),
        ("x = 5", "5", True),
        ("−7", "-7", True),
        (r"1.5\times10^{3}", "1500", True),
        ("50%", "50", True),
        (r"50\%", "0.5", True),
        ("0.333333", "1/3", True),
        ("-5", "5", False),
        ("0.5%", "50", False),
        ("0.33", "1/3", False),
        ("1000001", "1000000", False),
        ("17", "18", False),
        ("3/0", "3", False),
        (None, "3", False),
    ],
)
def test_numbers_compare_by_value(pred, ref, expected):
    assert is_equivalent(pred, ref, use_math_verify=False) is expected


def test_non_numeric_answers_without_math_verify_compare_as_text():
    assert is_equivalent(r"\sqrt{2}", r"\sqrt{2}", use_math_verify=False)
    assert is_equivalent(r"\left( 1, 2 \right)", "(1,2)", use_math_verify=False)
    assert not is_equivalent(r"\sqrt 2", r"\sqrt{2}", use_math_verify=False)
    assert not is_equivalent("1.4142", r"\sqrt{2}", use_math_verify=False)


@pytest.mark.skipif(not math_verify_available(), reason="math-verify is not installed (optional extra 'math')")
def test_math_verify_handles_symbolic_answers():
    assert is_equivalent(r"\sqrt 2", r"\sqrt{2}", use_math_verify=True)
    assert is_equivalent("1+x", "x+1", use_math_verify=True)
    assert not is_equivalent(r"\sqrt{3}", r"\sqrt{2}", use_math_verify=True)
    assert not is_equivalent(r"9^{9^{9^{9}}}", "1", use_math_verify=True)  # not sent to sympy


def test_math_works_without_math_verify(monkeypatch):
    import prorl.rewards.math as math_rewards

    monkeypatch.setattr(math_rewards, "math_verify_available", lambda: False)
    with pytest.raises(RewardConfigError, match="use_math_verify=True but math-verify is not installed"):
        build_rewards(["math"], kwargs={"math": {"use_math_verify": True}})
    rewards = build_rewards(["math"])  # default: use it only if installed
    out = rewards(["q"] * 3, [r"\boxed{\sqrt 2}", r"\boxed{\sqrt{2}}", r"\boxed{1/2}"], {"answer": [r"\sqrt{2}", r"\sqrt{2}", "0.5"]})
    assert out.total == [0.0, 1.0, 1.0]


def test_reference_answer():
    assert reference_answer("work...\n#### 72") == "72"
    assert reference_answer(r"\boxed{\frac12}") == r"\frac12"
    assert reference_answer("  3/4 ") == "3/4"


def test_math_reward_on_a_batch():
    rewards = build_rewards(["math", "exact_match"], kwargs={"math": {"use_math_verify": False}})
    completions = [r"... so \boxed{\dfrac{1}{2}}", "The answer is 1,000 dollars.", "it is 7", r"\boxed{50\%}"]
    out = rewards(["q"] * 4, completions, {"answer": ["0.5", "#### 1000", "8", "50"]})
    assert out.per_func["math"] == [1.0, 1.0, 0.0, 1.0]
    assert out.per_func["exact_match"] == [0.0, 1.0, 0.0, 1.0]  # plain last number: \dfrac{1}{2} reads as 2


def _gsm8k() -> list[dict]:
    if not GSM8K_TEST.exists():
        pytest.skip(f"GSM8K test data not found at {GSM8K_TEST} (expected ../shared/data/gsm8k/test.jsonl)")
    return [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()]


def _commas(value: Fraction) -> str:
    return f"{int(value):,}" if value.denominator == 1 else str(value)


def _with_final(reference: str, final: str) -> str:
    return reference[: reference.rfind("####")] + "#### " + final


@pytest.mark.parametrize("name", ["exact_match", "math"])
def test_gsm8k_references_score_one_and_changed_answers_zero(name):
    rows = _gsm8k()
    refs = [r["answer"] for r in rows]
    finals = [final_number(r) for r in refs]
    assert len(rows) == 1319 and None not in finals
    rewards = build_rewards([name], kwargs={"math": {"use_math_verify": False}} if name == "math" else None)
    prompts = [r["question"] for r in rows]

    assert rewards(prompts, refs, {"answer": refs}).total == [1.0] * len(refs)
    changed = [_with_final(r, str(v + 1)) for r, v in zip(refs, finals)]
    assert rewards(prompts, changed, {"answer": refs}).total == [0.0] * len(refs)
    # The same solutions ending in the ways models write answers.
    bodies = [r[: r.rfind("####")].rstrip() for r in refs]
    boxed = [f"{b}\nThe final answer is \\boxed{{{_commas(v)}}}." for b, v in zip(bodies, finals)]
    phrase = [f"{b}\nSo the answer is ${v}." for b, v in zip(bodies, finals)]
    assert rewards(prompts, boxed, {"answer": refs}).total == [1.0] * len(refs)
    assert rewards(prompts, phrase, {"answer": refs}).total == [1.0] * len(refs)
