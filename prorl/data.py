"""Prompt datasets: load through `datasets`, render prompts, and order them per epoch.

Every process loads the same dataset and derives the same seeded order; which slice of each global
batch a process takes is decided in ``prorl.dist.local_slice`` so that sharding lives in one place
(a stream is read by the main process alone; see `StreamingPrompts`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from .config import TRAIN_SIZE, Config, ConfigError

log = logging.getLogger(__name__)

# Arrow-typed prompt columns: text (other Value types are refused up front) or lists of messages.
# Only an untyped column (datasets' Json feature, for mixed JSON values) needs its values checked.
_TYPED_FEATURES = tuple(getattr(datasets, name) for name in ("Value", "Sequence", "List", "LargeList") if hasattr(datasets, name))

_LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class Source:
    """One prompt source of a run: its name as configured, the domains its rows carry ([] when they
    have none; None when they carry their own 'domain' column in a stream, unknown until read) and
    its columns besides the prompt and domain, before mixing (what its domains' rewards may read)."""

    label: str
    domains: list[str] | None
    columns: list[str]


def _source(label: str, ds, columns: list[str], domain: str | None = None) -> Source:
    if domain is not None:
        domains = [domain]
    elif "domain" not in columns:
        domains = []
    else:  # the rows' own column: its values, where the dataset can be read whole
        domains = sorted({str(d) for d in ds["domain"]}) if isinstance(ds, datasets.Dataset) else None
    return Source(label, domains, [c for c in columns if c not in ("prompt", "domain")])


def load_prompt_dataset(cfg: Config) -> datasets.Dataset | datasets.IterableDataset:
    """The run's prompts: `load_prompt_sources` without the per-source record."""
    return load_prompt_sources(cfg)[0]


def load_prompt_sources(cfg: Config):
    """(dataset, [Source]): the one source named by ``dataset``, or the mixture of ``datasets``,
    where each source is loaded as a single dataset would be and gets a constant 'domain' column."""
    if not cfg.datasets:
        ds = _load_source(cfg)
        return ds, [_source(cfg.data_label(), ds, _column_names(ds) or [])]
    parts, sources = [], []
    for i, entry in enumerate(cfg.datasets):
        ds = _load_source(cfg.source_config(i))
        names = _column_names(ds) or []
        drop = entry.get("remove_columns") or []
        missing = [c for c in drop if c not in names or c == "prompt"]
        if missing:
            raise ConfigError(f"datasets[{i}].remove_columns names {missing}, not removable columns of {entry['dataset']!r}; "
                              f"its columns: {', '.join(names)}")
        ds = ds.remove_columns(drop) if drop else ds
        names = [c for c in names if c not in drop]
        domain = entry.get("domain") or (None if "domain" in names else default_domain(entry["dataset"]))
        if domain is not None:  # the configured domain wins over a column of the same name
            ds = ds.remove_columns(["domain"]) if "domain" in names else ds
            ds = ds.add_column("domain", [domain] * len(ds)) if isinstance(ds, datasets.Dataset) else ds.map(lambda _, d=domain: {"domain": d})
        parts.append(ds)
        sources.append(_source(entry["dataset"], ds, names, domain))
    parts = _aligned(parts, sources)
    if cfg.mixture == "interleave":
        weights = [e.get("weight", 1.0) for e in cfg.datasets]
        mixed = datasets.interleave_datasets(parts, probabilities=[w / sum(weights) for w in weights], seed=cfg.seed,
                                             stopping_strategy=cfg.mixture_stopping)
    else:
        if cfg.streaming:
            log.warning("streaming with mixture=concatenate reads the sources one after the other (shuffled only within "
                        "shuffle_buffer=%d rows), so domains arrive in blocks; set mixture=interleave to mix them", cfg.shuffle_buffer)
        mixed = datasets.concatenate_datasets(parts)
    return mixed, sources


def heldout_reuses_training(cfg: Config) -> list[str]:
    """Sources whose held-out set is their training file (one file has no eval_split)."""
    pairs = [(e.get("eval_dataset"), e["dataset"]) for e in cfg.datasets] if cfg.datasets else [(cfg.eval_dataset, cfg.dataset)]
    return [src for held, src in pairs if not held and src and Path(src).is_file()]


def default_domain(source: str) -> str:
    """A source's domain when `datasets` gives none: reasoning_gym:TASKS -> reasoning_gym, a file
    or folder -> its name without extension, a Hub id -> its last part."""
    name = source.split(":", 1)[0] if source.startswith(("builtin:", "reasoning_gym:")) else Path(source.rstrip("/")).name
    name = name.split(".")[0] if Path(source).suffix.lower() in _LOCAL_FORMATS else name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "data"


def _aligned(parts: list, sources: list[Source]) -> list:
    """Give columns of the same name one type across sources (what concatenating and interleaving
    need): numbers of different widths become float64 or int64, a column that is text in one source
    and numbers in another becomes text (with a warning); prompts and nested columns of different
    shapes cannot be joined and are one line naming the sources."""
    feats = [ds.features if ds.features is not None else _features_of_stream(ds) for ds in parts]
    for col in sorted({c for f in feats for c in f}):
        seen = [(i, f[col]) for i, f in enumerate(feats) if col in f and not _is_null(f[col])]
        if len({repr(t) for _, t in seen}) <= 1:
            continue
        (i, a), (j, b) = seen[0], next((i2, t) for i2, t in seen if repr(t) != repr(seen[0][1]))
        if col == "prompt" or not all(isinstance(t, datasets.Value) for _, t in seen):
            what = "prompts" if col == "prompt" else f"column '{col}'"
            fix = ("make every source's prompts the same kind: all text, or all chat messages" if col == "prompt"
                   else "rename it in one source (rename_columns) or drop it there (remove_columns)")
            raise ConfigError(f"datasets: {what} of {sources[i].label!r} ({_kind(a)}) and of {sources[j].label!r} ({_kind(b)}) "
                              f"cannot be mixed; {fix}")
        dtypes = {t.dtype for _, t in seen}
        if all(d.startswith(("int", "uint")) for d in dtypes):
            target = "int64"
        elif all(d.startswith(("int", "uint", "float")) for d in dtypes):
            target = "float64"
        else:
            target = "string"
            log.warning("datasets: column '%s' is %s in %r but %s in %r; it is read as text in the mixture",
                        col, a.dtype, sources[i].label, b.dtype, sources[j].label)
        for k, f in enumerate(feats):
            if col in f and not _is_null(f[col]):
                parts[k] = parts[k].cast_column(col, datasets.Value(target))
    return parts


def _features_of_stream(ds) -> dict:
    """A stream's column types, from its first rows when they are not declared."""
    resolved = ds._resolve_features() if hasattr(ds, "_resolve_features") else ds
    return dict(resolved.features or {})


def _is_null(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype == "null"


def _kind(feature) -> str:
    if isinstance(feature, datasets.Value):
        return f"{feature.dtype} values"
    return "chat messages" if isinstance(feature, (list, *_TYPED_FEATURES[1:])) else type(feature).__name__


def _load_source(cfg: Config) -> datasets.Dataset | datasets.IterableDataset:
    """The prompt dataset named by the config, with a string column ``prompt``.

    Accepts a local file (txt: one prompt per line; jsonl/json/csv/parquet), a `save_to_disk` folder,
    a folder of data files, ``builtin:NAME`` (or nothing: the built-in arithmetic task),
    ``reasoning_gym:TASK[,TASK...]`` (puzzles generated from the seed, max_prompts per task, default
    1000; `prorl.puzzles`), or a Hub dataset name with optional config and split. With ``cfg.streaming`` the same sources come back
    as a `datasets.IterableDataset` (read lazily; wrap it in `StreamingPrompts`).
    """
    source = cfg.dataset
    cap = cfg.max_prompts  # rows kept; a generated source already made max_prompts per task
    if source is not None and source.startswith("reasoning_gym:"):
        from .puzzles import load_reasoning_gym  # the `puzzles` extra

        # per task; a held-out split leaves out the rows its training run drew (the default 1000 when unknown)
        ds = load_reasoning_gym(source.split(":", 1)[1], split=cfg.dataset_split, seed=cfg.seed, size=cfg.max_prompts or 1000,
                                train_size=getattr(cfg, TRAIN_SIZE, None) or 1000)
        cap = None
    elif source is None or source.startswith("builtin:"):
        from .tasks import load_builtin_task

        name = "arithmetic" if source is None else source.split(":", 1)[1]
        try:
            ds = load_builtin_task(name, split=cfg.dataset_split)
        except ValueError as e:
            raise ConfigError(f"dataset={source!r}: {e}") from None
    else:
        ds = _load_external(source, cfg)
    if cfg.streaming and isinstance(ds, datasets.Dataset):  # built-in and save_to_disk sets stream from memory/disk
        ds = ds.to_iterable_dataset()
    ds = _rename(ds, cfg.rename_columns, source)
    ds = _prompt_column(ds, cfg.prompt_column, source)
    _check_prompt_type(ds, cfg.prompt_column, source)
    if cfg.prompt_template is not None:
        ds = _templated(ds, cfg.prompt_template, source)
    if isinstance(ds, datasets.IterableDataset):
        ds = ds.filter(_non_empty, input_columns="prompt")
        return ds.take(cap) if cap is not None else ds
    total = len(ds)
    if total == 0:
        raise ConfigError(f"dataset={source!r} has no rows; add prompts to it")
    ds = ds.filter(_non_empty, input_columns="prompt")
    if len(ds) == 0:
        raise ConfigError(
            f"dataset={source!r} has no non-empty prompts in column '{cfg.prompt_column}' ({total} rows, all empty); "
            "check the file or set prompt_column"
        )
    if len(ds) < total:
        log.warning("dataset=%r: skipped %d empty prompt(s) of %d", source, total - len(ds), total)
    feature = ds.features.get("prompt")
    # untyped (mixed JSON) or list-typed (chat messages, or by mistake a list of strings): look at every value
    if not isinstance(feature, datasets.Value):
        for prompt in ds["prompt"]:
            _check_prompt_value(prompt, source)
    if cap is not None and len(ds) > cap:
        ds = ds.shuffle(seed=cfg.seed).select(range(cap))
    return ds


def _load_external(source: str, cfg: Config) -> datasets.Dataset:
    path = Path(source)
    try:
        if path.is_file():
            return _load_local_file(path, source, cfg)
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "state.json").exists():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    ds = _pick_split(ds, cfg.dataset_split, source)
                return ds
            return datasets.load_dataset(str(path), cfg.dataset_config, data_files=cfg.data_files, split=cfg.dataset_split,
                                         streaming=cfg.streaming)
        if path.suffix.lower() in _LOCAL_FORMATS or os.sep in source and not _looks_like_hub_id(source):
            raise ConfigError(f"dataset={source!r} not found: give an existing file or folder, or a Hub dataset name")
        # A Hub dataset name (users online) or a packaged loader such as "json" with data_files.
        return datasets.load_dataset(source, cfg.dataset_config, data_files=cfg.data_files, split=cfg.dataset_split,
                                     streaming=cfg.streaming)
    except ConfigError:
        raise
    except UnicodeDecodeError as e:
        raise ConfigError(f"dataset={source!r} is not valid UTF-8 ({e.reason} at byte {e.start}); re-encode it as UTF-8") from None
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"dataset={source!r} could not be loaded: {str(e).splitlines()[0]}") from None
    except Exception as e:  # datasets wraps decode and network errors in many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        cause = e.__cause__ or e.__context__
        if isinstance(cause, UnicodeDecodeError) or "utf-8" in msg.lower() or "decode" in msg.lower():
            raise ConfigError(f"dataset={source!r} is not valid UTF-8; re-encode it as UTF-8") from None
        raise ConfigError(f"dataset={source!r} could not be loaded ({type(e).__name__}: {msg}); check the name, split and your network") from None


def _load_local_file(path: Path, source: str, cfg: Config) -> datasets.Dataset:
    fmt = _LOCAL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"dataset={source!r}: unsupported file type '{path.suffix}'; use one of {', '.join(_LOCAL_FORMATS)}")
    if path.stat().st_size == 0:
        raise ConfigError(f"dataset={source!r} is an empty file; put one prompt per line (.txt) or one JSON object per line (.jsonl)")
    if fmt != "parquet":
        _check_utf8(path, source)
    try:
        with _datasets_errors_silenced():  # its own multi-line ERROR log would precede our one line
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", streaming=cfg.streaming)
    except Exception as e:  # datasets wraps the parser's error (pyarrow, pandas) in DatasetGenerationError
        raise ConfigError(_parse_error(path, source, fmt, e)) from None
    if fmt == "text":
        ds = ds.rename_column("text", "prompt") if cfg.prompt_column == "prompt" else ds
    return ds


@contextlib.contextmanager
def _datasets_errors_silenced():
    from datasets.utils import logging as datasets_logging

    old = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(old)


def _parse_error(path: Path, source: str, fmt: str, e: BaseException) -> str:
    """One line naming the bad line (JSON) or the parser's own reason, not datasets' generic wrapper."""
    import json

    kind = {"json": "JSON Lines" if path.suffix.lower() == ".jsonl" else "JSON", "csv": "CSV", "parquet": "Parquet", "text": "text"}[fmt]
    if fmt == "json" and path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as bad:
                    return f"dataset={source!r} line {number} is not valid JSON ({bad.msg}); fix or remove that line"
                if not isinstance(row, dict):
                    return f"dataset={source!r} line {number} is a JSON {type(row).__name__}, not an object; write one {{\"prompt\": ...}} object per line"
    elif fmt == "json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as bad:
            return f"dataset={source!r} is not valid JSON ({bad.msg} at line {bad.lineno}); fix the file or use one object per line (.jsonl)"
    root = e
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    reason = (str(root).strip().splitlines() or [type(root).__name__])[0]
    if "corresponds to no data" in reason or "corresponds to no data" in str(e):  # datasets' words for 0 rows
        return f"dataset={source!r} has no rows (only a header, [], blank lines or an empty table); add prompts to it"
    return f"dataset={source!r} could not be parsed as {kind}: {reason}; fix the file"


class _PromptFormatter(string.Formatter):
    """str.format, plus ':letters': a list of options as '(A) first' lines (ARC's {text, label}
    dict of lists uses its own labels)."""

    def format_field(self, value, spec):
        if spec != "letters":
            return super().format_field(value, spec)
        if isinstance(value, dict) and "text" in value:
            labels = value.get("label") or [chr(65 + i) for i in range(len(value["text"]))]
            return "\n".join(f"({label}) {text}" for label, text in zip(labels, value["text"]))
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"':letters' needs a list of options, got {type(value).__name__}")
        return "\n".join(f"({chr(65 + i)}) {text}" for i, text in enumerate(value))


def _templated(ds, template: str, source):
    """Prompts built from the rows by `prompt_template`; a field that names no column, or a bad
    format, is one line at start (checked on the first row), not a failure mid-run."""
    formatter = _PromptFormatter()

    def render(row):
        if not isinstance(row["prompt"], str):
            raise ConfigError(f"dataset={source!r}: prompt_template needs text prompts, but the prompts are chat messages")
        return {"prompt": formatter.format(template, **row)}

    first = next(iter(ds.take(1)), None) if isinstance(ds, datasets.IterableDataset) else (ds[0] if len(ds) else None)
    if first is not None:
        try:
            render(first)
        except KeyError as e:
            raise ConfigError(f"prompt_template names {{{e.args[0]}}}, not a column of dataset={source!r}; columns: "
                              f"{', '.join(first)} ({{prompt}} is the prompt column)") from None
        except IndexError:
            raise ConfigError(f"prompt_template {template!r} has an empty {{}} field: put a column name inside, or write "
                              "literal braces as {{ and }} (e.g. \\boxed{{}})") from None
        except (ValueError, AttributeError, TypeError) as e:
            raise ConfigError(f"prompt_template {template!r} does not format the rows of dataset={source!r}: {e}; "
                              "write literal braces as {{ and }}") from None
    return ds.map(render) if isinstance(ds, datasets.IterableDataset) else ds.map(render, desc="prompt_template")


def _check_prompt_type(ds: datasets.Dataset | datasets.IterableDataset, column: str, source) -> None:
    """Prompts must be text (or chat messages); numbers would otherwise be dropped as 'empty'.
    (A stream whose features are unknown until read is checked row by row in `StreamingPrompts`.)"""
    feature = (ds.features or {}).get("prompt")
    dtype = getattr(feature, "dtype", None)
    if isinstance(feature, datasets.Value) and dtype not in ("string", "large_string", "null"):
        raise ConfigError(
            f"dataset={source!r}: column '{column}' holds {dtype} values, not text; point prompt_column at the prompt text"
        )


def _check_utf8(path: Path, source: str) -> None:
    """Fail at start, naming the line, rather than deep inside pyarrow mid-run."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line += chunk[: e.start].count(b"\n")
                raise ConfigError(f"dataset={source!r} is not valid UTF-8 (line {line}); re-encode the file as UTF-8") from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ConfigError(f"dataset={source!r} is not valid UTF-8 (truncated at the end); re-encode the file as UTF-8") from None


def _check_prompt_value(prompt, source) -> None:
    """One prompt that is not plain typed text: text or chat messages ({role, content} strings), nothing else."""
    if not isinstance(prompt, (str, list)):
        raise ConfigError(f"dataset={source!r}: a prompt is a {type(prompt).__name__}, not text; point prompt_column at the prompt text")
    if isinstance(prompt, list):
        for m in prompt:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                what = f"a {type(m).__name__}" if not isinstance(m, dict) else f"a message with keys {sorted(m)}"
                raise ConfigError(
                    f"dataset={source!r}: a prompt is a list holding {what}; a list prompt must be chat messages, "
                    "each {\"role\": ..., \"content\": ...} with text values (or make the prompt one string)"
                )


def _non_empty(prompt) -> bool:
    """Drops blank text and empty message lists; keeps any other type so the type check can name it."""
    if isinstance(prompt, str):
        return prompt.strip() != ""
    if isinstance(prompt, list):
        return len(prompt) > 0  # chat messages
    return prompt is not None


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/"))


def _pick_split(dd: datasets.DatasetDict, split: str, source: str) -> datasets.Dataset:
    if split not in dd:
        raise ConfigError(f"dataset={source!r} has no split '{split}'; available: {', '.join(dd)} (set dataset_split)")
    return dd[split]


def _column_names(ds) -> list[str] | None:
    """Column names; a stream whose features are unknown reads its first row to find them."""
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds.take(1)), None)
    return list(first) if first is not None else None


def _rename(ds, mapping: dict, source):
    if not mapping:
        return ds
    names = _column_names(ds) or []
    missing = [c for c in mapping if c not in names]
    if missing:
        raise ConfigError(f"rename_columns names {missing}, not columns of dataset={source!r}; columns are: {', '.join(names)}")
    return ds.rename_columns(dict(mapping))


def _prompt_column(ds, column: str, source):
    names = _column_names(ds)
    if names is None:
        raise ConfigError(f"dataset={source!r} is empty (the stream yielded no rows); check the name, split and data_files")
    if column not in names:
        raise ConfigError(
            f"dataset={source!r} has no column '{column}'; columns are: {', '.join(names)} (set prompt_column)"
        )
    if column != "prompt":
        if "prompt" in names:
            ds = ds.rename_column("prompt", "prompt_original")
        ds = ds.rename_column(column, "prompt")
    return ds


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The dataset order of one epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def steps_per_epoch(n_prompts: int, batch_size: int) -> int:
    """Optimizer steps that make one epoch: n_epochs x this is the run's length. When batch_size does
    not divide the dataset, the prompt stream simply runs on into the next epoch's order; a dataset
    smaller than one batch makes one step an epoch (its batches repeat prompts)."""
    return max(n_prompts // batch_size, 1)


class PromptStream:
    """The order prompts are drawn in: each epoch's seeded permutation, back to back.

    Position p of the stream is row `epoch_order(n, p // n, seed)[p % n]`, so every prompt is drawn
    once per epoch and the position alone (saved in checkpoints) says where a run is in its data.
    """

    def __init__(self, n_prompts: int, seed: int):
        self.n, self.seed, self._cached = n_prompts, seed, (-1, [])

    def rows(self, start: int, count: int) -> list[int]:
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.n)
            if self._cached[0] != epoch:
                self._cached = (epoch, epoch_order(self.n, epoch, self.seed))
            out.append(self._cached[1][i])
        return out


class StreamingPrompts:
    """The order prompts are drawn in when the dataset is a stream (``streaming=true``).

    Epoch e is the stream shuffled by `datasets` in a buffer of `shuffle_buffer` rows with seed
    (seed, e), epochs back to back; position p is the p-th row of that sequence, as in
    `PromptStream`. Reading is sequential: only the main process reads, and the trainer broadcasts
    each batch (so every process count sees the same prompts). `seek(p)` re-reads the first p rows,
    so a resumed run continues with exactly the prompts the interrupted run would have drawn.
    """

    def __init__(self, ds: datasets.IterableDataset, seed: int, shuffle_buffer: int, source=None):
        self.ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 1 else ds
        self.source = source
        self.epoch, self.position, self._it, self._in_epoch = 0, 0, None, 0

    def take(self, count: int) -> list[dict]:
        """The next `count` rows (dicts with a 'prompt' key and the other columns)."""
        out = []
        while len(out) < count:
            if self._it is None:
                self.ds.set_epoch(self.epoch)
                self._it, self._in_epoch = iter(self.ds), 0
            row = next(self._it, None)
            if row is None:
                if self._in_epoch == 0:
                    raise ConfigError(f"dataset={self.source!r} yielded no non-empty prompts (streaming); check the name, split and prompt_column")
                self.epoch, self._it = self.epoch + 1, None
                continue
            _check_prompt_value(row["prompt"], self.source)
            out.append(row)
            self._in_epoch += 1
        self.position += count
        return out

    def seek(self, position: int, chunk: int = 4096) -> None:
        """Start over and skip to `position` (the number of prompts an earlier run drew)."""
        self.epoch, self.position, self._it = 0, 0, None
        while self.position < position:
            self.take(min(chunk, position - self.position))


class RenderedPrompts(list):
    """The prompt texts (a list of str), plus `templated[i]`: whether text i came out of the chat
    template, which already holds the special tokens (BOS and friends) the model expects."""

    def __init__(self, texts, templated):
        super().__init__(texts)
        self.templated = list(templated)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return RenderedPrompts(list.__getitem__(self, i), self.templated[i])
        return list.__getitem__(self, i)

    def pick(self, indices) -> "RenderedPrompts":
        return RenderedPrompts([list.__getitem__(self, i) for i in indices], [self.templated[i] for i in indices])


def render_prompts(prompts: list, tokenizer, cfg: Config) -> RenderedPrompts:
    """Apply the chat template when asked; chat-formatted rows (lists of messages) always use it."""
    out, templated = [], []
    for p in prompts:
        chat = isinstance(p, list) or cfg.chat_template
        if chat:
            messages = p if isinstance(p, list) else [{"role": "user", "content": p}]
            if cfg.system_prompt and not any(m.get("role") == "system" for m in messages):
                messages = [{"role": "system", "content": cfg.system_prompt}] + list(messages)
            if getattr(tokenizer, "chat_template", None) is None:
                raise ConfigError(
                    "chat_template=true but the tokenizer has no chat template; set chat_template=false or use a chat model"
                )
            out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        else:
            out.append(p)
        templated.append(chat)
    return RenderedPrompts(out, templated)


def prompt_tokenizer(tokenizer, max_prompt_length: int, device, *, warn: bool = True, vocab_rows: int | None = None):
    """prompts -> (ids, mask) on `device`: the one tokenisation training and evaluation share
    (`tokenize_prompts`, plus a warning when prompts were cut to max_prompt_length). With
    `vocab_rows`, an id past the model's embedding table is one line, not an IndexError."""

    def tokenize(prompts):
        ids, mask, too_long = tokenize_prompts(tokenizer, prompts, max_prompt_length)
        if too_long and warn:
            log.warning("%d prompt(s) longer than max_prompt_length=%d tokens were truncated from the left", too_long, max_prompt_length)
        if vocab_rows is not None and ids.numel():
            check_ids_fit(int(ids.max()), vocab_rows, " in a prompt")
        return ids.to(device), mask.to(device)

    return tokenize


def check_ids_fit(max_id: int, vocab_rows: int, where: str = "") -> None:
    """One line when a token id lies past the model's embedding table (an IndexError in the forward
    otherwise): a tokenizer of another model, or a model with a smaller vocabulary."""
    if max_id >= vocab_rows:
        raise ConfigError(
            f"the tokenizer gives token id {max_id}{where} but the model has only {vocab_rows} embedding rows: "
            "use the model's own tokenizer (unset tokenizer_name_or_path) or a model trained with this tokenizer"
        )


def tokenize_prompts(tokenizer, prompts: list[str], max_prompt_length: int):
    """Left-padded prompt ids and mask [P, L], keeping the LAST max_prompt_length tokens of each
    prompt (the end holds the question and the generation cue). Returns (ids, mask, n_truncated).
    Texts from the chat template (`RenderedPrompts.templated`) already hold their special tokens and
    are tokenised without adding any (as transformers' own `apply_chat_template` does); plain texts
    get the tokenizer's (e.g. BOS)."""
    templated = getattr(prompts, "templated", [False] * len(prompts))
    encoded = [tokenizer(p, add_special_tokens=not chat)["input_ids"] for p, chat in zip(prompts, templated)]
    too_long = sum(len(e) > max_prompt_length for e in encoded)
    encoded = [e[-max_prompt_length:] for e in encoded]
    width = max((len(e) for e in encoded), default=1) or 1
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        if e:
            ids[i, width - len(e) :] = torch.tensor(e)
            mask[i, width - len(e) :] = 1
    return ids, mask, too_long
