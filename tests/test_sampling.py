"""The sampler's math (`prorl.sampling`): NaN repair, filtering, keyed uniforms, inverse-CDF sampling."""

import pytest
import torch

from prorl.sampling import (
    NanSafeLogitsProcessor, filter_logits, sample_keys, sample_tokens, sanitize_logits, uniform_from_keys, uniform_table,
)

INF, NAN = float("inf"), float("nan")


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


def test_uniform_table_is_uniform_from_keys_bit_for_bit():
    keys = sample_keys(7, 3, torch.arange(50), torch.arange(50) % 4)
    table = uniform_table(keys, 40)
    assert table.dtype == torch.float64 and table.shape == (50, 40)
    assert all(torch.equal(table[:, t], uniform_from_keys(keys, t)) for t in range(40))
