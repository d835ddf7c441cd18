"""Math answer rewards: `exact_match` (plain final numbers) and `math` (LaTeX-aware answer checker).

Both take the reference from the ``answer`` column and return 1.0 / 0.0 per sample (None, i.e. the
fallback, where the reference itself has no answer). Each reads exactly ONE answer from a
completion, so writing several candidates never scores more than writing the last one alone; on
top of that, an answer that is itself a hedge (a list, "3 or 5", a range, a set, an inequality)
scores 0 against a single-value reference.

Where the answer is looked for (both rewards, see `final_section`): with reasoning tags (options
``open_tag``/``close_tag``, default ``<think>``/``</think>``), only the text after the LAST close
tag; a completion that opens the block (or whose prompt ends with the open tag) but never closes it
has no answer. Fenced code blocks (```...```, an unclosed fence runs to the end) are skipped, so
``print("#### 42")`` is not an answer.

`exact_match`: the final number of that text: the number on the line after the last ``####``
(GSM8K); if that line lists several numbers (``#### 3, 4, 5``, ``#### 3 or 5``) there is no answer;
without ``####`` (or a number on its line), the last number of the text. ``1,000`` = ``1000``,
``18.0`` = ``18``, ``$18`` = ``18``; "%", units and LaTeX are not read (``\\frac{1}{2}`` reads as 2;
use `math` for those). Without ``####`` it cannot tell a list from reasoning: "3 or 5" reads 5,
which scores exactly what answering 5 would.

`math`: the answer of a completion is, in order of preference,

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed). The LAST box wins even when
   earlier boxes hold other values ("\\boxed{3}... wait, \\boxed{5}" answers 5): verl's scorers
   (math.py, math_dapo.py strict mode), Qwen2.5-Math's grader and math-verify (rightmost match)
   do the same, it lets a model correct itself, and since only one box is read, boxing several
   candidates gains nothing. An empty last box is no answer;
2. the line after the last ``####``;
3. the phrase after the last "answer is" / "answer:" / "answer =" that is a claim: not in a
   conditional or reported sentence ("if/suppose/assume/whether/unless ... the answer is",
   "the book says the answer is", or inside double quotes), not a question ("...?"), and not text
   copied from the prompt; the phrase ends at the end of its sentence or at ", <word>" / "; <word>";
4. else the last number or fraction, not counting those in the phrases of 3. that are not claims.

The reference is its last ``\\boxed{}`` or ``####`` line, else the whole string. Then:

* Shape first: an answer with several values or a range (a comma list that is not a thousands
  separator, whitespace between numbers, ``;``, ``\\\\``, ``&``, ``\\quad``, "...", brackets
  ``[ ]``, the words "or"/"and"/"to"/"between"/"at least"/"about"/"not"/..., ``\\lor``, ``|``,
  ``\\pm``, a relation such as ``<``, ``\\geq``, ``\\neq``, ``\\approx``, ``\\sim``, ``\\in``, sets and
  intervals: ``\\{...\\}``, ``\\mathbb``, ``\\infty``, ``\\cup``, ``\\emptyset``) only matches a
  reference of the same kind, never a single value: ``\\{1,2,3\\}``, ``[0, 10]``,
  ``x \\in \\mathbb{R}``, ``3 \\pm 2``, "42 or more" and even ``\\{42\\}`` all score 0 against 42.
  Set/interval/list answers against a set/interval/list reference must be equal (math-verify,
  else the same normalised text), so a superset never matches.
* An equation "a = b" (against a reference that is not an equation) answers its last side, and
  scores 0 if two of its sides are different numbers ("42 = 43"); "x = 5" is 5.
* Numbers are compared by value: thousands separators (``1,000``, ``1{,}000``, ``1\\,000``, ``1 000``),
  ``$``, ``\\$``, ``\\left``/``\\right``, ``\\!``, degrees (``^\\circ``, ``°``), ``\\text{...}``/
  ``\\mathrm{...}`` wrappers, trailing unit words ("18 dollars", "5 \\text{cm}"; not "thousand",
  "dozen", ... nor hedge words) and a leading "x =" are ignored; fractions: ``1/2`` =
  ``\\frac{1}{2}`` = ``\\dfrac12`` = ``0.5``; mixed ``2\\frac{1}{2}`` = 2.5; ``1.5\\times10^{3}`` = 1500;
  values are equal if exactly equal, or, when either is not an integer, equal after rounding to
  6 decimals (so ``0.333333`` = 1/3 but ``0.33`` != 1/3).
* Percentages have ONE reading: the sign is dropped, ``50%`` = ``50`` (GSM8K writes the answer to
  "what percent" as the percentage number). ``50%`` does not also match 0.5: two readings would
  let "X%" hedge between X and X/100 (``6000%`` would match a reference of 60).

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

__all__ = [
    "extract_answer",
    "final_number",
    "final_section",
    "is_equivalent",
    "parse_number",
    "reference_answer",
    "several_values",
]

# ---------------------------------------------------------------------------------------------
# The part of a completion that may hold its answer.

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)


def final_section(completion, prompt="", open_tag: str | None = "<think>", close_tag: str | None = "</think>") -> str:
    """The text a completion's final answer is read from (see module docs): after the last close_tag
    when there are reasoning tags ("" if the reasoning never closes), without fenced code blocks."""
    text = str(completion)
    if close_tag:
        cut = text.rfind(close_tag)
        if cut != -1:
            text = text[cut + len(close_tag) :]
        elif open_tag and (open_tag in text or str(prompt or "").rstrip().endswith(open_tag)):
            return ""  # still reasoning: no final answer was given
    return _FENCE.sub(" ", text)


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
    """The `exact_match` reading of a text: the number on the line after the last '####' (None if
    that line lists several numbers), else the last number of the text."""
    text = str(text)
    hashes = text.rfind("####")
    if hashes != -1:
        line = text[hashes + 4 :].strip().split("\n", 1)[0]
        numbers = _TEXT_NUMBER.findall(line)
        if len(numbers) > 1:
            return None  # "#### 3, 4, 5": a list of candidates is not an answer
        if numbers:
            return _fraction(numbers[0])
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

_ANSWER_WORD = re.compile(r"answer\s*(?:is|:|=)\s*[:=]?\s*", re.IGNORECASE)
# Words before "the answer is" (in the same sentence) that make it a hypothesis or a report, not a claim.
_NOT_A_CLAIM = re.compile(
    r"\b(?:if|suppose|supposing|assume|assuming|whether|unless|hypothetically|says?|said|claims?|claimed"
    r"|states?|stated|quotes?|quoted|writes|wrote)\b|[\"\u201c\u201d]",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")
# Where an answer phrase ends: end of sentence, or ", <word>" / "; <word>" ("42, which is ...").
_PHRASE_END = re.compile(r"\.\s|\.$|\?|[,;]\s*(?=[A-Za-z]{2,}\b)")


def extract_answer(text, prompt: str = "") -> str | None:
    """The final answer written in `text` (a completion's `final_section`), as a string, or None.
    `prompt`: an "answer is" phrase copied from the prompt is not the completion's claim."""
    text = str(text)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _after_hashes(text)
    if hashes:
        return hashes
    phrase, rest = _answer_phrase(text, str(prompt or ""))
    if phrase:
        return phrase
    tokens = _TEXT_TOKEN.findall(rest)
    return tokens[-1] if tokens else None


def _answer_phrase(text: str, prompt: str) -> tuple[str | None, str]:
    """(the phrase after the last "answer is" that is a claim, or None; the text with the phrases
    that are not claims blanked out, so that their numbers are not read as the last number either)."""
    squash = lambda s: re.sub(r"\s+", " ", s).strip().lower()  # noqa: E731
    prompt_text = squash(prompt)
    rest = text
    for m in reversed(list(_ANSWER_WORD.finditer(text))):
        line = text[m.end() :].split("\n", 1)[0]
        end = _PHRASE_END.search(line.strip())
        phrase = (line.strip()[: end.start()] if end else line.strip()).strip()
        before = text[max(0, m.start() - 300) : m.start()]
        if (
            _NOT_A_CLAIM.search(_SENTENCE_END.split(before)[-1])  # "if the answer is 42, ..."
            or (end and end.group().startswith("?"))  # "so the answer is 42?" asks, it does not answer
            or (prompt_text and squash(text[m.start() : m.end()] + phrase) in prompt_text)  # quoting the prompt
        ):
            stop = m.end() + len(line) - len(line.lstrip()) + (end.end() if end else len(line.strip()))
            rest = rest[: m.start()] + " " * (stop - m.start()) + rest[stop:]
            continue
        return phrase or None, rest
    return None, rest


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
_REMOVE = (r"\left", r"\right", r"\displaystyle", r"\!", r"\,", r"\;", r"\:", "\\ ", "{,}", r"\$", "$", r"\(", r"\)", r"\[", r"\]", "~", "`")
# Words that hedge or bound a value ("42 or more", "about 42", "between 40 and 45"): never units.
_HEDGE_WORDS = (
    "or|and|to|between|from|through|either|neither|nor|least|most|more|less|fewer|greater|smaller|larger"
    "|over|under|above|below|about|around|approx|approximately|roughly|nearly|almost|maybe|perhaps"
    "|possibly|probably|not|than|range|ranging|etc"
)
# Words that change a value ("42 thousand"): never dropped as units either.
_NOT_UNITS = re.compile(rf"\b(?:{_HEDGE_WORDS}|hundreds?|thousands?|millions?|billions?|trillions?|dozens?|half|halves)\b", re.I)


def _normalize(answer: str) -> str:
    """Strip LaTeX decoration, currency, degrees, units and "x =" from an answer string."""
    s = answer.strip().replace("\u2212", "-").replace("\\\\", "\0")  # unicode minus; keep "\\" (line break)
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\0", "\\\\")
    s = re.sub(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ", "", s)
    s = s.replace(r"\%", "%").replace("percent", "%")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = s.strip().strip("*").strip().rstrip(".").strip()
    s = re.sub(r"^[A-Za-z]\w*\s*=\s*", "", s)  # "x = 5"
    units = re.search(r"(?<=[\d}%])\s+(?:[A-Za-z]+\.?\s*)+$", s)  # "18 dollars", "5 cm"
    if units and not _NOT_UNITS.search(units.group()):
        s = s[: units.start()]
    return s.strip()


# ---------------------------------------------------------------------------------------------
# Several values, ranges, sets, relations: answers that are not one value.

_SEVERAL = re.compile(
    # LaTeX: +-, or/and, sets and intervals, relations, lists
    r"\\(?:pm|mp|lor|vee|land|wedge|oplus|sqcup|mid|vert|lvert|rvert|parallel|cup|cap|setminus|in|notin|ni"
    r"|subset|subseteq|supset|supseteq|forall|exists|lbrace|rbrace|langle|rangle|infty|emptyset|varnothing|mathbb"
    r"|le|leq|leqq|leqslant|ge|geq|geqq|geqslant|lt|gt|ll|gg|ne|neq|not|nless|ngtr|nleq|ngeq|lesssim|gtrsim"
    r"|lessgtr|gtrless|prec|preceq|succ|succeq|approx|sim|simeq|cong|equiv|propto|dots|ldots|cdots|quad|qquad)"
    r"(?![A-Za-z])"
    r"|\\[{}]|\\\\|\.\.\.|[\[\]<>|;&"
    "\u2264\u2265\u2260\u2248\u2272\u2273\u2266\u2267\u2a7d\u2a7e\u227a\u227b\u227c\u227d\u226a\u226b\u223c\u2243\u2245\u2261\u221d"
    "\u00b1\u2213\u221e\u2208\u2209\u220b\u2282\u2283\u2286\u2287\u222a\u2229\u2228\u2227\u2295\u2026\u2013\u2014]"
    rf"|\b(?:{_HEDGE_WORDS})\b|(?<=\d)(?:or|and|to)(?=\d)",
    re.IGNORECASE,
)


def several_values(answer: str) -> bool:
    """Whether an answer string states several values or a range rather than one value: a list,
    "or"/"and"/range words, +-, a relation, a set or an interval (see module docs)."""
    s = re.sub(r"\\sqrt\s*\[[^\[\]]*\]", r"\\sqrt", _normalize(answer))  # \sqrt[3]{x}: not a list
    if _SEVERAL.search(s):
        return True
    s = re.sub(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d,])", "0", s)  # thousands separators are not lists
    s = re.sub(r"(?<![\d.])\d{1,3}(?: \d{3})+(?![\d.])", "0", s)  # nor are thin spaces ("1 000")
    return "," in s or bool(re.search(r"\d\s+[-+]?\.?\d", s))


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
    if pred is None or not _normalize(pred):
        return False
    if several_values(pred) != several_values(ref):
        return False  # a list/range/set/relation never matches one value, nor the other way round
    if not several_values(pred) and "=" in _normalize(pred) and "=" not in _normalize(ref):
        sides = _normalize(pred).split("=")
        values = {v for v, _ in filter(None, map(parse_number, sides))}
        if len(values) > 1 and not all(_same(a, b) for a in values for b in values):
            return False  # "42 = 43" states two values
        pred = sides[-1]
    p, r = parse_number(pred), parse_number(ref)
    if p is not None and r is not None:
        return _same(p[0], r[0])  # "%" has one reading: dropped (50% = 50), see module docs
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


def _check_tags(open_tag, close_tag) -> None:
    if close_tag is not None and (not isinstance(close_tag, str) or not close_tag):
        raise ValueError("close_tag must be a non-empty string, or None to read the whole completion")
    if open_tag is not None and (not isinstance(open_tag, str) or not open_tag or open_tag == close_tag):
        raise ValueError("open_tag must be a non-empty string different from close_tag, or None")


@register("exact_match")
def make_exact_match(open_tag: str | None = "<think>", close_tag: str | None = "</think>"):
    """open_tag/close_tag: the reasoning block; only the text after it is read (None: whole completion)."""
    _check_tags(open_tag, close_tag)

    def exact_match(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        out = []
        for prompt, completion, reference in zip(prompts, completions, _references(columns, "exact_match")):
            ref = None if reference is None else final_number(reference)
            pred = final_number(final_section(completion, prompt, open_tag, close_tag))
            out.append(None if ref is None else float(pred is not None and pred == ref))
        return out

    exact_match.required_columns = [("answer",)]
    return exact_match


@register("math")
def make_math(use_math_verify: bool | None = None, open_tag: str | None = "<think>", close_tag: str | None = "</think>"):
    """use_math_verify: None = use it if installed; False = never; True = required.
    open_tag/close_tag: the reasoning block; only the text after it is read (None: whole completion)."""
    _check_tags(open_tag, close_tag)
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    elif use_math_verify and not math_verify_available():
        raise ValueError("use_math_verify=True but math-verify is not installed; pip install 'prorl[math]'")

    def math_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        out = []
        for prompt, completion, reference in zip(prompts, completions, _references(columns, "math")):
            if reference is None or not str(reference).strip():
                out.append(None)
                continue
            pred = extract_answer(final_section(completion, prompt, open_tag, close_tag), prompt)
            out.append(float(is_equivalent(pred, reference_answer(reference), use_math_verify=use_math_verify)))
        return out

    math_reward.required_columns = [("answer",)]
    return math_reward
