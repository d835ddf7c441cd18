"""`reasoning_gym`: score completions of Reasoning Gym puzzles with each task's own scorer.

Needs the ``puzzle`` column that ``dataset: reasoning_gym:TASKS`` rows carry (`prorl.puzzles`).

The model's answer is taken from the completion as follows:

* ``answer_format="tag"`` (Reasoning Gym's convention): the content of the LAST complete
  ``<answer>...</answer>`` pair, stripped; no pair -> 0.0.
* ``answer_format="auto"`` (default): the last ``<answer>`` pair if there is one; else, in the text
  after the last ``</think>`` (the whole completion if there is none), the last ``\\boxed{...}``;
  else the last non-empty line of that text. Pair it with the ``format`` reward if the model must
  learn the tags.

The extracted answer goes to the task's ``score_answer(answer, entry)`` unchanged; its value (1.0
correct, 0.0 wrong, and for many tasks partial credit in between) is the reward. A scorer that
raises on the model's answer (e.g. prime_factorization on text it cannot parse) gives 0.0; a puzzle
value that cannot be read (missing, not from `prorl.puzzles`, unknown task) gives None, i.e. the
trainer's fallback and a logged fault.
"""

from __future__ import annotations

import logging
import math
import re

from .base import RewardConfigError, register
from .math import _last_boxed

log = logging.getLogger(__name__)

__all__ = ["extract_puzzle_answer", "score_puzzle"]

ANSWER_FORMATS = ("tag", "auto")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_puzzle_answer(completion: str, answer_format: str = "auto") -> str | None:
    """The model's final answer in a completion (see the module docstring); None if it gives none."""
    if not isinstance(completion, str):
        return None
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return tags[-1].strip()
    if answer_format == "tag":
        return None
    text = completion.rsplit("</think>", 1)[-1]
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def score_puzzle(completion: str, puzzle: str, answer_format: str = "auto") -> float | None:
    """One completion's reward: the task scorer's value for the extracted answer, 0.0 without an
    answer or when the scorer rejects it, None when the puzzle itself cannot be read."""
    from ..puzzles import decode_puzzle, scorer

    try:
        task, entry = decode_puzzle(puzzle)
        score_answer = scorer(task)
    except ValueError as e:
        log.debug("reasoning_gym: unreadable puzzle: %s", e)
        return None
    answer = extract_puzzle_answer(completion, answer_format)
    if answer is None:
        return 0.0
    try:
        value = float(score_answer(answer, entry))
    except Exception as e:  # the model's answer broke the task's parser
        log.debug("reasoning_gym task %s: scorer raised %s: %s on answer %r", task, type(e).__name__, e, answer[:80])
        return 0.0
    return value if math.isfinite(value) else None


@register("reasoning_gym")
def make_reasoning_gym(answer_format: str = "auto"):
    """Reward factory; options: answer_format "auto" (default) or "tag"."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, got {answer_format!r}")
    from ..puzzles import import_reasoning_gym

    try:
        import_reasoning_gym()  # a missing package is one line at start, not a fault on every batch
    except ValueError as e:
        raise RewardConfigError(f"reward 'reasoning_gym': {e}") from None

    def reasoning_gym(prompts: list[str], completions: list[str], *, puzzle: list[str] | None = None, **_) -> list[float | None]:
        if puzzle is None:
            raise ValueError("the 'reasoning_gym' reward needs the 'puzzle' column of dataset: reasoning_gym:TASKS")
        return [score_puzzle(c, p, answer_format) for c, p in zip(completions, puzzle)]

    reasoning_gym.required_columns = [("puzzle",)]
    return reasoning_gym
