"""Shaping rewards that look at the form of a completion, not its correctness: format, length, overlong.

`format` is 1.0 exactly when the completion has the shape "reasoning block, then answer" (see
`format_ok` for the precise rules) and 0.0 otherwise. It judges the shape only: "<think>ok</think>7"
passes whatever the question, so give it a small weight next to a correctness reward (e.g. math 1.0,
format 0.1-0.2), never more than a correct answer is worth, and never use it alone.
"""

from __future__ import annotations

import re

from .base import register

__all__ = ["format_ok", "overlong_punishment"]


def format_ok(
    prompt: str,
    completion: str,
    open_tag: str = "<think>",
    close_tag: str = "</think>",
    answer_open_tag: str | None = None,
    answer_close_tag: str | None = None,
) -> bool:
    """Whether a completion is one reasoning block followed by an answer. All of:

    1. after leading whitespace it starts with open_tag; if the prompt ends with open_tag (chat
       templates that pre-fill "<think>"), a completion that does not repeat it starts inside the block;
    2. open_tag and close_tag each occur exactly once in it: no second, nested or unclosed block. The
       count is over the whole text, code fences included, so code that quotes a tag fails;
    3. the reasoning between the tags contains a letter or digit (not empty, not only punctuation);
    4. the text after close_tag contains a letter or digit: an answer left inside the reasoning
       block ("<think>... 42</think>") fails;
    5. with answer tags: that text is exactly one answer_open_tag...answer_close_tag block, with
       nothing but whitespace around it and a letter or digit inside it.

    Tags match exactly (case and spelling). The content is not judged: any reasoning and any
    answer of this shape pass."""
    text = completion.lstrip()
    if prompt.rstrip().endswith(open_tag) and not text.startswith(open_tag):
        text = open_tag + text
    if not text.startswith(open_tag) or text.count(open_tag) != 1 or text.count(close_tag) != 1:
        return False
    reasoning, _, answer = text[len(open_tag) :].partition(close_tag)
    answer = answer.strip()
    if not _has_content(reasoning) or not _has_content(answer):
        return False
    if answer_open_tag is None:
        return True
    return (
        answer.startswith(answer_open_tag)
        and answer.endswith(answer_close_tag)
        and answer.count(answer_open_tag) == 1
        and answer.count(answer_close_tag) == 1
        and _has_content(answer[len(answer_open_tag) : -len(answer_close_tag)])
    )


def _has_content(text: str) -> bool:
    """A letter or digit (any script): whitespace or punctuation alone ("...", "-") is no content."""
    return re.search(r"[^\W_]", text) is not None


@register("format")
def make_format(
    open_tag: str = "<think>",
    close_tag: str = "</think>",
    answer_open_tag: str | None = None,
    answer_close_tag: str | None = None,
):
    if not open_tag or not close_tag or open_tag == close_tag:
        raise ValueError("open_tag and close_tag must be two different non-empty strings")
    if (answer_open_tag is None) != (answer_close_tag is None) or answer_open_tag == "" or answer_close_tag == "":
        raise ValueError("give both answer_open_tag and answer_close_tag (non-empty), or neither")

    def format_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
        return [
            float(format_ok(p, c, open_tag, close_tag, answer_open_tag, answer_close_tag))
            for p, c in zip(prompts, completions)
        ]

    return format_reward


def _lengths(completion_lengths, max_length, name: str) -> None:
    if completion_lengths is None or max_length is None:
        raise ValueError(f"the '{name}' reward needs completion_lengths and max_length from the trainer")
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")


@register("length_penalty")
def make_length_penalty(coefficient: float = 1.0):
    """-coefficient * length / max_length: 0 for an empty completion, -coefficient at the limit."""
    if coefficient < 0:
        raise ValueError(f"coefficient must be >= 0 (it is subtracted), got {coefficient}")

    def length_penalty(prompts, completions, *, completion_lengths=None, max_length=None, **_) -> list[float]:
        _lengths(completion_lengths, max_length, "length_penalty")
        return [-coefficient * min(n, max_length) / max_length for n in completion_lengths]

    return length_penalty


def overlong_punishment(length: int, max_length: int, buffer: int, truncated: bool = False) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, Eq. 13):

        R = 0                                 if |y| <= L_max - L_cache
        R = ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
        R = -1                                if |y| > L_max

    with L_max = max_length and L_cache = buffer. Our generations stop at max_length, so "longer
    than L_max" shows up as truncated (hit the limit without EOS), which also gets -1."""
    if truncated or length > max_length:
        return -1.0
    threshold = max_length - buffer
    if length <= threshold:
        return 0.0
    return (threshold - length) / buffer


@register("overlong")
def make_overlong(buffer: int | None = None):
    """buffer = L_cache in tokens; default max_length // 4."""
    if buffer is not None and buffer <= 0:
        raise ValueError(f"buffer must be a positive number of tokens, got {buffer}")

    def overlong(prompts, completions, *, completion_lengths=None, truncated=None, max_length=None, **_) -> list[float]:
        _lengths(completion_lengths, max_length, "overlong")
        cache = buffer if buffer is not None else max(1, max_length // 4)
        if cache > max_length:
            raise ValueError(f"overlong buffer {cache} is larger than max_length {max_length}")
        flags = truncated if truncated is not None else [False] * len(completion_lengths)
        return [overlong_punishment(n, max_length, cache, t) for n, t in zip(completion_lengths, flags)]

    return overlong
