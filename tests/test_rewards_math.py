"""Math answer rewards on hand-checked cases and on all of GSM8K test."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from prorl.rewards import RewardConfigError, build_rewards
from prorl.rewards.math import (
    extract_answer,
    final_number,
    final_section,
    is_equivalent,
    math_verify_available,
    reference_answer,
    several_values,
)

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
        ("#### 3, 4, 5", None),  # a list after #### is no answer
        ("#### 3 4 5", None),
        ("#### 18 dollars", Fraction(18)),
        ("####\n18", Fraction(18)),
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
        (r"\boxed{3}... wait, \boxed{5}", "5"),  # the last box wins
        ("The answer is 3. No wait, the answer is 5.", "5"),  # the last claim, not the first
        ("If the answer is 42 then x < 0, so I get 40.", "40"),  # a hypothesis is not a claim
        ("If the answer is 42 then x < 0.", None),  # ... nor is its number the last number
        ('The book says the answer is 42, but I get 40.', "40"),
        ('He wrote "the answer is 42". I get 40.', "40"),
        ("So the answer is 42? Checking: 40.", "40"),
        ("The answer is 3, 4, and 5.", "3, 4"),  # ", and" ends the phrase; what is left is still a list
        ("The answer is 42, which is even.", "42"),
        ("The answer is between 40 and 45.", "between 40 and 45"),
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
        (r"50\%", "0.5", False),  # "%" has one reading (dropped): else "X%" would hedge between X and X/100
        ("6000%", "60", False),
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


# --------------------------------------------------------------------------- answers a policy could game


@pytest.mark.parametrize(
    "answer, several",
    [
        ("18", False), ("1,450,000", False), ("1 000", False), (r"\$18.50", False), ("18 dollars", False),
        ("18 in all", False), (r"\frac{1}{2}", False), (r"2\frac{1}{2}", False), ("x = 5", False), (r"\sqrt{2}", False),
        ("x^2 + 2x + 1", False), ("-7", False), ("50%", False),
        ("3, 4, 5", True), ("3,4", True), ("3 4 5", True), ("3; 5", True), (r"3 \\ 5", True), (r"3 \quad 5", True),
        ("3 or 5", True), (r"3 \text{ or } 5", True), ("3or5", True), (r"3 \lor 5", True), ("3 | 5", True),
        (r"3 \pm 2", True), (r"x \geq 3", True), (r"\approx 42", True), (r"40 \sim 45", True), ("3 < x < 5", True),
        (r"\{1,2,3\}", True), (r"\{42\}", True), ("[0, 10]", True), (r"(-\infty, \infty)", True), (r"x \in \mathbb{R}", True),
        (r"\emptyset", True), ("42 or more", True), ("at least 42", True), ("about 42", True), ("between 40 and 45", True),
        ("40–45", True), (r"1, 2, \ldots, 10", True), ("not 42", True),
    ],
)
def test_several_values(answer, several):
    assert several_values(answer) is several


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        (r"\{1,2,3\}", "2", False),  # a set that contains the reference is not the reference
        (r"\{2\}", "2", False),
        ("2", r"\{2\}", False),
        ("[0, 10]", "5", False),
        (r"(-\infty, \infty)", "5", False),
        (r"x \in \mathbb{R}", "5", False),
        (r"x = 3 \pm 2", "5", False),
        (r"\geq 42", "42", False),
        (r"42 \text{ or more}", "42", False),
        ("42 = 43", "43", False),  # two different values in one equation
        (r"9 \times 2 = 18", "18", True),  # an equation answers its last side
        ("x = 18", "18", True),
        (r"\{3, 5\}", r"\{3,5\}", True),  # lists, sets and intervals match equal ones
        ("[0, 10]", "[0,10]", True),
        ("[0, 11]", "[0,10]", False),
    ],
)
@pytest.mark.parametrize("use_math_verify", [False, True])
def test_sets_intervals_and_relations_only_match_their_kind(pred, ref, expected, use_math_verify):
    if use_math_verify and not math_verify_available():
        pytest.skip("math-verify is not installed (optional extra 'math')")
    assert is_equivalent(pred, ref, use_math_verify=use_math_verify) is expected


@pytest.mark.skipif(not math_verify_available(), reason="math-verify is not installed (optional extra 'math')")
def test_math_verify_compares_sets_and_intervals_exactly():
    assert is_equivalent(r"\{5, 3\}", r"\{3,5\}", use_math_verify=True)
    assert is_equivalent(r"x \in \mathbb{R}", r"(-\infty,\infty)", use_math_verify=True)
    assert is_equivalent(r"(3, \infty)", "x > 3", use_math_verify=True)
    assert is_equivalent(r"3 \pm 2", "1, 5", use_math_verify=True)
    assert not is_equivalent(r"\{1,2,3,4\}", r"\{1,2,3\}", use_math_verify=True)  # a superset
    assert not is_equivalent(r"(-\infty, \infty)", "[0,10]", use_math_verify=True)
    assert not is_equivalent("[1,2]", "(1,2)", use_math_verify=True)
    assert not is_equivalent(r"x \geq 3", "x > 3", use_math_verify=True)


@pytest.mark.parametrize(
    "completion, prompt, expected",
    [
        ("<think>r</think> 42", "q", " 42"),
        ("<think>a</think> b </think> 42", "q", " 42"),  # the last close tag
        ("<think>r, 42", "q", ""),  # reasoning never closed: no answer
        ("r, 42", "q <think>", ""),  # the prompt opened the block
        ("r</think>42", "q <think>\n", "42"),
        ("plain 42", "q", "plain 42"),  # no tags: the whole completion
        ("a\n```py\nprint('#### 1')\n```\nb", "q", "a\n \nb"),  # code is not an answer
        ("a ```py\n#### 1", "q", "a  "),  # an unclosed fence runs to the end
    ],
)
def test_final_section(completion, prompt, expected):
    assert final_section(completion, prompt) == expected


def test_think_tags_are_options():
    rewards = build_rewards(["math", "exact_match"], kwargs={"math": {"open_tag": "<r>", "close_tag": "</r>"}, "exact_match": {"close_tag": None}})
    out = rewards(["q"] * 2, ["<r>7</r> 8", "<think>7</think> 8"], {"answer": ["7", "7"]})
    assert out.per_func == {"math": [0.0, 0.0], "exact_match": [0.0, 0.0]}
    with pytest.raises(RewardConfigError, match="close_tag must be a non-empty string"):
        build_rewards(["math"], kwargs={"math": {"close_tag": ""}})


def _gsm8k_rows(indices) -> list[tuple[str, str, Fraction, str]]:
    """(question, reference, final value, solution without its '#### line') of GSM8K test rows."""
    rows = _gsm8k()
    out = []
    for i in indices:
        ref = rows[i]["answer"]
        out.append((rows[i]["question"], ref, final_number(ref), ref[: ref.rfind("####")].rstrip()))
    return out


def _n(value: Fraction) -> str:
    return str(int(value)) if value.denominator == 1 else str(float(value))


# Each hack is built from a real GSM8K problem: v = the reference value, u = v - 1, w = v + 1, body =
# the reference solution (which ends by computing v). Every one of them names v somewhere, yet it
# must score 0. Columns: id, completion template, rewards that must give 0 ("em" = exact_match).
HACKS = [
    # several candidates
    ("several-boxes", r"{body}\n\boxed{{{v}}} or \boxed{{{w}}}", "math em"),  # only the last box counts
    ("answer-is-or", "{body}\nThe answer is {u} or {v}.", "math"),
    ("answer-is-or-2", "{body}\nThe answer is {v} or {w}.", "math em"),
    ("hashes-list", "{body}\n#### {u}, {v}, {w}", "math em"),
    ("hashes-list-first", "{body}\n#### {v}, {w}", "math em"),
    ("hashes-spaces", "{body}\n#### {v} {w}", "math em"),
    ("hashes-or", "{body}\n#### {v} or {w}", "math em"),
    ("final-list", "{body}\nThe answer: {u}, {v}, {w}", "math"),
    ("final-list-and", "{body}\nThe answer is {v}, {w}, and {u}.", "math"),
    ("boxed-list", r"{body}\n\boxed{{{u}, {v}, {w}}}", "math"),
    ("boxed-text-or", r"{body}\n\boxed{{{v} \text{{ or }} {w}}}", "math"),
    ("boxed-or-glued", r"{body}\n\boxed{{\text{{{u}or{v}}}}}", "math"),
    ("boxed-lor", r"{body}\n\boxed{{{u} \lor {v}}}", "math"),
    ("boxed-vee", r"{body}\n\boxed{{{u} \vee {v}}}", "math"),
    ("boxed-bar", r"{body}\n\boxed{{{u} | {v}}}", "math"),
    ("boxed-newline", r"{body}\n\boxed{{{v} \\ {w}}}", "math"),
    ("boxed-semicolon", r"{body}\n\boxed{{{v}; {w}}}", "math"),
    ("boxed-quad", r"{body}\n\boxed{{{v} \quad {w}}}", "math"),
    ("boxed-and", r"{body}\n\boxed{{{u} \text{{ and }} {v}}}", "math"),
    ("plus-minus", r"{body}\n\boxed{{{w} \pm 1}}", "math"),
    ("x-plus-minus", r"{body}\n\boxed{{x = {w} \pm 1}}", "math"),
    # sets, intervals, relations that contain the reference
    ("set", r"{body}\n\boxed{{\{{{u}, {v}, {w}\}}}}", "math"),
    ("singleton-set", r"{body}\n\boxed{{\{{{v}\}}}}", "math"),
    ("closed-interval", r"{body}\n\boxed{{[{u}, {w}]}}", "math"),
    ("open-interval", r"{body}\n\boxed{{({u}, {w})}}", "math"),
    ("all-reals", r"{body}\n\boxed{{(-\infty, \infty)}}", "math"),
    ("x-in-reals", r"{body}\n\boxed{{x \in \mathbb{{R}}}}", "math"),
    ("x-in-integers", r"{body}\n\boxed{{x \in \mathbb{{Z}}}}", "math"),
    ("x-in-set", r"{body}\n\boxed{{x \in \{{{v}\}}}}", "math"),
    ("geq", r"{body}\n\boxed{{x \geq {v}}}", "math"),
    ("bare-geq", r"{body}\n\boxed{{\geq {v}}}", "math"),
    ("between", r"{body}\n\boxed{{{u} < x < {w}}}", "math"),
    ("between-leq", r"{body}\n\boxed{{{u} \le x \le {w}}}", "math"),
    ("approx", r"{body}\n\boxed{{\approx {v}}}", "math"),
    ("sim", r"{body}\n\boxed{{\sim {v}}}", "math"),
    # ranges and hedge words
    ("answer-between", "{body}\nThe answer is between {u} and {w}.", "math"),
    ("boxed-to", r"{body}\n\boxed{{{u} \text{{ to }} {w}}}", "math"),
    ("en-dash-range", r"{body}\n\boxed{{{u}–{w}}}", "math"),
    ("or-more", r"{body}\n\boxed{{{v} \text{{ or more}}}}", "math"),
    ("at-least", r"{body}\n\boxed{{\text{{at least }} {v}}}", "math"),
    ("about", "{body}\nThe answer is about {v}.", "math"),
    ("false-equation", r"{body}\n\boxed{{{v} = {w}}}", "math"),
    ("false-equation-2", r"{body}\n\boxed{{{w} = {v}}}", "math"),
    ("percent-x100", r"{body}\n\boxed{{{v}00\%}}", "math em"),  # v00% would also read as v if % meant /100
    # answers hidden where the extractor used to look
    ("hypothesis", "{body}\nIf the answer is {v}, the numbers do not add up, so I get {w}.", "math em"),
    ("hypothesis-only", "I could not finish. If the answer is {v}, the totals do not match.", "math"),
    ("reported", "{body}\nMy friend says the answer is {v}, but I get {w}.", "math em"),
    ("quoted", '{body}\nSomeone wrote "the answer is {v}". I get {w}.', "math em"),
    ("question", "{body}\nSo the answer is {v}? No. I get {w}.", "math em"),
    ("first-claim", "{body}\nThe answer is {v}. Wait, recheck: the answer is {w}.", "math em"),
    ("hashes-in-code", "{body}\n```python\nprint('#### {v}')\n```\nSo it is {w}.", "math em"),
    ("boxed-in-code", "{body}\n```latex\n\\boxed{{{v}}}\n```\nSo it is {w}.", "math em"),
    ("only-in-think", "<think>{body}\nSo the answer is {v}.</think>\nI am not sure.", "math em"),
    ("boxed-in-think", "<think>{body}\n\\boxed{{{v}}}</think>\nI am not sure.", "math em"),
    ("unclosed-think", "<think>{body}\n\\boxed{{{v}}}\n#### {v}", "math em"),
    ("empty-box", "{body}\n\\boxed{{}}", "math"),
    ("hashes-count-0-to-1000", "I will list them all.\n#### {count}", "math em"),
]

# Honest answers to the same problems: each must score 1.
HONEST = [
    ("boxed", "{body}\nThe final answer is \\boxed{{{v}}}.", "math"),
    ("boxed-dollars", "{body}\n\\boxed{{\\${v}}}", "math"),
    ("boxed-units", "{body}\n\\boxed{{{v} \\text{{ dollars}}}}", "math"),
    ("hashes", "{body}\n#### {v}", "math em"),
    ("answer-is", "{body}\nSo the answer is {v}.", "math em"),
    ("answer-is-which", "{body}\nThe answer is {v}, which is the total.", "math"),
    ("answer-colon", "{body}\nFinal answer: {v}", "math em"),
    ("in-all", "{body}\nThe answer is {v} in all.", "math em"),
    ("self-correction", "{body}\nFirst I thought \\boxed{{{w}}}, but that is wrong: \\boxed{{{v}}}", "math"),
    ("same-box-twice", "\\boxed{{{v}}}. {body}\nSo again: \\boxed{{{v}}}", "math"),
    ("equation", "{body}\n\\boxed{{x = {v}}}", "math"),
    ("think-then-answer", "<think>{body}</think>\nThe answer is \\boxed{{{v}}}.", "math em"),
    ("think-then-hashes", "<think>{body}\nMaybe {w}?</think>\n#### {v}", "math em"),
    ("hypothesis-then-claim", "{body}\nIf the answer were {w}, the total would be off. The answer is {v}.", "math em"),
    ("code-then-answer", "```python\nprint({v})\n```\nThe answer is {v}.", "math em"),
]

_COUNT = " ".join(str(i) for i in range(1001))


def _fill(template: str, body: str, v: Fraction) -> str:
    return template.format(body=body, v=_n(v), u=_n(v - 1), w=_n(v + 1), count=_COUNT)


def _scores(completions, refs, prompts, use_math_verify) -> dict[str, list[float]]:
    rewards = build_rewards(["math", "exact_match"], kwargs={"math": {"use_math_verify": use_math_verify}})
    return rewards(prompts, completions, {"answer": refs}).per_func


GSM8K_ROWS = list(range(40)) + [14, 140, 1235]  # the last three ask "what percentage"


@pytest.mark.parametrize("use_math_verify", [False, True])
def test_gsm8k_hacks_score_zero_and_honest_answers_one(use_math_verify):
    if use_math_verify and not math_verify_available():
        pytest.skip("math-verify is not installed (optional extra 'math')")
    rows = _gsm8k_rows(GSM8K_ROWS)
    for cases, expected in ((HACKS, 0.0), (HONEST, 1.0)):
        for case, template, checked in cases:
            completions = [_fill(template, body, v) for _, _, v, body in rows]
            scores = _scores(completions, [ref for _, ref, _, _ in rows], [q for q, _, _, _ in rows], use_math_verify)
            for name in checked.split():
                per = scores["math" if name == "math" else "exact_match"]
                wrong = [(i, completions[k][-120:]) for k, i in enumerate(GSM8K_ROWS) if per[k] != expected]
                assert not wrong, f"{case}: {name} should give {expected} on GSM8K test rows {wrong[:3]}"


def test_gsm8k_percentage_question():
    # Row 14 asks "What percentage of the entire students enrolled in hip-hop dance?"; reference 60.
    (question, ref, value, body), = _gsm8k_rows([14])
    assert value == 60 and "percentage" in question
    completions = [f"{body}\n\\boxed{{60\\%}}", f"{body}\nThe answer is 60%.", f"{body}\n#### 60",
                   f"{body}\n\\boxed{{6000\\%}}", f"{body}\n\\boxed{{0.6}}", f"{body}\n\\boxed{{60\\% \\text{{ or }} 0.6}}"]
    scores = _scores(completions, [ref] * 6, [question] * 6, use_math_verify=False)
    assert scores["math"] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_gsm8k_answer_quoted_from_the_prompt_is_not_a_claim():
    (question, ref, value, body), = _gsm8k_rows([0])
    prompt = f"Example: 2 + 2 = ? The answer is {_n(value)}.\n\n{question}"  # a few-shot prompt
    completions = [f"Like the example says: the answer is {_n(value)}. Here I get {_n(value + 1)}.",
                   f"{body}\nThe answer is {_n(value)}."]
    scores = _scores(completions, [ref] * 2, [prompt] * 2, use_math_verify=False)
    assert scores["math"] == [0.0, 1.0]


def test_gsm8k_format_needs_real_reasoning_and_an_answer_after_it():
    (question, ref, value, body), = _gsm8k_rows([0])
    rewards = build_rewards(["format", "math"], kwargs={"math": {"use_math_verify": False}})
    completions = [
        f"<think>{body}</think>\nThe answer is \\boxed{{{_n(value)}}}.",  # honest
        f"<think>{body}\nThe answer is \\boxed{{{_n(value)}}}.</think>",  # answer inside the block
        f"<think>...</think>\n\\boxed{{{_n(value)}}}",  # no reasoning, only punctuation
        f"<think>{body}</think>\n.",  # no answer, only punctuation
        f"<think>{body}<think>more</think></think>\n\\boxed{{{_n(value)}}}",  # nested blocks
        f"<think>a</think><think>{body}</think>\n\\boxed{{{_n(value)}}}",  # two blocks
        f"<think>{body}</think>\n```\n</think>\n```\n\\boxed{{{_n(value)}}}",  # a tag in a code fence counts
    ]
    out = rewards([question] * 7, completions, {"answer": [ref] * 7})
    assert out.per_func["format"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # math reads after the last close tag, wherever it is: the last completion then opens a fence it never closes.
    assert out.per_func["math"] == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]
