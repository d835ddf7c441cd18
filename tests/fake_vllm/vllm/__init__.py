"""A stand-in for the slice of vLLM's offline API that `prorl.vllm_rollout` uses: `LLM(model, **kwargs)`,
`LLM.generate(prompts, sampling_params=[...])`, `LLM.apply_model`, `LLM.reset_prefix_cache`,
`SamplingParams`, and outputs shaped like vLLM's (`RequestOutput.outputs[0].token_ids / .logprobs /
.finish_reason`, `Logprob.logprob`), written against vllm 0.33.0's source.

It samples with a transformers model on the CPU, so CI can check prorl's side of the integration
(request layout, per-sample seeds, EOS/length handling, log-prob alignment, weight sync, PEFT names)
on a machine where vLLM cannot be installed. It checks nothing about vLLM itself.
Put `tests/fake_vllm` first on sys.path to use it. With $FAKE_VLLM_LOG set, every engine start,
weight load and generate call is appended there as a JSON line (for multi-process tests).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

__version__ = "0.0.0+prorl-test-fake"
FAKE = True


class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=16, stop_token_ids=None, logprobs=None,
                 seed=None, detokenize=True, skip_special_tokens=True, ignore_eos=False, **unknown):
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        if n != 1:
            raise NotImplementedError("the fake samples n=1 per request")
        if top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {top_k}")
        self.__dict__.update(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                             stop_token_ids=list(stop_token_ids or []), logprobs=logprobs, seed=seed,
                             detokenize=detokenize, skip_special_tokens=skip_special_tokens, ignore_eos=ignore_eos, n=n)


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


def _log(event: str, **info) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"event": event, "rank": os.environ.get("RANK"), **info}) + "\n")


class _WorkerModel(torch.nn.Module):
    """What `apply_model` hands over: a model whose `load_weights` takes HF checkpoint names (as vLLM's do)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf
        self.loads = 0

    def load_weights(self, weights):
        params = dict(self.hf.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:  # vLLM's loaders look names up the same way and fail on unknown ones
                raise KeyError(name)
            params[name].data.copy_(tensor)
            loaded.add(name)
        self.loads += 1
        _log("load_weights", tensors=len(loaded))
        return loaded


class LLM:
    instances: list["LLM"] = []

    def __init__(self, model: str, **kwargs):
        from transformers import AutoModelForCausalLM

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": None}[kwargs.get("dtype", "auto")]
        self.model_path = model
        self.kwargs = kwargs
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()
        self.eos = hf.generation_config.eos_token_id
        self.worker = _WorkerModel(hf)
        self.prefix_cache_resets = 0
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self.outputs: list[RequestOutput] = []
        LLM.instances.append(self)
        _log("start", seed=kwargs.get("seed"), backend=kwargs.get("distributed_executor_backend"),
             world_size=os.environ.get("WORLD_SIZE"), master_port=os.environ.get("MASTER_PORT"))

    def apply_model(self, func):
        return [func(self.worker)]

    def reset_prefix_cache(self, *args, **kwargs) -> bool:
        self.prefix_cache_resets += 1
        return True

    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, **kwargs):
        if not isinstance(sampling_params, (list, tuple)):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        outs = []
        for i, (prompt, sp) in enumerate(zip(prompts, sampling_params)):
            ids = list(prompt["prompt_token_ids"])
            self.requests.append((ids, sp))
            outs.append(RequestOutput(str(i), None, ids, [self._sample(ids, sp)]))
        self.outputs += outs
        _log("generate", requests=len(prompts), seeds=[sp.seed for sp in sampling_params])
        return outs

    def _sample(self, prompt_ids, sp):
        gen = torch.Generator().manual_seed(sp.seed if sp.seed is not None else 0)
        stop = set(sp.stop_token_ids)
        if not sp.ignore_eos and self.eos is not None:
            stop |= set([self.eos] if isinstance(self.eos, int) else self.eos)
        ids, tokens, logprobs, reason = list(prompt_ids), [], [], "length"
        for _ in range(sp.max_tokens):
            logits = self.worker.hf(torch.tensor([ids])).logits[0, -1].float() / sp.temperature
            if sp.top_k > 0:
                kth = torch.topk(logits, min(sp.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if sp.top_p < 1.0:
                sorted_logits, order = torch.sort(logits, descending=True)
                probs = torch.softmax(sorted_logits, -1)
                drop = probs.cumsum(-1) - probs >= sp.top_p
                logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
            logp = torch.log_softmax(logits, -1)  # processed_logprobs: after temperature and top-k/top-p
            tok = int(torch.multinomial(logp.exp(), 1, generator=gen))
            ids.append(tok)
            tokens.append(tok)
            logprobs.append({tok: Logprob(float(logp[tok]), rank=1)})
            if tok in stop:
                reason = "stop"
                break
        return CompletionOutput(0, "", tokens, sum(l[t].logprob for l, t in zip(logprobs, tokens)),
                                logprobs if sp.logprobs is not None else None, reason)
