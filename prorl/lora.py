"""LoRA adapters through PEFT (optional extra `peft`): train adapters, and use the base model with
adapters disabled as the reference policy, so no second copy of the weights is held.

A reference reset (ProRL) folds the adapters into the base: the base becomes the current policy and
the adapters restart from zero. Checkpoints after a reset therefore also hold the changed base
layers (`lora_base.safetensors`), which resume and `prorl merge` load before the adapters."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from .config import Config, ConfigError
from .model import _check_model_source, quiet_libraries

BASE_FILE = "lora_base.safetensors"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("lora_r > 0 needs PEFT: pip install 'prorl[peft]'") from None
    return peft


def attach_lora(model, cfg: Config, resume_path=None):
    """Wrap `model` with fresh LoRA adapters, or with the adapters saved in a checkpoint."""
    peft = _peft()
    if resume_path is not None:
        return peft.PeftModel.from_pretrained(model, str(resume_path), is_trainable=True)
    targets = cfg.lora_target_modules
    config = peft.LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. no module matches lora_target_modules
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(
            f"lora_target_modules={targets!r}: PEFT refused them ({str(e).splitlines()[0][:200]}); "
            f"this model's linear layers are named {', '.join(linear)} (or use all-linear)"
        ) from None


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model: the reference policy of a LoRA run."""
    with model.disable_adapter():
        yield model


def _lora_layers(model):
    """(plain module name, LoRA layer) pairs; plain = the name in the model without PEFT's wrapping."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name.removeprefix("base_model.model."), module


@torch.no_grad()
def fold_adapters_into_base(model, alpha: float = 1.0) -> None:
    """Move the reference (the base) a fraction `alpha` of the way to the policy, leaving the policy as is.

    Per LoRA layer, with update dW = scale * B @ A:  W <- W + alpha * dW  and  B <- (1 - alpha) * B,
    so W + dW is unchanged (dW is linear in B) and the base equals the policy when alpha = 1 (ProRL's
    hard reset; the adapters restart from zero) or mixes like an EMA when alpha < 1. Every process
    applies the same arithmetic to its replica, so DDP replicas stay equal."""
    for _, layer in _lora_layers(model):
        base = layer.get_base_layer()
        for adapter in _adapters(layer):
            base.weight += alpha * layer.get_delta_weight(adapter).to(base.weight.dtype)
            layer.lora_B[adapter].weight.mul_(1.0 - alpha)


def _adapters(layer):
    """The active adapters of a LoRA layer that hold weights in it."""
    return [a for a in layer.active_adapters if a in layer.lora_A]


@torch.no_grad()
def merged_weights(model):
    """(plain name, tensor) of the policy as a plain model, one tensor at a time: each LoRA layer's
    weight is base + its adapters' update, computed into a new tensor (the base, the reference, is
    not written); adapter tensors are left out, PEFT's name prefixes removed."""
    layers = dict(_lora_layers(model))
    for name, param in model.get_base_model().named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        if not leaf or owner not in layers:
            yield name, param.detach()
            continue
        tensor = param.detach()
        if leaf == "weight":
            for adapter in _adapters(layers[owner]):
                tensor = tensor + layers[owner].get_delta_weight(adapter).to(tensor.dtype)
        yield f"{owner}.{leaf}", tensor


def base_weights(model) -> dict[str, torch.Tensor]:
    """The base weights of the LoRA-wrapped layers, keyed by their plain model names (for checkpoints)."""
    return {f"{name}.weight": layer.get_base_layer().weight.detach().contiguous().cpu() for name, layer in _lora_layers(model)}


def load_base_weights(model, checkpoint) -> None:
    """Load a checkpoint's folded base layers (if it has any) into a plain (not yet wrapped) model."""
    from .checkpoint import load_weights

    file = Path(checkpoint) / BASE_FILE
    if file.exists():
        load_weights(model, file)


def merge_checkpoint(checkpoint: str, out: str, base: str | None = None) -> Path:
    """Fold a LoRA checkpoint's adapters (and any reset base layers) into the base model and save a
    plain model folder at `out`. `base` defaults to the base model the adapters were trained on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft = _peft()
    quiet_libraries()  # no "Loading weights" / "Writing model shards" bars around the one line merge prints
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise ConfigError(f"checkpoint {checkpoint!r} not found; pass a checkpoint-* folder of a LoRA run")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out!r} is an existing file; choose a folder path")
    if Path(out).is_dir() and any(Path(out).iterdir()):
        raise ConfigError(f"--out {out!r} is a folder that is not empty; choose a new folder (nothing is overwritten)")
    adapter_config = ckpt / "adapter_config.json"
    if not adapter_config.exists():
        raise ConfigError(
            f"{checkpoint!r} is not a LoRA checkpoint (no adapter_config.json); a full fine-tuning checkpoint is already a plain model folder"
        )
    if base is None:
        state = ckpt / "trainer_state.json"
        base = json.loads(state.read_text()).get("model_name_or_path") if state.exists() else None
        base = base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"{checkpoint!r} does not name its base model; pass --base MODEL")
    if Path(out).resolve() == ckpt.resolve():
        raise ConfigError(f"--out {out!r} is the checkpoint itself; choose a new folder")
    try:  # the same one-line checks as training's model loading
        _check_model_source(str(base))
    except ConfigError as e:
        raise ConfigError(f"base model: {e}; pass --base MODEL") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise ConfigError(f"base model {base!r} could not be loaded ({str(e).splitlines()[0]}); pass --base MODEL") from None
    load_base_weights(model, ckpt)
    merged = peft.PeftModel.from_pretrained(model, str(ckpt)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(ckpt)).save_pretrained(out)
    return Path(out)
