"""The code sandbox's wire format: plain data only, framed, strictly validated (see
`_sandbox_child` for the processes that speak it). Used by the trainer and, prepended to
`_sandbox_child`'s code, by the sandbox's launcher, so it imports nothing of prorl's.

    N T F                    None True False
    i<digits>;               int (at most MAX_INT_DIGITS digits)
    f<float.hex()>;          float (nan and +-inf included, exact)
    s<n>:<n chars>           str (code points; lone surrogates allowed)
    b<n>:<n latin-1 chars>   bytes
    l t S Z <n>:<n items>    list tuple set frozenset
    d<n>:<n key, value>      dict

framed as a 4-byte big-endian length then the UTF-8 ("surrogatepass") text.
"""

from __future__ import annotations

import os

MAX_MESSAGE_BYTES = 16 * 2**20
MAX_DEPTH = 64
MAX_ITEMS = 1_000_000
MAX_INT_DIGITS = 4300


class WireError(ValueError):
    """A value that cannot cross between the processes: not plain data, too big, or malformed."""


# ---------------------------------------------------------------------------------------------
# Wire format.

_SEQUENCE_TAGS = {list: "l", tuple: "t", set: "S", frozenset: "Z"}


def encode(value) -> bytes:
    parts: list[str] = []
    _encode(value, parts, 0, [MAX_ITEMS + 64, MAX_MESSAGE_BYTES])  # + 64: the message envelope
    data = "".join(parts).encode("utf-8", "surrogatepass")
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"value too large to return ({len(data)} bytes > {MAX_MESSAGE_BYTES})")
    return data


def _take(budget: list, items: int, chars: int) -> None:
    budget[0] -= items
    budget[1] -= chars
    if budget[0] < 0:
        raise WireError(f"value has more than {MAX_ITEMS} elements")
    if budget[1] < 0:
        raise WireError(f"value larger than {MAX_MESSAGE_BYTES} bytes")


def _encode(v, parts: list, depth: int, budget: list) -> None:
    t = type(v)
    if v is None:
        parts.append("N")
    elif t is bool:
        parts.append("T" if v else "F")
    elif t is int:
        try:
            s = int.__repr__(v)
        except ValueError:  # more digits than the interpreter converts
            raise WireError(f"int with more than {MAX_INT_DIGITS} digits") from None
        if len(s) > MAX_INT_DIGITS + 1:
            raise WireError(f"int with more than {MAX_INT_DIGITS} digits")
        _take(budget, 0, len(s))
        parts += ("i", s, ";")
    elif t is float:
        _take(budget, 0, 24)
        parts += ("f", float.hex(v), ";")
    elif t is str:
        _take(budget, 0, len(v))
        parts += ("s", str(len(v)), ":", v)
    elif t is bytes:
        _take(budget, 0, len(v))
        parts += ("b", str(len(v)), ":", v.decode("latin-1"))
    elif t in _SEQUENCE_TAGS or t is dict:
        if depth >= MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
        n = len(v)
        _take(budget, n * (2 if t is dict else 1), 8)
        if t is dict:
            parts += ("d", str(n), ":")
            for key, item in v.items():
                _encode(key, parts, depth + 1, budget)
                _encode(item, parts, depth + 1, budget)
        else:
            parts += (_SEQUENCE_TAGS[t], str(n), ":")
            for item in v:
                _encode(item, parts, depth + 1, budget)
    elif getattr(t, "__module__", None) == "numpy" and hasattr(v, "item") and getattr(v, "shape", None) == ():
        plain = v.item()  # a numpy scalar: its plain value (float64 -> float, int64 -> int, bool_ -> bool)
        if type(plain) not in (bool, int, float, str, bytes):
            raise WireError(f"numpy {t.__name__} is not plain data")
        _encode(plain, parts, depth, budget)
    else:
        raise WireError(f"a {_type_name(t)} is not plain data (None, bool, int, float, str, bytes, list, tuple, set, frozenset, dict)")


def _type_name(t) -> str:
    try:
        name = type.__getattribute__(t, "__qualname__")
        return name if type(name) is str else "object"
    except Exception:
        return "object"


def decode(data: bytes):
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError("message too large")
    try:
        text = data.decode("utf-8", "surrogatepass")
        value, end = _decode(text, 0, 0, [MAX_ITEMS + 64])
    except WireError:
        raise
    except (IndexError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        raise WireError(f"malformed message ({type(e).__name__})") from None
    if end != len(text):
        raise WireError("malformed message (trailing data)")
    return value


def _ascii_digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _decode(text: str, pos: int, depth: int, budget: list):
    tag = text[pos]
    pos += 1
    if tag == "N":
        return None, pos
    if tag == "T":
        return True, pos
    if tag == "F":
        return False, pos
    if tag == "i":
        end = text.index(";", pos, pos + MAX_INT_DIGITS + 2)
        s = text[pos:end]
        if not _ascii_digits(s[1:] if s[:1] == "-" else s):
            raise WireError("malformed int")
        return int(s), end + 1
    if tag == "f":
        end = text.index(";", pos, pos + 32)
        s = text[pos:end]
        if not s.isascii() or not s.isprintable() or " " in s:
            raise WireError("malformed float")
        return float.fromhex(s), end + 1
    end = text.index(":", pos, pos + 12)
    count = text[pos:end]
    if not _ascii_digits(count):
        raise WireError("malformed length")
    n = int(count)
    pos = end + 1
    if tag == "s" or tag == "b":
        s = text[pos : pos + n]
        if len(s) != n:
            raise WireError("truncated string")
        return (s if tag == "s" else s.encode("latin-1")), pos + n
    if depth >= MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    budget[0] -= 2 * n if tag == "d" else n
    if budget[0] < 0:
        raise WireError(f"value has more than {MAX_ITEMS} elements")
    if tag == "d":
        d = {}
        for _ in range(n):
            key, pos = _decode(text, pos, depth + 1, budget)
            d[key], pos = _decode(text, pos, depth + 1, budget)
        return d, pos
    if tag not in "ltSZ":
        raise WireError("malformed message (unknown tag)")
    items = []
    for _ in range(n):
        item, pos = _decode(text, pos, depth + 1, budget)
        items.append(item)
    if tag == "l":
        return items, pos
    if tag == "t":
        return tuple(items), pos
    return (set(items) if tag == "S" else frozenset(items)), pos


def write_msg(fd: int, data: bytes) -> None:
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_msg(fd: int) -> bytes:
    n = int.from_bytes(read_exact(fd, 4), "big")
    if n > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {n} bytes exceeds the limit")
    return read_exact(fd, n)
