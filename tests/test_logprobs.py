"""Completion log-probs (`prorl.logprobs`): chunked through the output head, prompts shared by a
group, each against the full forward's logits and gradients."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaForCausalLM

from prorl import logprobs as logprobs_mod
from prorl.logprobs import completion_logprobs, entropy_from_logits, token_logprobs

from .conftest import toy_llama, toy_prompts


def close(actual, expected, atol=1e-6, rtol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def model():
    return toy_llama()


prompts = toy_prompts


def _completions(B, Lc, seed=0):
    g = torch.Generator().manual_seed(seed)
    comp = torch.randint(2, 24, (B, Lc), generator=g)
    lengths = torch.randint(1, Lc + 1, (B,), generator=g)
    cmask = (torch.arange(Lc)[None] < lengths[:, None]).long()
    return torch.where(cmask.bool(), comp, 0), cmask


def test_shared_prompt_logprobs_and_gradients_match_the_full_forward(model):
    ids, mask = prompts()
    ids, mask = ids[[0, 0, 0, 1, 1, 2, 2, 2, 2, 0]], mask[[0, 0, 0, 1, 1, 2, 2, 2, 2, 0]]  # runs of 3, 2, 4, 1
    comp, cmask = _completions(10, 7)
    out = {}
    for share in (False, True):
        model.zero_grad()
        logp, ent = completion_logprobs(model, ids, mask, comp, cmask, temperature=0.7, with_entropy=True, share_prompts=share)
        (logp * cmask).sum().backward()
        out[share] = logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    m = cmask.bool()
    assert torch.allclose(out[True][0][m], out[False][0][m], rtol=0, atol=1e-5)
    assert torch.allclose(out[True][1][m], out[False][1][m], rtol=0, atol=1e-5)
    for name, g in out[False][2].items():
        assert torch.allclose(out[True][2][name], g, rtol=1e-4, atol=1e-5), name


def test_prompt_sharing_is_chosen_only_when_it_pays(model, monkeypatch):
    calls = []
    shared = logprobs_mod._shared_prompt_hidden
    monkeypatch.setattr(logprobs_mod, "_shared_prompt_hidden", lambda *a: (calls.append(1), shared(*a))[1])
    ids, mask = prompts()
    comp, cmask = _completions(12, 3)
    rep = torch.arange(3).repeat_interleave(4)
    with torch.no_grad():
        lp = completion_logprobs(model, ids[rep], mask[rep], comp, cmask)  # 9 of 12 prompt passes saved
        assert calls == [1]
        plain = completion_logprobs(model, ids[rep], mask[rep], comp, cmask, share_prompts=False)
        assert calls == [1] and torch.allclose(lp[cmask.bool()], plain[cmask.bool()], atol=1e-5)
        completion_logprobs(model, ids, mask, comp[:3], cmask[:3])  # no repeated prompt: nothing to share
        long_comp, long_mask = _completions(12, 60)
        completion_logprobs(model, ids[rep], mask[rep], long_comp, long_mask)  # saves < 10% of the tokens
    assert calls == [1]
    assert not logprobs_mod._can_share_prompts(torch.nn.Linear(2, 2))  # wrappers/other modules: full forward


def _largest_logits(fn, vocab, hidden):
    """Run fn; return the largest element count of any logits-shaped tensor (last dimension `vocab`,
    not the [hidden, vocab] head weight itself) that it made."""
    seen = [0]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == vocab and tuple(t.shape) != (hidden, vocab):
                    seen[0] = max(seen[0], t.numel())
            return out

    with Watch():
        fn()
    return seen[0]


@pytest.mark.parametrize("share", [False, True])
def test_chunked_head_logprobs_match_full_logits_with_gradients(model, monkeypatch, share):
    ids, mask = prompts()
    rep = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    ids, mask = ids[rep], mask[rep]
    comp, cmask = _completions(10, 7)
    V = model.config.vocab_size
    out = {}
    for budget in (2**25, 3 * V):  # one chunk, or 3 positions at a time (24 chunks)
        monkeypatch.setattr(logprobs_mod, "_CHUNK_ELEMS", budget)
        model.zero_grad()
        logp, ent = completion_logprobs(model, ids, mask, comp, cmask, temperature=0.7, with_entropy=True, share_prompts=share)
        (logp * cmask).sum().backward()
        out[budget] = logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}
    monkeypatch.setattr(logprobs_mod, "_decoder_and_head", lambda m: None)  # the full-logits forward
    model.zero_grad()
    logp, ent = completion_logprobs(model, ids, mask, comp, cmask, temperature=0.7, with_entropy=True, share_prompts=False)
    (logp * cmask).sum().backward()
    full = logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    m = cmask.bool()
    for got in out.values():
        assert torch.allclose(got[0][m], full[0][m], rtol=0, atol=1e-5)
        assert torch.allclose(got[1][m], full[1][m], rtol=0, atol=1e-5)
        for name, g in full[2].items():
            assert torch.allclose(got[2][name], g, rtol=1e-4, atol=1e-6), name


def test_chunked_logprobs_never_hold_every_position_logits(model, monkeypatch):
    V = model.config.vocab_size
    monkeypatch.setattr(logprobs_mod, "_CHUNK_ELEMS", 4 * V)  # 4 positions' logits at a time
    ids, mask = prompts()
    comp, cmask = _completions(3, 30)

    def train_pass():
        logp = completion_logprobs(model, ids, mask, comp, cmask, share_prompts=False)
        (logp * cmask).sum().backward()

    H = model.config.hidden_size
    chunked = _largest_logits(train_pass, V, H)
    monkeypatch.setattr(logprobs_mod, "_decoder_and_head", lambda m: None)
    full = _largest_logits(train_pass, V, H)
    model.zero_grad()
    assert full >= 3 * 30 * V  # the old path: [rows, length, V] at once
    assert chunked <= 4 * V  # forward and backward: one chunk's logits at a time


def test_models_whose_logits_are_not_head_of_decoder_use_the_full_forward(model):
    from transformers import PreTrainedModel

    assert logprobs_mod._decoder_and_head(model) is not None
    assert logprobs_mod._decoder_and_head(torch.nn.Linear(2, 2)) is None

    class Capped(LlamaForCausalLM):  # e.g. Cohere's logit_scale, Gemma-2's soft-capping: after the head
        def forward(self, *a, **kw):
            out = super().forward(*a, **kw)
            out.logits = 2 * torch.tanh(out.logits * 4)
            return out

    torch.manual_seed(0)
    capped = Capped(model.config).eval()
    assert isinstance(capped, PreTrainedModel) and logprobs_mod._decoder_and_head(capped) is None


# --------------------------------------------------------------------------------------------------
# logits -> log-probs, entropy
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_token_logprobs_matches_log_softmax(temperature):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11, generator=gen)).requires_grad_(True)
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    before = logits.detach().clone()
    out = token_logprobs(logits, tokens, temperature)
    ref = torch.log_softmax(logits / temperature, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    assert out.shape == (3, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.detach(), before)  # input not modified in place


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_low_precision_upcasts(dtype, temperature, monkeypatch):
    monkeypatch.setattr(logprobs_mod, "_CHUNK_ELEMS", 3 * 13)  # 3 rows per chunk: exercise the chunk loop
    gen = torch.Generator().manual_seed(2)
    logits = (4 * torch.randn(2, 7, 13, generator=gen)).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 13, (2, 7), generator=gen)
    before = logits.detach().clone()
    out = token_logprobs(logits, tokens, temperature)
    assert out.dtype == torch.float32
    ref = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert g.dtype == dtype
    torch.testing.assert_close(g.float(), g_ref.float(), atol=1e-2, rtol=1e-2)
    assert torch.equal(logits.detach(), before)


def test_token_logprobs_large_logits_and_errors():
    logits = torch.tensor([[[1000.0, 0.0, -1000.0]]])
    out = token_logprobs(logits, torch.tensor([[0]]))
    close(out, [[0.0]])  # log softmax of the dominant logit is 0, no overflow
    close(token_logprobs(logits, torch.tensor([[1]])), [[-1000.0]])
    with pytest.raises(ValueError):
        token_logprobs(logits, torch.tensor([[0]]), temperature=0.0)
    with pytest.raises(ValueError):
        token_logprobs(logits, torch.tensor([0, 1]))


def test_entropy_from_logits():
    # uniform over V: log V
    close(entropy_from_logits(torch.zeros(2, 3, 8)), torch.full((2, 3), math.log(8)))
    # two equal logits and a masked -inf entry: log 2, finite gradient
    x = torch.tensor([[0.5, 0.5, -float("inf")]], requires_grad=True)
    h = entropy_from_logits(x)
    close(h, [math.log(2)])
    assert torch.isfinite(torch.autograd.grad(h.sum(), x)[0]).all()
    # against the definition -sum p log p, large scale, bf16 upcast
    gen = torch.Generator().manual_seed(3)
    z = 30 * torch.randn(4, 9, generator=gen)
    ref = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(z), ref, atol=1e-5, rtol=1e-5)
    zb = z.bfloat16()
    hb = entropy_from_logits(zb)
    assert hb.dtype == torch.float32
    refb = -(torch.softmax(zb.float(), -1) * torch.log_softmax(zb.float(), -1)).sum(-1)
    torch.testing.assert_close(hb, refb, atol=1e-5, rtol=1e-5)
    # temperature: H(softmax(z / T)), input untouched (bf16 and float32 paths)
    for t in (0.5, 2.0):
        refb_t = -(torch.softmax(zb.float() / t, -1) * torch.log_softmax(zb.float() / t, -1)).sum(-1)
        torch.testing.assert_close(entropy_from_logits(zb, temperature=t), refb_t, atol=1e-5, rtol=1e-5)
        before = z.clone()
        ref_t = -(torch.softmax(z / t, -1) * torch.log_softmax(z / t, -1)).sum(-1)
        torch.testing.assert_close(entropy_from_logits(z, t), ref_t, atol=1e-5, rtol=1e-5)
        assert torch.equal(z, before)
    with pytest.raises(ValueError):
        entropy_from_logits(z, temperature=0.0)
