"""Math answer rewards: `exact_match` (plain final numbers) and `math` (LaTeX-aware answer checker).

Both take the reference from the ``answer`` column and return 1.0 / 0.0 per sample (None, i.e. the
fallback, where the reference itself has no answer).

`exact_match`: the final number of each text: the first number after the last ``####`` if there is
one (GSM8K), else the last number in the text. ``1,000`` = ``1000``, ``18.0`` = ``18``, ``$18`` = ``18``.

`math`: the answer of a completion is, in order of preference, the last ``\\boxed{...}`` (nested
braces allowed), the line after the last ``####``, the phrase after the last "answer is" /
"answer:", else the last number or fraction. The reference is its last ``\\boxed{}`` or ``####``
line, else the whole string. Answers are compared by value when both read as numbers:

* thousands separators (``1,000``, ``1{,}000``, ``1\\,000``), ``$``, ``\\$``, ``\\left``/``\\right``,
  ``\\!``, degrees (``^\\circ``, ``°``), ``\\text{...}``/``\\mathrm{...}`` wrappers, trailing unit
  words ("18 dollars", "5 \\text{cm}") and a leading "x =" are ignored;
* fractions: ``1/2`` = ``\\frac{1}{2}`` = ``\\dfrac12`` = ``0.5``; mixed ``2\\frac{1}{2}`` = 2.5;
  ``1.5\\times10^{3}`` = 1500;
* percentages: ``50%`` matches both ``50`` and ``0.5`` (the "%" may be dropped, or mean /100),
  because questions asking "what percent" are answered both ways;
* values are equal if exactly equal, or, when either is not an integer, equal after rounding to 6
  decimals (so ``0.333333`` = 1/3 but ``0.33`` != 1/3).

Answers that are not plain numbers (``\\sqrt{2}``, ``x+1``, intervals) are compared with
math-verify when it is installed (``pip install 'prorl[math]'``), else by their normalised text.
math-verify runs without its own timeout (it relies on SIGALRM, which only works in the main
thread, and rewards run in a worker thread), so over-long answers and huge powers are not handed
to it; the reward manager's timeout is the last resort.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from .base import register

__all__ = ["extract_answer", "final_number", "is_equivalent", "parse_number", "reference_answer"]

# ---------------------------------------------------------------------------------------------
# Finding numbers in free text.

# A number in running text: optional sign (not after a word character, so "16-3" gives 16 and 3),
# thousands separators, optional decimals.
_TEXT_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
# The last numeric token of a completion may also be a fraction.
_TEXT_TOKEN = re.compile(
    r"-?\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}|-?\\[dt]?frac\s*\d\s*\d"
    r"|(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
)
_MAX_NUMBER_CHARS = 100  # longer "numbers" are not parsed (keeps Fraction arithmetic cheap)


def final_number(text) -> Fraction | None:
    """The `exact_match` reading of a text: first number after the last '####', else the last number."""
    text = str(text)
    hashes = text.rfind("####")
    if hashes != -1:
        first = _TEXT_NUMBER.search(text, hashes + 4)
        if first:
            return _fraction(first.group())
    numbers = _TEXT_NUMBER.findall(text)
    return _fraction(numbers[-1]) if numbers else None


def _fraction(number: str) -> Fraction | None:
    number = number.replace(",", "")
    if len(number) > _MAX_NUMBER_CHARS:
        return None
    try:
        return Fraction(number)
    except (ValueError, ZeroDivisionError):
        return None


# ---------------------------------------------------------------------------------------------
# Extracting the answer of a completion / reference.

_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:|=)\s*[:=]?\s*(.+)", re.IGNORECASE)


def extract_answer(text) -> str | None:
    """The final answer written in a completion, as a string, or None."""
    text = str(text)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _after_hashes(text)
    if hashes:
        return hashes
    phrases = _ANSWER_PHRASE.findall(text)
    if phrases:
        # The phrase ends at the end of its sentence or clause: ". " / ", " / ";" / end of line.
        phrase = re.split(r"\.\s|\.$|,\s|;", phrases[-1].strip())[0].strip()
        if phrase:
            return phrase
    tokens = _TEXT_TOKEN.findall(text)
    return tokens[-1] if tokens else None


def reference_answer(text) -> str:
    """The answer in a reference: its last \\boxed{} or '####' line, else the whole string."""
    text = str(text)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    return _after_hashes(text) or text.strip()


def _after_hashes(text: str) -> str | None:
    hashes = text.rfind("####")
    if hashes == -1:
        return None
    line = text[hashes + 4 :].strip().split("\n", 1)[0].strip()
    return line or None


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces; None if absent/unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start == -1:
        return None
    i = text.find("{", start)
    if i == -1 or text[start:i].strip() not in ("\\boxed", "\\fbox"):
        rest = re.match(r"\\(?:boxed|fbox)\s+(\S+)", text[start:])  # "\boxed 5"
        return rest.group(1).rstrip(".$") if rest else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


# ---------------------------------------------------------------------------------------------
# Reading an answer string as a number.

_NUM = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?"
_REMOVE = (r"\left", r"\right", r"\displaystyle", r"\!", r"\,", r"\;", r"\:", "\\ ", "{,}", r"\$", "$", r"\(", r"\)", r"\[", r"\]", "~")


def _normalize(answer: str) -> str:
    """Strip LaTeX decoration, currency, degrees, units and "x =" from an answer string."""
    s = answer.strip().replace("\u2212", "-")  # unicode minus
    for token in _REMOVE:
        s = s.replace(token, "")
    s = re.sub(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ", "", s)
    s = s.replace(r"\%", "%").replace("percent", "%")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = s.strip().strip("*").strip().rstrip(".").strip()
    s = re.sub(r"^[A-Za-z]\w*\s*=\s*", "", s)  # "x = 5"
    s = re.sub(r"(?<=[\d}%])\s+(?:[A-Za-z]+\.?\s*)+$", "", s)  # "18 dollars", "5 cm"
    return s.strip()


def parse_number(answer: str) -> tuple[Fraction, bool] | None:
    """(value, had a percent sign) if the answer string is a plain number/fraction, else None."""
    s = re.sub(r"\s+", "", _normalize(answer))
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    percent = s.endswith("%")
    value = _value(s[:-1] if percent else s)
    return None if value is None else (value, percent)


def _value(s: str) -> Fraction | None:
    if re.fullmatch(_NUM, s):
        return _fraction(s)
    if s.startswith("(") and s.endswith(")") and "," not in s:  # "(3)", "\\left(3\\right)"
        return _value(s[1:-1])
    m = re.fullmatch(rf"({_NUM})/({_NUM})", s) or re.fullmatch(rf"\\frac\{{({_NUM})\}}\{{({_NUM})\}}", s)
    if m:
        return _ratio(m.group(1), m.group(2))
    m = re.fullmatch(rf"-\\frac\{{({_NUM})\}}\{{({_NUM})\}}", s)
    if m:
        r = _ratio(m.group(1), m.group(2))
        return None if r is None else -r
    m = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # mixed number 2\frac{1}{2}
    if m:
        r = _ratio(m.group(3), m.group(4))
        return None if r is None else (-1 if m.group(1) else 1) * (int(m.group(2)) + r)
    m = re.fullmatch(rf"({_NUM})(?:\\times|\\cdot|\*)10\^\{{?([-+]?\d{{1,3}})\}}?", s)
    if m:
        base = _fraction(m.group(1))
        return None if base is None else base * Fraction(10) ** int(m.group(2))
    return None


def _ratio(numerator: str, denominator: str) -> Fraction | None:
    a, b = _fraction(numerator), _fraction(denominator)
    return None if a is None or b is None or b == 0 else a / b


def _numbers_match(pred: tuple[Fraction, bool], ref: tuple[Fraction, bool]) -> bool:
    def readings(value: Fraction, percent: bool) -> list[Fraction]:
        return [value, value / 100] if percent else [value]

    return any(_same(a, b) for a in readings(*pred) for b in readings(*ref))


def _same(a: Fraction, b: Fraction) -> bool:
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    return round(a, 6) == round(b, 6)


# ---------------------------------------------------------------------------------------------
# Equivalence and the reward functions.


def is_equivalent(pred: str | None, ref: str, *, use_math_verify: bool = False) -> bool:
    """Whether an extracted answer `pred` equals the reference answer `ref` (see module docs)."""
    if pred is None:
        return False
    p, r = parse_number(pred), parse_number(ref)
    if p is not None and r is not None:
        return _numbers_match(p, r)
    if use_math_verify and _safe_for_math_verify(pred) and _safe_for_math_verify(ref):
        return _math_verify(_normalize(pred), _normalize(ref))
    return p is None and r is None and _canonical(pred) == _canonical(ref)


def _canonical(answer: str) -> str:
    return re.sub(r"\s+", "", _normalize(answer))


def _safe_for_math_verify(answer: str) -> bool:
    # sympy can take forever on 9^{9^{9}} or 100000!; such answers are judged by text instead.
    return (
        len(answer) <= 200
        and not re.search(r"\^\s*\{?\s*[\d.]{4,}", answer)
        and not re.search(r"\^\s*\{[^{}]*\^", answer)
        and not re.search(r"\d{3,}\s*!", answer)
    )


@functools.lru_cache(maxsize=1)
def math_verify_available() -> bool:
    try:
        import math_verify  # noqa: F401
    except Exception:  # not installed, or installed but broken
        return False
    return True


def _math_verify(pred: str, ref: str) -> bool:
    from math_verify import parse, verify

    try:
        gold = parse(f"${ref}$", parsing_timeout=None)
        target = parse(f"${pred}$", parsing_timeout=None)
        return bool(gold) and bool(target) and bool(verify(gold, target, timeout_seconds=None))
    except Exception:  # math-verify raising on odd input means "not shown equal"
        return False


def _references(columns: dict, name: str) -> list:
    if "answer" not in columns:
        raise ValueError(f"the '{name}' reward needs an 'answer' column; columns given: {sorted(columns)}")
    return columns["answer"]


@register("exact_match")
def make_exact_match():
    def exact_match(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        out = []
        for completion, reference in zip(completions, _references(columns, "exact_match")):
            ref = None if reference is None else final_number(reference)
            pred = final_number(completion)
            out.append(None if ref is None else float(pred is not None and pred == ref))
        return out

    exact_match.required_columns = [("answer",)]
    return exact_match


@register("math")
def make_math(use_math_verify: bool | None = None):
    """use_math_verify: None = use it if installed; False = never; True = required."""
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    elif use_math_verify and not math_verify_available():
        raise ValueError("use_math_verify=True but math-verify is not installed; pip install 'prorl[math]'")

    def math_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        out = []
        for completion, reference in zip(completions, _references(columns, "math")):
            if reference is None or not str(reference).strip():
                out.append(None)
                continue
            pred = extract_answer(completion)
            out.append(float(is_equivalent(pred, reference_answer(reference), use_math_verify=use_math_verify)))
        return out

    math_reward.required_columns = [("answer",)]
    return math_reward
