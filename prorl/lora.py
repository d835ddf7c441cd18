"""LoRA adapters through PEFT (optional extra `peft`): train adapters, and use the base model with
adapters disabled as the reference policy, so no second copy of the weights is held."""

from __future__ import annotations

import contextlib

from .config import Config, ConfigError


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
    return peft.get_peft_model(model, config)


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model: the reference policy of a LoRA run."""
    with model.disable_adapter():
        yield model


def merge_checkpoint(checkpoint: str, base: str, out: str) -> None:
    """Fold a checkpoint's adapters into the base weights and save a plain model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft = _peft()
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), checkpoint)
    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out)
