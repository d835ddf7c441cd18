"""Multiple-choice reward `choice` (ARC, MMLU, MMLU-Pro, GPQA-style, SciQ-style letter questions).

Returns 1.0 when the option a completion picks is the reference option, 0.0 when it picks another
option or none, and None (the trainer's fallback) when the reference itself names no option.

Options are named by the letters A, B, C, ... up to ``max_letter`` (default ``"J"``: the ten
options of MMLU-Pro). Letters are case-insensitive everywhere: ``b`` = ``B``.

Columns
-------
``answer`` (required), the reference:

* an int (Python, numpy) or an integral float: a **0-based** index, ``0`` = A (MMLU's and
  MMLU-Pro's ``answer_index`` convention; a ``bool`` is not an index);
* a letter, optionally wrapped or prefixed: ``"B"``, ``"b"``, ``"(B)"``, ``"B."``, ``"B)"``,
  ``"[B]"``, ``"**B**"``, ``"Option B"``, ``"Answer: B"``;
* when the options carry labels (ARC), a label: ``"1"`` means the option labelled ``1``, which in
  ARC is the *first* option;
* when the options are known, the exact text of one option (``"mesophilic organisms"``, SciQ);
* anything else is not scored (None): a letter past ``max_letter`` or past the number of options,
  an index out of range, an empty value, and a digit string without labels (``"1"`` is ambiguous:
  1-based in ARC, 0-based where an int was written out as text; give an int instead).

``options`` or ``choices`` (optional; ``options`` wins when a row has both), the option texts in
letter order: a list of strings (MMLU ``choices``, MMLU-Pro ``options``), ARC's
``{"text": [...], "label": [...]}``, or a list of ``{"text": ..., "label": ...}`` dicts. With them
the number of options is known (letters past it score 0; options past ``max_letter`` cannot be
named, by letter or by text), a completion may name an option by its
text, and labels such as ARC's ``"1"``..``"4"`` are understood (an answer token equal to a label is
that option; letters still count by position, so A is the first option). A row whose options value
is malformed is not scored (None, with one logged warning).

What counts as the completion's answer
--------------------------------------
The first of these four sources that is present decides; later sources are not looked at. A box
is present even when it names no option (then the score is 0); an answer phrase only when it names
something.

1. the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces allowed);
2. the last answer phrase that names something (see below). A phrase is the text after a cue, to
   the end of its line (or the next non-empty line when the cue ends its line). The cues:
   "answer is", "answer:", "answer =", "answer would/should/must/will be" (so "The correct answer
   is", "Final Answer:", "**Answer:**"); "option is", "choice is", "option/choice would/should/must
   be" ("A good choice is C", "The correct option is C"); "correct/right/best/final option:" (or
   "choice:"); and a letter followed by "is (the) correct/right/best" at the
   start of the text, a line or a sentence, or after "option"/"choice" ("C is correct.",
   "Option (C) is the best"). Phrases that name no option ("I hope this answer is helpful",
   "the answer is not obvious") are skipped;
3. a letter in parentheses or brackets ending the last non-empty line: "... so it is (C)." ;
4. the last non-empty line, when it is just a letter ("C", "**C**", "Option C", "(C).") or a
   letter with a delimiter and text ("C) Planetary days will become shorter.", "(C) ...",
   "C. ...", "C: ..."; with "." or ":" the letter must be upper-case) or exactly one option's text.

A piece of text (a box, a phrase, a line) names an option when, after removing Markdown
(``**``, ``*``, backticks), ``$``, ``\\text{}``/``\\textbf{}``/``\\mathrm{}``-style wrappers and
leading words such as "option", "choice", "letter", "the", "therefore", "most likely", either

* it is exactly the text of one option that is not itself a single letter or label
  ("E. coli" is read as that option's text, not as the letter E) -- compared case-insensitively,
  ignoring whitespace runs, quotes and final punctuation;
* it starts with a standalone letter (or label): bare, ``(B)``, ``[B]`` or ``{B}``. "Standalone"
  means not part of a word ("Because" has no B; "B's" and "e.g." are not letters). A bare "A" or
  "I" followed by an ordinary word is an article or pronoun, not a letter ("A good choice is C"
  is C, "I think" is not I), but "A because ...", "A is ...", "A and B" are the letter A;
* or, failing both, its first sentence or first clause (cut at ". ", ";", ",", "because",
  "since", "which", " - ") is exactly one option's text.

Scored 0 even though a letter was found:

* hedging: the letter is followed by a different letter joined by ",", "/", "&", "+", "or",
  "and", "and/or" ("B or C", "A, B", "\\boxed{B,C}", "(B) or (C)", "both B and C"). The same
  letter repeated ("B / B") is fine. With several boxes on the last box's line, they must agree;
* a letter past the number of options, or past ``max_letter`` ("E" for a four-option question);
* a letter followed by the exact text of a different option ("B) 42 m/s" where 42 m/s is C);
* for source 4, the last two lines (adjacent, no blank line between) both being
  letter-with-text lines of different letters: a restated option list, not an answer.

Not recognised (score 0): answers only in prose ("the days get shorter" when no option says
exactly that), a letter inside a sentence outside the sources above ("I'll go with D, since ..."),
an answer given only at the start of a completion that goes on to explain it, several letters run
together ("\\boxed{BC}").

Option: ``max_letter`` (a letter B..Z, default ``"J"``): the last letter that can name an option.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import unicodedata
from collections.abc import Mapping

from .base import register

__all__ = ["extract_choice", "parse_options", "reference_index"]

logger = logging.getLogger(__name__)

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MAX_PHRASE = 2000  # characters of a box / phrase / line that are read (keeps huge completions cheap)
_MAX_PHRASES = 64  # answer phrases looked at, from the last one back
_OUT = -1  # a letter that names no option: past the options or past max_letter


class _Hedge(Exception):
    """Several different options named where one answer is expected."""


# ---------------------------------------------------------------------------------------------
# The options of one question.


def parse_options(value) -> tuple[list[str], list[str] | None] | None:
    """(option texts, labels or None) from an ``options``/``choices`` value; None for None.

    Raises ValueError for a value that is not one of the accepted layouts (see module docs)."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy / arrow arrays
        value = value.tolist()
    if isinstance(value, Mapping):
        if "text" not in value:
            raise ValueError(f"options mapping must have 'text' (and 'label') lists, got keys {sorted(value)}")
        texts = _texts(value["text"])
        labels = value.get("label")
        if labels is not None:
            labels = _texts(labels)
            if len(labels) != len(texts):
                raise ValueError(f"options have {len(texts)} texts but {len(labels)} labels")
        return texts, _labels(labels)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        if not all("text" in v for v in value):
            raise ValueError("every option dict needs a 'text' key")
        texts = _texts([v["text"] for v in value])
        labels = [v.get("label") for v in value]
        return texts, _labels(None if any(l is None for l in labels) else _texts(labels))
    return _texts(value), None


def _texts(values) -> list[str]:
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"options must be a list of texts, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (str, numbers.Real)):
            raise ValueError(f"option {v!r} is a {type(v).__name__}, not a text")
        out.append(str(v))
    return out


def _labels(labels: list[str] | None) -> list[str] | None:
    if labels is None:
        return None
    labels = [l.strip().upper() for l in labels]
    if len(set(labels)) != len(labels) or not all(labels):
        raise ValueError(f"option labels {labels} must be distinct and non-empty")
    return labels


class _Question:
    """How letters, labels and texts map to option indices for one row."""

    def __init__(self, options: tuple[list[str], list[str] | None] | None, max_count: int):
        texts, labels = options if options is not None else (None, None)
        self.n = max_count if texts is None else min(len(texts), max_count)
        self.labels = labels
        self.texts = None if texts is None else [_norm_text(t) for t in texts[: self.n]]
        self.lead = _LEAD_LABEL if labels and any(l.isdigit() for l in labels) else _LEAD_LETTER

    def token_index(self, token: str) -> int | None:
        """Option index of a letter/label token, _OUT for a letter naming no option, None for a
        digit that is not a label."""
        t = token.upper()
        if self.labels and t in self.labels:
            i = self.labels.index(t)
            return i if i < self.n else _OUT
        if t.isalpha():
            i = _LETTERS.index(t)
            return i if i < self.n else _OUT
        return None

    def text_index(self, text: str) -> int | None:
        """Index of the one option whose normalised text equals `text`, else None."""
        if not self.texts or not text:
            return None
        hits = [i for i, t in enumerate(self.texts) if t == text]
        return hits[0] if len(hits) == 1 else None

    def is_token(self, text: str) -> bool:
        return len(text) == 1 and text.isalpha() or bool(self.labels and text.upper() in self.labels)


# ---------------------------------------------------------------------------------------------
# Text normalisation.

_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|mathrm|mathbf|mathit|mathsf|mbox|boldsymbol|emph|underline)\s*\{([^{}]*)\}"
)
_FILLERS = re.compile(
    r"^(?:(?:the|correct|right|best|final|answer|option|options|choice|choices|letter|therefore|thus|hence|so"
    r"|clearly|indeed|definitely|most\s+likely|likely|probably|either|both)\b[\s:,\-]*)+",
    re.IGNORECASE,
)


def _clean(s: str) -> str:
    """Drop Markdown emphasis, code ticks, $, \\( \\) and \\text{}-style wrappers."""
    previous = None
    while previous != s:
        previous, s = s, _WRAPPER.sub(r"\1", s)
    s = s.replace("\\(", " ").replace("\\)", " ").replace("\\[", " ").replace("\\]", " ").replace("\\ ", " ")
    s = re.sub(r"[*`$]|__", "", s).replace("\u00a0", " ")
    return s.strip()


def _strip_lead(s: str) -> str:
    return re.sub(r"^[\s:=\-\u2013\u2014>]+", "", s)


def _norm_text(s: str) -> str:
    """Option-text comparison form: cleaned, case-folded, single spaces, no quotes/final punctuation."""
    s = unicodedata.normalize("NFKC", _clean(str(s))).casefold()
    s = re.sub(r"\s+", " ", s)
    return s.strip().strip("\"'\u201c\u201d\u2018\u2019").strip().rstrip(".,;:!?").strip()


# ---------------------------------------------------------------------------------------------
# Reading letters.


def _lead_regex(token: str) -> re.Pattern:
    # A letter at the start of a text: wrapped (B) [B] {B}, or bare and not part of a word or an
    # abbreviation ("Because", "B's", "e.g.").
    return re.compile(
        rf"\(\s*(?P<w1>{token})\s*\)|\[\s*(?P<w2>{token})\s*\]|\{{\s*(?P<w3>{token})\s*\}}"
        rf"|(?P<bare>{token})(?![\w'\u2019])(?!\.\w)"
    )


_LEAD_LETTER = _lead_regex(r"[A-Za-z]")
_LEAD_LABEL = _lead_regex(r"[A-Za-z]|[1-9]\d?")  # when the options have numeric labels (ARC "1".."4")


# A bare A/I followed by one of these words is still the letter ("A because", "A is", "A and B").
_CONNECTORS = frozenset(
    "and or is was are be because since as which with for nor seems appears would should must "
    "only alone then".split()
)
_CHAIN = re.compile(r"\s*(?:,|/|&|\+|\band/or\b|\bor\b|\band\b)\s*(?:(?:or|and)\s+)?(?:(?:option|choice)s?\s+)?", re.I)
_SENTENCE_END = re.compile(r"(?<=\S)[.!?](?=\s|$)|;|\n")
_CLAUSE_END = re.compile(r"(?<=\S)[.!?](?=\s|$)|[;,\n]|\s(?:because|since|which|as|where|due to)\s|\s[-\u2013\u2014]\s", re.I)


def _lead_token(s: str, q: _Question) -> tuple[str, bool, int] | None:
    """(token, wrapped, end) for a standalone letter/label starting `s`, else None."""
    m = q.lead.match(s)
    if not m:
        return None
    wrapped = m.group("bare") is None
    token = m.group("w1") or m.group("w2") or m.group("w3") or m.group("bare")
    if not wrapped and token in "AaIi":
        word = re.match(r"\s+([A-Za-z]+)", s[m.end() :])
        if word and word.group(1).lower() not in _CONNECTORS:
            return None  # "A good choice", "I think": an article or a pronoun
    return token, wrapped, m.end()


def _read(text: str, q: _Question) -> int | None:
    """The option index `text` names (see module docs), _OUT, or None; raises _Hedge."""
    s = _strip_lead(_clean(text[:_MAX_PHRASE]))
    if not s:
        return None
    # The exact text of an option wins, unless that text is itself a letter/label.
    full = _norm_text(s)
    i = q.text_index(full)
    if i is not None and not q.is_token(full):
        return i
    body = _strip_lead(_FILLERS.sub("", s))
    lead = _lead_token(body, q)
    if lead is not None:
        token, _, end = lead
        i = q.token_index(token)
        if i is not None:
            rest = _after_chain(body[end:], i, q)
            if i != _OUT:
                _check_conflict(rest, i, q)
            return i
    for candidate in (s, body):
        for cut in (_SENTENCE_END, _CLAUSE_END):
            i = q.text_index(_norm_text(cut.split(candidate, maxsplit=1)[0]))
            if i is not None:
                return i
    return None


def _after_chain(rest: str, first: int, q: _Question) -> str:
    """`rest` past any letters joined to the first one; raise _Hedge when one of them differs
    ("B or C", "A, B"); the same letter repeated ("B / B") is fine."""
    for _ in range(len(_LETTERS)):
        m = _CHAIN.match(rest)
        if not m or not m.group().strip():
            break
        lead = _lead_token(rest[m.end() :], q)
        if lead is None:
            break
        i = q.token_index(lead[0])
        if i is None:
            break
        if i != first:
            raise _Hedge
        rest = rest[m.end() + lead[2] :]
    return rest


def _check_conflict(rest: str, i: int, q: _Question) -> None:
    """Raise _Hedge when the letter is followed by the exact text of a different option."""
    rest = _strip_lead(re.sub(r"^\s*[).\]:]", "", rest))
    for cut in (_SENTENCE_END, _CLAUSE_END):
        j = q.text_index(_norm_text(cut.split(rest, maxsplit=1)[0]))
        if j is not None and j != i:
            raise _Hedge


# ---------------------------------------------------------------------------------------------
# The four sources of a completion's answer.

_CUE = re.compile(
    r"\banswer[\s*_]*(?:is\b|:|=|would\s+be\b|should\s+be\b|must\s+be\b|will\s+be\b)"
    r"|\b(?:correct|right|best|final)\s+(?:option|choice)[\s*_]*[:=]"
    r"|\b(?:option|choice)[\s*_]+(?:is|would\s+be|should\s+be|must\s+be)\b",
    re.IGNORECASE,
)
_NON_BLANK = re.compile(r"\S")
_IS_CORRECT = re.compile(
    r"(?:(?:^|(?<=[.!?:]\s)|(?<=\n))[ \t*]*|\b(?:option|choice)[ \t]+)"
    r"(?P<x>[\(\[][ \t]*[A-Za-z][ \t]*[\)\]]|[A-Za-z])[ \t*]+is[ \t]+(?:the[ \t]+)?(?:correct|right|best)\b",
    re.IGNORECASE,
)


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every closed \\boxed{...} / \\fbox{...}, nested braces allowed
    (content cut at _MAX_PHRASE characters)."""
    starts = list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))
    if not starts:
        return []
    closing, stack = {}, []  # "{" position -> its "}" position, in one pass
    for j, ch in enumerate(text):
        if ch == "{":
            stack.append(j)
        elif ch == "}" and stack:
            closing[stack.pop()] = j
    out = []
    for m in starts:
        j = closing.get(m.end() - 1)
        if j is not None:
            out.append((m.start(), j + 1, text[m.end() : min(j, m.end() + _MAX_PHRASE)]))
    return out


def _from_boxes(text: str, q: _Question) -> int | None | bool:
    """False if there is no box; else the last box's reading (boxes on its line must agree)."""
    boxes = _boxes(text)
    if not boxes:
        return False
    last_start, _, content = boxes[-1]
    answer = _read(content, q)
    line_start = text.rfind("\n", 0, last_start) + 1
    for start, end, other in boxes[-_MAX_PHRASES:-1]:
        if start >= line_start and _read(other, q) != answer:
            raise _Hedge
    return answer


def _from_phrases(text: str, q: _Question) -> int | None | bool:
    """False if no answer phrase names anything; else the last such phrase's reading."""
    found = []
    for m in list(_CUE.finditer(text))[-_MAX_PHRASES:]:
        end = text.find("\n", m.end())
        line = text[m.end() : end if end != -1 else len(text)][:_MAX_PHRASE]
        if not _clean(line).strip(" :=-") and end != -1:  # the cue ends its line: the next non-empty one
            nxt = _NON_BLANK.search(text, end)
            if nxt:
                stop = text.find("\n", nxt.start())
                line = text[nxt.start() : stop if stop != -1 else len(text)][:_MAX_PHRASE]
        found.append((m.start(), line))
    for m in list(_IS_CORRECT.finditer(text))[-_MAX_PHRASES:]:
        found.append((m.start(), m.group("x")))
    for _, phrase in sorted(found, key=lambda f: f[0], reverse=True)[:_MAX_PHRASES]:
        answer = _read(phrase, q)  # a hedging phrase (_Hedge) decides too
        if answer is not None:
            return answer
    return False


def _last_lines(text: str) -> tuple[str, str | None]:
    """The last non-empty line and the line just above it (None if that one is blank or absent)."""
    lines = text.rstrip().split("\n")
    last = lines[-1] if lines else ""
    above = lines[-2] if len(lines) > 1 and lines[-2].strip() else None
    return last, above


def _from_end_paren(text: str, q: _Question) -> int | None | bool:
    last, _ = _last_lines(text)
    s = _clean(last[-_MAX_PHRASE:]).rstrip(" \t.!")
    token = r"[A-Za-z]|[1-9]\d?" if q.labels else r"[A-Za-z]"
    m = re.search(rf"[\(\[]\s*({token})\s*[\)\]]$", s)
    if not m:
        return False
    i = q.token_index(m.group(1))
    if i is None:
        return False
    before = re.search(rf"[\(\[]\s*({token})\s*[\)\]]\s*(?:,|/|&|\+|\band/or|\bor|\band)\s*(?:(?:or|and)\s+)?$", s[: m.start()], re.I)
    if before and q.token_index(before.group(1)) != i:
        raise _Hedge
    return i


def _letter_line(line: str, q: _Question) -> tuple[int | None, bool] | None:
    """(reading, has text after the letter) when `line` is a source-4 answer line, else None."""
    s = _strip_lead(_FILLERS.sub("", _strip_lead(_clean(line[:_MAX_PHRASE]))))
    lead = _lead_token(s, q)
    if lead is not None:
        token, wrapped, end = lead
        rest = s[end:]
        i = q.token_index(token)
        if i is not None:
            if re.fullmatch(r"[\s.!]*", _after_chain(rest, i, q)):
                return i, False
            delimited = wrapped and re.match(r"\s+\S", rest) or re.match(r"\)\s*\S", rest) or (
                token.isupper() or token.isdigit()) and re.match(r"[.:]\s+\S", rest)
            if delimited:
                if i != _OUT:
                    _check_conflict(rest, i, q)
                return i, True
    full = _norm_text(s)
    i = q.text_index(full)
    if i is not None:
        return i, False
    return None


def _from_last_line(text: str, q: _Question) -> int | None | bool:
    last, above = _last_lines(text)
    reading = _letter_line(last, q)
    if reading is None:
        return False
    i, with_text = reading
    if with_text and above is not None:
        try:
            previous = _letter_line(above, q)
        except _Hedge:
            previous = None
        if previous is not None and previous[1] and previous[0] != i:
            raise _Hedge  # "C) ...\nD) ...": the options restated, not an answer
    return i


def _answer(completion: str, q: _Question) -> int | None:
    """The option index the completion picks, or None (no answer, hedging, or a letter past the options)."""
    text = str(completion).replace("\r\n", "\n")
    try:
        for source in (_from_boxes, _from_phrases, _from_end_paren, _from_last_line):
            answer = source(text, q)
            if answer is not False:
                return None if answer is None or answer == _OUT else answer
    except _Hedge:
        return None
    return None


# ---------------------------------------------------------------------------------------------
# Public helpers and the reward.


def _max_count(max_letter) -> int:
    if not isinstance(max_letter, str) or len(max_letter.strip()) != 1 or max_letter.strip().upper() not in _LETTERS[1:]:
        raise ValueError(f"max_letter must be one letter from B to Z, got {max_letter!r}")
    return _LETTERS.index(max_letter.strip().upper()) + 1


def _question(options, max_letter) -> _Question:
    return _Question(parse_options(options), _max_count(max_letter))


def extract_choice(completion, options=None, *, max_letter: str = "J") -> int | None:
    """The 0-based option index a completion picks (see module docs), or None."""
    return _answer(completion, _question(options, max_letter))


def reference_index(answer, options=None, *, max_letter: str = "J") -> int | None:
    """The 0-based option index a reference ``answer`` names (see module docs), or None."""
    return _reference(answer, _question(options, max_letter))


def _reference(answer, q: _Question) -> int | None:
    if answer is None or isinstance(answer, bool):
        return None
    if hasattr(answer, "item") and not isinstance(answer, (str, bytes)):  # numpy scalars
        try:
            answer = answer.item()
        except (TypeError, ValueError):
            return None
    if isinstance(answer, numbers.Real) and not isinstance(answer, bool):
        if isinstance(answer, numbers.Integral):
            i = int(answer)
        elif math.isfinite(answer) and float(answer).is_integer():
            i = int(answer)
        else:
            return None
        return i if 0 <= i < q.n else None
    if not isinstance(answer, str):
        return None
    s = _strip_lead(_clean(answer))
    s = _strip_lead(_FILLERS.sub("", s)) or s
    m = re.fullmatch(r"[\(\[]?\s*([A-Za-z]|\d+)\s*[\)\]]?\s*[.:]?", s)
    if m:
        token = m.group(1)
        if token.isdigit() and not (q.labels and token in q.labels):
            return None  # ambiguous: see module docs
        i = q.token_index(token)
        return None if i is None or i == _OUT else i
    return q.text_index(_norm_text(answer))


@register("choice")
def make_choice(max_letter: str = "J"):
    """max_letter: the last letter that can name an option (B..Z; default J, MMLU-Pro's ten)."""
    max_count = _max_count(max_letter)
    warned = []

    def choice(prompts: list[str], completions: list[str], **columns) -> list[float | None]:
        if "answer" not in columns:
            raise ValueError(f"the 'choice' reward needs an 'answer' column; columns given: {sorted(columns)}")
        n = len(completions)
        options = columns.get("options") or [None] * n
        choices = columns.get("choices") or [None] * n
        out = []
        for completion, reference, opts, alt in zip(completions, columns["answer"], options, choices):
            try:
                q = _Question(parse_options(opts if opts is not None else alt), max_count)
            except ValueError as e:
                if not warned:
                    warned.append(True)
                    logger.warning("reward 'choice': a row's options could not be read (%s); such rows are not scored", e)
                out.append(None)
                continue
            ref = _reference(reference, q)
            if ref is None:
                out.append(None)
                continue
            out.append(float(_answer(completion, q) == ref))
        return out

    choice.required_columns = [("answer",)]
    return choice
