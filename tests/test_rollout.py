import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from prorl.logprobs import completion_logprobs
from prorl.rollout import generate
from prorl.sampling import repair_logits, sample_keys, sanitize_logits

from .conftest import toy_llama, toy_prompts

INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def model():
    return toy_llama()


prompts = toy_prompts


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


# ----------------------------------------------------------------------
# the fast sampling loop and prompt sharing against their reference paths

from prorl import rollout as rollout_mod  # noqa: E402


@pytest.fixture
def one_thread():
    """Bit-for-bit comparisons run on one intra-op thread: with several, PyTorch's CPU flash-attention
    kernel rounds a row differently depending on its position in the batch."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _group_keys(n_prompts, n, step=0):
    return sample_keys(0, step, torch.arange(n_prompts).repeat_interleave(n), torch.arange(n).repeat(n_prompts))


def _assert_same_rollout(a, b, exact_logprobs=True):
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.truncated, b.truncated)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert a.repaired_rows == b.repaired_rows
    if exact_logprobs:
        assert torch.equal(a.logprobs, b.logprobs)
    else:
        assert torch.allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(temperature=1.0),
    dict(temperature=0.7, eos_token_ids=[1, 5]),
    dict(temperature=1.3, top_p=0.9, top_k=5),
])
def test_fast_generate_is_bit_identical_to_plain_loop_while_dropping_finished_rows(model, one_thread, monkeypatch, kw):
    ids, mask = prompts()  # left-padded
    n = 8  # 24 rows: several EOS drops happen before fewer than 16 rows are left
    kw = dict(dict(n_samples=n, keys=_group_keys(3, n), max_new_tokens=30, eos_token_ids=[1], pad_token_id=0), **kw)
    drops = []
    select = rollout_mod._BufferedLayer.batch_select_indices
    monkeypatch.setattr(rollout_mod._BufferedLayer, "batch_select_indices", lambda self, idx: (drops.append(idx.numel()), select(self, idx))[1])
    fast = generate(model, ids, mask, **kw)
    plain = generate(model, ids, mask, fast=False, **kw)
    assert drops and min(drops) >= rollout_mod._MIN_ROWS  # rows really were dropped from the KV cache
    _assert_same_rollout(fast, plain)
    assert not fast.truncated.all() and fast.truncated.any()


def test_fast_generate_matches_plain_loop_on_several_threads(model):
    ids, mask = prompts()
    kw = dict(n_samples=8, keys=_group_keys(3, 8, step=4), max_new_tokens=30, eos_token_ids=[1], pad_token_id=0)
    _assert_same_rollout(generate(model, ids, mask, **kw), generate(model, ids, mask, fast=False, **kw), exact_logprobs=False)


def test_fast_generate_unpadded_prompts_and_nan_hook_match_plain_loop(model, one_thread):
    ids = torch.tensor([[4, 5, 6, 7], [8, 2, 3, 4]])
    mask = torch.ones_like(ids)  # no padding: the fast loop passes no attention mask at all
    kw = dict(n_samples=4, keys=_group_keys(2, 4), max_new_tokens=12, eos_token_ids=[1], pad_token_id=0)
    _assert_same_rollout(generate(model, ids, mask, **kw), generate(model, ids, mask, fast=False, **kw))

    def poison(logits):  # a hook sees the whole batch (no rows dropped), every token
        logits = logits.clone()
        logits[0] = NAN
        logits[1, 3] = INF
        return logits

    a = generate(model, ids, mask, logits_hook=poison, **kw)
    b = generate(model, ids, mask, logits_hook=poison, fast=False, **kw)
    _assert_same_rollout(a, b)
    assert a.repaired_rows == 2 * a.completion_ids.size(1)


def test_fast_generate_single_token_and_all_finished_early(model, one_thread):
    ids, mask = prompts()
    for max_new in (1, 2):
        kw = dict(n_samples=2, keys=_group_keys(3, 2), max_new_tokens=max_new, eos_token_ids=[1], pad_token_id=0)
        _assert_same_rollout(generate(model, ids, mask, **kw), generate(model, ids, mask, fast=False, **kw))
    # every token is EOS: both loops stop after one token
    kw = dict(n_samples=8, keys=_group_keys(3, 8), max_new_tokens=10, eos_token_ids=list(range(24)), pad_token_id=0)
    a, b = generate(model, ids, mask, **kw), generate(model, ids, mask, fast=False, **kw)
    _assert_same_rollout(a, b)
    assert a.completion_ids.shape == (24, 1) and not a.truncated.any()


def test_buffered_cache_layer_behaves_like_concatenation():
    from transformers.cache_utils import DynamicLayer

    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    buf = rollout_mod._BufferedLayer(k, v, capacity=6, repeats=2)  # one token of room, then it grows
    ref = DynamicLayer()
    ref.update(k.repeat_interleave(2, 0), v.repeat_interleave(2, 0))
    for _ in range(3):
        nk, nv = torch.randn(4, 3, 1, 4), torch.randn(4, 3, 1, 4)
        got, want = buf.update(nk, nv), ref.update(nk, nv)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    idx = torch.tensor([3, 0])
    buf.batch_select_indices(idx)
    ref.batch_select_indices(idx)
    assert buf.get_seq_length() == ref.get_seq_length() == 8
    assert torch.equal(buf.keys, ref.keys) and torch.equal(buf.values, ref.values)



# ----------------------------------------------------------------------
# The static (CUDA-graph) loop, exercised on the CPU

_SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique_consecutive", "_unique2", "equal", "is_nonzero"}


class _NoHostSync(TorchDispatchMode):
    """Fails on every op that reads a value back to the host (on a GPU: a sync; inside a graph: an error)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in _SYNCING_OPS:
            raise AssertionError(f"host sync inside the decode step: aten::{name}")
        return func(*args, **(kwargs or {}))


class _ReplayOnCpu:
    """Stands in for a captured CUDA graph: replay() re-runs the recorded step, under _NoHostSync."""

    captured = 0

    def __init__(self, step):
        self.step = step
        _ReplayOnCpu.captured += 1

    def replay(self):
        with _NoHostSync():
            self.step()

    def pool(self):
        return None


@pytest.mark.parametrize("kw", [
    dict(temperature=1.0, n_samples=16, eos_token_ids=[1, 5, 7]),  # 48 rows: shrinks to the 24-row bucket
    dict(temperature=0.7, n_samples=32, eos_token_ids=[1, 5]),  # 96 -> 48 -> 24
    dict(temperature=1.3, top_p=0.9, top_k=5, n_samples=8, eos_token_ids=[1]),
])
def test_static_loop_samples_what_the_plain_loop_samples(model, one_thread, kw):
    ids, mask = prompts()  # left-padded
    n = kw["n_samples"]
    kw = dict(dict(keys=_group_keys(3, n), max_new_tokens=40, pad_token_id=0), **kw)
    static = generate(model, ids, mask, static=True, **kw)
    plain = generate(model, ids, mask, fast=False, **kw)
    # attention also runs over the (masked, zero) columns not written yet: log-probs agree to rounding
    _assert_same_rollout(static, plain, exact_logprobs=False)
    assert static.truncated.any() and not static.truncated.all()


def test_static_loop_drops_finished_rows_into_smaller_buckets(model, one_thread, monkeypatch):
    assert rollout_mod._row_buckets(256) == [256, 128, 64, 32, 16]
    assert rollout_mod._row_buckets(96) == [96, 48, 24]
    assert rollout_mod._row_buckets(24) == [24] and rollout_mod._row_buckets(7) == [7]
    made = []
    real = rollout_mod._StaticLayer.__init__
    monkeypatch.setattr(rollout_mod._StaticLayer, "__init__", lambda self, k, v, c: (made.append(k.shape[0]), real(self, k, v, c))[1])
    ids, mask = prompts()
    ro = generate(model, ids, mask, static=True, n_samples=32, keys=_group_keys(3, 32), max_new_tokens=40,
                  eos_token_ids=[1, 5], pad_token_id=0)
    sizes = sorted(set(made), reverse=True)
    assert sizes[0] == 96 and len(sizes) > 1 and sizes[-1] >= rollout_mod._MIN_ROWS  # it did shrink
    assert ro.completion_mask.sum() < 96 * 40


def test_graph_step_has_no_host_sync_and_replays_give_the_same_rollout(model, one_thread, monkeypatch):
    """The step that a GPU captures, 'replayed' on the CPU under a mode that fails on any host read:
    what CUDA graph capture needs (no sync, no data-dependent Python) and the same rollout."""
    monkeypatch.setattr(rollout_mod, "_record_step", lambda step, pool: _ReplayOnCpu(step))
    _ReplayOnCpu.captured = 0
    ids, mask = prompts()
    kw = dict(n_samples=32, keys=_group_keys(3, 32), max_new_tokens=40, eos_token_ids=[1, 5], pad_token_id=0,
              temperature=0.9, top_p=0.95, top_k=10)
    graphed = rollout_mod._generate_static(model, ids, mask, graphs=True, **kw)
    eager = rollout_mod._generate_static(model, ids, mask, graphs=False, **kw)
    assert _ReplayOnCpu.captured >= 2  # one per bucket
    _assert_same_rollout(graphed, eager)
    _assert_same_rollout(graphed, generate(model, ids, mask, fast=False, **kw), exact_logprobs=False)


def test_static_loop_repairs_nan_logits_without_a_sync(one_thread):
    logits = torch.tensor([[0.0, 1.0, 2.0], [NAN, 1.0, 2.0], [INF, 1.0, INF], [-INF, -INF, -INF]])
    with _NoHostSync():
        out, rows = repair_logits(logits)
    assert int(rows) == 3
    assert torch.equal(out, sanitize_logits(logits)[0]) and torch.equal(out[0], logits[0])


def test_static_loop_falls_back_for_models_it_cannot_run(one_thread):
    eager_attn = toy_llama()
    eager_attn.config._attn_implementation = "eager"  # takes additive float masks, not the static loop's boolean one
    ids, mask = prompts()
    kw = dict(n_samples=4, keys=_group_keys(3, 4), max_new_tokens=12, eos_token_ids=[1], pad_token_id=0)
    _assert_same_rollout(generate(eager_attn, ids, mask, static=True, **kw), generate(eager_attn, ids, mask, fast=False, **kw))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU (this test runs in launch/gpu_check.sh)")
@pytest.mark.parametrize("bf16", [False, True])
def test_cuda_graph_decode_matches_the_eager_static_loop(bf16):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, eos_token_id=1, pad_token_id=0)
    gpu = LlamaForCausalLM(cfg).cuda().eval()
    ids, mask = prompts()
    ids, mask = ids.cuda(), mask.cuda()
    kw = dict(n_samples=32, keys=_group_keys(3, 32).cuda(), max_new_tokens=48, eos_token_ids=[1, 5, 7], pad_token_id=0)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        graphed = generate(gpu, ids, mask, **kw)  # static + graphs: the default on CUDA
        eager = generate(gpu, ids, mask, static=True, cuda_graphs=False, **kw)
        dynamic = generate(gpu, ids, mask, static=False, **kw)
    assert type(gpu) not in rollout_mod._graph_failures
    _assert_same_rollout(graphed, eager)  # the same kernels, replayed
    assert graphed.truncated.any() and not graphed.truncated.all()
    if not bf16:  # float32: the dynamic loop samples the same tokens
        _assert_same_rollout(graphed, dynamic, exact_logprobs=False)
