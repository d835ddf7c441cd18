"""Hand-computed checks of prorl.algos: advantages, policy losses, KL estimators, aggregation.

Every expected number below is written out as arithmetic in a comment. Padded positions hold
garbage (nan / 1e9 / inf) to prove they are masked by selection, not by multiplication.
"""

from __future__ import annotations

import math

import pytest
import torch

from prorl import algos
from prorl.algos import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate,
    compute_advantages,
    kl_penalty,
    local_normalizers,
    masked_mean,
    masked_sum,
    policy_loss,
    policy_loss_defaults,
    zero_signal_mask,
)

NAN = float("nan")


def close(actual, expected, atol=1e-6, rtol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------------------------------
# advantages
# --------------------------------------------------------------------------------------------------

# Four groups, interleaved, with arbitrary (non-contiguous, negative, unsorted) ids:
#   id 11 (A): i = 0, 2, 5, 8   r = 1, 0, 0, 1     mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3)
#   id  4 (B): i = 1, 4, 7      r = 3, 1, 2        mean 2,   unbiased std sqrt((1 + 1 + 0) / 2) = 1
#   id -2 (C): i = 3, 9         r = 0.7, 0.7       all equal -> exactly 0
#   id 30 (D): i = 6            r = 5              singleton -> exactly 0
GIDS = torch.tensor([11, 4, 11, -2, 4, 11, 30, 4, 11, -2])
REWARDS = torch.tensor([1.0, 3.0, 0.0, 0.7, 1.0, 0.0, 5.0, 2.0, 1.0, 0.7])
ZERO_IDX = [3, 6, 9]
EPS = 1e-6
SD_A = math.sqrt(1.0 / 3.0)


def test_registries_hold_the_documented_names():
    assert set(ADVANTAGE_ESTIMATORS) >= {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"}
    assert set(POLICY_LOSSES) >= {"ppo_clip", "gspo", "cispo"}
    assert AGGREGATIONS == ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
    assert KL_ESTIMATORS == ("k1", "k2", "k3")


def test_grpo_hand_computed():
    adv = compute_advantages("grpo", REWARDS, GIDS, eps=EPS)
    a = 0.5 / (SD_A + EPS)  # (1 - 0.5) / (sqrt(1/3) + eps) = 0.866024...
    b = 1.0 / (1.0 + EPS)  # (3 - 2) / (1 + eps)
    expected = [a, b, -a, 0.0, -b, -a, 0.0, 0.0, a, 0.0]
    close(adv, expected)
    assert adv.dtype == torch.float32


def test_dr_grpo_hand_computed():
    adv = compute_advantages("dr_grpo", REWARDS, GIDS)
    # r - group mean: A: 1-.5, 0-.5 ; B: 3-2, 1-2, 2-2 ; C, D: 0
    close(adv, [0.5, 1.0, -0.5, 0.0, -1.0, -0.5, 0.0, 0.0, 0.5, 0.0])


def test_rloo_hand_computed():
    adv = compute_advantages("rloo", REWARDS, GIDS)
    # A: i0: 1 - (0+0+1)/3 = 2/3 ; i2: 0 - (1+0+1)/3 = -2/3 ; i5 = -2/3 ; i8 = 2/3
    # B: i1: 3 - (1+2)/2 = 1.5 ; i4: 1 - (3+2)/2 = -1.5 ; i7: 2 - (3+1)/2 = 0
    # C: 0.7 - 0.7/1 = 0 ; D (size 1): 0
    t = 2.0 / 3.0
    close(adv, [t, 1.5, -t, 0.0, -1.5, -t, 0.0, 0.0, t, 0.0])


def test_reinforce_pp_baseline_hand_computed():
    adv = compute_advantages("reinforce_pp_baseline", REWARDS, GIDS, eps=EPS)
    # a = r - group mean = [.5, 1, -.5, 0, -1, -.5, 0, 0, .5, 0]; batch mean = 0
    # unbiased batch var = (4 * .25 + 2 * 1) / 9 = 1/3  -> std = sqrt(1/3)
    s = SD_A + EPS
    expected = [0.5 / s, 1.0 / s, -0.5 / s, 0.0, -1.0 / s, -0.5 / s, 0.0, 0.0, 0.5 / s, 0.0]
    close(adv, expected)
    # differs from GRPO on group B: batch std (0.577) instead of group std (1)
    assert abs(adv[1].item() - 1.0) > 0.5


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_all_equal_groups_and_singletons_are_exactly_zero(name):
    # float64 rewards 0.1 * 3: mean = 0.30000000000000004 / 3 = 0.10000000000000002 != 0.1,
    # so a naive r - mean is -1.4e-17 and the grpo advantage -1.4e-11: must be forced to 0
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 7.0], dtype=torch.float64)
    g = torch.tensor([9, 9, 9, 2, 2, 5])
    adv = compute_advantages(name, r, g)
    assert adv.dtype == torch.float64
    assert (adv[[0, 1, 2, 5]] == 0).all()
    assert (adv[[3, 4]] != 0).all()
    adv = compute_advantages(name, REWARDS, GIDS)
    assert (adv[ZERO_IDX] == 0).all()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_advantages_are_permutation_and_relabel_invariant(name):
    base = compute_advantages(name, REWARDS, GIDS)
    perm = torch.tensor([7, 2, 9, 0, 5, 1, 8, 3, 6, 4])
    close(compute_advantages(name, REWARDS[perm], GIDS[perm]), base[perm])
    relabel = {11: 0, 4: 123456, -2: 7, 30: -99}
    g2 = torch.tensor([relabel[int(i)] for i in GIDS])
    close(compute_advantages(name, REWARDS, g2), base)


def test_grpo_matches_reference_loop():
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (40,), generator=gen).float() + torch.rand(40, generator=gen).round()
    g = torch.randint(-5, 6, (40,), generator=gen) * 17
    adv = compute_advantages("grpo", r, g)
    for gid in g.unique():
        sel = g == gid
        rg = r[sel].double()
        if sel.sum() == 1 or (rg == rg[0]).all():
            exp = torch.zeros_like(rg)
        else:
            exp = (rg - rg.mean()) / (rg.std() + 1e-6)  # torch.std: unbiased
        close(adv[sel], exp.float())


def test_advantage_errors():
    with pytest.raises(ValueError, match="grpo"):  # lists the registered names
        compute_advantages("nope", REWARDS, GIDS)
    with pytest.raises(ValueError):
        compute_advantages("grpo", REWARDS, GIDS[:-1])
    with pytest.raises(ValueError):
        compute_advantages("grpo", REWARDS.view(2, 5), GIDS.view(2, 5))
    with pytest.raises(ValueError, match="nan"):
        compute_advantages("grpo", torch.tensor([1.0, NAN]), torch.tensor([0, 0]))
    assert compute_advantages("grpo", torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_integer_rewards_give_float32():
    adv = compute_advantages("dr_grpo", torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert adv.dtype == torch.float32
    close(adv, [0.5, -0.5, 0.0, 0.0])


def test_register_custom_advantage():
    @algos.register_advantage("_test_const")
    def _const(rewards, group_ids, *, eps=1e-6):
        return torch.full_like(rewards, 3.0)

    try:
        adv = compute_advantages("_test_const", REWARDS, GIDS)
        # 3 everywhere except the zero-signal groups, which are forced to 0
        expected = torch.full((10,), 3.0)
        expected[ZERO_IDX] = 0
        close(adv, expected)
    finally:
        del ADVANTAGE_ESTIMATORS["_test_const"]


def test_zero_signal_mask():
    m = zero_signal_mask(REWARDS, GIDS)
    expected = torch.zeros(10, dtype=torch.bool)
    expected[ZERO_IDX] = True  # group C (all 0.7) and singleton D
    assert torch.equal(m, expected)
    # atol: a range of 5e-7 counts as no signal, 1e-3 does not
    r = torch.tensor([1.0, 1.0 + 5e-7, 0.0, 1e-3], dtype=torch.float64)
    g = torch.tensor([3, 3, 8, 8])
    assert zero_signal_mask(r, g).tolist() == [True, True, False, False]
    assert zero_signal_mask(r, g, atol=1e-2).tolist() == [True, True, True, True]


# --------------------------------------------------------------------------------------------------
# policy losses
# --------------------------------------------------------------------------------------------------

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def _logps(ratios, logp_values, pad_logp=NAN, pad_old=1e9):
    """logp = given values, logp_old = logp - log(ratio); padding (MASK == 0) gets garbage."""
    logp = torch.tensor(logp_values, dtype=torch.float64)
    logp_old = logp - torch.tensor(ratios, dtype=torch.float64).log()
    pad = MASK == 0
    logp = torch.where(pad, torch.tensor(pad_logp, dtype=torch.float64), logp)
    logp_old = torch.where(pad, torch.tensor(pad_old, dtype=torch.float64), logp_old)
    return logp.requires_grad_(True), logp_old


def _grad(loss, logp):
    (g,) = torch.autograd.grad(loss.sum(), logp)
    return g


LOGP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, 0.0]]


def test_ppo_clip_hand_computed_values_and_grads():
    # seq0 A = +2, ratios 1.1, 1.5, 0.5 ; seq1 A = -1, ratios 0.5, 1.5, <pad>
    logp, logp_old = _logps([[1.1, 1.5, 0.5], [0.5, 1.5, 1.0]], LOGP)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    loss, clipped = policy_loss("ppo_clip", logp, logp_old, adv, MASK, eps_low=0.2, eps_high=0.2)
    # seq0 t0: -min(1.1*2, 1.1*2) = -2.2                       unclipped
    # seq0 t1: -min(1.5*2, 1.2*2) = -2.4                       clipped (upper)
    # seq0 t2: -min(0.5*2, 0.8*2) = -1.0                       unclipped (A>0, ratio low: min keeps it)
    # seq1 t0: -min(0.5*-1, 0.8*-1) = 0.8                      clipped (lower)
    # seq1 t1: -min(1.5*-1, 1.2*-1) = 1.5                      unclipped
    # seq1 t2: padding -> 0
    close(loss, [[-2.2, -2.4, -1.0], [0.8, 1.5, 0.0]])
    close(clipped, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # d loss / d logp = -A * ratio on unclipped tokens, 0 on clipped ones and padding
    # seq0: -2*1.1 = -2.2, 0, -2*0.5 = -1 ; seq1: 0, -(-1)*1.5 = 1.5, 0
    g = _grad(loss, logp)
    close(g, [[-2.2, 0.0, -1.0], [0.0, 1.5, 0.0]])
    assert torch.isfinite(g).all()


def test_ppo_clip_defaults_and_clip_higher():
    assert policy_loss_defaults("ppo_clip") == {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": None}
    # A = +1, ratios 1.25 and 1.3 (seq0), 0.85 / 0.75 with A = -1 (seq1)
    logp, logp_old = _logps([[1.25, 1.3, 1.0], [0.85, 0.75, 1.0]], LOGP)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, clipped = policy_loss("ppo_clip", logp, logp_old, adv, MASK, eps_low=0.2, eps_high=0.28)
    # 1.25 < 1.28: -1.25 unclipped ; 1.3 > 1.28: -1.28 clipped ; ratio 1: -1
    # A=-1: 0.85 > 0.8: -min(-0.85, -0.85) = 0.85 ; 0.75 < 0.8: -min(-0.75, -0.8) = 0.8 clipped
    close(loss, [[-1.25, -1.28, -1.0], [0.85, 0.8, 0.0]])
    close(clipped, [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # default symmetric 0.2: 1.25 is clipped to 1.2
    loss, _ = policy_loss("ppo_clip", logp, logp_old, adv, MASK)
    close(loss[0, 0], -1.2)


def test_ppo_dual_clip():
    # seq0 A = +1: ratio 4 -> -min(4, 1.2) = -1.2 (normal clip; dual clip only for A < 0)
    # seq1 A = -1: ratio 4   -> max(4, 1.2) = 4, capped at -c*A = 3 -> 3, clipped, grad 0
    #              ratio 2.5 -> 2.5 < 3, unchanged, grad -A*ratio = 2.5
    logp, logp_old = _logps([[4.0, 1.0, 1.0], [4.0, 2.5, 1.0]], LOGP)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, clipped = policy_loss("ppo_clip", logp, logp_old, adv, MASK, dual_clip=3.0)
    close(loss, [[-1.2, -1.0, -1.0], [3.0, 2.5, 0.0]])
    close(clipped, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    close(_grad(loss, logp), [[0.0, -1.0, -1.0], [0.0, 2.5, 0.0]])
    # without dual clip the A<0 token at ratio 4 costs 4
    loss, _ = policy_loss("ppo_clip", logp, logp_old, adv, MASK)
    close(loss[1, 0], 4.0)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss("ppo_clip", logp, logp_old, adv, MASK, dual_clip=1.0)


def test_gspo_hand_computed_values_and_grads():
    # log-ratios: seq0 [0.3, -0.1, 0.1] -> mean 0.1 -> s0 = e^0.1 = 1.1051709
    #             seq1 [0.2, -0.4, <pad>] -> mean -0.1 -> s1 = e^-0.1 = 0.9048374
    s0, s1 = math.exp(0.1), math.exp(-0.1)
    logp, logp_old = _logps(GSPO_RATIOS, LOGP)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    # wide clip (0.2): nothing clipped. loss = -A*s on every valid token, grad = -A*s_i per token
    loss, clipped = policy_loss("gspo", logp, logp_old, adv, MASK, eps_low=0.2, eps_high=0.2)
    close(loss, [[-s0, -s0, -s0], [s1, s1, 0.0]])
    close(clipped, torch.zeros(2, 3))
    close(_grad(loss, logp), [[-s0, -s0, -s0], [s1, s1, 0.0]])
    # paper defaults (3e-4, 4e-4): s0 > 1.0004 -> -1.0004 ; s1 < 0.9997 -> -min(-s1, -0.9997) = 0.9997
    loss, clipped = policy_loss("gspo", logp, logp_old, adv, MASK)
    close(loss, [[-1.0004, -1.0004, -1.0004], [0.9997, 0.9997, 0.0]])
    close(clipped, [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    close(_grad(loss, logp), torch.zeros(2, 3))


def test_gspo_default_clip_range_is_the_papers():
    assert policy_loss_defaults("gspo") == {"eps_low": 3e-4, "eps_high": 4e-4, "dual_clip": None}
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    # every token log-ratio log(1.0003): s = 1.0003 < 1.0004 -> unclipped, loss -1.0003
    logp, logp_old = _logps([[1.0003] * 3, [1.0003] * 3], LOGP)
    loss, clipped = policy_loss("gspo", logp, logp_old, adv, MASK)
    close(loss, [[-1.0003] * 3, [-1.0003, -1.0003, 0.0]])
    assert clipped.sum() == 0
    # s = 1.0005 > 1.0004 -> clipped at 1.0004
    logp, logp_old = _logps([[1.0005] * 3, [1.0005] * 3], LOGP)
    loss, clipped = policy_loss("gspo", logp, logp_old, adv, MASK)
    close(loss, [[-1.0004] * 3, [-1.0004, -1.0004, 0.0]])
    assert clipped.sum() == 5


# token log-ratios: seq0 [0.3, -0.1, 0.1], seq1 [0.2, -0.4, <pad>]
GSPO_RATIOS = [[math.exp(0.3), math.exp(-0.1), math.exp(0.1)], [math.exp(0.2), math.exp(-0.4), 1.0]]


def test_gspo_token_form_with_per_token_advantages():
    # GSPO-token (paper eq. 13-14): s_{i,t} = sg(s_i) * pi_t / sg(pi_t), so d loss_t / d logp_t = -A_t * s_i
    # (the token's OWN advantage). A plain exp(mean log-ratio) with full gradient would instead give
    # every token -(mean_t A_t) * s_i: with A = [0.5, 1, 3] that is -1.5 * s0 everywhere.
    s0, s1 = math.exp(0.1), math.exp(-0.1)
    logp, logp_old = _logps(GSPO_RATIOS, LOGP)
    adv = torch.tensor([[0.5, 1.0, 3.0], [-1.0, -2.0, NAN]], dtype=torch.float64)
    loss, clipped = policy_loss("gspo", logp, logp_old, adv, MASK, eps_low=0.2, eps_high=0.2)
    close(loss, [[-0.5 * s0, -s0, -3 * s0], [s1, 2 * s1, 0.0]])
    assert clipped.sum() == 0
    close(_grad(loss, logp), [[-0.5 * s0, -s0, -3 * s0], [s1, 2 * s1, 0.0]])


def test_gspo_gradient_equals_sequence_objective():
    # GSPO-token + seq_mean_token_mean == grad of J = -(1/B) sum_i A_i * exp(mean_t (logp - logp_old)_i)
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    base = -torch.rand(3, 5, generator=gen, dtype=torch.float64)
    logp = (base + 0.05 * torch.randn(3, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)
    logp_old = base
    adv = torch.tensor([0.7, -1.3, 0.4], dtype=torch.float64)
    loss, clipped = policy_loss("gspo", logp, logp_old, adv, mask, eps_low=0.5, eps_high=0.5)
    assert clipped.sum() == 0
    n_tok, n_seq = local_normalizers(mask)
    agg = aggregate(loss, mask, "seq_mean_token_mean", num_tokens=n_tok, num_seqs=n_seq, max_length=5)
    (g_ours,) = torch.autograd.grad(agg, logp)
    logp2 = logp.detach().clone().requires_grad_(True)
    seq_ratio = torch.exp(((logp2 - logp_old) * mask).sum(-1) / mask.sum(-1))
    objective = -(adv * seq_ratio).mean()
    (g_ref,) = torch.autograd.grad(objective, logp2)
    close(agg, objective.detach(), atol=1e-12, rtol=1e-12)
    close(g_ours, g_ref, atol=1e-12, rtol=1e-12)


def test_cispo_hand_computed_values_and_grads():
    # seq0 A = +2, ratios 1.1, 1.5, 0.5, logp -1, -0.5, -2 ; seq1 A = -1, ratios 0.5, 1.5
    logp, logp_old = _logps([[1.1, 1.5, 0.5], [0.5, 1.5, 1.0]], LOGP)
    logp_old.requires_grad_(True)  # must receive no gradient
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    assert policy_loss_defaults("cispo") == {"eps_low": None, "eps_high": 0.28, "dual_clip": None}
    loss, clipped = policy_loss("cispo", logp, logp_old, adv, MASK)
    # w = clip(ratio, 0, 1.28) = seq0 [1.1, 1.28, 0.5], seq1 [0.5, 1.28]; loss = -w * A * logp
    # seq0: -1.1*2*-1 = 2.2 ; -1.28*2*-0.5 = 1.28 ; -0.5*2*-2 = 2.0
    # seq1: -0.5*-1*-0.3 = -0.15 ; -1.28*-1*-1.2 = -1.536
    close(loss, [[2.2, 1.28, 2.0], [-0.15, -1.536, 0.0]])
    close(clipped, [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # grad = -w * A (the weight is detached): seq0 -2.2, -2.56, -1.0 ; seq1 0.5, 1.28
    # (a non-detached weight would add -A*logp*ratio on unclipped tokens, e.g. -2*-1*1.1 = 2.2 at [0,0])
    g_logp, g_old = torch.autograd.grad(loss.sum(), [logp, logp_old], allow_unused=True)
    close(g_logp, [[-2.2, -2.56, -1.0], [0.5, 1.28, 0.0]])
    assert g_old is None or (g_old == 0).all()
    # with a lower bound eps_low = 0.2: ratio 0.5 -> 0.8 ; seq0 t2: -0.8*2*-2 = 3.2 ; seq1 t0: -0.8*-1*-0.3 = -0.24
    loss, clipped = policy_loss("cispo", logp, logp_old, adv, MASK, eps_low=0.2)
    close(loss, [[2.2, 1.28, 3.2], [-0.24, -1.536, 0.0]])
    close(clipped, [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


@pytest.mark.parametrize("name", ["gspo", "cispo"])
def test_dual_clip_rejected_outside_ppo(name):
    logp, logp_old = _logps([[1.0] * 3, [1.0] * 3], LOGP)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(name, logp, logp_old, torch.ones(2), MASK, dual_clip=3.0)
    policy_loss(name, logp, logp_old, torch.ones(2), MASK, dual_clip=None)  # accepted


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "cispo"])
@pytest.mark.parametrize("pad", [(NAN, 1e9), (1e9, NAN), (float("inf"), -float("inf"))])
def test_padding_garbage_never_leaks(name, pad):
    logp, logp_old = _logps([[1.1, 0.9, 1.0], [1.2, 0.7, 1.0]], LOGP, pad_logp=pad[0], pad_old=pad[1])
    adv = torch.tensor([0.5, -1.5], dtype=torch.float64)
    loss, clipped = policy_loss(name, logp, logp_old, adv, MASK, eps_low=0.2, eps_high=0.2)
    assert torch.isfinite(loss).all() and torch.isfinite(clipped).all()
    assert loss[1, 2] == 0 and clipped[1, 2] == 0
    g = _grad(loss, logp)
    assert torch.isfinite(g).all() and g[1, 2] == 0
    # the valid tokens do not depend on what the padding holds
    clean, clean_old = _logps([[1.1, 0.9, 1.0], [1.2, 0.7, 1.0]], LOGP, pad_logp=-1.0, pad_old=-1.0)
    loss_clean, _ = policy_loss(name, clean, clean_old, adv, MASK, eps_low=0.2, eps_high=0.2)
    close(loss, loss_clean.detach(), atol=1e-12, rtol=1e-12)
    # bool mask gives the same as float mask
    loss_b, _ = policy_loss(name, logp, logp_old, adv, MASK.bool(), eps_low=0.2, eps_high=0.2)
    close(loss_b, loss.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "cispo"])
def test_per_sequence_and_per_token_advantages_agree(name):
    logp, logp_old = _logps([[1.1, 0.9, 1.3], [1.2, 0.7, 1.0]], LOGP)
    adv = torch.tensor([0.5, -1.5], dtype=torch.float64)
    adv_bt = adv[:, None].expand(2, 3).clone()
    adv_bt[1, 2] = NAN  # padding
    a, _ = policy_loss(name, logp, logp_old, adv, MASK)
    b, _ = policy_loss(name, logp, logp_old, adv_bt, MASK)
    close(b, a.detach(), atol=1e-12, rtol=1e-12)


def test_policy_loss_errors():
    logp, logp_old = _logps([[1.0] * 3, [1.0] * 3], LOGP)
    with pytest.raises(ValueError, match="ppo_clip"):  # lists registered names
        policy_loss("ppo", logp, logp_old, torch.ones(2), MASK)
    with pytest.raises(ValueError):
        policy_loss("ppo_clip", logp, logp_old, torch.ones(3), MASK)
    with pytest.raises(ValueError):
        policy_loss("ppo_clip", logp, logp_old[:, :2], torch.ones(2), MASK)
    with pytest.raises(ValueError):
        policy_loss("ppo_clip", logp, logp_old, torch.ones(2), MASK[:, :2])
    with pytest.raises(TypeError):
        policy_loss("ppo_clip", logp, logp_old, torch.ones(2), MASK, eps=0.1)
    with pytest.raises(ValueError):
        policy_loss("ppo_clip", logp, logp_old, torch.ones(2), MASK, eps_low=-0.1)
    with pytest.raises(ValueError, match="cispo"):
        policy_loss_defaults("nope")


# --------------------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------------------


def test_kl_estimators_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    # d = ref - logp = [-0.5, 1.0, 0.0]
    close(kl_penalty(logp, ref, "k1"), [[0.5, -1.0, 0.0]])  # -d
    close(kl_penalty(logp, ref, "k2"), [[0.125, 0.5, 0.0]])  # d^2 / 2
    # k3 = e^d - d - 1: e^-0.5 + 0.5 - 1 = 0.10653066 ; e - 2 = 0.71828183 ; 0
    close(kl_penalty(logp, ref, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]])
    close(kl_penalty(logp, ref), kl_penalty(logp, ref, "k3").detach())  # default is k3
    # gradients w.r.t. logp: k1: 1 ; k2: -d ; k3: 1 - e^d
    close(torch.autograd.grad(kl_penalty(logp, ref, "k1").sum(), logp)[0], [[1.0, 1.0, 1.0]])
    close(torch.autograd.grad(kl_penalty(logp, ref, "k2").sum(), logp)[0], [[0.5, -1.0, 0.0]])
    close(
        torch.autograd.grad(kl_penalty(logp, ref, "k3").sum(), logp)[0],
        [[1 - math.exp(-0.5), 1 - math.e, 0.0]],
    )


def test_kl_clamp_and_mask():
    logp = torch.tensor([[-100.0, 0.0, NAN]], requires_grad=True)
    ref = torch.tensor([[0.0, -100.0, 1e9]])
    mask = torch.tensor([[True, True, False]])
    kl = kl_penalty(logp, ref, "k3", mask=mask)
    # d = 100 clamped to 20: e^20 - 21 ; d = -100 clamped to -20: e^-20 + 19 ; padding: 0
    close(kl, [[math.exp(20) - 21, math.exp(-20) + 19, 0.0]], rtol=1e-5)
    g = torch.autograd.grad(kl.sum(), logp)[0]
    assert torch.isfinite(g).all() and g[0, 2] == 0
    assert (kl_penalty(torch.randn(4, 7), torch.randn(4, 7), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(logp, ref, "k4")


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------

PER_TOKEN = torch.tensor(
    [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, NAN, 1e9], [7.0, NAN, float("inf"), -1e9], [NAN, NAN, NAN, NAN]],
    dtype=torch.float64,
)
AGG_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token_mean", 28.0 / 7.0),  # (1+2+3+4+5+6+7) / 7 tokens = 4
        ("seq_mean_token_mean", (10 / 4 + 11 / 2 + 7 / 1 + 0) / 4),  # (2.5 + 5.5 + 7 + 0) / 4 seqs = 3.75
        ("seq_mean_token_sum", 28.0 / 4.0),  # 28 / 4 seqs = 7
        ("seq_mean_token_sum_norm", 28.0 / (4 * 8)),  # 28 / (4 seqs * max_length 8) = 0.875
    ],
)
def test_aggregate_hand_computed(mode, expected):
    n_tok, n_seq = local_normalizers(AGG_MASK)
    assert (n_tok, n_seq) == (7.0, 4.0)
    out = aggregate(PER_TOKEN, AGG_MASK, mode, num_tokens=n_tok, num_seqs=n_seq, max_length=8)
    assert out.dim() == 0
    close(out, expected, atol=1e-12, rtol=1e-12)
    # tensor normalisers and bool masks work too
    out_t = aggregate(
        PER_TOKEN, AGG_MASK.bool(), mode, num_tokens=torch.tensor(7.0), num_seqs=torch.tensor(4), max_length=8
    )
    close(out_t, expected, atol=1e-12, rtol=1e-12)


def test_aggregate_errors_and_empty():
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(PER_TOKEN, AGG_MASK, "token-mean", num_tokens=7, num_seqs=4, max_length=8)
    with pytest.raises(ValueError):
        aggregate(PER_TOKEN, AGG_MASK[:, :2], "token_mean", num_tokens=7, num_seqs=4, max_length=8)
    with pytest.raises(ValueError):
        aggregate(PER_TOKEN, AGG_MASK, "seq_mean_token_sum_norm", num_tokens=7, num_seqs=4, max_length=0)
    # an all-padding micro-batch contributes exactly 0 (not nan), even with zero normalisers
    for mode in AGGREGATIONS:
        out = aggregate(PER_TOKEN[3:], AGG_MASK[3:], mode, num_tokens=0, num_seqs=0, max_length=8)
        assert out.item() == 0.0


def _ragged_batch(dtype=torch.float64):
    gen = torch.Generator().manual_seed(123)
    lengths = [6, 1, 3, 0, 5, 2, 6, 4]
    mask = torch.zeros(8, 6, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    params = torch.randn(8, 6, generator=gen, dtype=dtype)
    return params, mask


def _per_token(p, mask):
    # padded positions hold nan; they must neither change the value nor the gradient
    return torch.where(mask, p * p * 0.5 + torch.sin(p), torch.tensor(NAN, dtype=p.dtype))


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("splits", [[8], [4, 4], [2, 2, 2, 2], [3, 5], [1, 7]])
def test_aggregate_split_invariance(mode, splits):
    params, mask = _ragged_batch()
    n_tok, n_seq = local_normalizers(mask)
    max_length = 10

    p_full = params.clone().requires_grad_(True)
    full = aggregate(_per_token(p_full, mask), mask, mode, num_tokens=n_tok, num_seqs=n_seq, max_length=max_length)
    (g_full,) = torch.autograd.grad(full, p_full)

    p_split = params.clone().requires_grad_(True)
    total = 0.0
    start = 0
    for size in splits:
        sl = slice(start, start + size)
        # micro-batches can be re-padded to their own width: trim to the longest sequence in the chunk
        width = max(1, int(mask[sl].sum(-1).max()))
        pt = _per_token(p_split[sl, :width], mask[sl, :width])
        total = total + aggregate(pt, mask[sl, :width], mode, num_tokens=n_tok, num_seqs=n_seq, max_length=max_length)
        start += size
    (g_split,) = torch.autograd.grad(total, p_split)
    assert torch.isfinite(full) and torch.isfinite(g_full).all()
    torch.testing.assert_close(total, full, rtol=1e-6, atol=0)
    torch.testing.assert_close(g_split, g_full, rtol=1e-6, atol=1e-12)
    assert (g_full[~mask] == 0).all()


def test_local_normalisation_would_break_invariance():
    # the invariance test can fail: averaging per-micro-batch means (local normalisers) differs
    params, mask = _ragged_batch()
    n_tok, _ = local_normalizers(mask)
    pt = _per_token(params, mask)
    full = aggregate(pt, mask, "token_mean", num_tokens=n_tok, num_seqs=8, max_length=6)
    local = sum(masked_mean(pt[i : i + 2], mask[i : i + 2]) for i in range(0, 8, 2)) / 4
    assert abs(local.item() - full.item()) > 1e-3


def test_masked_helpers():
    x = torch.tensor([[1.0, NAN, 3.0], [4.0, 5.0, float("inf")]])
    m = torch.tensor([[1, 0, 1], [1, 1, 0]])
    close(masked_sum(x, m), 13.0)  # 1 + 3 + 4 + 5
    close(masked_sum(x, m, dim=-1), [4.0, 9.0])
    close(masked_mean(x, m), 13.0 / 4)
    close(masked_mean(x, m, dim=-1), [2.0, 4.5])
    close(masked_mean(x, torch.zeros(2, 3)), 0.0)  # nothing selected -> 0, not nan
