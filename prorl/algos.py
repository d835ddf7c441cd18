"""The math of the trainer: advantage estimators, policy losses, KL estimators, loss aggregation
(log-probs of given tokens from logits are in `prorl.logprobs`).

Everything here is a pure tensor function: plain tensors and floats in, tensors out. There is no
model, no config object and no distributed call in this module, so each formula can be unit-tested
by hand (``tests/test_algos.py``). The layout follows verl's ``verl/trainer/ppo/core_algos.py``:
advantage estimators and policy losses are registered by name in a dict; the config's allowed values,
the option checks (:func:`check_policy_loss_options`) and the trainer's calls
(:func:`compute_advantages`, :func:`policy_loss`) all read those dicts.

Shapes used throughout::

    N   number of samples (completions) in a rollout batch
    B   number of sequences in a (micro-)batch, T padded completion length, V vocabulary size

Padding convention: ``mask`` is ``[B, T]``, non-zero (``True``/``1``) on completion tokens and zero
on padding. It is always applied with :func:`torch.where` (select), never by multiplication, so
garbage at padded positions (``nan``, ``inf``, ``1e9``) can neither leak into a value nor into a
gradient (``nan * 0`` is ``nan``). A float mask is treated as binary (``mask != 0``).

References (arXiv ids):
    GRPO / DeepSeekMath 2402.03300, DAPO 2503.14476, Dr. GRPO 2503.20783, GSPO 2507.18071,
    CISPO / MiniMax-M1 2506.13585, ProRL 2505.24864, REINFORCE++ 2501.03262, RLOO 2402.14740,
    dual-clip PPO (Ye et al. 2020) 1912.09729, KL estimators k1/k2/k3: J. Schulman,
    "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "register_advantage",
    "register_policy_loss",
    "compute_advantages",
    "zero_signal_mask",
    "policy_loss",
    "policy_loss_defaults",
    "kl_penalty",
    "aggregate",
    "local_normalizers",
    "masked_sum",
    "masked_mean",
    "check_policy_loss_options",
    "batch_advantages",
    "first_groups",
]

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {}
AGGREGATIONS: tuple[str, ...] = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
)
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

#: Log-ratios (``logp - logp_old`` and ``ref_logp - logp``) are clamped to ``[-20, 20]`` before
#: ``exp`` so that ``exp`` stays finite in float32 (``e**20 ~ 4.9e8``); verl does the same.
LOG_RATIO_CLAMP: float = 20.0


# --------------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------------


def register_advantage(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register ``fn(rewards [N] float64, group_ids [N] long, *, eps) -> [N]`` under ``name``.

    Registered functions see float64 rewards; :func:`compute_advantages` validates the inputs,
    casts the result back and forces exactly 0 on groups whose rewards are all equal.
    """

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in ADVANTAGE_ESTIMATORS and ADVANTAGE_ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


_LossFn = Callable[..., tuple[Tensor, Tensor]]


def register_policy_loss(name: str) -> Callable[[_LossFn], _LossFn]:
    """Decorator: register ``fn(logp, logp_old, advantages, mask, **kw) -> (loss, clipped)`` under ``name``.

    :func:`policy_loss` hands the function sanitised inputs (padding replaced by 0, ``logp_old`` and
    advantages detached, advantages shaped ``[B, 1]`` or ``[B, T]``, ``mask`` bool) and zeroes its
    outputs at padded positions afterwards.
    """

    def decorator(fn: _LossFn) -> _LossFn:
        if name in POLICY_LOSSES and POLICY_LOSSES[name] is not fn:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def _lookup(registry: dict, name: str, what: str):
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; registered: {sorted(registry)}") from None


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def _bool_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(like.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is non-zero; padded values never leak (select, not multiply).

    Shapes: ``x`` and ``mask`` broadcastable to each other (typically both ``[B, T]``); ``dim=None``
    sums everything to a scalar, otherwise reduces over ``dim``.
    """
    m = mask if mask.dtype == torch.bool else mask != 0
    selected = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """``masked_sum(x, mask, dim) / max(1, count of mask)``: the mean over masked positions, 0 if there are none.

    Shapes as :func:`masked_sum`.
    """
    m = mask if mask.dtype == torch.bool else mask != 0
    m = m.expand_as(x) if m.shape != x.shape else m
    count = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, m, dim) / count.clamp_min(1).to(x.dtype)


class _Groups:
    """Per-group statistics of a flat reward vector; ``inv[i]`` is the (contiguous) group of sample i."""

    def __init__(self, rewards: Tensor, group_ids: Tensor):
        _, self.inv = torch.unique(group_ids, return_inverse=True)
        g = int(self.inv.max().item()) + 1 if self.inv.numel() else 0
        self.count = torch.bincount(self.inv, minlength=g).to(rewards.dtype)  # [G]
        self.sum = torch.zeros(g, dtype=rewards.dtype, device=rewards.device).index_add_(0, self.inv, rewards)
        self.mean = self.sum / self.count
        full = lambda v: torch.full((g,), v, dtype=rewards.dtype, device=rewards.device)  # noqa: E731
        self.max = full(-math.inf).scatter_reduce(0, self.inv, rewards, reduce="amax")
        self.min = full(math.inf).scatter_reduce(0, self.inv, rewards, reduce="amin")
        centred = rewards - self.mean[self.inv]
        sq = torch.zeros(g, dtype=rewards.dtype, device=rewards.device).index_add_(0, self.inv, centred * centred)
        # unbiased (Bessel-corrected) std as torch.std, which verl and TRL use; 0 for singleton groups
        self.std = torch.sqrt(sq / (self.count - 1).clamp_min(1))

    def per_sample(self, stat: Tensor) -> Tensor:
        return stat[self.inv]


def _check_rewards(rewards: Tensor, group_ids: Tensor) -> None:
    if not isinstance(rewards, Tensor) or not isinstance(group_ids, Tensor):
        raise TypeError("rewards and group_ids must be tensors")
    if rewards.dim() != 1 or group_ids.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must both be 1-D of the same length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain nan or inf")


# --------------------------------------------------------------------------------------------------
# advantages
# --------------------------------------------------------------------------------------------------


def zero_signal_mask(rewards: Tensor, group_ids: Tensor, *, atol: float = 1e-6) -> Tensor:
    """Which samples belong to a group without learning signal.

    ``rewards [N]`` float, ``group_ids [N]`` integer (ids arbitrary, in any order) -> ``[N]`` bool,
    True for every sample of a group with ``max(r) - min(r) <= atol``. A group of size 1 is always
    True. These groups give 0 advantage with every estimator; DAPO's dynamic sampling (2503.14476)
    and ProRL (2505.24864) drop them from the batch.
    """
    _check_rewards(rewards, group_ids)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    groups = _Groups(rewards.detach().double(), group_ids)
    return groups.per_sample((groups.max - groups.min) <= atol)


def compute_advantages(name: str, rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Outcome advantages of one rollout batch with the registered estimator ``name``.

    Args:
        name: one of ``ADVANTAGE_ESTIMATORS`` ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline").
        rewards: ``[N]`` float, one scalar reward per completion.
        group_ids: ``[N]`` integer; completions of the same prompt share an id. Ids are arbitrary
            (need not be contiguous or sorted, may be negative) and samples may come in any order.
        eps: added to standard deviations before dividing.

    Returns:
        ``[N]`` advantages in ``rewards.dtype`` (float32 for integer rewards), detached. Computed in
        float64. Every sample of a group whose rewards are all exactly equal (this includes every
        group of size 1) gets exactly 0, whatever the estimator.

    Raises:
        ValueError: unknown ``name`` (the message lists the registered names), bad shapes, or
            non-finite rewards.
    """
    fn = _lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")
    _check_rewards(rewards, group_ids)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=out_dtype, device=rewards.device)
    r = rewards.detach().double()
    adv = fn(r, group_ids, eps=eps)
    groups = _Groups(r, group_ids)
    no_signal = groups.per_sample(groups.max == groups.min)
    adv = torch.where(no_signal, torch.zeros((), dtype=adv.dtype, device=adv.device), adv)
    return adv.to(out_dtype)


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage (DeepSeekMath, arXiv 2402.03300, sec. 4.1.2).

    ``A_i = (r_i - mean_g(r)) / (std_g(r) + eps)`` with ``g`` the group (prompt) of sample ``i`` and
    ``std`` the unbiased (Bessel-corrected) sample standard deviation, i.e. ``torch.std`` as used by
    verl's ``compute_grpo_outcome_advantage`` and TRL's GRPOTrainer. Shapes: ``[N], [N] -> [N]``.
    """
    g = _Groups(rewards, group_ids)
    return (rewards - g.per_sample(g.mean)) / (g.per_sample(g.std) + eps)


@register_advantage("dr_grpo")
def dr_grpo_advantage(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Dr. GRPO outcome advantage (arXiv 2503.20783, eq. for A~): ``A_i = r_i - mean_g(r)``.

    No division by the group std (which up-weights too-easy / too-hard prompts). ``eps`` is unused.
    Shapes: ``[N], [N] -> [N]``.
    """
    g = _Groups(rewards, group_ids)
    return rewards - g.per_sample(g.mean)


@register_advantage("rloo")
def rloo_advantage(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> Tensor:
    """RLOO leave-one-out advantage (Ahmadian et al., arXiv 2402.14740, eq. 6).

    ``A_i = r_i - (sum_{j in g, j != i} r_j) / (n_g - 1)`` (= ``n_g / (n_g - 1) * (r_i - mean_g)``);
    a group of size 1 has no other sample and gets 0. ``eps`` is unused. Shapes: ``[N], [N] -> [N]``.
    """
    g = _Groups(rewards, group_ids)
    n = g.per_sample(g.count)
    others = (g.per_sample(g.sum) - rewards) / (n - 1).clamp_min(1)
    return torch.where(n > 1, rewards - others, torch.zeros_like(rewards))


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6) -> Tensor:
    """REINFORCE++-baseline (Hu et al., arXiv 2501.03262; used by ProRL v2, arXiv 2505.24864 follow-up).

    Two steps, as in verl's ``compute_reinforce_plus_plus_baseline_outcome_advantage`` and OpenRLHF's
    ``reinforce_baseline``: subtract the group mean, then whiten over the whole batch given::

        a_i = r_i - mean_g(r)                      (0 for a group of size 1)
        A_i = (a_i - mean_batch(a)) / (std_batch(a) + eps)

    ``std_batch`` is unbiased like ``torch.std`` (verl's ``masked_whiten`` is unbiased as well).
    Differences from verl/OpenRLHF, on purpose: the statistics are taken over *samples* (this
    function sees no token mask) whereas those implementations whiten per token, i.e. weight each
    sample by its length; and the batch statistics include every sample passed in (zero-signal
    groups too: filter the batch first if they are to be left out). Because every group's centred
    rewards sum to 0, ``mean_batch(a)`` is 0 up to rounding. Shapes: ``[N], [N] -> [N]``.
    """
    g = _Groups(rewards, group_ids)
    a = rewards - g.per_sample(g.mean)
    a = torch.where(g.per_sample(g.max == g.min), torch.zeros_like(a), a)
    if a.numel() < 2:
        return torch.zeros_like(a)
    return (a - a.mean()) / (a.std() + eps)


# --------------------------------------------------------------------------------------------------
# policy losses
# --------------------------------------------------------------------------------------------------


def policy_loss(
    name: str, logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, **kw
) -> tuple[Tensor, Tensor]:
    """Per-token policy-gradient loss of the registered loss ``name``.

    Args:
        name: one of ``POLICY_LOSSES`` ("ppo_clip", "gspo", "cispo").
        logp: ``[B, T]`` log-probs of the sampled tokens under the current policy (requires grad).
        logp_old: ``[B, T]`` log-probs under the policy that generated the samples (detached here).
        advantages: ``[B]`` (one per sequence) or ``[B, T]`` (per token); detached here.
        mask: ``[B, T]`` bool or float, non-zero on completion tokens.
        **kw: loss-specific options (see each loss; :func:`policy_loss_defaults` lists them).

    Returns:
        ``(per_token_loss [B, T], clipped [B, T])``: the loss to minimise (already negated; exactly 0
        with zero gradient at padding, whatever ``logp``/``logp_old`` hold there) and a float 0/1
        indicator of tokens whose gradient the clipping switched off (or, for CISPO, whose
        importance weight was clipped), for the clip-fraction metric. Reduce the loss with
        :func:`aggregate`.

    Raises:
        ValueError: unknown ``name`` (lists the registered names), bad shapes or bad options.
        TypeError: an option the loss does not take.
    """
    fn = _lookup(POLICY_LOSSES, name, "policy loss")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    if logp_old.shape != logp.shape:
        raise ValueError(f"logp_old has shape {tuple(logp_old.shape)}, expected {tuple(logp.shape)}")
    m = _bool_mask(mask, logp)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp_s = torch.where(m, logp, zero)
    logp_old_s = torch.where(m, logp_old.detach().to(logp.dtype), zero)
    adv = advantages.detach().to(logp.dtype)
    if adv.shape == logp.shape[:1]:
        adv = adv.unsqueeze(-1)  # [B, 1], broadcast over tokens
    elif adv.shape == logp.shape:
        adv = torch.where(m, adv, zero)
    else:
        raise ValueError(f"advantages must be [B] or [B, T] = {tuple(logp.shape)}, got {tuple(adv.shape)}")
    loss, clipped = fn(logp_s, logp_old_s, adv, m, **kw)
    loss = torch.where(m, loss, zero)
    clipped = torch.where(m, clipped.to(logp.dtype), zero)
    return loss, clipped


def policy_loss_defaults(name: str) -> dict:
    """The keyword options of policy loss ``name`` with their defaults, e.g. ``{"eps_low": 0.2, ...}``."""
    import inspect

    fn = _lookup(POLICY_LOSSES, name, "policy loss")
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def check_policy_loss_options(name: str, **kw) -> None:
    """Raise ValueError when policy loss ``name`` is unknown or rejects these options: it runs once on
    a one-token batch, so every registered loss validates its own options (at config time, not at the
    first update)."""
    known = policy_loss_defaults(name)
    unknown = sorted(set(kw) - set(known))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} is not an option of the {name!r} loss (its options: {sorted(known) or 'none'})")
    one = torch.zeros(1, 1)
    policy_loss(name, one, one, torch.ones(1), torch.ones(1, 1, dtype=torch.bool), **kw)


def _check_eps(eps_low: float | None, eps_high: float | None, *, allow_none: bool = False) -> None:
    for label, e in (("eps_low", eps_low), ("eps_high", eps_high)):
        if e is None:
            if not allow_none:
                raise ValueError(f"{label} must be a float")
            continue
        if not (e >= 0):
            raise ValueError(f"{label} must be >= 0, got {e}")
    if eps_low is not None and eps_low > 1:
        raise ValueError(f"eps_low must be <= 1 (the ratio is clipped below at 1 - eps_low), got {eps_low}")


def _clipped_surrogate(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """``max(-A*ratio, -A*clip(ratio, 1-eps_low, 1+eps_high))`` and where the clipped branch wins strictly."""
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-level clipped PPO surrogate as in GRPO (2402.03300) with DAPO's decoupled clip (2503.14476).

    ``ratio = exp(clamp(logp - logp_old, -20, 20))`` and per token::

        loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)

    ``eps_high > eps_low`` is DAPO's "clip-higher" (DAPO and ProRL use 0.2 / 0.28).

    Dual clip (Ye et al. 2020, arXiv 1912.09729; verl's ``clip_ratio_c``): with ``dual_clip = c > 1``,
    tokens with ``A < 0`` are additionally capped, ``loss = min(loss, -c * A)``, so that a huge ratio
    on a negative-advantage token cannot produce an unbounded loss / gradient.

    ``clipped`` is 1 where the gradient is switched off: the clipped branch is strictly the larger
    one, or the dual-clip cap is active. Shapes: ``[B, T], [B, T], [B, 1] or [B, T], [B, T] bool ->
    ([B, T], [B, T] bool)``. Unclipped tokens have ``d loss / d logp = -A * ratio``.
    """
    _check_eps(eps_low, eps_high)
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (e.g. 3.0) or None, got {dual_clip}")
    log_ratio = torch.clamp(logp - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss, clipped = _clipped_surrogate(ratio, advantages, eps_low, eps_high)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        capped = (advantages < 0) & (loss > cap)
        loss = torch.where(capped, cap.expand_as(loss), loss)
        clipped = clipped | capped
    return loss, clipped


@register_policy_loss("gspo")
def gspo_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """GSPO, sequence-level importance ratio (Zheng et al., arXiv 2507.18071), in its GSPO-token form.

    Sequence ratio, length-normalised (eq. 7 of the paper)::

        s_i = exp( (1/|y_i|) * sum_{t in y_i} (logp_t - logp_old_t) )

    applied per token in the GSPO-token form (eq. 13): ``s_{i,t} = sg(s_i) * exp(logp_t - sg(logp_t))``,
    whose value is ``s_i`` and whose gradient w.r.t. ``logp_t`` is ``s_i``. Per token::

        loss = -min(s_{i,t} * A, clip(s_{i,t}, 1 - eps_low, 1 + eps_high) * A)

    Defaults ``eps_low = 3e-4``, ``eps_high = 4e-4`` are the paper's clipping ranges (sec. 5.1:
    "we set the left and right clipping ranges in Equation (5) to 3e-4 and 4e-4"). The mean
    log-ratio is clamped to ``[-20, 20]`` inside ``sg`` only, so the gradient form stays exact.

    With sequence-level advantages and ``aggregate(..., "seq_mean_token_mean")`` (what the paper and
    verl use) this is exactly the GSPO objective's gradient ``-A_i s_i (1/|y_i|) sum_t grad logp_t``;
    other aggregations re-weight sequences. ``clipped`` is 1 on every token of a sequence whose
    clipped branch wins (it is the same for all tokens of a sequence when ``A`` is per sequence).
    ``dual_clip`` is accepted for a uniform call signature but must be None. Shapes as ppo_clip.
    """
    _check_eps(eps_low, eps_high)
    if dual_clip is not None:
        raise ValueError("dual_clip is only supported by the 'ppo_clip' loss")
    n_tok = mask.sum(dim=-1, keepdim=True).clamp_min(1).to(logp.dtype)
    seq_log_ratio = masked_sum((logp - logp_old).detach(), mask, dim=-1).unsqueeze(-1) / n_tok  # [B, 1]
    seq_log_ratio = torch.clamp(seq_log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    s = torch.exp(seq_log_ratio + logp - logp.detach())  # value s_i, d s / d logp_t = s_i
    return _clipped_surrogate(s, advantages, eps_low, eps_high)


@register_policy_loss("cispo")
def cispo_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float | None = None,
    eps_high: float = 0.28,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """CISPO, clipped IS-weight policy optimisation (MiniMax-M1, arXiv 2506.13585, eq. 4-5).

    Per token::

        w    = sg( clip(ratio, 1 - eps_low, 1 + eps_high) ),   ratio = exp(clamp(logp - logp_old, -20, 20))
        loss = -w * A * logp

    The importance weight is clipped and detached, so every token keeps a REINFORCE-style gradient
    ``d loss / d logp = -w * A`` (no token is dropped, unlike PPO clipping); gradient flows through
    ``logp`` only. The paper "did not impose a lower bound on the IS weight by setting eps_low to a
    large value; instead, we only tuned eps_high": ``eps_low=None`` (the default) means no lower
    bound (the weight is only clamped below by 0, which a ratio never crosses). The paper does not
    publish its ``eps_high``; 0.28 (DAPO's clip-higher value, also Trinity-RFT's CISPO default) is
    used here. The paper normalises by the total token count: pair with ``"token_mean"``.

    ``clipped`` is 1 where the IS weight was clipped (ratio strictly outside the bounds); these
    tokens still get a gradient. ``dual_clip`` must be None. Shapes as ppo_clip.
    """
    _check_eps(eps_low, eps_high, allow_none=True)
    if dual_clip is not None:
        raise ValueError("dual_clip is only supported by the 'ppo_clip' loss")
    ratio = torch.exp(torch.clamp((logp - logp_old).detach(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    low = 0.0 if eps_low is None else 1.0 - eps_low
    high = math.inf if eps_high is None else 1.0 + eps_high
    weight = torch.clamp(ratio, min=low, max=high)
    clipped = (ratio > high) | (ratio < low)
    return -weight * advantages * logp, clipped


# --------------------------------------------------------------------------------------------------
# KL penalty
# --------------------------------------------------------------------------------------------------


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3", *, mask: Tensor | None = None) -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi`` (Schulman's k1/k2/k3).

    With ``d = clamp(ref_logp - logp, -20, 20)`` (log of ``pi_ref / pi`` at the sampled token)::

        k1 = -d                  unbiased, high variance, can be negative
        k2 = d**2 / 2            biased, low variance, >= 0
        k3 = exp(d) - d - 1      unbiased, low variance, >= 0  (GRPO's KL term, 2402.03300 eq. 4)

    The clamp keeps ``exp(d)`` finite (the estimate saturates, and its gradient is 0, beyond
    ``|d| = 20``). Shapes: ``logp, ref_logp [B, T] -> [B, T]`` (any equal shapes work). ``ref_logp``
    is not detached here; it normally comes from a frozen model. If ``mask`` (same shape) is given,
    padded positions are set to exactly 0 with zero gradient, whatever they hold; without it, pass
    the result through :func:`aggregate`, which ignores padding in the value (but a ``nan`` in a
    padded ``logp`` would then still give a ``nan`` gradient there: pass ``mask`` to be safe).

    Raises:
        ValueError: unknown ``estimator`` (lists ``KL_ESTIMATORS``) or mismatched shapes.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {list(KL_ESTIMATORS)}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp has shape {tuple(ref_logp.shape)}, expected {tuple(logp.shape)}")
    ref_logp = ref_logp.to(logp.dtype)
    m = None
    if mask is not None:
        m = _bool_mask(mask, logp)
        zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
        logp = torch.where(m, logp, zero)
        ref_logp = torch.where(m, ref_logp, zero)
    d = torch.clamp(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if estimator == "k1":
        kl = -d
    elif estimator == "k2":
        kl = 0.5 * d * d
    else:
        kl = torch.exp(d) - d - 1.0
    if m is not None:
        kl = torch.where(m, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------


def local_normalizers(mask: Tensor) -> tuple[float, float]:
    """``(num_tokens, num_seqs)`` of one ``[B, T]`` mask; sum these over micro-batches (and processes)
    to get the global normalisers that :func:`aggregate` expects."""
    m = mask if mask.dtype == torch.bool else mask != 0
    return float(m.sum().item()), float(m.shape[0])


def _normalizer(value, name: str):
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        if (value < 0).any():
            raise ValueError(f"{name} must be >= 0, got {value.item()}")
        return value.clamp_min(1)
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return max(value, 1.0)


def aggregate(
    per_token: Tensor, mask: Tensor, mode: str, *, num_tokens: float, num_seqs: float, max_length: int
) -> Tensor:
    """Scalar loss contribution of one micro-batch, normalised with *global* batch statistics.

    Because the normalisers are global, summing the returned values over all micro-batches and
    processes gives exactly the loss of the whole batch, however it is split (sequences are never
    split across micro-batches). With ``x = where(mask, per_token, 0)`` (padding never leaks)::

        "token_mean"              (DAPO 2503.14476)   sum(x) / num_tokens
        "seq_mean_token_mean"     (GRPO 2402.03300)   sum_i [ sum_t x_i / max(1, |mask_i|) ] / num_seqs
        "seq_mean_token_sum"                          sum(x) / num_seqs
        "seq_mean_token_sum_norm" (Dr. GRPO 2503.20783) sum(x) / (num_seqs * max_length)

    Args:
        per_token: ``[B, T]`` per-token values (loss, KL, entropy, ...).
        mask: ``[B, T]`` bool or float.
        mode: one of ``AGGREGATIONS``.
        num_tokens: number of mask tokens in the whole batch (all micro-batches, all processes).
        num_seqs: number of sequences in the whole batch (all-padding sequences count too).
        max_length: the fixed generation budget (max new tokens), Dr. GRPO's constant normaliser.
            It must not depend on the micro-batch (not ``T`` of a padded micro-batch).

    ``num_tokens`` and ``num_seqs`` are counts; they are clamped to >= 1 so that an empty batch gives
    0 instead of ``nan``. Either may be a float or a 0-d tensor.

    Returns:
        0-d tensor in ``per_token.dtype``.

    Raises:
        ValueError: unknown ``mode`` (lists ``AGGREGATIONS``), bad shapes, or negative normalisers.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; allowed: {list(AGGREGATIONS)}")
    if per_token.dim() != 2:
        raise ValueError(f"per_token must be [B, T], got shape {tuple(per_token.shape)}")
    m = _bool_mask(mask, per_token)
    x = torch.where(m, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if mode == "token_mean":
        return x.sum() / _normalizer(num_tokens, "num_tokens")
    n_seqs = _normalizer(num_seqs, "num_seqs")
    if mode == "seq_mean_token_mean":
        per_seq = x.sum(dim=-1) / m.sum(dim=-1).clamp_min(1).to(x.dtype)
        return per_seq.sum() / n_seqs
    if mode == "seq_mean_token_sum":
        return x.sum() / n_seqs
    if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    return x.sum() / (n_seqs * int(max_length))


# ----------------------------------------------------------------------
# The batch's advantages: which groups are used, and their advantages

def first_groups(groups: Tensor, usable: Tensor, limit: int) -> Tensor:
    """``[N]`` bool: the samples of the first ``limit`` usable groups, in order of first appearance.
    ``groups [N]`` group ids, ``usable [N]`` bool."""
    chosen, out = set(), torch.zeros_like(usable)
    for i, (g, ok) in enumerate(zip(groups.tolist(), usable.tolist())):
        if ok and (g in chosen or len(chosen) < limit):
            chosen.add(g)
            out[i] = True
    return out


def batch_advantages(all_rewards: Tensor, all_task: Tensor, all_groups: Tensor, mine: Tensor, estimator: str, *,
                     skip_zero_signal: bool = True, max_groups: int | None = None):
    """Advantages of a whole (gathered) batch, returned for this process's rows.

    ``all_rewards [N]`` what advantages are computed from; ``all_task [N]`` the task rewards, which
    decide zero signal (the same tensor unless a KL shift was added to the rewards); ``all_groups
    [N]`` group ids; ``mine [n]`` this process's rows. Groups whose task rewards are all equal carry
    no signal and are not used when ``skip_zero_signal``; ``max_groups`` keeps only the first that
    many used groups (dynamic sampling). Advantages are computed over the used samples only, so
    skipped groups' zeros never enter batch-level estimators such as ``reinforce_pp_baseline``.
    Returns ``(advantages [n], keep [n] bool, zero_signal [N] bool)``.
    """
    zero_signal = zero_signal_mask(all_task, all_groups)
    used = ~zero_signal if skip_zero_signal else torch.ones_like(zero_signal)
    if max_groups is not None:
        used &= first_groups(all_groups, used, max_groups)
    all_adv = torch.zeros_like(all_rewards)
    if bool(used.any()):
        all_adv[used] = compute_advantages(estimator, all_rewards[used], all_groups[used])
    return all_adv[mine], used[mine], zero_signal
