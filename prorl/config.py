"""The one config tree: a typed dataclass, filled from defaults, a YAML file and CLI overrides.

Every field carries a one-line help text (``metadata["help"]``) that ``prorl train --help`` and the
README's configuration reference are generated from, and ``Config.validate`` stops a bad run at
start with one line naming the option and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user mistake in the configuration; the CLI prints it as one line and exits with code 2."""


# options that name a file, folder, model, split or column: never blank
_NAMES_AND_PATHS = ("model_name_or_path", "tokenizer_name_or_path", "dataset", "dataset_config", "dataset_split",
                    "data_files", "prompt_column", "eval_dataset", "eval_split", "output_dir", "resume", "run_name")
# float options for which inf is a meaningful "no limit"
_INFINITY_MEANS_OFF = ("reward_timeout", "eps_high", "dual_clip", "max_grad_norm")


def choices_of(f) -> tuple | None:
    """A field's allowed values (a tuple, or a function returning one), or None."""
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def opt(default: Any, help: str, choices=None, **kw):
    """A config field with its help text (and allowed values, checked by ``validate``)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# The embedded default model, resolved relative to the checkout so `prorl train` works from anywhere.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "data/tiny-arith"

def _registered(name: str):
    """Allowed values read from `prorl.algos` when asked, so that an estimator or loss registered with
    `algos.register_advantage` / `register_policy_loss` before the config is validated can be chosen
    (imported late: the config and --help need no torch)."""

    def values() -> tuple:
        from . import algos

        return tuple(getattr(algos, name))

    return values


AGGREGATIONS = _registered("AGGREGATIONS")
ADVANTAGES = _registered("ADVANTAGE_ESTIMATORS")
POLICY_LOSSES = _registered("POLICY_LOSSES")
KL_ESTIMATORS = _registered("KL_ESTIMATORS")
DTYPES = ("float32", "bfloat16", "float16")
TRUNCATIONS = ("none", "zero_reward", "mask")
TRACKERS = ("none", "tensorboard", "wandb", "trackio", "all")
REF_UPDATES = ("reset", "ema")
ROLLOUT_ENGINES = ("hf", "vllm")
MIXTURES = ("concatenate", "interleave")
MIXTURE_STOPPING = ("all_exhausted", "first_exhausted")
# What one entry of `datasets` may set: the per-source dataset options (unset = the top-level value),
# plus three keys that exist only per source.
SOURCE_OPTIONS = ("dataset", "dataset_config", "dataset_split", "data_files", "prompt_column", "rename_columns", "prompt_template",
                  "max_prompts", "eval_dataset", "eval_split", "eval_max_prompts")
SOURCE_ONLY = ("domain", "weight", "remove_columns")
# A held-out Config remembers how many prompts its training source drew (not an option): a generated
# source (reasoning_gym:) keeps those rows out of its held-out rows.
TRAIN_SIZE = "_train_max_prompts"
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # it becomes part of metric names: domain/<name>/reward_mean


@dataclass
class Config:
    # --- model and data ---
    model_name_or_path: str = opt(DEFAULT_MODEL, "Hub model id or local folder of the policy (a causal LM).")
    tokenizer_name_or_path: str | None = opt(None, "Tokenizer to use; defaults to model_name_or_path.")
    dataset: str | None = opt(None, "Prompt source: a .txt/.jsonl/.json/.csv/.parquet file, a save_to_disk folder, a Hub dataset name, builtin:NAME, or reasoning_gym:TASK[,TASK...] (puzzles generated from the seed; the puzzles extra). Empty = built-in sample task.")
    dataset_config: str | None = opt(None, "Hub dataset configuration name (e.g. 'main' for gsm8k).")
    dataset_split: str = opt("train", "Dataset split to train on.")
    data_files: str | None = opt(None, "data_files pattern passed to datasets.load_dataset (glob or path).")
    prompt_column: str = opt("prompt", "Column holding the prompt text, or chat messages (other columns go to reward functions).")
    rename_columns: dict[str, str] = opt({}, "Rename dataset columns before use, e.g. {solution: answer} so built-in rewards find 'answer'.")
    prompt_template: str | None = opt(None, "Build each prompt from its row: a format string over its columns ({prompt} is the prompt column), e.g. 'Q: {prompt} {options:letters} Answer:'; the :letters format lists a list column as (A) ..., (B) ... lines.")
    max_prompts: int | None = opt(None, "Use at most this many prompts from the dataset (after shuffling; with streaming, the first this many; for reasoning_gym: per task, default 1000).")
    streaming: bool = opt(False, "Read the dataset as a stream (datasets' IterableDataset) instead of downloading it whole; for very large sets. Needs max_steps.")
    shuffle_buffer: int = opt(10_000, "With streaming: prompts are shuffled within a buffer of this many rows, reseeded each epoch (1 = stream order).")
    chat_template: bool = opt(False, "Render prompts with the tokenizer's chat template (as a user message).")
    system_prompt: str | None = opt(None, "System message put first in every prompt rendered with the chat template (chat_template on, or a dataset of message lists), unless the prompt has its own.")
    max_prompt_length: int = opt(512, "Prompts longer than this many tokens are truncated from the left (with a warning).")
    datasets: list[str | dict[str, Any]] = opt([], "A mixture of prompt sources in place of `dataset` (ProRL's multi-domain run): a list of {dataset, domain, weight, remove_columns, and any of " + ", ".join(SOURCE_OPTIONS[1:]) + "}; keys left out take the top-level value. Each row's source is its 'domain' column.")
    mixture: str = opt("concatenate", "How `datasets` are combined: concatenate (every row of every source) or interleave (rows drawn with probabilities proportional to the sources' weights).", choices=MIXTURES)
    mixture_stopping: str = opt("all_exhausted", "With mixture=interleave: all_exhausted (until every source was drawn whole; smaller ones repeat) or first_exhausted (until one runs out).", choices=MIXTURE_STOPPING)

    # --- rewards ---
    reward_funcs: list[str] | dict[str, list[str]] = opt(["exact_match"], "Reward functions: built-in names, 'module:function' or 'path/file.py:function'; or per domain, {math: [math], code: [code]}, each sample scored by its domain's list.")
    reward_weights: list[float] | dict[str, list[float]] | None = opt(None, "One weight per reward function (default 1.0 each); per domain when reward_funcs is.")
    reward_kwargs: dict[str, dict] = opt({}, "Keyword arguments for parametrised built-in rewards, keyed by reward name.")
    reward_fallback: float = opt(0.0, "Reward given to a sample whose reward function raised, hung or returned a bad value.")
    reward_strict: bool = opt(False, "Make reward-function faults fatal (for debugging) instead of using the fallback.")
    reward_timeout: float = opt(120.0, "Seconds a reward-function call may take before its samples get the fallback.")
    code_sandbox: str = opt("auto", "Isolation of the code reward's programs: strict (Linux namespaces: no network, no view of the trainer's files; refuse to start without it), basic (resource limits and a Python guard only) or auto (strict where this machine allows it; the level in effect is logged).", choices=("auto", "strict", "basic"))

    # --- batch shape ---
    n_epochs: int = opt(1, "Passes over the prompt dataset (ignored when max_steps is set).")
    max_steps: int | None = opt(None, "Stop after this many optimizer steps (overrides n_epochs).")
    batch_size: int = opt(8, "Prompts per optimizer step for the WHOLE job (all processes together).")
    n_samples: int = opt(8, "Completions sampled per prompt (the group size); at least 2.")
    rollout_batch_size: int | None = opt(None, "Prompts per generation call on each process (unset = all of its share at once); lower it if generation runs out of memory.")
    micro_batch_size: int = opt(16, "Completions per forward/backward pass on each process (gradient accumulation inside a step; does not change the result).")
    updates_per_batch: int = opt(1, "Passes (PPO epochs) over each rollout batch; more than one update uses the stored old log-probs and the clip becomes active.")
    mini_batches: int = opt(1, "Optimizer steps per pass: the rollout batch is split into this many mini-batches (ProRL: 256 prompts / 64 = 4).")

    # --- sampling ---
    max_length: int = opt(256, "Maximum new tokens per completion.")
    temperature: float = opt(1.0, "Sampling temperature (also used for the training log-probs).")
    top_p: float = opt(1.0, "Nucleus sampling: keep the smallest token set with this probability mass.")
    top_k: int = opt(0, "Keep only the k most likely tokens when sampling (0 = off).")
    rollout_engine: str = opt("hf", "Sampler: hf (the built-in loop: NaN-safe, batch-layout-invariant, any device) or vllm (a vLLM engine colocated on each process's GPU, weights synced after every update; install vLLM yourself).", choices=ROLLOUT_ENGINES)
    cuda_graphs: bool = opt(True, "With rollout_engine=hf on a GPU: sample in fixed-shape buffers and replay each decode step as a CUDA graph (no per-token CPU work); false = the eager loop used on the CPU (in bf16 its rounding may pick other tokens).")
    vllm_gpu_memory_utilization: float = opt(0.3, "With rollout_engine=vllm: fraction of the GPU's memory vLLM may take (weights + KV cache); the rest is left to training.")
    vllm_kwargs: dict[str, Any] = opt({}, "With rollout_engine=vllm: extra keyword arguments for vllm.LLM (e.g. {enforce_eager: true, max_num_seqs: 256}); they override prorl's.")

    # --- objective ---
    advantage: str = opt("grpo", "Advantage estimator.", choices=ADVANTAGES)
    policy_loss: str = opt("ppo_clip", "Policy-gradient loss.", choices=POLICY_LOSSES)
    eps_low: float | None = opt(None, "Lower clip bound: the ratio is clipped at 1 - eps_low (unset = the loss's own default: ppo_clip 0.2, gspo 3e-4, cispo none).")
    eps_high: float | None = opt(None, "Upper clip bound, decoupled from eps_low (DAPO 'clip-higher'; unset = ppo_clip 0.2, gspo 4e-4, cispo 0.28).")
    dual_clip: float | None = opt(None, "Dual-clip constant c > 1 capping the loss of negative-advantage tokens (None = off).")
    loss_agg: str = opt("token_mean", "Loss aggregation: token_mean (DAPO), seq_mean_token_mean (GRPO), seq_mean_token_sum, seq_mean_token_sum_norm (Dr. GRPO).", choices=AGGREGATIONS)
    kl_beta: float = opt(0.04, "Weight of the KL penalty to the reference policy (0 = no reference model).")
    kl_estimator: str = opt("k3", "KL estimator (Schulman's k1, k2 or k3).", choices=KL_ESTIMATORS)
    kl_in_reward: bool = opt(False, "Subtract kl_beta x the sequence KL from the reward instead of adding the KL term to the loss.")
    skip_zero_signal: bool = opt(True, "Skip groups whose rewards are all equal (they carry no policy-gradient signal).")
    dynamic_sampling_rounds: int = opt(0, "DAPO dynamic sampling: up to this many extra sampling rounds per step to fill the batch with groups that carry signal (0 = off).")
    oversample: float = opt(1.0, "Each extra round draws missing_groups x oversample new prompts.")
    truncation: str = opt("none", "Completions cut at max_length: none (treated as any other), zero_reward ('stop properly': reward 0), mask (no gradient).", choices=TRUNCATIONS)

    # --- reference policy (ProRL) ---
    ref_reset_every: int = opt(0, "Reset the reference policy to the current policy every K steps (0 = never).")
    ref_reset_optimizer: bool = opt(True, "Also reset the optimizer state at each hard reference reset (ref_update=reset; as in ProRL). EMA updates never reset it.")
    ref_update: str = opt("reset", "How the reference follows the policy: reset (hard copy) or ema (ref <- (1-alpha) ref + alpha policy).", choices=REF_UPDATES)
    ref_ema_alpha: float = opt(0.1, "Mixing weight alpha for ref_update=ema.")

    # --- optimisation ---
    learning_rate: float = opt(1e-6, "AdamW learning rate.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    adam_beta1: float = opt(0.9, "AdamW beta1.")
    adam_beta2: float = opt(0.999, "AdamW beta2.")
    warmup_steps: int = opt(0, "Linear learning-rate warm-up steps (then constant).")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this value (0 = no clipping).")
    max_bad_steps: int = opt(10, "Abort after this many consecutive steps with non-finite loss or gradients.")

    # --- LoRA (optional extra `peft`) ---
    lora_r: int = opt(0, "Train LoRA adapters of this rank instead of all weights (0 = full fine-tuning); the reference is the base with adapters off.")
    lora_alpha: int = opt(16, "LoRA scaling alpha.")
    lora_dropout: float = opt(0.0, "LoRA dropout (0 keeps sampling and training on the same policy).")
    lora_target_modules: list[str] = opt(["all-linear"], "Modules that get adapters (PEFT names; 'all-linear' = every linear layer but the output head).")

    # --- precision and reproducibility ---
    dtype: str = opt("float32", "Parameter dtype for training (float32 is the default and the tested path).", choices=DTYPES)
    mixed_precision: str = opt("no", "bf16 = run forwards (sampling, reference, update) under bf16 autocast while weights and Adam stay float32; for GPUs. no = full float32.", choices=("no", "bf16"))
    activation_checkpointing: bool = opt(False, "Recompute each layer's activations in the backward pass instead of storing them: less memory in the update, ~1/3 more compute.")
    seed: int = opt(42, "Seed for data order, sampling and initialisation.")
    deterministic: bool = opt(False, "Use deterministic torch kernels (slower on GPU; bit-exact reruns).")

    # --- evaluation (held-out pass@k during training) ---
    eval_every: int = opt(0, "Evaluate pass@k on held-out prompts every N steps and before training (0 = off).")
    eval_dataset: str | None = opt(None, "Held-out prompts (same forms as dataset); unset = the training source's eval_split.")
    eval_split: str = opt("test", "Split of the evaluation dataset.")
    eval_max_prompts: int | None = opt(200, "Evaluate on at most this many held-out prompts (seeded subset).")
    eval_n: int = opt(4, "Samples per held-out prompt (n of pass@k).")
    eval_k: list[int] = opt([1], "The k values of pass@k to report (each <= eval_n).")
    eval_temperature: float | None = opt(None, "Sampling temperature for evaluation (unset = temperature).")
    eval_threshold: float = opt(1.0, "A sample counts as correct when its total reward is >= this.")
    ref_reset_on_plateau: int = opt(0, "ProRL: also reset the reference when held-out pass@1 has not improved for this many evaluations (0 = off).")
    sample_every: int = opt(0, "Every N steps, print a few completions and append them to OUTPUT_DIR/samples.jsonl (0 = off).")
    n_logged_samples: int = opt(4, "Completions per logged step in samples.jsonl (the first is also printed).")

    # --- output ---
    output_dir: str = opt("./prorl_checkpoints", "Folder for checkpoints and metrics.jsonl.")
    save_every: int = opt(200, "Save a checkpoint every N optimizer steps (0 = only at the end).")
    save_total_limit: int | None = opt(None, "Keep only the newest K checkpoints (unset = keep all; the newest is never deleted).")
    log_every: int = opt(1, "Print a metrics line every N steps (metrics.jsonl gets every step).")
    resume: str | None = opt(None, "Resume from 'latest' (newest checkpoint in output_dir), 'auto' (latest if there is one, else start fresh: the same command works before and after a pre-emption) or a checkpoint folder.")
    progress_bar: bool = opt(True, "Show a progress bar (main process only, and only when stderr is a terminal: a log file gets plain lines).")
    report_to: str = opt("none", "Experiment tracker through accelerate (same metric names as metrics.jsonl).", choices=TRACKERS)
    run_name: str | None = opt(None, "Run name shown by the tracker (default: the output_dir's name).")

    # ------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check types and ranges; raise ConfigError naming the option and what is allowed."""
        for f in fields(self):
            value = getattr(self, f.name)
            choices = choices_of(f)
            if choices is not None and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is not allowed; choose one of: {', '.join(choices)}")

        def need(cond: bool, name: str, rule: str):
            if not cond:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: {rule}")

        # Every option is untrusted input: a name or path given blank, or a number given nan/inf, is
        # refused here rather than met later (an empty output_dir is the working directory, a nan
        # fallback reward poisons every advantage, an infinite oversample overflows).
        for name in _NAMES_AND_PATHS:
            value = getattr(self, name)
            need(value is None or (isinstance(value, str) and value.strip() != ""), name, "must not be blank (leave it unset instead)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and f.name not in _INFINITY_MEANS_OFF:
                need(math.isfinite(value), f.name, "must be a finite number")
        need(0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)")

        need(self.n_samples >= 2, "n_samples", "must be >= 2 (advantages are normalised within each prompt's group)")
        need(self.batch_size >= 1, "batch_size", "must be >= 1 prompt per step")
        need(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        need(self.updates_per_batch >= 1, "updates_per_batch", "must be >= 1")
        need(self.mini_batches >= 1, "mini_batches", "must be >= 1")
        need(self.n_epochs >= 1, "n_epochs", "must be >= 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1 (or unset)")
        need(self.max_length >= 1, "max_length", "must be >= 1 new token")
        need(self.max_prompt_length >= 1, "max_prompt_length", "must be >= 1 token")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        need(self.eps_low is None or 0 <= self.eps_low < 1, "eps_low", "must be in [0, 1) (or unset)")
        need(self.eps_high is None or self.eps_high >= 0, "eps_high", "must be >= 0 (or unset)")
        from . import algos

        try:  # the loss itself says which of its options it takes and which values (e.g. dual_clip: ppo_clip, > 1)
            algos.check_policy_loss_options(self.policy_loss, **self.loss_kwargs())
        except ValueError as err:
            raise ConfigError(f"policy_loss={self.policy_loss!r} with {self.loss_kwargs()}: {err}") from None
        need(self.kl_beta >= 0, "kl_beta", "must be >= 0")
        need(self.ref_reset_every >= 0, "ref_reset_every", "must be >= 0 (0 = never)")
        need(self.lora_r >= 0, "lora_r", "must be >= 0 (0 = full fine-tuning)")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        need(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        need(bool(self.lora_target_modules) and all(isinstance(m, str) and m for m in self.lora_target_modules),
             "lora_target_modules", "must name at least one module (e.g. all-linear, or q_proj v_proj)")
        need(0 < self.ref_ema_alpha <= 1, "ref_ema_alpha", "must be in (0, 1]")
        need(self.dynamic_sampling_rounds >= 0, "dynamic_sampling_rounds", "must be >= 0 (0 = off)")
        need(self.dynamic_sampling_rounds == 0 or self.skip_zero_signal, "dynamic_sampling_rounds", "needs skip_zero_signal=true (it refills skipped groups)")
        need(self.oversample >= 1, "oversample", "must be >= 1")
        need(not self.kl_in_reward or self.kl_beta > 0, "kl_in_reward", "needs kl_beta > 0")
        need(0 < self.learning_rate < float("inf"), "learning_rate", "must be a finite number > 0")
        need(0 <= self.adam_beta1 < 1, "adam_beta1", "must be in [0, 1)")
        need(0 <= self.adam_beta2 < 1, "adam_beta2", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 = no clipping)")
        need(self.max_bad_steps >= 1, "max_bad_steps", "must be >= 1")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.save_every >= 0, "save_every", "must be >= 0 (0 = only at the end)")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit", "must be >= 1 (or unset)")
        need(self.rollout_batch_size is None or self.rollout_batch_size >= 1, "rollout_batch_size", "must be >= 1 (or unset)")
        need(self.eval_every >= 0, "eval_every", "must be >= 0 (0 = off)")
        need(self.eval_n >= 1, "eval_n", "must be >= 1")
        need(bool(self.eval_k) and all(1 <= k <= self.eval_n for k in self.eval_k), "eval_k", f"each k must be in [1, eval_n={self.eval_n}]")
        need(self.eval_max_prompts is None or self.eval_max_prompts >= 1, "eval_max_prompts", "must be >= 1 (or unset)")
        need(self.eval_temperature is None or self.eval_temperature > 0, "eval_temperature", "must be > 0 (or unset)")
        need(self.ref_reset_on_plateau >= 0, "ref_reset_on_plateau", "must be >= 0 (0 = off)")
        need(self.dtype != "float16", "dtype", "AdamW's eps (1e-8) and small squared gradients are 0 in float16, so "
             "its first update turns weights into inf/nan; use dtype=bfloat16 (the same memory) or float32 with mixed_precision=bf16")
        if self.report_to not in ("none", "all"):  # accelerate skips a tracker it cannot import, silently
            import importlib.util

            need(importlib.util.find_spec(self.report_to) is not None, "report_to",
                 f"the {self.report_to} package is not installed; pip install {self.report_to} (or report_to=none)")
        for name in ("ref_reset_every", "ref_reset_on_plateau"):  # silently doing nothing would still log resets
            need(not getattr(self, name) or self.kl_beta > 0, name,
                 "resets the reference policy, and kl_beta=0 runs without one; set kl_beta > 0 or this to 0")
        need(self.ref_reset_on_plateau == 0 or self.eval_every > 0, "ref_reset_on_plateau", "needs eval_every > 0")
        need(self.sample_every >= 0, "sample_every", "must be >= 0 (0 = off)")
        need(self.n_logged_samples >= 1, "n_logged_samples", "must be >= 1")
        need(self.reward_timeout > 0, "reward_timeout", "must be > 0 seconds")
        need(self.max_prompts is None or self.max_prompts >= 1, "max_prompts", "must be >= 1 (or unset)")
        need(self.mixed_precision == "no" or self.dtype == "float32", "mixed_precision",
             "autocast needs float32 weights (dtype=float32); pick one of mixed_precision=bf16 or a low-precision dtype")
        need(not self.streaming or self.max_steps is not None, "streaming",
             "a stream's length is unknown, so streaming=true needs max_steps (set max_steps, or streaming=false to use n_epochs)")
        need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization", "must be in (0, 1]")
        need(self.rollout_engine == "vllm" or not self.vllm_kwargs, "vllm_kwargs", "only applies to rollout_engine=vllm")
        need(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1 row (1 = no shuffling)")
        self._validate_sources()
        self._validate_rewards()
        return self

    def _validate_rewards(self) -> None:
        funcs, weights = self.reward_funcs, self.reward_weights
        if not isinstance(funcs, dict):
            if len(funcs) < 1:
                raise ConfigError("reward_funcs=[] is invalid: name at least one reward function")
            if isinstance(weights, dict):
                raise ConfigError("reward_weights is per domain but reward_funcs is one list: give reward_weights as a list too")
            if weights is not None and len(weights) != len(funcs):
                raise ConfigError(f"reward_weights has {len(weights)} values but reward_funcs has {len(funcs)}: give one weight per function")
            return
        if not funcs:
            raise ConfigError("reward_funcs={} is invalid: map each domain to its reward functions, e.g. {math: [math]}")
        for domain, specs in funcs.items():
            if not _DOMAIN_NAME.match(str(domain)):
                raise ConfigError(f"reward_funcs: domain {domain!r} must be letters, digits, '_', '-' or '.'")
            if not specs:
                raise ConfigError(f"reward_funcs: domain {domain!r} has no reward functions; name at least one")
        if weights is not None:
            if not isinstance(weights, dict):
                raise ConfigError("reward_funcs is per domain, so reward_weights must be too, e.g. {math: [1.0], code: [1.0, 0.2]}")
            for domain, w in weights.items():
                if domain not in funcs:
                    raise ConfigError(f"reward_weights names domain {domain!r}, which reward_funcs does not; domains: {', '.join(funcs)}")
                if len(w) != len(funcs[domain]):
                    raise ConfigError(f"reward_weights[{domain}] has {len(w)} values but reward_funcs[{domain}] has {len(funcs[domain])}: give one weight per function")
        declared = {e["domain"] for e in self.datasets if e.get("domain")}
        missing = sorted(declared - set(funcs))
        if missing:
            raise ConfigError(f"domain(s) {missing} in datasets have no rewards: add them to reward_funcs (it has {', '.join(funcs)})")

    def _validate_sources(self) -> None:
        """`datasets` entries: known keys, typed like the top-level options, a source each."""
        if not self.datasets:
            return
        if self.dataset is not None:
            raise ConfigError("dataset and datasets are both set: use datasets (a list of sources) or dataset (one), not both")
        types_ = _field_types()
        entries = []
        for i, entry in enumerate(self.datasets):
            where = f"datasets[{i}]"
            if isinstance(entry, str):  # a bare source name
                entry = {"dataset": entry}
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a mapping such as {{dataset: data/gsm8k.jsonl, domain: math}}, got {type(entry).__name__}")
            unknown = sorted(set(entry) - set(SOURCE_OPTIONS) - set(SOURCE_ONLY))
            if unknown:
                allowed = SOURCE_OPTIONS + SOURCE_ONLY
                raise ConfigError(f"{where} has unknown key(s) {unknown}{_closest(unknown[0], allowed)}; allowed: {', '.join(allowed)}")
            out = {}
            for key, value in entry.items():
                tp = {"domain": str | None, "weight": float, "remove_columns": list[str]}.get(key) or types_[key]
                out[key] = coerce(f"{where}.{key}", value, tp)
            if not out.get("dataset") or not str(out["dataset"]).strip():
                raise ConfigError(f"{where} names no dataset: give each source a dataset (a file, folder, Hub name, builtin:NAME or reasoning_gym:TASKS)")
            domain = out.get("domain")
            if domain is not None and not _DOMAIN_NAME.match(domain):
                raise ConfigError(f"{where}.domain={domain!r} must be letters, digits, '_', '-' or '.' (it is part of metric names)")
            weight = out.get("weight", 1.0)
            if not (math.isfinite(weight) and weight > 0):
                raise ConfigError(f"{where}.weight={weight!r} must be a finite number > 0")
            if "max_prompts" in out and out["max_prompts"] is not None and out["max_prompts"] < 1:
                raise ConfigError(f"{where}.max_prompts={out['max_prompts']!r} must be >= 1 (or unset)")
            entries.append(out)
        self.datasets = entries
        if self.mixture == "concatenate" and len({e.get("weight", 1.0) for e in entries}) > 1:
            raise ConfigError("datasets give different weights but mixture=concatenate uses every row once: set mixture=interleave to draw by weight")

    def source_config(self, i: int) -> "Config":
        """Source i of `datasets` as a single-dataset Config: its keys over the top-level options."""
        entry = {k: v for k, v in self.datasets[i].items() if k in SOURCE_OPTIONS}
        one = dataclasses.replace(self, datasets=[], **entry)
        setattr(one, TRAIN_SIZE, self.datasets[i].get(TRAIN_SIZE))
        return one

    def loss_kwargs(self) -> dict:
        """Options for `algos.policy_loss`; unset clip bounds fall back to the loss's own defaults."""
        kw = {"eps_low": self.eps_low, "eps_high": self.eps_high, "dual_clip": self.dual_clip}
        return {k: v for k, v in kw.items() if v is not None}

    def eval_config(self) -> "Config":
        """The dataset options of the held-out set, as a Config for `load_prompt_dataset`. A mixture's
        held-out set is every source's own held-out set, concatenated (eval_max_prompts is per source)."""
        if self.datasets:
            # a separate eval_dataset has its own columns: remove_columns (named for the training source) is not applied to it
            heldout = [{**{k: v for k, v in e.items() if k != "weight" and not (k == "remove_columns" and e.get("eval_dataset"))},
                        "dataset": e.get("eval_dataset") or e["dataset"], "dataset_split": e.get("eval_split") or self.eval_split,
                        "max_prompts": e.get("eval_max_prompts", self.eval_max_prompts),
                        TRAIN_SIZE: e.get("max_prompts", self.max_prompts)} for e in self.datasets]
            return dataclasses.replace(self, datasets=heldout,
                                       mixture="concatenate", streaming=False)
        heldout = dataclasses.replace(
            self, dataset=self.eval_dataset or self.dataset, dataset_split=self.eval_split, max_prompts=self.eval_max_prompts,
            streaming=False,  # a held-out set is scored whole, every eval
        )
        setattr(heldout, TRAIN_SIZE, self.max_prompts)
        return heldout

    def data_label(self) -> str:
        """How messages name the run's prompts: the dataset, the mixture, or the built-in task."""
        return self.dataset or ("datasets" if self.datasets else "builtin")

    def resolved_model_path(self) -> str:
        """The embedded default lives in the checkout's data/; find it from any working directory."""
        p = self.model_name_or_path
        if p == DEFAULT_MODEL and not Path(p).exists() and (REPO_ROOT / p).exists():
            return str(REPO_ROOT / p)
        return p

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------
# Loading: defaults < YAML < CLI, with type coercion and unknown-key errors.

def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _mapping_variant(tp, value):
    """For an option typed `list[...] | dict[...]` (e.g. reward_funcs): the dict type when the value
    is a mapping (YAML, or '{...}' text on the command line), else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (typing.Union, types.UnionType) else []
    mapping = next((a for a in args if typing.get_origin(a) is dict), None)
    if mapping is None or len(args) < 2:
        return None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # `--reward_funcs '{math: [math]}'` arrives as a one-item list
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return None
    return (mapping, value) if isinstance(value, dict) else None


def _closest(name: str, options) -> str:
    import difflib

    near = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""


def coerce(name: str, value: Any, tp) -> Any:
    """Convert a YAML or CLI value to the field's type, or raise ConfigError naming the option."""
    variant = _mapping_variant(tp, value)
    if variant is not None:
        (_, inner), mapping = typing.get_args(variant[0]), variant[1]
        return {str(k): coerce(f"{name}[{k}]", v, inner) for k, v in mapping.items()}
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty")
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value, 10)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is list:
            (inner,) = typing.get_args(base)
            if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and value[0].strip().startswith("["):
                value = value[0]  # `--datasets '[{...}, {...}]'`: one YAML list on the command line
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                value = [value]
            return [coerce(name, v.strip() if isinstance(v, str) else v, inner) for v in value]
        if origin is dict or base is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (ValueError, TypeError, yaml.YAMLError):
        pass
    else:
        return value
    tname = getattr(base, "__name__", str(base))
    raise ConfigError(f"{name}={value!r} is not a valid {tname}")


def load_config(config_file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then overrides (CLI); validated."""
    types_ = _field_types()
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a directory; give the YAML file inside it (e.g. launch/recipes/quickstart.yaml)")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; check the --config path (relative paths start at the working directory)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value")
        values.update(loaded)
    values.update(overrides or {})
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(f"unknown option '{key}'{_closest(key, types_)}; `prorl train --help` lists them")
        kwargs[key] = coerce(key, value, types_[key])
    return Config(**kwargs).validate()


def option_table() -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for every option, for --help and the README reference."""
    rows = []
    types_ = _field_types()
    for f in fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = types_[f.name]
        tname = str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__
        help_ = f.metadata["help"]
        if "choices" in f.metadata:
            help_ += " One of: " + ", ".join(choices_of(f)) + "."
        rows.append((f.name, tname, repr(default), help_))
    return rows
