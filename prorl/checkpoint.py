"""Checkpoints: a folder `from_pretrained` loads directly, plus what `--resume` needs. No pickle.

    checkpoint-000120/
      config.json, generation_config.json, model.safetensors   the policy (save_pretrained)
      tokenizer files                                         (tokenizer.save_pretrained)
      reference.safetensors                                   frozen reference policy (if kl_beta > 0)
      optimizer.safetensors + optimizer.json                  AdamW moments / hyper-parameters
      trainer_state.json                                      step, data position, counters, config

A checkpoint is written to a temporary folder and renamed into place, so a crash mid-save leaves
the previous checkpoints untouched and never a half-written `checkpoint-*` folder. A save that fails
(disk full, quota, read-only file system) removes its temporary folder and raises `CheckpointError`,
one line that names the newest intact checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .config import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_OLD = re.compile(r"^\.old-checkpoint-(\d+)$")  # a checkpoint being replaced by a re-save of its step
_DEBRIS = (".tmp-checkpoint-", ".deleting-checkpoint-")  # left by a crash mid-save / mid-prune


class CheckpointError(OSError):
    """Writing a checkpoint failed (disk full, quota, permissions); the previous checkpoints are intact.
    The message is one line: what failed, why, and what to do."""


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first.

    Temporary folders (`.tmp-*`, `.deleting-*`) never count. A `.old-checkpoint-N` counts only while
    `checkpoint-N` is missing: a crash between the two renames of a same-step re-save leaves it as
    the only copy of that step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found, old = {}, {}
    for p in root.iterdir():
        if not (p / STATE_FILE).is_file():
            continue
        if m := _NAME.match(p.name):
            found[int(m.group(1))] = p
        elif m := _OLD.match(p.name):
            old[int(m.group(1))] = p
    for step, p in old.items():
        found.setdefault(step, p)
    return [found[step] for step in sorted(found)]


def ensure_output_dir(output_dir: str | os.PathLike, *, fresh: bool = False) -> Path:
    """Create `output_dir` and prove it is writable, so a bad path fails at start, not at the first save.

    fresh=True (a run without --resume): refuse a folder that already holds checkpoints; starting over
    there would trim its metrics.jsonl and mix two runs' checkpoints (and `--resume latest` would then
    pick the old run's newest)."""
    root = Path(output_dir)
    if fresh and (found := list_checkpoints(root)):
        raise ConfigError(
            f"output_dir={str(output_dir)!r} already holds checkpoints (newest {found[-1].name}); "
            "continue that run with --resume latest, or choose a new output_dir"
        )
    probe = root / f".prorl-write-test-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(root) else ""
        raise ConfigError(
            f"output_dir={str(output_dir)!r} is not a writable folder: {reason}{where}; choose another output_dir"
        ) from None
    return root


def checkpoint_damage(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be loaded (a truncated or unreadable safetensors or JSON
    file, e.g. a disk that filled up or a copy cut short), or None when every file reads."""
    from safetensors import safe_open

    for f in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as handle:
                handle.keys()
        except Exception as e:  # SafetensorError, OSError: the header or the data does not fit the file
            return f"{f.name} is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    for f in sorted(Path(path).glob("*.json")):
        try:
            json.loads(f.read_text())
        except (OSError, ValueError) as e:
            return f"{f.name} is unreadable ({type(e).__name__})"
    return None


def remove_if_empty(output_dir: str | os.PathLike) -> None:
    """Remove `output_dir` if nothing was written into it (a run that failed at start)."""
    with contextlib.suppress(OSError):
        Path(output_dir).rmdir()  # fails, harmlessly, on a folder that holds anything


def resolve_resume(resume: str, output_dir: str) -> Path | None:
    """'latest' -> newest intact checkpoint in output_dir (a damaged newer one is skipped with a
    warning); 'auto' -> the same, or None (start fresh) when there is no checkpoint yet; otherwise a
    checkpoint folder path."""
    if resume in ("latest", "auto"):
        found = list_checkpoints(output_dir)
        if not found:
            if resume == "auto":
                return None
            raise ConfigError(f"resume=latest but {output_dir!r} holds no checkpoint; drop --resume to start fresh")
        damaged = []
        for path in reversed(found):
            reason = checkpoint_damage(path)
            if reason is None:
                for bad, why in damaged:
                    log.warning("checkpoint %s is damaged (%s); resuming from %s instead", bad.name, why, path.name)
                return path
            damaged.append((path, reason))
        raise ConfigError(
            f"resume={resume}: no intact checkpoint in {output_dir!r} (newest {found[-1].name}: {damaged[0][1]}); "
            "restore a checkpoint from a backup or start a new output_dir"
        )
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"resume={resume!r} not found; pass a checkpoint-* folder or 'latest'")
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume={resume!r} is not a prorl checkpoint (no {STATE_FILE}); pass a checkpoint-* folder or 'latest'")
    load_trainer_state(path)  # unreadable state: one line now, not a traceback after the model loaded
    reason = checkpoint_damage(path)
    if reason is not None:
        raise ConfigError(f"resume={resume!r}: {reason}; resume from another checkpoint (--resume latest picks the newest intact one)")
    return path


# ----------------------------------------------------------------------
# Optimizer state as tensors + JSON (torch's state_dict would need pickle).

def optimizer_to_safetensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in state_dict["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars}
    return tensors, meta


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------

def save_checkpoint(
    path: Path,
    *,
    model,
    model_state: dict | None,
    tokenizer,
    reference=None,
    optimizer_state: dict | None,
    trainer_state: dict,
    extra_tensors: dict[str, dict] | None = None,
) -> Path:
    """Write a checkpoint atomically (call on the main process only).

    Raises CheckpointError (an OSError) when the files cannot be written; the temporary folder is
    removed and every earlier checkpoint is left as it was."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=model_state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if reference is not None:
            save_model(reference, str(tmp / "reference.safetensors"))
        for name, tensors in (extra_tensors or {}).items():  # e.g. a LoRA run's reset base layers
            save_file(tensors, str(tmp / name))
        if optimizer_state is not None:
            tensors, meta = optimizer_to_safetensors(optimizer_state)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        _fsync_tree(tmp)
        if path.exists():  # re-saving the same step (e.g. the final save of a run resumed at its end)
            old = path.parent / f".old-{path.name}"
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)  # a crash right here leaves .old-checkpoint-N, which list_checkpoints still finds
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
        _fsync_dir(path.parent)  # make the rename itself durable (power loss, not just a killed process)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; never leave half a checkpoint
        raise CheckpointError(_save_failed(path, e)) from e
    _remove_debris(path.parent)
    return path


def _save_failed(path: Path, e: BaseException) -> str:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if isinstance(e, OSError) and e.strerror:
        reason = f"{e.strerror} (errno {e.errno})" + (f": {e.filename}" if e.filename else "")
    intact = list_checkpoints(path.parent)
    newest = f"the newest intact checkpoint is {intact[-1].name}" if intact else "no earlier checkpoint exists"
    return (
        f"could not write checkpoint {str(path)!r}: {reason}; {newest}. "
        "Free disk space (or set output_dir to a folder with room) and continue with --resume latest"
    )


def _remove_debris(root: Path) -> None:
    """After a successful save, delete what earlier crashes left behind (never a complete checkpoint)."""
    for p in root.iterdir():
        if p.name.startswith(_DEBRIS):
            shutil.rmtree(p, ignore_errors=True)
        elif (m := _OLD.match(p.name)) and (root / f"checkpoint-{m.group(1)}" / STATE_FILE).is_file():
            shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # platforms that cannot open a directory (Windows) have no directory fsync either
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_trainer_state(path: Path) -> dict:
    file = Path(path) / STATE_FILE
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"checkpoint {str(path)!r}: {STATE_FILE} is unreadable ({type(e).__name__}); resume from another checkpoint") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ConfigError(f"checkpoint {str(path)!r}: {STATE_FILE} holds no 'step'; resume from another checkpoint")
    return state


def load_reference(reference, path: Path) -> None:
    """Load reference weights into `reference` in place (its architecture must match)."""
    file = Path(path) / "reference.safetensors"
    if file.exists():
        load_weights(reference, file)


def load_weights(model, file: Path) -> None:
    """Copy a safetensors file's tensors into the same-named weights of `model`, in place. The file may
    hold a subset of the model (a LoRA run's reset base layers), never a name or shape it lacks."""
    try:
        _, unexpected = load_model(model, str(file), strict=False)
    except RuntimeError as e:  # load_state_dict's "size mismatch for ..."
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0])
        raise ConfigError(f"{file} does not match the model ({detail}); was it saved from a different model?") from None
    if unexpected:
        raise ConfigError(
            f"{file} does not match the model ({len(unexpected)} unexpected tensors, e.g. {unexpected[0]!r}); "
            "was it saved from a different model?"
        )


def load_optimizer_state(path: Path) -> dict | None:
    path = Path(path)
    if not (path / "optimizer.safetensors").exists():
        return None
    return optimizer_from_safetensors(load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text()))


def prune_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (the newest always stays). Returns the deleted."""
    if keep is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = found[: max(len(found) - max(keep, 1), 0)]
    for path in doomed:
        trash = path.parent / f".deleting-{path.name}"
        path.rename(trash)  # atomic: a crash mid-delete never leaves a half checkpoint that looks complete
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def model_fingerprint(state: dict) -> str:
    """A short hash of a model state's names and shapes: a resume checks it is the same model."""
    import hashlib

    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return hashlib.sha256(shapes.encode()).hexdigest()[:16]


def loadable_from_anywhere(model_path: str) -> str:
    """A local model folder as an absolute path; a Hub id as it is."""
    p = Path(model_path).expanduser()
    return str(p.resolve()) if p.exists() else model_path


def check_same_model(cfg, path: Path) -> None:
    """One line when a resume names a checkpoint trained from another model than the config's."""
    state = load_trainer_state(path)
    want = state.get("config", {}).get("model_name_or_path")
    if want is not None and want != cfg.model_name_or_path:
        raise ConfigError(
            f"resume={str(path)!r} was trained from model {want!r}, not {cfg.model_name_or_path!r}; "
            "set model_name_or_path to match or start a new output_dir"
        )
