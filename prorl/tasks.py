"""Built-in tasks with verifiable rewards, generated offline in pure Python.

Every task yields a :class:`datasets.Dataset` with two string columns:

* ``"prompt"`` -- the text fed to the model verbatim (no chat template, no BOS needed);
* ``"answer"`` -- the reference answer that a verifier compares the completion against.

``arithmetic`` (the default task, and the one the shipped ``data/tiny-arith`` model was
pre-trained on)
-----------------------------------------------------------------------------------
Integer addition of two 3-digit operands (100..999)::

    prompt      "147+385="     (operands in decimal, no spaces, ends with "=")
    completion  "532" + EOS     (just the decimal digits of the sum, then the EOS token)
    answer      "532"

The prompt is always 8 characters and the answer 3 or 4 digits, so with the character-level
tokenizer of ``data/tiny-arith`` the prompt is 8 tokens and a correct completion is at most
5 tokens (the quick start's ``max_new_tokens`` of 8 leaves headroom). A
completion is correct when the *last* integer in it equals the answer numerically -- this is
exactly what the ``exact_match`` reward checks, and a completion of bare digits followed by
EOS is its natural format (see :func:`is_correct`).

Why this task: the answer is checked exactly and cheaply, and the skill is learnable from
scratch by a ~1M-parameter transformer in CPU minutes, passing through a long "partly capable"
phase that the build script stops in. Fixed-width operands make digit alignment purely
positional, so the model reliably learns the format and the digit-wise sums early (an earlier
version mixed 2- and 3-digit operands: whether the model ever learned to align them within the
budget depended on the seed). What remains hard is carrying, because the sum is written
most-significant digit first: every digit depends on whether the lower digits carry. The
partly trained model therefore spreads its samples over near misses (a digit off by one), and
how hard a prompt is varies with its carry pattern, so a GRPO group of samples for one prompt is
often neither all right nor all wrong. That is the regime where RL on the exact-match reward
helps quickly: sharpening a partly-learned skill.

Held-out split: a problem belongs to ``"test"`` iff a hash of its unordered operand pair
``(min(a, b), max(a, b))`` is 0 modulo 10 (see :func:`arithmetic_split_of`), else to
``"train"``. So the splits are disjoint, ``a+b`` and ``b+a`` always fall in the same split, and
about 10% of the 810,000 problems are held out. Pre-training (``data/build_tiny_model.py``) only
ever sees train-split problems.

Usage::

    from prorl.tasks import load_builtin_task
    train = load_builtin_task("arithmetic")                 # 2000 distinct train problems
    test = load_builtin_task("arithmetic", split="test")    # 200 distinct held-out problems
    test[0]  # {'prompt': '...+...=', 'answer': '...'}
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import datasets

__all__ = [
    "BUILTIN_TASKS",
    "SPLITS",
    "TaskSpec",
    "load_builtin_task",
    "task_prompt",
    "format_completion",
    "extract_last_number",
    "is_correct",
    "arithmetic_split_of",
    "arithmetic_problems",
]

SPLITS = ("train", "test")

# Operand range of the arithmetic task: 3-digit numbers.
ARITH_MIN = 100
ARITH_MAX = 999
# 1 in ARITH_TEST_MOD unordered operand pairs is held out.
ARITH_TEST_MOD = 10


def task_prompt(a: int, b: int) -> str:
    """The arithmetic prompt for ``a + b``, e.g. ``task_prompt(147, 385) == "147+385="``."""
    return f"{a}+{b}="


def format_completion(answer: str | int) -> str:
    """The target completion text for an answer (the model then emits EOS): ``"532"``."""
    return str(answer)


_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def extract_last_number(text: str) -> str | None:
    """The last (optionally signed, optionally decimal) number in ``text``, or None."""
    found = _NUMBER_RE.findall(text)
    return found[-1] if found else None


def is_correct(completion: str, answer: str) -> bool:
    """True iff the last number in ``completion`` equals ``answer`` numerically.

    Mirrors the ``exact_match`` reward; used by the model build script and tests.
    """
    got = extract_last_number(completion)
    if got is None:
        return False
    try:
        return float(got) == float(answer)
    except ValueError:
        return False


def arithmetic_split_of(a: int, b: int) -> str:
    """``"test"`` or ``"train"``: the split the problem ``a+b`` (equivalently ``b+a``) belongs to."""
    lo, hi = (a, b) if a <= b else (b, a)
    digest = hashlib.blake2b(f"{lo},{hi}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "little") % ARITH_TEST_MOD == 0 else "train"


def _sample_operand(rng: random.Random) -> int:
    return rng.randint(ARITH_MIN, ARITH_MAX)


def arithmetic_problems(split: str, rng: random.Random) -> Iterator[tuple[int, int]]:
    """Endless stream of operand pairs ``(a, b)`` of ``split`` (with repeats), drawn from ``rng``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    while True:
        a, b = _sample_operand(rng), _sample_operand(rng)
        if arithmetic_split_of(a, b) == split:
            yield a, b


def _arithmetic_rows(split: str, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(f"prorl/arithmetic/{split}/{seed}")
    seen: set[tuple[int, int]] = set()
    rows: list[dict[str, str]] = []
    for a, b in arithmetic_problems(split, rng):
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({"prompt": task_prompt(a, b), "answer": format_completion(a + b)})
        if len(rows) == n:
            break
    return rows


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: ``make_rows(split, n, seed)`` returns ``n`` distinct prompt/answer rows."""

    name: str
    description: str
    make_rows: Callable[[str, int, int], list[dict[str, str]]]
    default_n: dict[str, int]
    # Largest n a split can supply (distinct problems); None = unbounded.
    max_n: dict[str, int] | None = None


BUILTIN_TASKS: dict[str, TaskSpec] = {
    "arithmetic": TaskSpec(
        name="arithmetic",
        description="addition of 3-digit integers: prompt '147+385=', completion '532' + EOS",
        make_rows=_arithmetic_rows,
        default_n={"train": 2000, "test": 200},
        # 810k ordered pairs in total, ~10% held out; stay well clear of exhausting a split.
        max_n={"train": 500_000, "test": 50_000},
    ),
}


def load_builtin_task(
    name: str, split: str = "train", n: int | None = None, seed: int = 0
) -> datasets.Dataset:
    """Build a built-in task's split as a ``datasets.Dataset`` with columns ``prompt``, ``answer``.

    Deterministic for ``(name, split, n, seed)``; the rows are distinct problems and the
    ``train`` and ``test`` splits never share a problem. ``n=None`` uses the task's default size
    (2000 train / 200 test for ``arithmetic``). Raises ``ValueError`` for an unknown task or
    split, or a non-positive / too large ``n``.
    """
    if name not in BUILTIN_TASKS:
        raise ValueError(f"unknown built-in task {name!r}; allowed: {', '.join(sorted(BUILTIN_TASKS))}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    spec = BUILTIN_TASKS[name]
    if n is None:
        n = spec.default_n[split]
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if spec.max_n is not None and n > spec.max_n[split]:
        raise ValueError(f"n={n} is too large for task {name!r} split {split!r} (max {spec.max_n[split]})")
    rows = spec.make_rows(split, n, int(seed))
    return datasets.Dataset.from_dict(
        {"prompt": [r["prompt"] for r in rows], "answer": [r["answer"] for r in rows]}
    )
