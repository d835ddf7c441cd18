"""The sampler's math: NaN-safe logits, top-k/top-p filtering, and keyed inverse-CDF sampling.

Randomness is a pure function of (seed, step, prompt index, sample index, token position): a
counter-based hash of the key gives each token its uniform, so a completion does not depend on
which process or batch row generated it. Pure tensor functions, no model; `prorl.rollout` runs them.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------
# NaN-safe logits

def sanitize_logits(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Turn every row into a valid distribution's logits; returns (logits, number of rows repaired).

    logits: [B, V] float. NaN entries become -inf (never sampled). A row with any +inf becomes
    uniform over its +inf entries (their limit). A row with no finite entry left becomes uniform.
    (transformers' InfNanRemoveLogitsProcessor maps NaN to 0.0, which gives broken tokens real
    probability mass; here they get none.)
    """
    if not bool((~torch.isfinite(logits)).any()):
        return logits, 0
    out, repaired = repair_logits(logits)
    return out, int(repaired)


def repair_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sanitize_logits` without reading anything back to the host: (logits [B, V], rows repaired as a
    0-dim tensor). Finite rows come out bit-identical; used where a per-token GPU sync would cost more
    than the few element-wise passes (and inside CUDA graphs, where a sync is not allowed)."""
    rows = (~torch.isfinite(logits)).any(dim=-1).sum()
    neg_inf = float("-inf")  # Python scalars, not new device tensors: nothing is copied from the host
    out = torch.where(torch.isnan(logits), neg_inf, logits)
    posinf = out == float("inf")
    has_posinf = posinf.any(dim=-1, keepdim=True)
    out = torch.where(has_posinf, torch.where(posinf, 0.0, neg_inf).to(out.dtype), out)
    dead = ~torch.isfinite(out).any(dim=-1, keepdim=True)
    out = torch.where(dead, 0.0, out)
    return out, rows


class NanSafeLogitsProcessor(LogitsProcessor):
    """`sanitize_logits` as a transformers LogitsProcessor, for use with `model.generate`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return sanitize_logits(scores)[0]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) tokens outside the top-k set and outside the top-p nucleus. logits: [B, V]."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p  # the most likely token always stays (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


# ----------------------------------------------------------------------
# Counter-based randomness: a pure function of (key, step), independent of batch layout.

def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (lowbias32, C. Wellons) on int64 tensors holding values < 2**32."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sample_keys(seed: int, step: int, prompt_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per completion from (seed, step, global prompt index, sample index). [B] int64."""
    k = _mix32(torch.full_like(prompt_index, (seed * 0x9E3779B1) & _M32) ^ step)
    k = _mix32(k ^ _mix32(prompt_index))
    return _mix32(k ^ _mix32(sample_index + 0x632BE5AB))


def uniform_from_keys(keys: torch.Tensor, t: int) -> torch.Tensor:
    """[B] float64 uniforms in (0, 1) with 53 random bits for token position t."""
    a = _mix32(keys ^ _mix32(torch.full_like(keys, 2 * t + 1)))
    b = _mix32(a ^ 0x5BD1E995)
    bits = ((a >> 6) << 27) | (b >> 5)  # 26 + 27 bits
    return (bits.double() + 0.5) / float(1 << 53)


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one uniform per row picks a token. logits [B, V] (may hold -inf), uniforms [B]."""
    probs = torch.softmax(logits.float(), dim=-1).double()
    cdf = probs.cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=logits.size(-1) - 1)
    # float round-off can land on a zero-probability token at the very end of the CDF (no `if`: no GPU sync)
    zero = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) <= 0
    return torch.where(zero, probs.argmax(dim=-1), tokens)


def uniform_table(keys: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] float64: column t equals `uniform_from_keys(keys, t)` bit for bit (same integer ops, batched)."""
    t = torch.arange(steps, dtype=keys.dtype, device=keys.device)
    a = _mix32(keys.unsqueeze(1) ^ _mix32(2 * t + 1).unsqueeze(0))
    b = _mix32(a ^ 0x5BD1E995)
    bits = ((a >> 6) << 27) | (b >> 5)
    return (bits.double() + 0.5) / float(1 << 53)
