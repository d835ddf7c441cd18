"""Evaluation: pass@k with the unbiased estimator, mean reward and lengths, on any model.

    prorl eval --model DIR_OR_HUB_ID --dataset ... [--k 1,4,16] [--n 16]

Works on one process or under `accelerate launch` (prompts are sharded, counts gathered). A sample
counts as correct when its total reward is >= `threshold` (1.0: a fully correct answer for the
built-in checkers, whose rewards lie in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import datasets
import torch

from . import dist
from .data import load_prompt_sources, prompt_tokenizer, render_prompts
from .model import embedding_rows, eos_ids, load_model_and_tokenizer, quiet_libraries
from .rewards import check_sources, rewards_from_config, score_rollout
from .rollout import generate
from .sampling import sample_keys

EVAL_STEP_KEY = 0x7FFF_FFFF  # sampling-key "step" for evaluation: never collides with a training step


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k), for n samples of which c pass."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got n={n}")
    if n - c < k:
        return 1.0
    # the product form avoids huge binomials
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    prompts: list[str],
    columns: dict[str, list],
    rewards,
    *,
    acc,
    n: int,
    ks: list[int],
    max_length: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_prompts: int = 16,
    threshold: float = 1.0,
    tokenize,
    eos_token_ids: list[int],
    sampler=generate,
) -> dict:
    """Sample n completions for each prompt (sharded over processes) and score them.

    prompts: the full evaluation set (already rendered); columns: its reward columns.
    Returns {"pass@k": ..., "reward_mean", "completion_len_mean", "n_prompts", "n_samples"}, and the
    same per domain ("domain/<name>/pass@k", ...) when `columns` has a 'domain' column.
    `tokenize`: prompts -> (ids, mask) on the model's device (`data.prompt_tokenizer`, as training uses).
    `sampler`: `rollout.generate` or an engine's method with its signature (e.g. the vLLM engine's).
    """
    bad = [k for k in ks if k > n]
    if bad:
        raise ValueError(f"k={bad} larger than n={n} samples per prompt; raise n or drop those k")
    share = list(range(len(prompts)))[acc.process_index :: acc.num_processes]
    domains = sorted({str(d) for d in columns["domain"]}) if "domain" in columns else []
    rows = []  # per prompt: correct samples, reward sum, length sum, domain index
    for start in range(0, len(share), batch_prompts):
        idx = share[start : start + batch_prompts]
        ids, mask = tokenize(prompts.pick(idx) if hasattr(prompts, "pick") else [prompts[i] for i in idx])
        pidx = torch.tensor(idx, device=ids.device).repeat_interleave(n)
        sidx = torch.arange(n, device=ids.device).repeat(len(idx))
        ro = sampler(
            model, ids, mask, n_samples=n, keys=sample_keys(seed, EVAL_STEP_KEY, pidx, sidx), max_new_tokens=max_length,
            eos_token_ids=eos_token_ids, pad_token_id=tokenizer.pad_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
        )
        _, lengths, out, _ = score_rollout(rewards, tokenizer, ro, [prompts[i] for i in idx],
                                           {c: [v[i] for i in idx] for c, v in columns.items()}, n=n, max_length=max_length)
        total = torch.tensor(out.total, dtype=torch.float64).view(len(idx), n)
        domain = [domains.index(str(columns["domain"][i])) if domains else -1 for i in idx]
        rows.append(torch.stack([(total >= threshold).sum(1).double(), total.sum(1), lengths.double().cpu().view(len(idx), n).sum(1),
                                 torch.tensor(domain, dtype=torch.float64)], dim=1))
    table = torch.cat(rows) if rows else torch.zeros(0, 4, dtype=torch.float64)
    table = dist.gather_varlen(acc, table.to(acc.device)).cpu()  # [P, 4], every prompt once
    result = _summary(table, n, ks)
    result.update(n_prompts=len(prompts), n_samples=n)
    for i, name in enumerate(domains):
        result.update({f"domain/{name}/{k}": v for k, v in _summary(table[table[:, 3] == i], n, ks).items()})
        result[f"domain/{name}/n_prompts"] = int((table[:, 3] == i).sum())
    return result


def _summary(table: torch.Tensor, n: int, ks: list[int]) -> dict:
    """pass@k, mean reward and mean length over the prompts of `table` ([P, 4] as in `evaluate`)."""
    prompts, samples = max(table.size(0), 1), max(table.size(0) * n, 1)
    result = {f"pass@{k}": sum(pass_at_k(n, int(c), k) for c in table[:, 0].tolist()) / prompts for k in ks}
    result.update(reward_mean=float(table[:, 1].sum()) / samples, completion_len_mean=float(table[:, 2].sum()) / samples)
    return result


def format_table(result: dict) -> str:
    keys = [k for k in result if k.startswith("pass@")] + ["reward_mean", "completion_len_mean"]
    keys += [k for k in result if k.startswith("domain/") and not k.endswith("/n_prompts")]
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {result[k]:.4f}" for k in keys]
    lines.append(f"({result['n_prompts']} prompts x {result['n_samples']} samples)")
    return "\n".join(lines)


def run_eval(cfg, *, ks: list[int], n: int) -> dict:
    """`prorl eval`: load a model (folder or Hub id) and evaluate it on cfg's dataset/split."""
    acc = dist.make_accelerator()
    quiet_libraries()
    model, tokenizer = load_model_and_tokenizer(cfg)
    sampler = functools.partial(generate, cuda_graphs=cfg.cuda_graphs)
    if cfg.rollout_engine == "vllm":  # the engine loads the same weights itself; the HF model stays on the CPU
        from .vllm_rollout import VLLMEngine

        sampler = VLLMEngine(cfg, acc, cfg.resolved_model_path()).generate  # its own weights: nothing to sync
    else:
        model.to(acc.device)
    if cfg.datasets:  # each source's held-out set: its eval_dataset / eval_split, else this command's split
        cfg = dataclasses.replace(cfg, eval_split=cfg.dataset_split, eval_max_prompts=cfg.max_prompts).eval_config()
    ds, sources = load_prompt_sources(cfg)
    if not isinstance(ds, datasets.Dataset):  # streaming=true: scored whole, so read it (max_prompts caps it)
        ds = datasets.Dataset.from_list(list(ds))
    rewards = rewards_from_config(cfg)
    check_sources(rewards, sources)
    prompts = render_prompts(ds["prompt"], tokenizer, cfg)
    columns = {c: ds[c] for c in ds.column_names if c != "prompt"}

    result = evaluate(
        model, tokenizer, prompts, columns, rewards, acc=acc, n=n, ks=ks, max_length=cfg.max_length,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed, threshold=cfg.eval_threshold,
        tokenize=prompt_tokenizer(tokenizer, cfg.max_prompt_length, acc.device, warn=acc.is_main_process,
                                  vocab_rows=embedding_rows(model) if cfg.rollout_engine == "hf" else None),
        eos_token_ids=eos_ids(model, tokenizer), sampler=sampler,
    )
    result["model"] = cfg.model_name_or_path
    dist.finish(acc)
    return result
