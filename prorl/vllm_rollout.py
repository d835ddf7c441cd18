"""Optional rollout engine: a vLLM instance colocated with training (`rollout_engine: vllm`).

Each process runs its own vLLM engine on its own device, next to the policy it trains, and samples
its share of the prompts there (data parallel; vLLM's `external_launcher` backend, tensor parallel
size 1). After every optimizer step the policy's weights are copied into the engine in place, the
next time it samples (`sync`), and vLLM's prefix cache is cleared so no stale prompt keys/values
survive the update. `generate` has `rollout.generate`'s signature and returns the same `Rollout`,
so the trainer and evaluation do not know which engine sampled.

What differs from the built-in sampler (`rollout_engine: hf`):
- randomness: every completion is one vLLM request seeded with its own sample key, so a completion
  does not depend on which batch row it got; but vLLM's kernels depend on the batch it runs, so
  completions are not bit-identical across process counts or with the built-in sampler;
- the sampler log-probs are vLLM's `processed_logprobs` (after temperature, top-k and top-p); they
  are only used by `kl_in_reward`, the update recomputes its log-probs with the training model;
- NaN/inf logits are handled by vLLM, not by `sampling.sanitize_logits`.

vLLM is not a dependency of prorl: install it (a CUDA build matching your torch) to use this.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Iterable, Iterator

import torch

from .config import ConfigError
from .rollout import Rollout

log = logging.getLogger("prorl")


def _vllm():
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(
            f"rollout_engine=vllm needs vLLM, which is not importable here ({e}); install it on the GPU machine "
            "(pip install -e '.[vllm]', or a vLLM build matching your torch) or use rollout_engine=hf"
        ) from None
    return vllm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_env(acc) -> None:
    """vLLM's external_launcher backend reads torchrun's variables; a plain `python` run has none."""
    os.environ.setdefault("RANK", str(acc.process_index))
    os.environ.setdefault("LOCAL_RANK", str(acc.local_process_index))
    os.environ.setdefault("WORLD_SIZE", str(acc.num_processes))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if acc.num_processes > 1:  # every process must agree on the port; launchers set it
            raise ConfigError("rollout_engine=vllm with several processes needs MASTER_PORT; start the job with accelerate launch or torchrun")
        os.environ["MASTER_PORT"] = str(_free_port())


def policy_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy as a plain transformers model, one tensor at a time: a PEFT model's
    adapters are folded into copies of their base weights (the base itself is not touched: it is the
    reference), and PEFT's name prefixes are removed."""
    if hasattr(policy, "get_base_model") and hasattr(policy, "peft_config"):
        from .lora import merged_weights

        yield from merged_weights(policy)
        return
    for name, param in policy.named_parameters():
        yield name, param.detach()


class VLLMEngine:
    """A colocated vLLM engine with `rollout.generate`'s interface."""

    def __init__(self, cfg, acc, model_path: str):
        vllm = _vllm()
        _launcher_env(acc)
        # the engine samples in the precision the forwards run in: autocast bf16 -> bf16 weights
        dtype = "bfloat16" if cfg.mixed_precision == "bf16" else cfg.dtype
        if dtype == "float32" and acc.is_main_process:
            log.warning("rollout_engine=vllm in float32 is slow and some vLLM attention backends refuse it; "
                        "mixed_precision=bf16 samples in bf16 and keeps float32 weights and Adam for training")
        kwargs = dict(
            model=model_path,
            tokenizer=cfg.tokenizer_name_or_path or model_path,
            dtype=dtype,
            tensor_parallel_size=1,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.max_prompt_length + cfg.max_length,
            distributed_executor_backend="external_launcher",
            seed=cfg.seed + acc.process_index,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,  # a group's n requests can share their prompt's full KV blocks
        )
        kwargs.update(cfg.vllm_kwargs)
        self.llm = vllm.LLM(**kwargs)
        self.SamplingParams = vllm.SamplingParams
        self.synced_version = None  # the policy version whose weights the engine holds (None: the checkpoint's)

    @torch.no_grad()
    def sync(self, weights: Iterable[tuple[str, torch.Tensor]], version) -> None:
        """Copy the policy's weights into the engine (in place, on its device) and drop its prefix cache."""
        def load(model):
            model.load_weights(weights)

        self.llm.apply_model(load)
        self.llm.reset_prefix_cache()
        self.synced_version = version

    def generate(
        self,
        model,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        n_samples: int,
        keys: torch.Tensor,
        max_new_tokens: int,
        eos_token_ids: list[int],
        pad_token_id: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        **_,
    ) -> Rollout:
        """Same contract as `rollout.generate` (`model` is unused: the engine holds the synced weights)."""
        device = prompt_ids.device
        P = prompt_ids.size(0)
        B = P * n_samples
        eos = sorted(set(int(e) for e in eos_token_ids))
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]  # padding stripped
        requests = [{"prompt_token_ids": prompts[i // n_samples]} for i in range(B)]  # one request per sample
        params = [
            self.SamplingParams(
                n=1, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_new_tokens,
                # stop exactly at our EOS set (ignore_eos drops vLLM's own additions from the model's config)
                stop_token_ids=eos, ignore_eos=True, logprobs=0, seed=int(key), detokenize=False, skip_special_tokens=False,
            )
            for key in keys.tolist()
        ]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        if len(outputs) != B:
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {B} requests")

        completions = [out.outputs[0] for out in outputs]
        length = max((len(c.token_ids) for c in completions), default=0)
        tokens = torch.full((B, length), pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((B, length), dtype=torch.float32)
        mask = torch.zeros((B, length), dtype=torch.long)
        truncated = torch.zeros(B, dtype=torch.bool)
        eos_set = set(eos)
        for row, c in enumerate(completions):
            ids = list(c.token_ids)
            L = len(ids)
            if L:
                tokens[row, :L] = torch.tensor(ids)
                mask[row, :L] = 1
                if c.logprobs is not None:
                    logprobs[row, :L] = torch.tensor([float(step[tok].logprob) for step, tok in zip(c.logprobs, ids)])
            truncated[row] = not (L and ids[-1] in eos_set)
        logprobs = torch.nan_to_num(logprobs, nan=0.0, posinf=0.0, neginf=0.0)
        return Rollout(
            prompt_ids=prompt_ids.repeat_interleave(n_samples, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(n_samples, dim=0),
            completion_ids=tokens.to(device),
            completion_mask=mask.to(device),
            logprobs=logprobs.to(device),
            truncated=truncated.to(device),
            repaired_rows=0,
        )
