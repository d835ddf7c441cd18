"""Reward functions: loading them from specs, and calling them robustly.

A reward function is ``fn(prompts, completions, **columns) -> list[float]``. ``columns`` are the
other dataset columns (lists aligned with the completions) plus ``completion_lengths`` (tokens),
``truncated`` (hit the length limit without EOS) and ``max_length``. A function without
``**kwargs`` receives only the keyword arguments its signature names.

``build_rewards`` turns specs into a `Rewards` object; calling it runs every function, replaces
whatever could not be computed (exceptions, wrong counts, NaN/None, hangs) by ``fallback`` and
returns a `RewardOutput` with the weighted total and per-function diagnostics.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]

# Keyword arguments the trainer offers to every reward function besides the dataset columns.
EXTRA_KWARGS = ("completion_lengths", "truncated", "max_length")


class RewardConfigError(ValueError):
    """A reward spec, weight or option is wrong (raised by `build_rewards`)."""


class RewardError(RuntimeError):
    """A reward function failed at call time and ``strict=True`` was asked for."""


@dataclass
class RewardOutput:
    total: list[float]  # weighted sum per sample, always finite
    per_func: dict[str, list[float]]  # name -> per-sample values (fallback where a fault occurred)
    faults: dict[str, int] = field(default_factory=dict)  # name -> samples that got the fallback
    first_error: dict[str, str] = field(default_factory=dict)  # name -> first error message
    applied: dict[str, int] = field(default_factory=dict)  # name -> samples it scored (per-domain rewards skip others)


# ---------------------------------------------------------------------------------------------
# Built-in registry. Built-ins are factories: factory(**options) -> reward function.

_BUILTINS: dict[str, Callable[..., RewardFn]] = {}


def register(name: str) -> Callable:
    """Decorator registering a built-in reward factory under `name`."""

    def decorate(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        _BUILTINS[name] = factory
        return factory

    return decorate


def builtin_names() -> list[str]:
    return sorted(_BUILTINS)


# ---------------------------------------------------------------------------------------------
# Cancellation: when a call times out, the manager abandons its thread (Python threads cannot be
# killed) and sets this event, so long-running rewards (the code sandbox) can stop starting work.

_call_state = threading.local()
_NEVER_SET = threading.Event()


def cancellation_event() -> threading.Event:
    """The event set when the manager gives up on the reward call running in this thread."""
    return getattr(_call_state, "cancel", _NEVER_SET)


# ---------------------------------------------------------------------------------------------
# Loading.


@dataclass
class _Loaded:
    name: str
    spec: str
    fn: RewardFn
    weight: float
    accepts_any_kwargs: bool
    accepted: frozenset[str]  # keyword names it takes (if not accepts_any_kwargs)
    options: dict  # the user's per-spec kwargs for a non-built-in function, passed on every call


def score_rollout(rewards: "Rewards", tokenizer, ro, prompts: list, columns: dict, *, n: int, max_length: int):
    """Decode a rollout's completions and score them: what training and evaluation both do.

    `ro` is prompt-major (rows i*n .. i*n+n-1 are prompt i's samples); `prompts` [P] and `columns`
    (name -> [P] values) are per prompt and are repeated for each sample. Returns (completion texts
    [P*n], completion lengths [P*n] tensor, the RewardOutput, the repeated prompts [P*n])."""
    lengths = ro.completion_mask.sum(1)
    texts = tokenizer.batch_decode(
        [ids[: int(L)] for ids, L in zip(ro.completion_ids.tolist(), lengths.tolist())], skip_special_tokens=True
    )
    repeated = [p for p in prompts for _ in range(n)]
    cols = {c: [v for v in values for _ in range(n)] for c, values in columns.items()}
    out = rewards(repeated, texts, cols, completion_lengths=lengths.tolist(), truncated=ro.truncated.tolist(),
                  max_length=max_length)
    return texts, lengths, out, repeated


def build_rewards(
    specs: list[str],
    weights: list[float] | None = None,
    *,
    kwargs: dict[str, dict] | None = None,
    fallback: float = 0.0,
    strict: bool = False,
    timeout_s: float | None = 120.0,
) -> Rewards:
    """Load reward functions from specs: a built-in name, "pkg.module:function" or "file.py:function"."""
    if isinstance(specs, str):
        specs = [specs]
    specs = list(specs)
    if not specs:
        raise RewardConfigError(f"no reward functions given; choose built-ins from {builtin_names()} or 'module:function'")
    duplicates = sorted({str(s) for s in specs if specs.count(s) > 1})
    if duplicates:
        raise RewardConfigError(f"reward spec(s) {duplicates} listed twice; give each once and use its weight")
    if weights is None:
        weights = [1.0] * len(specs)
    weights = list(weights)
    if len(weights) != len(specs):
        raise RewardConfigError(
            f"got {len(weights)} reward weights for {len(specs)} reward functions {specs}; give one weight per function or none"
        )
    for spec, w in zip(specs, weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise RewardConfigError(f"weight {w!r} for reward '{spec}' must be a finite number")
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - set(specs))
    if unknown:
        raise RewardConfigError(f"reward kwargs given for {unknown}, which are not in the reward list {specs}; key them by the exact spec string")
    if not math.isfinite(fallback):
        raise RewardConfigError(f"fallback reward must be a finite number, got {fallback!r}")
    if timeout_s is not None and not timeout_s > 0:
        raise RewardConfigError(f"reward timeout_s must be positive (or None for no limit), got {timeout_s!r}")

    loaded, taken = [], set()
    for spec, w in zip(specs, weights):
        options = kwargs.get(spec) or {}
        if not isinstance(options, Mapping):
            raise RewardConfigError(f"kwargs for reward '{spec}' must be a mapping of option names to values, got {type(options).__name__}")
        fn, name, options = _load(spec, dict(options))
        unique, k = name, 2
        while unique in taken:  # e.g. two files both named util.py defining `score`
            unique, k = f"{name}_{k}", k + 1
        taken.add(unique)
        any_kwargs, accepted = _keyword_interface(fn, spec)
        rejected = sorted(k for k in options if not any_kwargs and k not in accepted)
        if rejected:
            raise RewardConfigError(f"reward '{spec}' does not take the keyword argument(s) {rejected} given in its kwargs")
        loaded.append(_Loaded(unique, spec, fn, float(w), any_kwargs, accepted, options))
    return Rewards(loaded, fallback=float(fallback), strict=strict, timeout_s=timeout_s)


def _load(spec: str, options: dict) -> tuple[RewardFn, str, dict]:
    """Resolve one spec to (reward function, short metric name, options left for each call)."""
    if callable(spec):  # the Python API: Trainer(config, reward_funcs=[my_fn])
        return spec, getattr(spec, "__name__", type(spec).__name__).replace("<lambda>", "lambda"), options
    if not isinstance(spec, str) or not spec.strip():
        raise RewardConfigError(f"reward spec {spec!r} must be a non-empty string")
    if spec in _BUILTINS:
        return _make_builtin(spec, options), spec, {}
    if ":" not in spec:
        raise RewardConfigError(
            f"unknown built-in reward '{spec}'; available: {', '.join(builtin_names())}; "
            "for your own function use 'package.module:function' or 'path/to/file.py:function'"
        )
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise RewardConfigError(f"reward spec '{spec}' must look like 'package.module:function' or 'path/to/file.py:function'")
    if where.endswith(".py") or "/" in where or os.sep in where:
        module, short = _import_file(spec, where), Path(where).stem
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # ImportError, or an error raised while importing their module
            raise RewardConfigError(
                f"reward '{spec}': cannot import module '{where}' ({_one_line(e)}); is it installed or on PYTHONPATH?"
            ) from e
        short = where.rpartition(".")[2]
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise RewardConfigError(f"reward '{spec}': '{where}' has no attribute '{attr}'; check the name after ':'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardConfigError(f"reward '{spec}': '{attr}' is a {type(fn).__name__}, not a function")
    return fn, f"{short}.{attr}", options


def _import_file(spec: str, path: str):
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise RewardConfigError(f"reward '{spec}': file '{path}' not found (looked at {file}); give a path relative to the working directory or absolute")
    # A unique module name per file, registered in sys.modules so dataclasses/pickle inside work.
    module_name = f"prorl_user_reward_{file.stem}_{abs(hash(str(file))):x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise RewardConfigError(f"reward '{spec}': importing {file} failed: {_one_line(e)}") from e
    return module


def _make_builtin(name: str, options: dict) -> RewardFn:
    factory = _BUILTINS[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise RewardConfigError(f"reward '{name}': unknown option(s) {unknown}; valid options: {sorted(params) or 'none'}")
    try:
        return factory(**options)
    except RewardConfigError:
        raise  # already one line for the user (e.g. a missing optional package)
    except (TypeError, ValueError) as e:
        raise RewardConfigError(f"reward '{name}': bad option value: {_one_line(e)}") from e


def _keyword_interface(fn: RewardFn, spec: str) -> tuple[bool, frozenset[str]]:
    """Check fn takes (prompts, completions) positionally; return (takes **kwargs, keyword names)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some C callables have no signature: offer everything
        return True, frozenset()
    try:
        bound = sig.bind_partial(None, None)
    except TypeError:
        raise RewardConfigError(
            f"reward '{spec}' has the wrong signature {sig}; it must be fn(prompts, completions, **kwargs) -> list[float]"
        ) from None
    params = sig.parameters.values()
    any_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = set(bound.arguments)  # the two parameters that receive prompts and completions
    accepted = frozenset(
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in positional
    )
    return any_kwargs, accepted


# ---------------------------------------------------------------------------------------------
# Calling.


class _Timeout(Exception):
    pass


class Rewards:
    """The loaded reward functions; call it on a batch to get a `RewardOutput`."""

    def __init__(self, loaded: list[_Loaded], *, fallback: float, strict: bool, timeout_s: float | None):
        self._loaded = loaded
        self.fallback = fallback
        self.strict = strict
        self.timeout_s = timeout_s
        self._warned: set[str] = set()

    @property
    def names(self) -> list[str]:
        return [r.name for r in self._loaded]

    @property
    def weights(self) -> list[float]:
        return [r.weight for r in self._loaded]

    def __repr__(self) -> str:
        parts = ", ".join(f"{r.name}*{r.weight:g}" for r in self._loaded)
        return f"Rewards({parts})"

    def check_columns(self, columns, source: str) -> None:
        """Raise RewardConfigError when a reward function needs dataset columns that `columns` lacks.

        A function declares them as `fn.required_columns`: a list of alternatives, each a tuple of
        column names it needs together (the built-ins do; e.g. exact_match [("answer",)]). Checked at
        start, so a missing column is one line instead of a run of reward faults."""
        have = set(columns)
        for r in self._loaded:
            options = getattr(r.fn, "required_columns", None)
            if not options or any(set(option) <= have for option in options):
                continue
            need = " or ".join("+".join(f"'{c}'" for c in option) for option in options)
            raise RewardConfigError(
                f"reward '{r.name}' needs column {need}, which dataset={source!r} does not have (its columns: "
                f"{', '.join(sorted(have)) or 'none'}); map one with rename_columns (e.g. {{solution: answer}}) or choose another reward"
            )

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        columns: Mapping[str, list] | None = None,
        *,
        completion_lengths: list[int] | None = None,
        truncated: list[bool] | None = None,
        max_length: int | None = None,
    ) -> RewardOutput:
        n = len(completions)
        offered = _check_batch(prompts, completions, columns or {}, completion_lengths, truncated)
        extras = {"completion_lengths": completion_lengths, "truncated": truncated, "max_length": max_length}
        offered.update({k: v for k, v in extras.items() if v is not None})

        per_func, faults, first_error = {}, {}, {}
        for r in self._loaded:
            kw = offered if r.accepts_any_kwargs else {k: v for k, v in offered.items() if k in r.accepted}
            # Copies, so a thread abandoned after a timeout cannot change the trainer's lists later.
            kw = {k: list(v) if isinstance(v, list) else v for k, v in kw.items()}
            kw.update(r.options)
            values, count, message = self._call_one(r, list(prompts), list(completions), kw, n)
            per_func[r.name], faults[r.name] = values, count
            if message:
                first_error[r.name] = message
                if self.strict:
                    raise RewardError(f"reward '{r.name}' {message}")
                log = logger.warning if r.name not in self._warned else logger.debug
                self._warned.add(r.name)
                log("reward '%s': %d of %d samples got the fallback %g: %s", r.name, count, n, self.fallback, message)

        total = []
        fallback_total = self.fallback * sum(r.weight for r in self._loaded)
        for i in range(n):
            t = sum(r.weight * per_func[r.name][i] for r in self._loaded)
            total.append(t if _fits_float32(t) else fallback_total)  # finite values can still overflow
        return RewardOutput(total=total, per_func=per_func, faults=faults, first_error=first_error,
                            applied={r.name: n for r in self._loaded})

    def _call_one(self, r: _Loaded, prompts, completions, kw, n) -> tuple[list[float], int, str]:
        """Run one function; return (values with fallback applied, number of faults, first error)."""
        try:
            raw = _call_with_timeout(r.fn, (prompts, completions), kw, self.timeout_s, r.name)
        except _Timeout:
            msg = f"timed out after {self.timeout_s:g}s (its thread was abandoned, not killed)"
            return [self.fallback] * n, n, msg
        except BaseException as e:  # SystemExit from user code must not end the trainer either
            if isinstance(e, KeyboardInterrupt):
                raise
            return [self.fallback] * n, n, f"raised {_one_line(e)}"
        values, problem = _as_float_list(raw, n)
        if values is None:
            return [self.fallback] * n, n, problem
        bad = [i for i, v in enumerate(values) if v is None]
        out = [self.fallback if v is None else v for v in values]
        return out, len(bad), problem


def _check_batch(prompts, completions, columns, completion_lengths, truncated) -> dict:
    """Validate the caller's batch (a caller bug raises ValueError); return the offered columns."""
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions")
    offered = {}
    for key, values in columns.items():
        if key in EXTRA_KWARGS:
            raise ValueError(f"column '{key}' clashes with the keyword argument the trainer passes; rename the column")
        if not hasattr(values, "__len__") or isinstance(values, (str, bytes)) or len(values) != n:
            got = f"{len(values)} values" if hasattr(values, "__len__") and not isinstance(values, (str, bytes)) else type(values).__name__
            raise ValueError(f"column '{key}' must be a list with one value per completion ({n}), got {got}")
        offered[key] = list(values)
    for key, values in (("completion_lengths", completion_lengths), ("truncated", truncated)):
        if values is not None and len(values) != n:
            raise ValueError(f"{key} has {len(values)} values for {n} completions")
    return offered


def _call_with_timeout(fn, args, kwargs, timeout_s, name):
    """Call fn in a daemon thread; raise _Timeout if it has not returned after timeout_s."""
    box = {}
    cancel = threading.Event()

    def target():
        _call_state.cancel = cancel
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # delivered to the caller below
            box["error"] = e

    # A daemon thread, not an executor: an abandoned hung call must not block interpreter exit.
    thread = threading.Thread(target=target, name=f"reward-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        cancel.set()
        raise _Timeout
    if "error" in box:
        raise box["error"]
    return box["value"]


def _as_float_list(raw, n: int) -> tuple[list[float | None] | None, str]:
    """Validate a function's return value; never broadcast a scalar or pad a short list.

    Returns (None, message) if the whole result is unusable, else (values with None where an element
    is not a finite number, message about the first such element or "")."""
    if hasattr(raw, "tolist") and not isinstance(raw, (list, tuple)):  # numpy arrays, torch tensors
        raw = raw.tolist()
    if raw is None or isinstance(raw, (str, bytes, Mapping)) or not hasattr(raw, "__iter__"):
        return None, f"returned {type(raw).__name__}, expected a list of {n} numbers"
    raw = list(raw)
    if len(raw) != n:
        return None, f"returned {len(raw)} values for {n} completions"
    values, problem = [], ""
    for i, v in enumerate(raw):
        f = _finite_float(v)
        if f is None and not problem:
            beyond = isinstance(v, float) and math.isfinite(v)  # finite in Python, inf in the trainer's float32
            problem = f"returned {_short_repr(v)} at index {i}, which is not a finite number" + (" in float32" if beyond else "")
        values.append(f)
    return values, problem


def _finite_float(v) -> float | None:
    if v is None or isinstance(v, (str, bytes, complex)):
        return None
    try:
        f = float(v)  # bool, int, Fraction, Decimal, numpy scalars, one-element tensors
    except (TypeError, ValueError, OverflowError):
        return None
    return f if _fits_float32(f) else None


_FLOAT32_MAX = 3.4028234663852886e38  # rewards become float32 tensors in the trainer: 1e39 would be inf there


def _fits_float32(f: float) -> bool:
    return math.isfinite(f) and abs(f) <= _FLOAT32_MAX


def _short_repr(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    message = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return message if len(message) <= 300 else message[:297] + "..."
