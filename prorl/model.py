"""The policy model: loading it with its tokenizer, its EOS ids, activation checkpointing, seeding,
and quieting the libraries' own progress output. Used by training and evaluation alike."""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .config import Config, ConfigError
from .data import check_ids_fit, tokenize_prompts

log = logging.getLogger("prorl")


def load_model_and_tokenizer(cfg: Config, path: str | None = None):
    """The policy and its tokenizer (`path` overrides the config's model, e.g. on resume)."""
    model_path = path or cfg.resolved_model_path()
    _check_model_source(model_path)
    tok_path = cfg.tokenizer_name_or_path or model_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer {tok_path!r} could not be loaded: {str(e).splitlines()[0]}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, cfg.dtype))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model_name_or_path={model_path!r} could not be loaded as a causal LM: {str(e).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer {tok_path!r} has neither a pad nor an eos token; add one to the tokenizer")
        log.warning("tokenizer has no pad token; using its eos token %r for padding", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()  # dropout off: sampling and training see the same policy (ratio is exactly 1 on-policy)
    return model, tokenizer


def embedding_rows(model) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(emb, "num_embeddings", None)


def check_token_ids(tokenizer, model, prompts, max_prompt_length: int, source: str) -> None:
    """One line at start when ids the model will be fed (padding, and the tokens of the first prompts)
    lie past its embedding table: a tokenizer of another model, or a model with a smaller vocabulary.
    Ids the model can never see (an EOS row it cannot emit) are fine; every batch is checked again
    as it is tokenised (`data.prompt_tokenizer`)."""
    rows = embedding_rows(model)
    if rows is None:
        return
    ids, mask, _ = tokenize_prompts(tokenizer, prompts, max_prompt_length)
    used = ids[mask.bool()]
    top = max(int(used.max()) if used.numel() else -1, int(tokenizer.pad_token_id))
    check_ids_fit(top, rows, f" (on dataset={source!r}'s prompts or as padding)")


def enable_activation_checkpointing(model) -> None:
    """Recompute every decoder layer in the backward pass (transformers' own checkpointing)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise ConfigError(f"activation_checkpointing=true: {type(target).__name__} does not support it; set activation_checkpointing=false")
    kwargs = {"use_reentrant": False}  # the non-reentrant form needs no input that requires grad (LoRA)
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    mark_layers_for_recompute(target)


def mark_layers_for_recompute(model) -> None:
    """transformers checkpoints a layer only while it is in training mode, but the policy stays in eval
    mode (dropout off, so sampling and training see one policy): mark just the layer objects as
    training; their submodules (attention, MLP, any dropout) stay in eval mode. Called again before
    every update, because any `model.eval()` (the user's, through the Python API) clears the mark."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True


# Checkpoint classes (config.json "architectures") that hold no generating head.
_NOT_GENERATORS = ("ForMaskedLM", "Model", "ForSequenceClassification", "ForTokenClassification",
                   "ForQuestionAnswering", "ForPreTraining", "ForMultipleChoice", "ForNextSentencePrediction")


def _check_model_source(model_path: str) -> None:
    """One line for the usual mistakes (no such folder, not a model folder, not a causal LM) before
    transformers' multi-line errors about repo ids and tokenizer backends."""
    p = Path(model_path).expanduser()
    local = p.exists() or model_path.startswith((".", "/", "~")) or model_path.count("/") > 1
    if not local:  # a Hub id: one line naming the model when it cannot be had (offline, misspelt, private)
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(model_path)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model_name_or_path={model_path!r} is not a local folder and could not be loaded from the Hub "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); give a model folder (with config.json) "
                "or check the model id and your network"
            ) from None
        return
    if not p.is_dir():
        raise ConfigError(
            f"model_name_or_path={model_path!r} could not be loaded: no such folder; give a model folder (with config.json) or a Hub model id"
        )
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"model_name_or_path={model_path!r} could not be loaded: no config.json, so it is not a saved transformers model; "
            "point it at a folder written by save_pretrained (or a checkpoint-* folder)"
        )
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(p)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model_name_or_path={model_path!r}: config.json could not be read: {str(e).splitlines()[0]}") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(
            f"model_name_or_path={model_path!r} is a '{config.model_type}' model, which is not a causal LM "
            "(AutoModelForCausalLM cannot load it); use a decoder-only model"
        )
    # Encoders (BERT and kin) map to a causal-LM class too, but a BertModel or BertForMaskedLM checkpoint
    # is no text generator: its weights have no causal head and its attention looks both ways.
    heads = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    if heads and all(a.endswith(_NOT_GENERATORS) for a in heads):
        raise ConfigError(
            f"model_name_or_path={model_path!r} holds a {heads[0]} (no causal language-model head), which cannot "
            "generate text; use a decoder-only model saved with its LM head (e.g. *ForCausalLM)"
        )


def eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ConfigError("neither the model's generation_config nor the tokenizer defines an eos token")
    return sorted(ids)


def set_seed(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def quiet_libraries() -> None:
    """Our progress bar and metric lines are the output; silence the libraries' per-call bars."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    # PEFT calls transformers' renamed is_gradient_checkpointing; the warning is theirs, not the user's
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
