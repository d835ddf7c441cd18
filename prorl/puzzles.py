"""Logic puzzles from Reasoning Gym (``pip install 'prorl[puzzles]'``) as a prompt source.

``dataset: reasoning_gym:TASK[,TASK...]`` generates puzzles with the `reasoning-gym` package
(Apache-2.0, procedural generators, no downloads) and the ``reasoning_gym`` reward scores them with
each task's own scorer. `load_reasoning_gym` returns a `datasets.Dataset` with string columns:

* ``prompt``  the puzzle's question, verbatim (Reasoning Gym expects the final answer in
  ``<answer>...</answer>``; say so in your system prompt, e.g. `ANSWER_INSTRUCTION`);
* ``answer``  the reference answer ("" for the few tasks that accept many answers and have none);
* ``task``    the Reasoning Gym task name;
* ``puzzle``  JSON holding what the scorer needs (task name and the whole entry, metadata
  included), encoded losslessly by `encode_puzzle` (tuples and non-string dict keys are tagged),
  so it survives Arrow, pickling and separate processes.

Rows: ``size`` per task, interleaved round-robin (task1 #0, task2 #0, ..., task1 #1, ...), so any
prefix of the dataset mixes the tasks. Each task uses its default Reasoning Gym configuration.

Reproducibility: the same (spec, split, seed, size) gives identical rows in every process. The
generator seed of a task is a SHA-256 hash of (seed, split, task) (Reasoning Gym makes item ``i``
of seed ``s`` from ``Random(s + i)``, so nearby seeds would share items; hashing spreads the
streams apart). A few generators iterate over sets of strings, whose order depends on Python's
per-process hash seed, so generation runs in a child interpreter with ``PYTHONHASHSEED=0`` (in
process when this interpreter already has it); that costs about 2 s per call.

Train vs eval: ``split == "train"`` and every other split name use different generator seeds, and
an eval split additionally drops every question that the train rows of the same seed contain (the
first ``train_size`` rows, by default ``size``), refilling from further items of its own stream.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

from .config import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "ANSWER_INSTRUCTION",
    "decode_puzzle",
    "encode_puzzle",
    "generator_seed",
    "load_reasoning_gym",
    "parse_spec",
    "scorer",
]

INSTALL_HINT = "pip install 'prorl[puzzles]' (or: pip install reasoning-gym)"

# Reasoning Gym's own answer convention (its SYSTEM_PROMPTS["default"], shortened).
ANSWER_INSTRUCTION = (
    "Think step by step, then give only the final answer in the format <answer>answer here</answer>."
)

# Tasks whose scorer is known not to check the answer (reasoning-gym 0.1.25); loading one warns.
UNRELIABLE_TASKS = {
    "game_of_life_halting": "its scorer gives 1.0 to any non-empty answer (it compares bool(answer) with bool('False'))",
}

_PUZZLE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# The package, imported only when a puzzle source or reward is used.


def import_reasoning_gym():
    """The `reasoning_gym` module, or a one-line ConfigError saying how to install it."""
    try:
        import reasoning_gym
    except ImportError as e:
        raise ConfigError(f"reasoning_gym puzzles need the reasoning-gym package, which is not installed ({e}); {INSTALL_HINT}") from None
    return reasoning_gym


def task_names() -> list[str]:
    """All task names Reasoning Gym registers (the ones a spec may list)."""
    return sorted(import_reasoning_gym().factory.DATASETS)


def parse_spec(spec: str) -> list[str]:
    """'TASK[,TASK...]' (optionally with the 'reasoning_gym:' prefix) -> task names, checked."""
    if not isinstance(spec, str):
        raise ConfigError(f"reasoning_gym: the task list must be a string like 'leg_counting,basic_arithmetic', got {type(spec).__name__}")
    text = spec.strip()
    if text.startswith("reasoning_gym:"):
        text = text[len("reasoning_gym:") :]
    if not text.strip():
        raise ConfigError("reasoning_gym: no task given; name one or more, e.g. dataset: reasoning_gym:leg_counting,basic_arithmetic")
    names = [part.strip() for part in text.split(",")]
    if any(not name for name in names):
        raise ConfigError(f"reasoning_gym:{text}: empty task name in the list; separate task names by single commas")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"reasoning_gym:{text}: task(s) {', '.join(duplicates)} listed twice; list each task once")
    known = task_names()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"known tasks include {', '.join(known[:6])}, ..."
            raise ConfigError(f"reasoning_gym: unknown task '{name}'; {hint} ({len(known)} tasks in reasoning-gym)")
    return names


def generator_seed(seed: int, split: str, task: str) -> int:
    """The Reasoning Gym seed for one task of one split: a stable hash, the same in every process.
    Below 2**31 so that Reasoning Gym's per-item seeds (seed + index) stay small."""
    kind = "train" if split == "train" else f"eval/{split}"
    digest = hashlib.sha256(f"prorl/reasoning_gym/{int(seed)}/{kind}/{task}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _make_dataset(task: str, gen_seed: int, size: int):
    rg = import_reasoning_gym()
    try:
        return rg.create_dataset(task, seed=gen_seed, size=size)
    except Exception as e:  # e.g. 'composite', which needs a list of sub-datasets in its config
        raise ConfigError(f"reasoning_gym: task '{task}' cannot be generated with its default settings ({_one_line(e)}); choose another task") from None


def _generate(task: str, gen_seed: int, size: int) -> list[dict]:
    """Items 0..size-1 of a dataset built with exactly `size` (some tasks draw all items up front,
    so the items depend on the size the dataset was built with, not only on the index)."""
    ds = _make_dataset(task, gen_seed, size)
    # A few generators also draw from the global `random` and numpy generators (list_functions; the
    # programs codeio runs): seed those too, and give the caller their states back.
    try:
        import numpy
    except ImportError:
        numpy = None
    state, np_state = random.getstate(), numpy.random.get_state() if numpy is not None else None
    random.seed(gen_seed)
    if numpy is not None:
        numpy.random.seed(gen_seed)
    try:
        return [ds[i] for i in range(size)]
    except Exception as e:
        raise ConfigError(f"reasoning_gym: generating task '{task}' failed ({_one_line(e)}); choose another task") from None
    finally:
        random.setstate(state)
        if numpy is not None:
            numpy.random.set_state(np_state)


def _digest(question: str) -> bytes:
    return hashlib.sha1(question.encode("utf-8", "surrogatepass")).digest()


def _task_items(task: str, *, split: str, seed: int, size: int, train_size: int) -> list[dict]:
    """`size` entries of one task: the train stream, or for any other split its own stream without
    the questions of the first `train_size` train entries."""
    gen_seed = generator_seed(seed, split, task)
    if split == "train":
        return _generate(task, gen_seed, size)
    exclude = {_digest(e["question"]) for e in _generate(task, generator_seed(seed, "train", task), train_size)}
    found = 0
    # Deterministic rounds: a stream with some slack, then a longer one if too many items were in
    # the train rows (tasks with few distinct questions).
    for stream_size in (size + max(16, size // 4), 4 * size + 64):
        items = [e for e in _generate(task, gen_seed, stream_size) if _digest(e["question"]) not in exclude]
        found = len(items)
        if found >= size:
            return items[:size]
    raise ConfigError(
        f"reasoning_gym: task '{task}' has too few distinct questions: only {found} of {4 * size + 64} generated for split "
        f"'{split}' are not in the {train_size} train rows; lower the number of prompts or drop this task"
    )


def load_reasoning_gym(spec: str, *, split: str, seed: int, size: int, train_size: int | None = None):
    """Generate Reasoning Gym puzzles as a `datasets.Dataset` (columns prompt, answer, task, puzzle).

    spec: "TASK[,TASK...]"; size: prompts per task (rows interleaved round-robin); split "train", or
    any other name for held-out rows disjoint from the train rows of the same seed; train_size: how
    many train rows per task to keep out of an eval split (default `size`; pass the train run's own
    size when the two differ)."""
    names = parse_spec(spec)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"reasoning_gym:{spec}: the number of puzzles per task must be a positive integer, got {size!r}")
    if train_size is None:
        train_size = size
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        raise ConfigError(f"reasoning_gym:{spec}: train_size must be a positive integer, got {train_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"reasoning_gym:{spec}: seed must be an integer, got {seed!r}")
    if not isinstance(split, str) or not split.strip():
        raise ConfigError(f"reasoning_gym:{spec}: split must be a non-empty name such as 'train' or 'test', got {split!r}")
    for name in names:
        if name in UNRELIABLE_TASKS:
            log.warning("reasoning_gym task '%s': %s; its rewards are not meaningful", name, UNRELIABLE_TASKS[name])

    job = {"names": names, "split": split, "seed": seed, "size": size, "train_size": train_size}
    # Some generators iterate over sets of strings (isomorphic_strings, knight_swap, list_functions,
    # polynomial_multiplication, ransom_note, word_ladder in 0.1.25), so their output depends on
    # Python's per-process string hash seed: generate under PYTHONHASHSEED=0 so every process of a
    # run (and every run) gets the same rows.
    per_task = _generate_rows(**job) if sys.flags.hash_randomization == 0 else _generate_in_child(job)

    columns: dict[str, list[str]] = {"prompt": [], "answer": [], "task": [], "puzzle": []}
    for i in range(size):
        for name, rows in zip(names, per_task):
            prompt, answer, puzzle = rows[i]
            columns["prompt"].append(prompt)
            columns["answer"].append(answer)
            columns["task"].append(name)
            columns["puzzle"].append(puzzle)

    import datasets

    features = datasets.Features({c: datasets.Value("string") for c in columns})
    return datasets.Dataset.from_dict(columns, features=features)


def _generate_rows(names: list[str], split: str, seed: int, size: int, train_size: int) -> list[list[list[str]]]:
    """Per task, `size` rows [prompt, answer, puzzle]."""
    out = []
    for name in names:
        rows = []
        for entry in _task_items(name, split=split, seed=seed, size=size, train_size=train_size):
            try:
                puzzle = encode_puzzle(name, entry)
            except TypeError as e:
                raise ConfigError(f"reasoning_gym: task '{name}' produced a puzzle prorl cannot store ({e}); choose another task") from None
            answer = "" if entry.get("answer") is None else str(entry["answer"])
            rows.append([str(entry["question"]), answer, puzzle])
        out.append(rows)
    return out


def _generate_in_child(job: dict) -> list[list[list[str]]]:
    """`_generate_rows` in a fresh interpreter with PYTHONHASHSEED=0. Its stdout and stderr are
    captured (the bf task's interpreter prints progress dots); the rows come back through a file."""
    package_root = str(Path(__file__).resolve().parents[1])  # this prorl, whatever the working directory holds
    env = dict(os.environ, PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory(prefix="prorl-rg-") as tmp:
        job_file, out_file = Path(tmp, "job.json"), Path(tmp, "rows.json")
        job_file.write_text(json.dumps(job))
        code = "import sys; sys.path.insert(0, sys.argv[3]); from prorl.puzzles import _child_main; _child_main(sys.argv[1], sys.argv[2])"
        proc = subprocess.run([sys.executable, "-c", code, str(job_file), str(out_file), package_root], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        result = json.loads(out_file.read_text()) if out_file.is_file() else None
    if result is None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise RuntimeError(f"generating reasoning_gym puzzles failed in a child process (exit code {proc.returncode}): "
                           f"{tail[-1] if tail else 'no output'}")
    if "config_error" in result:
        raise ConfigError(result["config_error"])
    return result["rows"]


def _child_main(job_file: str, out_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    try:
        result = {"rows": _generate_rows(**job)}
    except ConfigError as e:
        result = {"config_error": str(e)}
    Path(out_file).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The puzzle column: lossless JSON. Reasoning Gym metadata holds tuples (grids, edges, ranges) and
# dicts with int keys, which plain json.dumps would turn into lists and strings, and some scorers
# compare against them (arc_agi and rearc compare a parsed grid with a tuple of tuples).

_TUPLE, _DICT = "$tuple", "$dict"


def _to_json(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else {"$float": repr(obj)}
    if isinstance(obj, Fraction):
        return {"$fraction": [obj.numerator, obj.denominator]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("$") for k in obj):
            return {k: _to_json(v) for k, v in obj.items()}
        return {_DICT: [[_to_json(k), _to_json(v)] for k, v in obj.items()]}
    if hasattr(obj, "item") and callable(obj.item) and not hasattr(obj, "__len__"):  # numpy scalars
        return _to_json(obj.item())
    if hasattr(obj, "tolist"):  # numpy arrays
        return _to_json(obj.tolist())
    raise TypeError(f"cannot store a {type(obj).__name__} in the puzzle column")


def _from_json(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (key, value), = obj.items()
            if key == _TUPLE:
                return tuple(_from_json(v) for v in value)
            if key == _DICT:
                return {_hashable(_from_json(k)): _from_json(v) for k, v in value}
            if key == "$float":
                return float(value)
            if key == "$fraction":
                return Fraction(*value)
        return {k: _from_json(v) for k, v in obj.items()}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def encode_puzzle(task: str, entry: dict) -> str:
    """The puzzle column's value: JSON of {"v", "task", "entry"} with tuples and odd keys tagged."""
    return json.dumps({"v": _PUZZLE_VERSION, "task": task, "entry": _to_json(entry)}, ensure_ascii=False, sort_keys=True)


def decode_puzzle(text: str) -> tuple[str, dict]:
    """(task, entry) from a puzzle column value; ValueError if it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"puzzle must be a JSON string, got {type(text).__name__}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"puzzle is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("task"), str) or not isinstance(data.get("entry"), dict):
        raise ValueError("puzzle JSON must be an object with 'task' and 'entry' (made by prorl.puzzles.encode_puzzle)")
    entry = _from_json(data["entry"])
    if "question" not in entry or "metadata" not in entry:
        raise ValueError("puzzle entry lacks 'question' or 'metadata'")
    return data["task"], entry


# ---------------------------------------------------------------------------------------------
# Scorers: one default-configured dataset object per task and process, built on first use.

_scorers: dict[str, Any] = {}
_scorer_lock = threading.Lock()


def scorer(task: str):
    """The task's ``score_answer(answer, entry) -> float`` (cached). Rows generated here use each
    task's default configuration, which is what the scorer is built with (some scorers read it)."""
    fn = _scorers.get(task)
    if fn is not None:
        return fn
    with _scorer_lock:
        if task not in _scorers:
            rg = import_reasoning_gym()
            if task not in rg.factory.DATASETS:
                raise ValueError(f"unknown reasoning_gym task '{task}'")
            _scorers[task] = rg.get_score_answer_fn(task)
        return _scorers[task]


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
