"""Rollout: sample a group of completions per prompt, keeping per-token log-probs.

Why our own sampling loop instead of `model.generate`:
- randomness is keyed by (seed, step, prompt index, sample index) through a counter-based hash, so
  a completion does not depend on which process or batch row generated it (world-size invariance);
- each prompt is pre-filled once and its KV cache shared by its n samples;
- logits are sanitised every step, so `inf`/`nan` can never reach the sampler;
- on a GPU each decode step is a CUDA graph, replayed (the static loop below).
The per-token math (NaN repair, filtering, keyed sampling) is in `prorl.sampling`; this module runs
the model.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from dataclasses import dataclass

import torch
from transformers import DynamicCache

try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # transformers < 4.56: no per-layer caches; `generate` runs the plain loop
    DynamicLayer = None

from .sampling import filter_logits, repair_logits, sample_tokens, sanitize_logits, uniform_from_keys, uniform_table

# ----------------------------------------------------------------------
# The sampling loop

@dataclass
class Rollout:
    """A batch of completions, prompt-major: rows [i*n, (i+1)*n) are prompt i's group."""

    prompt_ids: torch.Tensor  # [B, Lp] left-padded
    prompt_mask: torch.Tensor  # [B, Lp]
    completion_ids: torch.Tensor  # [B, Lc] right-padded
    completion_mask: torch.Tensor  # [B, Lc] 1 for generated tokens (EOS included)
    logprobs: torch.Tensor  # [B, Lc] sampler log-probs at the sampling temperature (0 on padding)
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without EOS
    repaired_rows: int  # logits rows that held inf/nan and were sanitised


def _cache_kwarg(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; support both."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps forward(**kwargs)
    params = inspect.signature(target.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    n_samples: int,
    keys: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: list[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    logits_hook=None,
    fast: bool = True,
    static: bool | None = None,
    cuda_graphs: bool = True,
) -> Rollout:
    """Sample `n_samples` completions for each prompt.

    prompt_ids, prompt_mask: [P, Lp] left-padded prompts. keys: [P * n_samples] int64 sample keys
    (see `sample_keys`), prompt-major. Returns a `Rollout` with B = P * n_samples rows.
    `logits_hook(logits) -> logits` lets tests inject faults before sanitising; it always sees the
    full [B, V] batch (finished rows are then kept in the batch).

    `fast=True` (the default) does the same sampling as `fast=False` (the plain loop, kept as the
    reference) with less work per token: the KV cache grows in place in a preallocated buffer instead
    of being re-concatenated every token, the per-token uniforms are computed once up front, the full
    NaN/inf repair only runs when some logit is not finite, the all-ones attention mask of unpadded
    prompts is not rebuilt every token, and rows that emitted EOS are dropped from the batch and the
    KV cache (once they are 1/8 of it, while >= 16 rows remain) so later tokens cost less.
    Until the first drop the two paths are bit-identical. After it, with one intra-op thread they
    still are; with several, PyTorch's CPU flash-attention kernel rounds a row's output differently
    depending on its position in the batch, so log-probs may differ in the last bit (and a token only
    if its uniform falls within that rounding of a CDF boundary). With `logits_hook` rows are never
    dropped.

    `static=True` runs the fixed-shape loop (`_generate_static`): the same sampling with a KV cache of
    fixed size and finished rows dropped in steps of batch-size buckets, so that on a GPU each decode
    step is captured once as a CUDA graph (`cuda_graphs`) and replayed, with no host sync per token.
    `static=None` (default) picks it for CUDA tensors when `cuda_graphs` is on; on the CPU the dynamic
    loop is faster.
    """
    with torch.no_grad(), attention_backends(prompt_ids):
        use_static = static if static is not None else (prompt_ids.is_cuda and cuda_graphs)
        if fast and DynamicLayer is not None and use_static and logits_hook is None:
            return _generate_static(
                model, prompt_ids, prompt_mask, n_samples=n_samples, keys=keys, max_new_tokens=max_new_tokens,
                eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, temperature=temperature, top_p=top_p,
                top_k=top_k, graphs=cuda_graphs and prompt_ids.is_cuda,
            )
        if fast and DynamicLayer is not None:
            return _generate_fast(
                model, prompt_ids, prompt_mask, n_samples=n_samples, keys=keys, max_new_tokens=max_new_tokens,
                eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, temperature=temperature, top_p=top_p,
                top_k=top_k, logits_hook=logits_hook,
            )
        return _generate_plain(
            model, prompt_ids, prompt_mask, n_samples=n_samples, keys=keys, max_new_tokens=max_new_tokens,
            eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, temperature=temperature, top_p=top_p,
            top_k=top_k, logits_hook=logits_hook,
        )


def _prefill(model, prompt_ids, prompt_mask):
    """One forward over the [P, Lp] prompts: (last-position logits [P, V], their KV cache, positions [P, Lp])."""
    position = prompt_mask.long().cumsum(-1) - 1
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position.clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
        **{_cache_kwarg(model): DynamicCache()},
    )
    return out.logits[:, -1, :], _returned_cache(out), position


def _generate_plain(
    model, prompt_ids, prompt_mask, *, n_samples, keys, max_new_tokens, eos_token_ids, pad_token_id,
    temperature=1.0, top_p=1.0, top_k=0, logits_hook=None, prefilled=None,
) -> Rollout:
    """The reference sampling loop: every row is run to the end, the cache grows by concatenation.
    `prefilled`: `_prefill`'s result when the caller already ran it."""
    device = prompt_ids.device
    cache_kw = _cache_kwarg(model)
    P, Lp = prompt_ids.shape
    B = P * n_samples
    last_logits, cache, position = prefilled or _prefill(model, prompt_ids, prompt_mask)
    cache.batch_repeat_interleave(n_samples)  # the prompt's KV is computed once, shared by its group
    logits = last_logits.repeat_interleave(n_samples, dim=0)
    attn = prompt_mask.repeat_interleave(n_samples, dim=0)
    next_pos = position[:, -1:].repeat_interleave(n_samples, dim=0) + 1

    eos = torch.tensor(sorted(set(eos_token_ids)), device=device)
    tokens_out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logp_out = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    mask_out = torch.zeros((B, max_new_tokens), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    repaired = 0
    length = 0
    for t in range(max_new_tokens):
        logits = logits.float()
        if logits_hook is not None:
            logits = logits_hook(logits)
        logits, n_bad = sanitize_logits(logits)
        repaired += n_bad
        scaled = logits / temperature
        logp_all = torch.log_softmax(scaled, dim=-1)
        tok = sample_tokens(filter_logits(scaled, top_k, top_p), uniform_from_keys(keys, t))
        alive = ~finished
        tokens_out[:, t] = torch.where(alive, tok, torch.full_like(tok, pad_token_id))
        logp_out[:, t] = torch.where(alive, logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1), torch.zeros_like(logp_out[:, t]))
        mask_out[:, t] = alive.long()
        finished = finished | (alive & torch.isin(tok, eos))
        length = t + 1
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
        out = model(
            input_ids=tokens_out[:, t : t + 1],
            attention_mask=attn,
            position_ids=next_pos,
            use_cache=True,
            **{cache_kw: cache},
        )
        cache = _returned_cache(out)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1

    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(n_samples, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(n_samples, dim=0),
        completion_ids=tokens_out[:, :length],
        completion_mask=mask_out[:, :length],
        logprobs=logp_out[:, :length],
        truncated=~finished,
        repaired_rows=repaired,
    )


# ----------------------------------------------------------------------
# The fast loop

class _BufferedLayer(DynamicLayer or object):
    """A `DynamicLayer` whose keys/values are views into a preallocated [B, H, capacity, D] buffer:
    appending a token writes it in place, instead of `torch.cat` copying the whole cache every token.
    The views hold exactly the same values as the concatenated tensors, so attention is unchanged."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, repeats: int = 1):
        super().__init__()
        P, H, L, _ = keys.shape
        self._k = keys.new_empty((P * repeats, H, capacity, keys.shape[-1]))
        self._v = values.new_empty((P * repeats, H, capacity, values.shape[-1]))
        # the prompt's KV is computed once, shared by its group of `repeats` rows
        self._k.view(P, repeats, H, capacity, -1)[:, :, :, :L].copy_(keys.unsqueeze(1))
        self._v.view(P, repeats, H, capacity, -1)[:, :, :, :L].copy_(values.unsqueeze(1))
        self.device = keys.device
        self.is_initialized = True
        self._set_len(L)

    def _set_len(self, n: int) -> None:
        self._len = n
        self.keys = self._k[:, :, :n]
        self.values = self._v[:, :, :n]

    def update(self, key_states, value_states, *args, **kwargs):
        n, m = self._len, key_states.shape[-2]
        if n + m > self._k.shape[-2]:  # out of room (never in `generate`): grow geometrically
            self._k, self._v = self._grown(self._k, n, n + m), self._grown(self._v, n, n + m)
        self._k[:, :, n : n + m].copy_(key_states)
        self._v[:, :, n : n + m].copy_(value_states)
        self._set_len(n + m)
        return self.keys, self.values

    @staticmethod
    def _grown(buf, n, need):
        new = buf.new_empty((*buf.shape[:2], max(need, 2 * buf.shape[2]), buf.shape[3]))
        new[:, :, :n].copy_(buf[:, :, :n])
        return new

    def get_seq_length(self) -> int:
        return self._len

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        n = self._len
        k = self._k.new_empty((indices.numel(), *self._k.shape[1:]))
        v = self._v.new_empty((indices.numel(), *self._v.shape[1:]))
        k[:, :, :n] = self._k[indices, :, :n]  # only the filled part is copied
        v[:, :, :n] = self._v[indices, :, :n]
        self._k, self._v = k, v
        self._set_len(n)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._k = self._k.repeat_interleave(repeats, dim=0)
        self._v = self._v.repeat_interleave(repeats, dim=0)
        self._set_len(self._len)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self._set_len(max(self._len + tokens_to_remove, 0))
        elif tokens_to_remove > 0:
            super().crop(tokens_to_remove)  # raises, as DynamicLayer does

    def reset(self) -> None:
        self._set_len(0)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self._k.device))

    def offload(self):  # offloading would move the views, not the buffers
        raise NotImplementedError("prorl's rollout cache does not offload")


def _buffer_cache(cache, capacity: int, repeats: int) -> bool:
    """Swap a prefilled DynamicCache's layers for buffered ones (in place); False if the cache has any
    layer type we do not know (sliding windows, linear attention, ...): then the plain loop runs."""
    layers = getattr(cache, "layers", None)
    if not layers or getattr(cache, "offloading", False):
        return False
    if any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return False
    cache.layers = [_BufferedLayer(l.keys, l.values, capacity, repeats) for l in layers]
    return True


# Finished rows are dropped only while at least this many rows stay in the batch. Below ~16 rows a
# decode step costs about the same whatever the row count (it is bound by reading the weights), and
# BLAS takes other kernels for very small batches (seen on a 2-core x86 CPU with OpenBLAS: 1-3 rows
# on one thread, up to 11 on two) whose rounding would make log-probs differ from the plain loop's.
_MIN_ROWS = 16


def _generate_fast(
    model, prompt_ids, prompt_mask, *, n_samples, keys, max_new_tokens, eos_token_ids, pad_token_id,
    temperature=1.0, top_p=1.0, top_k=0, logits_hook=None, prefilled=None,
) -> Rollout:
    device = prompt_ids.device
    cache_kw = _cache_kwarg(model)
    P, Lp = prompt_ids.shape
    B = P * n_samples
    last_logits, cache, position = prefilled or _prefill(model, prompt_ids, prompt_mask)
    if not _buffer_cache(cache, Lp + max_new_tokens, n_samples):  # a cache layer we do not know: plain loop
        return _generate_plain(
            model, prompt_ids, prompt_mask, n_samples=n_samples, keys=keys, max_new_tokens=max_new_tokens,
            eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, temperature=temperature, top_p=top_p,
            top_k=top_k, logits_hook=logits_hook, prefilled=(last_logits, cache, position),
        )
    logits = last_logits.repeat_interleave(n_samples, dim=0)
    del last_logits
    # the attention mask of every position the loop can reach, sliced (a view) per token
    attn = torch.ones((B, Lp + max_new_tokens), dtype=prompt_mask.dtype, device=device)
    attn[:, :Lp] = prompt_mask.repeat_interleave(n_samples, dim=0)
    next_pos = position[:, -1:].repeat_interleave(n_samples, dim=0) + 1
    uniforms = uniform_table(keys, max_new_tokens)
    # no padding anywhere: the mask is all ones and transformers would drop it anyway (same attention call)
    unpadded = bool(prompt_mask.all())

    eos_list = sorted(set(int(e) for e in eos_token_ids))
    eos = torch.tensor(eos_list, device=device)
    single_eos = eos_list[0] if len(eos_list) == 1 else None
    filtering = bool(top_k and top_k < logits.size(-1)) or top_p < 1.0
    compact = logits_hook is None  # a hook addresses rows of the full batch: keep them in place

    rows = torch.arange(B, device=device)  # batch row -> output row
    live = torch.ones(B, dtype=torch.bool, device=device)  # batch rows still generating
    n_live = B
    done_at = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)  # completion length per output row
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    segments = []  # (output rows, first step, [tokens per step], [log-probs per step]) between compactions
    seg_toks, seg_lps, seg_start = [], [], 0
    repaired = 0
    length = 0
    for t in range(max_new_tokens):
        logits = logits.float()
        if logits_hook is not None:
            logits = logits_hook(logits)
        if not math.isfinite(float(logits.sum())):  # any NaN/inf makes the sum non-finite; then repair
            logits, n_bad = sanitize_logits(logits)
            repaired += n_bad
        scaled = logits if temperature == 1.0 else logits / temperature  # x / 1.0 == x exactly
        logp_all = torch.log_softmax(scaled, dim=-1)
        tok = sample_tokens(filter_logits(scaled, top_k, top_p) if filtering else scaled, uniforms[:, t])
        seg_toks.append(tok)
        seg_lps.append(logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1))
        length = t + 1
        hit = (tok == single_eos) if single_eos is not None else torch.isin(tok, eos)
        hit &= live
        if bool(hit.any()):
            out_rows = rows[hit]
            done_at[out_rows] = t + 1
            finished[out_rows] = True
            live &= ~hit
            n_live = int(live.sum())
            if n_live == 0:
                break
        if t == max_new_tokens - 1:
            break
        n_rows = rows.numel()
        if compact and (n_rows - n_live) * 8 >= n_rows and n_live >= _MIN_ROWS:
            # drop finished rows from the batch and the KV cache
            segments.append((rows, seg_start, seg_toks, seg_lps))
            seg_toks, seg_lps, seg_start = [], [], t + 1
            keep = live.nonzero().squeeze(-1)
            rows, tok = rows[keep], tok[keep]
            live = live[keep]
            attn, next_pos, uniforms = attn[keep], next_pos[keep], uniforms[keep]
            cache.batch_select_indices(keep)
        out = model(
            input_ids=tok.unsqueeze(-1),
            attention_mask=None if unpadded else attn[:, : Lp + t + 1],
            position_ids=next_pos,
            use_cache=True,
            **{cache_kw: cache},
        )
        cache = _returned_cache(out)
        logits = out.logits[:, -1, :]
        del out
        next_pos = next_pos + 1
    segments.append((rows, seg_start, seg_toks, seg_lps))

    tokens_out = torch.full((B, length), pad_token_id, dtype=torch.long, device=device)
    logp_out = torch.zeros((B, length), dtype=torch.float32, device=device)
    for seg_rows, start, toks, lps in segments:
        if toks:
            tokens_out[seg_rows, start : start + len(toks)] = torch.stack(toks, dim=1)
            logp_out[seg_rows, start : start + len(lps)] = torch.stack(lps, dim=1).float()
    mask = torch.arange(length, device=device).unsqueeze(0) < done_at.unsqueeze(1)  # up to and with EOS
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(n_samples, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(n_samples, dim=0),
        completion_ids=torch.where(mask, tokens_out, pad_token_id),
        completion_mask=mask.long(),
        logprobs=torch.where(mask, logp_out, 0.0),
        truncated=~finished,
        repaired_rows=repaired,
    )


# ----------------------------------------------------------------------
# The static loop: fixed shapes, so that a GPU replays each decode step as one CUDA graph

def attention_backends(like: torch.Tensor):
    """SDPA backends for prorl's forwards: on CUDA, everything but cuDNN attention. PyTorch prefers
    cuDNN on Hopper, and it builds an execution plan for every new (rows, length) shape, about 4.5 ms
    of CPU each (measured on an H100): sampling that drops finished rows and micro-batches trimmed to
    their longest completion see a new shape at nearly every call. Flash and memory-efficient
    attention have no per-shape set-up. Elsewhere PyTorch's own choice stands."""
    if not like.is_cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class _StaticLayer(DynamicLayer or object):
    """Keys/values in a fixed [b, H, capacity, D] buffer. `update` writes the step's token at the column
    held in the device tensor `column` and returns the whole buffer; the step's attention mask hides the
    columns not written yet. So a decode step has the same shapes and addresses at every token."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.column = keys, values, column
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys.index_copy_(2, self.column, key_states.to(self.keys.dtype))
        self.values.index_copy_(2, self.column, value_states.to(self.values.dtype))
        return self.keys, self.values

    def get_seq_length(self) -> int:  # not read: positions and the mask are always passed
        return self.keys.shape[-2]


def _static_cache_ok(model, cache) -> bool:
    """The static loop hands the model a ready 4-D boolean mask, which SDPA attention takes as is, and
    needs full-attention layers only (no sliding windows, no linear attention)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    layers = getattr(cache, "layers", None)
    if not layers or getattr(cache, "offloading", False):
        return False
    return all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def _row_buckets(B: int) -> list[int]:
    """Batch sizes the static loop runs at: B, then halves while at least `_MIN_ROWS` rows remain. One
    CUDA graph per size, captured when the loop first shrinks to it."""
    sizes = [B]
    while (sizes[-1] + 1) // 2 >= _MIN_ROWS and sizes[-1] > _MIN_ROWS:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


# How many tokens the static loop runs between looks at how many rows are still generating: each look
# waits for the GPU; rows that end in between run on (masked out) for at most this many tokens.
_CHECK_EVERY = 8

_graph_failures: set = set()  # models (by class) whose decode step could not be captured: warned once


def _record_step(step, pool):
    """Record `step` as a CUDA graph (nothing runs). The caller has just run it for real, which is the
    warm-up a capture needs (lazy initialisation, autocast's cached weight casts)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")  # other threads may touch CUDA meanwhile
        try:
            step()
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    return graph


def _generate_static(
    model, prompt_ids, prompt_mask, *, n_samples, keys, max_new_tokens, eos_token_ids, pad_token_id,
    temperature=1.0, top_p=1.0, top_k=0, graphs=True,
) -> Rollout:
    """`_generate_fast`'s sampling with shapes that never change between tokens.

    The KV cache is one zero-filled [B, H, Lp + max_new_tokens, D] buffer per layer; the per-row state
    (next input token, position, attention mask over the buffer, uniforms, output row) lives in fixed
    device tensors, and the token index, the KV column and the positions advance on the GPU. One decode
    step (forward, NaN repair, sampling, log-prob, EOS bookkeeping, output writes) is thus a fixed
    sequence of kernels on fixed addresses with no host sync: on CUDA it is captured once per batch
    size and replayed. Every `_CHECK_EVERY` tokens the host reads how many rows are still generating;
    when they fit the next bucket of `_row_buckets`, live rows move to the front of every buffer and
    the loop continues on a prefix of the buffers (finished rows that fill the bucket run on, their
    output masked). The same tokens as the dynamic loop; log-probs may differ in the last bits, as
    attention also runs over the masked (zero) columns.
    """
    device = prompt_ids.device
    cache_kw = _cache_kwarg(model)
    P, Lp = prompt_ids.shape
    B = P * n_samples
    prefilled = _prefill(model, prompt_ids, prompt_mask)
    last_logits, cache, position = prefilled
    if not _static_cache_ok(model, cache):  # eager attention, sliding windows, ...: the dynamic loop
        return _generate_fast(
            model, prompt_ids, prompt_mask, n_samples=n_samples, keys=keys, max_new_tokens=max_new_tokens,
            eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, temperature=temperature, top_p=top_p,
            top_k=top_k, prefilled=prefilled,
        )
    capacity = Lp + max_new_tokens
    # Under autocast, attention casts keys/values to the autocast dtype at every call; stored in that
    # dtype they round the same way once, and the cache is half the size (rotary embeddings otherwise
    # leave the keys in float32).
    autocast = torch.is_autocast_enabled(device.type)
    kv = []
    for layer in cache.layers:
        pair = []
        for t in (layer.keys, layer.values):
            dtype = torch.get_autocast_dtype(device.type) if autocast and t.is_floating_point() else t.dtype
            buf = t.new_zeros((B, t.shape[1], capacity, t.shape[3]), dtype=dtype)  # zeros: masked columns stay finite
            buf.view(P, n_samples, *buf.shape[1:])[:, :, :, :Lp].copy_(t.unsqueeze(1))
            pair.append(buf)
        kv.append(pair)
    del cache, prefilled

    # per batch row (buckets use a prefix of these)
    tok_in = torch.zeros((B, 1), dtype=torch.long, device=device)
    pos = position[:, -1:].repeat_interleave(n_samples, dim=0) + 1  # position of completion token 0
    attn = torch.zeros((B, 1, 1, capacity), dtype=torch.bool, device=device)
    attn[:, 0, 0, :Lp] = prompt_mask.repeat_interleave(n_samples, dim=0).bool()
    uniforms = uniform_table(keys, max_new_tokens)
    rows = torch.arange(B, device=device)  # batch row -> output row
    live = torch.ones(B, dtype=torch.bool, device=device)
    # per output row
    tokens_out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logp_out = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    done_at = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    repaired = torch.zeros((), dtype=torch.long, device=device)
    # advanced on the device by every step
    t_now = torch.zeros(1, dtype=torch.long, device=device)  # the token index being sampled
    column = torch.full((1,), Lp, dtype=torch.long, device=device)  # KV column of the token being forwarded

    eos_list = sorted(set(int(e) for e in eos_token_ids))
    eos = torch.tensor(eos_list, device=device)
    filtering = bool(top_k and top_k < last_logits.size(-1)) or top_p < 1.0

    def record(logits, b):
        """Sample token `t_now` for the first b batch rows from their logits [b, V] and book it."""
        logits, bad = repair_logits(logits.float())
        repaired.add_(bad)
        scaled = logits if temperature == 1.0 else logits / temperature  # x / 1.0 == x exactly
        logp_all = torch.log_softmax(scaled, dim=-1)
        tok = sample_tokens(filter_logits(scaled, top_k, top_p) if filtering else scaled,
                            uniforms[:b].index_select(1, t_now).squeeze(1))
        lp = logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        r, col = rows[:b], t_now.expand(b)
        tokens_out.index_put_((r, col), tok)
        logp_out.index_put_((r, col), lp.float())
        hit = (tok == eos_list[0] if len(eos_list) == 1 else torch.isin(tok, eos)) & live[:b]
        done_at.index_put_((r,), torch.where(hit, t_now + 1, done_at.index_select(0, r)))
        finished.index_put_((r,), finished.index_select(0, r) | hit)
        live[:b].logical_and_(~hit)
        tok_in[:b].copy_(tok.unsqueeze(-1))
        t_now.add_(1)

    def make_step(b):
        step_cache = DynamicCache()
        step_cache.layers = [_StaticLayer(k[:b], v[:b], column) for k, v in kv]
        mask = attn[:b]  # 4-D: transformers passes a ready mask to attention as is

        def step():
            attn[:b].index_fill_(3, column, True)
            out = model(input_ids=tok_in[:b], attention_mask=mask, position_ids=pos[:b], use_cache=True,
                        **{cache_kw: step_cache})
            record(out.logits[:, -1, :], b)
            pos[:b].add_(1)
            column.add_(1)

        return step

    record(last_logits.repeat_interleave(n_samples, dim=0), B)  # token 0, from the prefill
    del last_logits

    buckets = _row_buckets(B)
    b = B
    step, graph, pool = make_step(b), None, None
    captured = []  # every graph stays alive until the end: later captures share the first one's memory pool
    use_graphs = graphs and type(model) not in _graph_failures
    for t in range(1, max_new_tokens):
        if t % _CHECK_EVERY == 1:
            n_live = int(live[:b].sum())
            if n_live == 0:
                break
            nb = min(s for s in buckets if s >= n_live)
            if nb < b:  # live rows to the front; the smaller bucket runs on a prefix of every buffer
                order = torch.cat([live[:b].nonzero().squeeze(1), (~live[:b]).nonzero().squeeze(1)])[:nb]
                for x in [tok_in, pos, attn, uniforms, rows, live] + [buf for pair in kv for buf in pair]:
                    x[:nb].copy_(x[:b][order])
                b = nb
                step, graph = make_step(b), None
        if graph is not None:
            graph.replay()
            continue
        step()  # token t
        if use_graphs:
            try:
                graph = _record_step(step, pool)
                captured.append(graph)
                pool = graph.pool()
            except Exception as err:  # a forward that syncs or branches on data: go on without graphs
                _graph_failures.add(type(model))
                use_graphs = False
                logging.getLogger(__name__).warning(
                    "could not capture %s's decode step as a CUDA graph (%s: %s); sampling goes on without graphs "
                    "(cuda_graphs: false skips the attempt)", type(model).__name__, type(err).__name__, err)

    length = int(done_at.max())
    mask = torch.arange(length, device=device).unsqueeze(0) < done_at.unsqueeze(1)  # up to and with EOS
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(n_samples, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(n_samples, dim=0),
        completion_ids=torch.where(mask, tokens_out[:, :length], pad_token_id),
        completion_mask=mask.long(),
        logprobs=torch.where(mask, logp_out[:, :length], 0.0),
        truncated=~finished,
        repaired_rows=int(repaired),
    )


def concat_rollouts(parts: list[Rollout], *, pad_token_id: int) -> Rollout:
    """Stack rollouts of several sampling rounds: prompts re-padded on the left, completions on the right."""
    if len(parts) == 1:
        return parts[0]
    lp = max(p.prompt_ids.size(1) for p in parts)
    lc = max(p.completion_ids.size(1) for p in parts)

    def left(t, width, value):
        return torch.nn.functional.pad(t, (width - t.size(1), 0), value=value)

    def right(t, width, value):
        return torch.nn.functional.pad(t, (0, width - t.size(1)), value=value)

    return Rollout(
        prompt_ids=torch.cat([left(p.prompt_ids, lp, pad_token_id) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, lp, 0) for p in parts]),
        completion_ids=torch.cat([right(p.completion_ids, lc, pad_token_id) for p in parts]),
        completion_mask=torch.cat([right(p.completion_mask, lc, 0) for p in parts]),
        logprobs=torch.cat([right(p.logprobs, lc, 0.0) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        repaired_rows=sum(p.repaired_rows for p in parts),
    )
