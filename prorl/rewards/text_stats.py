"""Counting words, sentences and all-capital words, and detecting a text's language, offline: what
the `ifeval` reward's length and case instructions measure.

IFEval's reference implementation counts with nltk (punkt sentence data downloaded at run time);
these are regex stand-ins that agree with punkt on the published IFEval responses (see
tests/test_rewards_ifeval.py). Language detection uses langdetect when it is installed (pure
Python, seeded so results repeat), else reports None.
"""

from __future__ import annotations

import re
import threading

__all__ = ["count_capital_words", "count_sentences", "count_words", "is_language", "language_detection_available"]

# Words, sentences, capital words.

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Runs of word characters (``\\w+``), as nltk's ``RegexpTokenizer(r"\\w+")`` counts them."""
    return len(_WORD.findall(text))


# Abbreviations after which a single "." does not end a sentence (unless a common sentence opener
# follows). A hand-picked list of standard English abbreviations, lower case, without the final dot.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms messrs dr prof gen sen rep reps lt col maj adm sr jr st ave ft mg yr vs ok
    inc ltd co corp cos bros
    jan feb aug sep sept oct nov dec tues wed fri
    ariz calif colo conn fla ga ill kan ky mich minn nev okla ore pa tenn va vt wash wis
    u.s u.k u.n u.s.a u.s.s.r a.m p.m ph.d d.c n.y l.a a.d
    """.split()
)
# Single letters that punkt's English model treats as abbreviations: "C. It" stays one sentence.
_ABBREVIATED_LETTERS = frozenset("cdefghklmnprstvw")
# Capitalised words after which an abbreviation's dot or an ellipsis ends the sentence: common
# words that start sentences. (punkt decides from statistics of its training text; these are the
# common words for which its English model does.)
_SENTENCE_OPENERS = frozenset(
    """
    the this these there they them it he her i if in into were but so some many most both when
    while which since though although however moreover meanwhile nevertheless nonetheless indeed
    instead thus yet nor according among despite even under similarly separately your us here
    please finally such try remember note consider imagine overall furthermore therefore hence
    yes thank thanks step title conclusion example
    """.split()
)
_NUMBER = re.compile(r"-?[.,]?\d[\d,.\-]*")
# Words after which a number's dot does not end the sentence (collocations in punkt's model: "2. Who").
_AFTER_NUMBER = frozenset(
    "business commodities corrections credit dividend financing insider international leisure letters "
    "notable review who".split()
)
# Characters that end a word for punkt, and characters that cannot start one.
_NON_WORD = ")\";}]*:@'({[?!"
_NOT_WORD_START = "(\"`{[:;&#*@)}]-,"
_WORD_ENDERS = re.compile(r"[)\";}\]*:@({\[?!]")
# A possible sentence end: in each run of non-space characters, the last . ? or ! that is followed
# by one of _NON_WORD, or by whitespace and more text. (Anchored at the start of the run so that a
# long run without spaces costs linear time.)
_SENTENCE_END = re.compile(r"(?<!\S)\S*[.?!](?=([)\";}\]*:@'({\[?!])|\s+(\S+))")
# punkt's tokens within a run of non-space characters: single non-word characters, dot runs, words.
_RUN_TOKENS = re.compile(r"[)\";}\]*:@({\[?!]|\.{2,}|[^)\";}\]*:@({\[?!]+")
# Closing characters at the start of a sentence belong to the previous one.
_CLOSERS = re.compile(r"[\"')\]}]+?(?:\s+|(?=--)|$)", re.MULTILINE)


def _inner_break(chunk: str) -> bool:
    """Whether punkt would see a sentence end inside the next run of non-space characters: a
    ``?``/``!`` or a word ending in a dot (not an abbreviation), followed by more of the run
    ("Smith.*" in "Dr. Smith.*"). punkt then ends the sentence before that run too."""
    tokens = _RUN_TOKENS.findall(chunk)
    for token in tokens[:-1]:
        if token in ("?", "!"):
            return True
        if len(token) > 1 and token.endswith(".") and not token.endswith(".."):
            if token[:-1].lower().lstrip(_NOT_WORD_START) not in _ABBREVIATIONS:
                return True
    return False


def _ends_sentence(m: re.Match) -> bool:
    chunk, after, following = m.group(0), m.group(1), m.group(2)
    if "?" in chunk or "!" in chunk or following is not None and _inner_break(following):
        return True
    # The token right after the dot: the character after it, a character that cannot start a
    # word, or the next word.
    nxt = after or following
    if nxt[0] in _NOT_WORD_START or nxt[0] in _NON_WORD:
        nxt = nxt[0]
    letters = re.match(r"[^\W\d_]+", nxt)
    opener = bool(letters) and nxt[0].isupper() and letters.group(0).lower() in _SENTENCE_OPENERS
    if chunk.endswith(".."):  # an ellipsis
        return opener
    word = _WORD_ENDERS.split(chunk[:-1])[-1].lstrip(_NOT_WORD_START)
    low = word.lower()
    if low in _ABBREVIATIONS or low.rpartition("-")[2] in _ABBREVIATIONS:
        return opener
    initial, number = len(word) == 1 and word.isalpha(), bool(word) and _NUMBER.fullmatch(word) is not None
    if initial and (low in _ABBREVIATED_LETTERS or word.isupper() and re.fullmatch(r"[A-Z]\.", following or "")):
        return False  # "C. It" is one sentence, and so is "J. K. Rowling"
    if number and letters and letters.group(0).lower() in _AFTER_NUMBER:
        return False
    if initial or number:
        return not (nxt[0].islower() or nxt in (";", ":", ",", ".", "!", "?"))
    return True


def count_sentences(text: str) -> int:
    """Number of sentences, approximating nltk's punkt English model (see the module docstring)."""
    text = text.rstrip()
    starts = [0]
    for m in _SENTENCE_END.finditer(text):
        if _ends_sentence(m):
            starts.append(m.start(2) if m.group(2) is not None else m.end())
    count = 0
    for i, (start, end) in enumerate(zip(starts, starts[1:] + [len(text)])):
        segment = text[start:end]
        if i:
            closers = _CLOSERS.match(segment)
            segment = segment[closers.end():] if closers else segment
        count += bool(segment)
    return count


_CAPS_SPLIT = re.compile(
    r"\s+|--|\.{2,}|[,:;@#$%&?!*()\[\]{}<>\"`\u00ab\u00bb\u201c\u201d\u2018\u2019\u201e\u2012-\u2015]"
)
_CLITIC = re.compile(r"(.*[^'])(n't|N'T|'ll|'LL|'re|'RE|'ve|'VE|'[sSmMdD]|')")
# Words the tokenizer splits in two ("CANNOT" is the two capital words "CAN" and "NOT").
_SPLIT_WORDS = {"cannot": 3, "gimme": 3, "gonna": 3, "gotta": 3, "lemme": 3, "wanna": 3, "d'ye": 1, "more'n": 4}


def _caps_tokens(text: str) -> list[str]:
    tokens = []
    for piece in _CAPS_SPLIT.split(text):
        piece = piece[:-1] if piece.endswith(".") else piece
        if not piece:
            continue
        m = _CLITIC.fullmatch(piece)
        for token in m.groups() if m else (piece,):
            cut = _SPLIT_WORDS.get(token.lower())
            tokens.extend((token[:cut], token[cut:]) if cut else (token,))
    return tokens


def count_capital_words(text: str) -> int:
    """Words in all capital letters, tokenised like nltk's ``word_tokenize`` (see the docstring)."""
    return sum(1 for t in _caps_tokens(text) if t.isupper())


# ---------------------------------------------------------------------------------------------
# Language detection (optional).

_lang_lock = threading.Lock()
_lang_state: dict = {}


def _language_detector():
    """(factory, exception class) from langdetect, or None when it is not installed."""
    with _lang_lock:
        if "factory" not in _lang_state:
            try:
                from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
                from langdetect.lang_detect_exception import LangDetectException
            except ImportError:
                _lang_state["factory"] = None
            else:
                factory = DetectorFactory()  # our own, so the module-global one's seed is untouched
                factory.load_profile(PROFILES_DIRECTORY)
                factory.set_seed(0)  # langdetect samples at random; a fixed seed makes it repeatable
                _lang_state["factory"] = (factory, LangDetectException)
        return _lang_state["factory"]


def language_detection_available() -> bool:
    """Whether langdetect is installed, so language instructions can be scored."""
    return _language_detector() is not None


def is_language(text: str, code: str) -> bool | None:
    detector = _language_detector()
    if detector is None:
        return None
    factory, error = detector
    try:
        d = factory.create()
        d.append(text)
        return d.detect() == code
    except error:  # no features to classify: counted as followed, as the reference does
        return True
