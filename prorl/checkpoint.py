"""Checkpoints: a folder `from_pretrained` loads directly, plus what `--resume` needs. No pickle.

    checkpoint-000120/
      config.json, generation_config.json, model.safetensors   the policy (save_pretrained)
      tokenizer files                                         (tokenizer.save_pretrained)
      reference.safetensors                                   frozen reference policy (if kl_beta > 0)
      optimizer.safetensors + optimizer.json                  AdamW moments / hyper-parameters
      trainer_state.json                                      step, data position, counters, config

A checkpoint is written to a temporary folder and renamed into place, so a crash mid-save leaves
the previous checkpoints untouched and never a half-written `checkpoint-*` folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .config import ConfigError

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str) -> Path:
    """'latest' -> newest checkpoint in output_dir; otherwise a checkpoint folder path."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"resume=latest but {output_dir!r} holds no checkpoint; drop --resume to start fresh")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume={resume!r} is not a prorl checkpoint (no {STATE_FILE}); pass a checkpoint-* folder or 'latest'")
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
) -> Path:
    """Write a checkpoint atomically (call on the main process only)."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=model_state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if reference is not None:
        save_model(reference, str(tmp / "reference.safetensors"))
    if optimizer_state is not None:
        tensors, meta = optimizer_to_safetensors(optimizer_state)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    _fsync_tree(tmp)
    if path.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        old = path.parent / f".old-{path.name}"
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
    return path


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def load_trainer_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_reference(reference, path: Path) -> None:
    """Load reference weights into `reference` in place (its architecture must match)."""
    file = Path(path) / "reference.safetensors"
    if file.exists():
        missing, unexpected = load_model(reference, str(file), strict=False)
        if unexpected:
            raise ConfigError(f"resume: {file} does not match the model ({len(unexpected)} unexpected tensors); was it saved from a different model?")


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
