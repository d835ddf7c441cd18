"""What a step reports: its metrics (gathered over processes), the progress-bar line, and the
metrics.jsonl log that a resumed run trims back to its checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import dist


def step_metrics(acc, rounds, ro, update: dict, keep: torch.Tensor, zero_signal: torch.Tensor, reward_names, n: int,
                 domains: list[str] = ()) -> dict:
    """The step's global metrics from its sampling rounds (`Trainer._sample_round`'s records), the
    concatenated rollout `ro`, the update's summary, the kept rows [n_local] and the gathered
    zero-signal mask [N]; per domain too when `domains` are named (`domain_metrics`). Collective:
    every process calls it. Adds "completion_tokens" (global) and "first_reward_error" for the
    caller to turn into its own fields."""
    device = keep.device
    lengths = torch.cat([r.lengths for r in rounds])
    all_lengths = dist.gather_varlen(acc, lengths.float())
    all_trunc = dist.gather_varlen(acc, ro.truncated.float())
    all_scored = dist.gather_varlen(acc, torch.cat([r.scored for r in rounds]))
    n_rows = sum(r.all_rewards.numel() for r in rounds)
    m = {
        "loss": update["loss"],
        "reward_mean": float(all_scored.mean()),
        "reward_std": float(all_scored.std()) if all_scored.numel() > 1 else 0.0,
    }
    faults, first_error = 0, ""
    for name in reward_names:
        values = [v for r in rounds for v in r.rw.per_func[name]]
        v = dist.gather_varlen(acc, torch.tensor(values, dtype=torch.float32, device=device))
        v = v[~v.isnan()]  # NaN: a per-domain reward on another domain's sample
        if v.numel():
            m[f"rewards/{name}/mean"] = float(v.mean())
            m[f"rewards/{name}/std"] = float(v.std()) if v.numel() > 1 else 0.0
        for r in rounds:
            faults += r.rw.faults.get(name, 0)
            first_error = first_error or r.rw.first_error.get(name, "")
    m.update({
        "kl": update["kl"],
        "clip_frac": update["clip_frac"],
        "entropy": update["entropy"],
        "grad_norm": update["grad_norm"],
        "completion_len_mean": float(all_lengths.mean()),
        "completion_len_max": float(all_lengths.max()),
        "truncated_frac": float(all_trunc.mean()),
        "groups": n_rows // n,
        "skipped_groups": int(zero_signal.sum()) // n,
        "trained_samples": int(dist.global_sum(acc, keep.sum().reshape(1))),
        "sampling_rounds": len(rounds),
        "reward_faults": int(dist.global_sum(acc, torch.tensor([faults], device=device))),
        "completion_tokens": float(all_lengths.sum()),
        "first_reward_error": first_error,
    })
    if domains:
        m.update(domain_metrics(acc, rounds, zero_signal, domains))
    return m


def local_rows(rounds) -> torch.Tensor:
    """This process's rows [n_local] in the concatenation of every round's gathered rows (what
    `dist.gather_varlen` put where, round after round)."""
    base, mine = 0, []
    for r in rounds:
        mine.append(torch.arange(r.offset, r.offset + r.rewards.numel(), device=r.rewards.device) + base)
        base += r.all_rewards.numel()
    return torch.cat(mine)


def domain_metrics(acc, rounds, zero_signal: torch.Tensor, domains: list[str]) -> dict:
    """domain/<name>/{reward_mean, zero_signal_frac, completion_len_mean, samples} over the step's
    rows of each domain (global; a domain without rows this step reports nothing). zero_signal [N]
    is in the rounds' gathered order; each process picks its own rows' flags back out of it."""
    local = torch.cat([torch.stack([r.scored.float(), r.lengths.float(), r.domain_ids.float()], dim=1) for r in rounds])
    zero = zero_signal[local_rows(rounds)].float().unsqueeze(1)
    table = dist.gather_varlen(acc, torch.cat([local[:, :1], zero, local[:, 1:]], dim=1))  # [N, 4]
    out = {}
    for i, name in enumerate(domains):
        mine = table[table[:, 3] == i]
        if mine.numel():
            out.update({f"domain/{name}/reward_mean": float(mine[:, 0].mean()), f"domain/{name}/zero_signal_frac": float(mine[:, 1].mean()),
                        f"domain/{name}/completion_len_mean": float(mine[:, 2].mean()), f"domain/{name}/samples": int(mine.size(0))})
    return out


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint's step so no step appears twice."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    if kept == lines:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(l + "\n" for l in kept))
    os.replace(tmp, path)  # a kill mid-write must not leave the run's metrics half-written


def format_eval(m: dict) -> str:
    parts = [f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("eval/")]
    return f"eval  @ step {m['step']:>4} | " + " | ".join(parts) + (" | reference reset" if m.get("ref_reset") else "")


def format_line(m: dict) -> str:
    return (
        f"step {m['step']:>5} | loss {m['loss']:+.4f} | reward {m['reward_mean']:.3f}±{m['reward_std']:.3f} "
        f"| kl {m['kl']:.4f} | clip {m['clip_frac']:.3f} | ent {m['entropy']:.3f} | len {m['completion_len_mean']:.1f} "
        f"| skipped {m['skipped_groups']}/{m['groups']} | {m['step_time']:.2f}s"
    )


def flat_config(cfg) -> dict:
    """Trackers take scalars (TensorBoard's hparams); lists and dicts are written as text."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v) for k, v in cfg.to_dict().items()}
