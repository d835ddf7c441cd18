import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prorl.rollout import (
    NanSafeLogitsProcessor, completion_logprobs, filter_logits, generate, sample_keys, sample_tokens,
    sanitize_logits, uniform_from_keys,
)

INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, eos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def prompts():
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 2, 3, 4, 5], [0, 9, 9, 3, 2]])
    return ids, (ids != 0).long()


def test_sanitize_logits_hand_cases():
    x = torch.tensor([
        [0.0, 1.0, 2.0],        # fine: untouched
        [NAN, 1.0, 2.0],        # nan -> never sampled
        [INF, 1.0, INF],        # +inf -> uniform over the +inf entries
        [-INF, -INF, -INF],     # nothing left -> uniform
        [NAN, NAN, NAN],
    ])
    out, n = sanitize_logits(x)
    assert n == 4
    p = torch.softmax(out, -1)
    assert torch.allclose(p[0], torch.softmax(x[0], -1))
    assert p[1, 0] == 0 and torch.allclose(p[1, 1:], torch.softmax(torch.tensor([1.0, 2.0]), -1))
    assert torch.allclose(p[2], torch.tensor([0.5, 0.0, 0.5]))
    assert torch.allclose(p[3], torch.full((3,), 1 / 3)) and torch.allclose(p[4], torch.full((3,), 1 / 3))
    assert torch.isfinite(p).all()
    # the processor form for model.generate
    assert torch.equal(NanSafeLogitsProcessor()(None, x), out)


def test_torch_multinomial_would_crash_but_we_do_not():
    bad = torch.tensor([[NAN, 1.0, 2.0]])
    with pytest.raises(RuntimeError):
        torch.multinomial(torch.softmax(bad, -1), 1)
    tok = sample_tokens(sanitize_logits(bad)[0], torch.tensor([0.3], dtype=torch.float64))
    assert tok.item() in (1, 2)


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = torch.isfinite(filter_logits(logits, top_p=0.75))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.75, 0.8 >= 0.75
    kept = torch.isfinite(filter_logits(logits, top_p=0.1))[0].tolist()
    assert kept == [True, False, False, False]  # the top token always survives


def test_sampler_matches_distribution():
    probs = torch.tensor([0.1, 0.6, 0.0, 0.3])
    keys = sample_keys(3, 0, torch.arange(20000), torch.zeros(20000, dtype=torch.long))
    toks = sample_tokens(torch.log(probs).expand(20000, 4), uniform_from_keys(keys, 0))
    freq = torch.bincount(toks, minlength=4).float() / 20000
    assert freq[2] == 0
    assert torch.allclose(freq, probs, atol=0.015)


def test_keys_are_layout_free_and_distinct():
    a = sample_keys(1, 5, torch.tensor([3, 3, 7]), torch.tensor([0, 1, 0]))
    b = sample_keys(1, 5, torch.tensor([7]), torch.tensor([0]))
    assert a[2] == b[0] and len(set(a.tolist())) == 3
    assert sample_keys(1, 6, torch.tensor([7]), torch.tensor([0])) != b  # a new step, new randomness
    u = uniform_from_keys(a, 0)
    assert ((u > 0) & (u < 1)).all()


def test_generate_logprobs_match_forward_and_eos_is_final(model):
    ids, mask = prompts()
    n = 4
    keys = sample_keys(0, 0, torch.arange(3).repeat_interleave(n), torch.arange(n).repeat(3))
    ro = generate(model, ids, mask, n_samples=n, keys=keys, max_new_tokens=10, eos_token_ids=[1], pad_token_id=0, temperature=0.7)
    assert ro.completion_ids.shape[0] == 12
    lp = completion_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, temperature=0.7)
    m = ro.completion_mask.bool()
    assert torch.allclose(lp[m], ro.logprobs[m], atol=1e-5)
    assert (ro.logprobs[~m] == 0).all()
    for row, msk, trunc in zip(ro.completion_ids, ro.completion_mask, ro.truncated):
        L = int(msk.sum())
        assert msk[:L].all() and not msk[L:].any()  # right-padded
        assert (row[L:] == 0).all()
        if not trunc:
            assert row[L - 1] == 1 and (row[: L - 1] != 1).all()  # ends at its first EOS


def test_generate_is_batch_layout_invariant(model):
    ids, mask = prompts()
    n = 3
    pidx = torch.tensor([10, 11, 12]).repeat_interleave(n)
    sidx = torch.arange(n).repeat(3)
    keys = sample_keys(0, 2, pidx, sidx)
    full = generate(model, ids, mask, n_samples=n, keys=keys, max_new_tokens=8, eos_token_ids=[1], pad_token_id=0)
    # the second prompt alone, unpadded, as another process would generate it
    alone = generate(model, ids[1:2], mask[1:2], n_samples=n, keys=keys[n : 2 * n], max_new_tokens=8, eos_token_ids=[1], pad_token_id=0)
    L = alone.completion_ids.shape[1]
    assert torch.equal(full.completion_ids[n : 2 * n, :L], alone.completion_ids)


def test_generate_survives_nan_and_inf_logits(model):
    ids, mask = prompts()
    calls = {"n": 0}

    def poison(logits):
        calls["n"] += 1
        logits = logits.clone()
        logits[0] = NAN
        logits[1] = -INF
        logits[2, 3] = INF
        logits[3, ::2] = NAN
        if calls["n"] % 2:
            logits[4:] = NAN
        return logits

    n = 3
    keys = sample_keys(0, 0, torch.arange(3).repeat_interleave(n), torch.arange(n).repeat(3))
    ro = generate(model, ids, mask, n_samples=n, keys=keys, max_new_tokens=6, eos_token_ids=[1], pad_token_id=0,
                  top_p=0.9, top_k=5, logits_hook=poison)
    assert ro.repaired_rows > 0
    assert torch.isfinite(ro.logprobs).all()
    m = ro.completion_mask.bool()
    assert (ro.completion_ids[2][m[2]] == 3).all()  # +inf token is the only choice
    assert (ro.completion_ids[3][m[3]] % 2 == 1).all()  # nan tokens never sampled
    assert ((ro.completion_ids >= 0) & (ro.completion_ids < 24)).all()
