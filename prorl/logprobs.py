"""Completion log-probs: what the update and the reference score, per token, for given completions.

`completion_logprobs` runs the model over prompt + completion and returns log p(token) at the
completion positions (grad flows when enabled). Two things keep it cheap:
- the output head runs on the completion positions' final hidden states in chunks
  (`head_logprobs`), recomputed in the backward, so memory never holds [rows, length, vocabulary];
- a micro-batch's repeated prompts (a group's samples are adjacent) can run once, their keys/values
  shared by the group's completions (`prompt_sharing_threshold` says when that pays).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from .rollout import DynamicLayer, _cache_kwarg, _returned_cache, attention_backends


# Upper bound on the number of logits one chunk holds: the positions `head_logprobs` runs through the
# output head at a time, and the rows token_logprobs / entropy upcast at a time (2**25 floats = 128 MiB
# in float32). Module-level so that tests can shrink it.
_CHUNK_ELEMS: int = 1 << 25


# ----------------------------------------------------------------------
# logits -> log-probs / entropy: pure tensor functions


def _float_chunk(chunk: Tensor, temperature: float) -> Tensor:
    """``chunk / temperature`` in float32 (or float64), never modifying ``chunk`` and making at most one copy."""
    if chunk.dtype in (torch.float32, torch.float64):
        return chunk if temperature == 1.0 else chunk / temperature
    x = chunk.float()  # a fresh copy: safe to scale in place
    if temperature != 1.0:
        x.div_(temperature)
    return x


def _rows_per_chunk(vocab: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, vocab))


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probabilities of ``tokens`` under ``softmax(logits / temperature)``.

    ``logits [B, T, V]`` (any float dtype; bf16/fp16 are upcast to float32), ``tokens [B, T]`` long
    with values in ``[0, V)`` -> ``[B, T]`` float32 (float64 for float64 logits)::

        logp[b, t] = z[b, t, tokens[b, t]] - logsumexp_v z[b, t, v],   z = logits / temperature

    Memory-lean: works on chunks of rows (at most ``2**25`` elements each), so at most one extra
    float32 copy of a chunk is alive, never a full ``log_softmax`` of the batch (under autograd the
    graph still keeps one float copy for the backward pass, which is inherent). ``logits`` is never
    modified. ``temperature`` must match the sampler's so that ``logp`` and the rollout's log-probs
    refer to the same distribution.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() < 1 or tokens.shape != logits.shape[:-1]:
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected {tuple(logits.shape[:-1])}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_tokens = tokens.reshape(-1, 1).long()
    step = _rows_per_chunk(vocab)
    out = []
    for start in range(0, flat_logits.shape[0], step):
        x = _float_chunk(flat_logits[start : start + step], float(temperature))
        picked = x.gather(-1, flat_tokens[start : start + step]).squeeze(-1)
        out.append(picked - torch.logsumexp(x, dim=-1))
    if not out:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return torch.zeros(tokens.shape, dtype=dtype, device=logits.device)
    return torch.cat(out).reshape(tokens.shape)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` along the last dim: ``[..., V] -> [...]`` (float32; float64 kept).

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v`` with ``z = logits / temperature``, numerically
    stable for any finite scale of ``z``; ``-inf`` logits (masked vocabulary entries) contribute 0.
    Works in row chunks like :func:`token_logprobs` (bf16/fp16 upcast per chunk, ``logits`` never
    modified), so pass the raw logits rather than ``logits.float() / temperature``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    step = _rows_per_chunk(vocab)
    out = []
    for start in range(0, flat.shape[0], step):
        x = _float_chunk(flat[start : start + step], float(temperature))
        p = torch.softmax(x, dim=-1)
        finite = torch.isfinite(x)
        if not finite.all():  # -inf logits have p = 0; replace them so that 0 * -inf never appears
            x_finite = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        else:
            x_finite = x
        out.append(torch.logsumexp(x, dim=-1) - (p * x_finite).sum(dim=-1))
    if not out:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return torch.zeros(logits.shape[:-1], dtype=dtype, device=logits.device)
    return torch.cat(out).reshape(logits.shape[:-1])


# ----------------------------------------------------------------------
# A model's log-probs of given completions

def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prompts: bool | None = None,
):
    """Per-token log-probs of the completions under `model` (grad flows if enabled).

    prompt_*: [B, Lp] left-padded; completion_*: [B, Lc] right-padded.
    Returns logp [B, Lc] (and entropy [B, Lc] when asked).

    Rows that repeat the previous row's prompt (a group's samples are adjacent) can share one forward
    pass of that prompt: the prompt runs once per group and its keys/values are reused (and, under
    autograd, its gradient summed) by the group's completions. Same math as the full forward, up to
    float rounding; it saves (rows - groups) x Lp token-forwards. `share_prompts=None` (default)
    shares when that saves at least `prompt_sharing_threshold` of the tokens (10% on the CPU, 50% on
    a GPU) and the model is a plain (or PEFT) transformers model without activation checkpointing (not
    DDP/FSDP/DeepSpeed-wrapped); True/False force it.

    Logits are never materialised for the whole batch: the completion positions' final hidden states
    go through the output head in chunks (`head_logprobs`), so memory grows with B x Lc x hidden.
    """
    with attention_backends(prompt_ids):
        return _completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                    temperature=temperature, with_entropy=with_entropy, share_prompts=share_prompts)


def _completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature,
                         with_entropy, share_prompts):
    Lc = completion_ids.size(1)
    parts = _decoder_and_head(model)
    if parts is None:  # FSDP / DeepSpeed: the output head is sharded outside the forward; all logits at once
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        position = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False, logits_to_keep=Lc + 1).logits
        logits = logits[:, :-1, :]
        logp = token_logprobs(logits, completion_ids, temperature)
        if not with_entropy:
            return logp
        with torch.no_grad():
            return logp, entropy_from_logits(logits.detach(), temperature)

    decoder, head = parts
    groups = None
    if share_prompts is not False and Lc > 0:
        groups = _prompt_groups(prompt_ids, prompt_mask)
        if groups is not None and share_prompts is None:
            B, Lp = prompt_ids.shape
            saved = (B - groups[0].numel()) * Lp
            if saved < prompt_sharing_threshold(prompt_ids.device) * B * (Lp + Lc) or not _can_share_prompts(model):
                groups = None
    if groups is not None:
        hidden = _shared_prompt_hidden(decoder, prompt_ids, prompt_mask, completion_ids, completion_mask, *groups)
    else:
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        position = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if decoder is None:  # DDP: through the wrapper, whose gradient hooks need its own forward
            out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False,
                        output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1]  # after the final norm: what the head reads
        else:
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False).last_hidden_state
        hidden = hidden[:, hidden.size(1) - Lc - 1 : hidden.size(1) - 1]  # the positions that predict the completion
    return head_logprobs(head, hidden, completion_ids, temperature, with_entropy=with_entropy)


def head_logprobs(head, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, *, with_entropy: bool = False):
    """Log-probs of `tokens` under `softmax(head(hidden) / temperature)`, without the whole logit tensor.

    head: the output layer ([*, H] -> [*, V]); hidden [B, T, H]; tokens [B, T] -> logp [B, T] float32
    (and entropy [B, T], no gradient, when asked). The B*T positions run through the head in chunks
    of at most `_CHUNK_ELEMS // V` rows; under autograd each chunk's logits are recomputed in the
    backward (`torch.utils.checkpoint`) instead of kept. So memory grows with B x T x H, not with
    B x T x V: at a 152k vocabulary, 8k-token completions would otherwise hold ~5 GB of float32
    logits per sequence. When everything fits one chunk this is exactly `token_logprobs(head(hidden))`.
    """
    B, T, H = hidden.shape
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    per_chunk = _rows_per_chunk(vocab)

    def chunk(h, t):
        logits = head(h)
        logp = token_logprobs(logits, t, temperature)
        if not with_entropy:
            return logp, None
        with torch.no_grad():
            return logp, entropy_from_logits(logits.detach(), temperature)

    if B * T <= per_chunk:
        logp, entropy = chunk(hidden, tokens)
        return (logp, entropy) if with_entropy else logp
    flat_h, flat_t = hidden.reshape(B * T, H), tokens.reshape(B * T)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, entropies = [], []
    for i in range(0, B * T, per_chunk):
        h, t = flat_h[i : i + per_chunk], flat_t[i : i + per_chunk]
        if recompute:
            lp, ent = torch.utils.checkpoint.checkpoint(chunk, h, t, use_reentrant=False)
        else:
            lp, ent = chunk(h, t)
        logps.append(lp)
        entropies.append(ent)
    logp = torch.cat(logps).view(B, T)
    return (logp, torch.cat(entropies).view(B, T)) if with_entropy else logp


def _decoder_and_head(model):
    """(decoder, output head) for computing completion log-probs from hidden states; decoder None means
    "run the wrapper's forward and take its last hidden state" (DDP, whose gradient hooks need its own
    forward). None: a sharded wrapper (FSDP, DeepSpeed), or a model whose logits are not simply
    head(decoder(...)) (soft-capping, logit scaling): then the full forward is used."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    inner = model.module if ddp else model
    target = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT
    if not isinstance(target, PreTrainedModel) or not hasattr(target, "get_decoder"):
        return None
    head, decoder = target.get_output_embeddings(), target.get_decoder()
    if head is None or decoder is None or any(type(p).__name__ == "DTensor" for p in target.parameters()):
        return None
    if not _head_split_holds(target, decoder, head):
        return None
    return (None if ddp else decoder), head


def _head_split_holds(target, decoder, head) -> bool:
    """Whether target's logits equal head(decoder(...)) on a short input: checked once per model."""
    known = target.__dict__.get("_prorl_head_split")
    if known is None:
        param = next(target.parameters())
        ids = torch.arange(1, 5, device=param.device).clamp(max=target.config.get_text_config().vocab_size - 1)[None]
        with torch.no_grad():
            full = target(input_ids=ids, use_cache=False).logits.float()
            split = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
        known = full.shape == split.shape and torch.allclose(full, split, rtol=1e-3, atol=1e-4)
        target.__dict__["_prorl_head_split"] = bool(known)
    return known


def prompt_sharing_threshold(device) -> float:
    """The share of a batch's tokens that prompt sharing must save before `completion_logprobs` uses it.
    Sharing runs the model twice (unique prompts, then completions on their keys/values): on the CPU,
    where time is arithmetic, 10% fewer tokens pays. On a GPU a model of this size is bound by kernel
    launches, and two passes launch about twice the kernels, so only a large saving (half the tokens:
    long prompts, many samples per micro-batch) pays. The GPU figure is reasoned from the H100 profile
    (README, Performance on a GPU), not tuned."""
    return 0.5 if torch.device(device).type == "cuda" else 0.1


def _prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """(first row of each run of identical adjacent prompts [U], run index of every row [B]), or None
    when no row repeats its predecessor's prompt."""
    B = prompt_ids.size(0)
    if B < 2:
        return None
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(dim=1) & (prompt_mask[1:] == prompt_mask[:-1]).all(dim=1)
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=same.device), ~same])
    first = starts.nonzero().squeeze(1)
    if first.numel() == B:
        return None
    return first, starts.long().cumsum(0) - 1


def _can_share_prompts(model) -> bool:
    """Prompt sharing runs two forward calls per batch: fine for a plain or PEFT transformers model,
    not for DDP/FSDP/DeepSpeed wrappers or FSDP2-sharded (DTensor) parameters, nor with activation
    checkpointing (which turns the KV cache off)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(target, PreTrainedModel):
        return False
    if torch.is_grad_enabled():  # checkpointed layers drop the KV cache that sharing runs on
        if any(getattr(m, "gradient_checkpointing", False) is True for m in target.modules()):
            return False
    return not any(type(p).__name__ == "DTensor" for p in target.parameters())


def _shared_prompt_hidden(decoder, prompt_ids, prompt_mask, completion_ids, completion_mask, first, group):
    """Final hidden states at the positions predicting completion tokens 0..Lc-1 ([B, Lc, H]), each
    unique prompt run once through `decoder` (the transformers base model without its head)."""
    cache_kw = _cache_kwarg(decoder)
    Lp = prompt_ids.size(1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position = (mask.long().cumsum(-1) - 1).clamp(min=0)
    pre = decoder(
        input_ids=prompt_ids[first], attention_mask=prompt_mask[first], position_ids=position[first, :Lp],
        use_cache=True, **{cache_kw: DynamicCache()},
    )
    cache = _returned_cache(pre)
    layers = getattr(cache, "layers", None)
    if DynamicLayer is None or not layers or any(type(layer) is not DynamicLayer for layer in layers):
        raise RuntimeError(
            "share_prompts needs a transformers DynamicCache of plain DynamicLayers (transformers >= 4.56, "
            "full attention); pass share_prompts=False"
        )
    cache.batch_select_indices(group)  # each row reads its group's prompt keys/values (grads summed back)
    first_hidden = pre.last_hidden_state[:, -1:, :][group]
    if completion_ids.size(1) == 1:
        return first_hidden
    out = decoder(
        input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position[:, Lp:-1], use_cache=True,
        **{cache_kw: cache},
    )
    return torch.cat([first_hidden, out.last_hidden_state], dim=1)
