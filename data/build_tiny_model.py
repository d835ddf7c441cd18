#!/usr/bin/env python
"""Build ``data/tiny-arith``: the small causal LM that prorl's quick start trains with RL.

Runs fully offline on CPU, deterministically for a given ``--seed`` (and machine)::

    python data/build_tiny_model.py                      # -> data/tiny-arith/ (the shipped model)
    python data/build_tiny_model.py --out /tmp/m --seed 1 # another seed elsewhere
    python data/build_tiny_model.py --out /tmp/m --steps 600   # exactly 600 steps, no early stop

Steps:

1. a character-level tokenizer (``tokenizers`` WordLevel over single characters: every printable
   ASCII character plus ``\\n``/``\\t`` is one token; a ``Fuse`` decoder so ``decode(encode(s)) == s``),
   wrapped in ``transformers.PreTrainedTokenizerFast`` with ``<pad>``/``<eos>``/``<bos>``/``<unk>``,
   left padding and a tiny chat template (``user: ...\\nassistant: ``);
2. a small ``LlamaForCausalLM`` (~0.9M parameters, tied embeddings) initialised from ``--seed``;
3. supervised next-token pre-training from scratch on train-split problems of the built-in
   ``arithmetic`` task (``prorl.tasks``): sequence ``"147+385=532<eos>"``, loss on ``"532<eos>"``
   only, stopped while the skill is only partly learned. Accuracy sits near zero for a few hundred
   steps and then climbs quickly (tens of points per 100 steps), and when exactly the climb starts
   varies with seed and hardware, so a fixed step count would not reliably land in the target
   band. Instead, every ``EVAL_EVERY`` steps the sampled pass@1 (T=1.0) on validation problems
   (train split, never trained on) is measured and training stops at the first check where it
   reaches ``STOP_AT`` (cosine learning-rate schedule over ``MAX_STEPS``, the hard cap). Same seed
   and machine -> same stopping step and bit-identical weights. ``--steps N`` instead trains exactly
   N steps (cosine over N, no early stop);
4. evaluation on the held-out test split (greedy pass@1, sampled pass@1 at T=1.0 and pass@16
   over 16 samples per prompt), then ``save_pretrained`` (safetensors) of model + tokenizer and a
   model card ``README.md`` with the numbers.

Takes about 2-3 minutes on one CPU core. The script pins torch to ``--threads`` (default 1)
intra-op threads, so the result does not depend on the core count of the machine that builds it
(same seed + same machine -> bit-identical weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import string
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing prorl
    sys.path.insert(0, str(REPO_ROOT))

from prorl.tasks import (  # noqa: E402
    arithmetic_problems,
    format_completion,
    is_correct,
    load_builtin_task,
    task_prompt,
)

DEFAULT_OUT = REPO_ROOT / "data" / "tiny-arith"

# ---- recipe defaults (the shipped model was built with exactly these) ----------------------
DEFAULT_SEED = 0
BATCH_SIZE = 128
LR = 1e-3
WARMUP = 50
MIN_LR_FRAC = 0.1
WEIGHT_DECAY = 0.01
# Stopping rule: stop at the first check (every EVAL_EVERY steps) where sampled pass@1 at T=1.0 on
# the validation problems reaches STOP_AT; the cosine schedule runs over MAX_STEPS, the hard cap.
# (Accuracy takes off around step 300-400 and then gains ~10-20 points per 50 steps.)
MAX_STEPS = 900
STOP_AT = 0.30
EVAL_EVERY = 25
VAL_N = 128  # validation problems (train split, excluded from pre-training)
VAL_SAMPLES = 4  # samples per validation problem

MODEL_KW = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,  # RoPE: costs nothing; room for chat-templated English prompts
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

EVAL_N = 200  # held-out prompts
EVAL_SAMPLES = 16  # samples per prompt for sampled pass@1 / pass@16
EVAL_MAX_NEW_TOKENS = 8


# ---- tokenizer ------------------------------------------------------------------------------
def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]  # 95 printable + \n \t
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Isolate every single character (including whitespace and newlines) as its own token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate tokens: no spaces inserted on decode
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=MODEL_KW["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
    )
    return hf_tok


# ---- model ----------------------------------------------------------------------------------
def build_model(tokenizer, seed: int):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **MODEL_KW,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        max_new_tokens=EVAL_MAX_NEW_TOKENS,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    return model


# ---- data -----------------------------------------------------------------------------------
def validation_problems(seed: int, n: int = VAL_N) -> list[tuple[int, int]]:
    """``n`` distinct *train-split* problems held out of pre-training, used only to decide when to
    stop (so the test split stays untouched until the final measurement)."""
    rng = random.Random(f"prorl/build_tiny_model/val/{seed}")
    out: list[tuple[int, int]] = []
    for ab in arithmetic_problems("train", rng):
        if ab not in out:
            out.append(ab)
        if len(out) == n:
            return out
    raise AssertionError("unreachable")


def training_problems(seed: int, exclude: set[tuple[int, int]]):
    """Endless seeded stream of train-split problems, minus ``exclude`` (either operand order)."""
    rng = random.Random(f"prorl/build_tiny_model/train/{seed}")
    for a, b in arithmetic_problems("train", rng):
        if (a, b) not in exclude and (b, a) not in exclude:
            yield a, b


def make_batch(problems, tokenizer, batch_size: int):
    """Right-padded (input_ids, attention_mask, labels) for the next ``batch_size`` problems;
    labels are -100 except on the completion digits and the EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    vocab = tokenizer.get_vocab()
    seqs, n_prompt = [], []
    for _ in range(batch_size):
        a, b = next(problems)
        p = [vocab[c] for c in task_prompt(a, b)]
        c = [vocab[ch] for ch in format_completion(a + b)] + [eos]
        seqs.append(p + c)
        n_prompt.append(len(p))
    width = max(len(s) for s in seqs)
    ids = torch.full((batch_size, width), pad, dtype=torch.long)
    attn = torch.zeros((batch_size, width), dtype=torch.long)
    labels = torch.full((batch_size, width), -100, dtype=torch.long)
    for i, (s, k) in enumerate(zip(seqs, n_prompt)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        labels[i, k : len(s)] = torch.tensor(s[k:])
    return ids, attn, labels


def lr_at(step: int, total: int) -> float:
    """Linear warmup, then cosine decay to ``MIN_LR_FRAC * LR`` at step ``total``."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, total - WARMUP))
    return LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * progress)))


def sampled_accuracy(model, tokenizer, problems, k: int, seed: int) -> float:
    """Mean exact-match accuracy of ``k`` samples (T=1.0) per problem."""
    prompts = [task_prompt(a, b) for a, b in problems]
    g = torch.Generator().manual_seed(seed)
    samples = generate(model, tokenizer, prompts, do_sample=True, num_samples=k, generator=g)
    return sum(is_correct(c, str(a + b)) for cs, (a, b) in zip(samples, problems) for c in cs) / (k * len(problems))


def pretrain(model, tokenizer, *, seed: int, max_steps: int, stop_at: float | None,
             eval_every: int = EVAL_EVERY, log_every: int = 50) -> dict:
    """Supervised pre-training in place.

    Every ``eval_every`` steps the sampled pass@1 (T=1.0, ``VAL_SAMPLES`` samples) on the
    validation problems is measured; training stops as soon as it reaches ``stop_at``, or after
    ``max_steps`` (``stop_at=None``: always exactly ``max_steps`` steps).
    """
    val = validation_problems(seed)
    problems = training_problems(seed, exclude=set(val))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    model.train()
    t0 = time.time()
    run_loss, n_loss, last_loss = 0.0, 0, float("nan")
    history: list[tuple[int, float]] = []
    step = 0
    while step < max_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, max_steps)
        ids, attn, labels = make_batch(problems, tokenizer, BATCH_SIZE)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += loss.item()
        n_loss += 1
        if step % log_every == 0 or step == max_steps:
            last_loss, run_loss, n_loss = run_loss / n_loss, 0.0, 0
            print(f"step {step:5d}  loss {last_loss:.4f}  lr {lr_at(step - 1, max_steps):.2e}  {time.time() - t0:6.1f}s", flush=True)
        if stop_at is not None and step % eval_every == 0:
            model.eval()
            acc = sampled_accuracy(model, tokenizer, val, VAL_SAMPLES, seed)
            model.train()
            history.append((step, acc))
            print(f"step {step:5d}  validation sampled pass@1 {acc:.3f} (stop at >= {stop_at})", flush=True)
            if acc >= stop_at:
                break
    if n_loss:
        last_loss = run_loss / n_loss
    model.eval()
    return {
        "steps": step,
        "final_loss": last_loss,
        "stopped_early": stop_at is not None and bool(history) and history[-1][1] >= stop_at,
        "val_history": history,
        "train_s": time.time() - t0,
    }


# ---- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def generate(model, tokenizer, prompts, *, do_sample: bool, num_samples: int = 1,
             max_new_tokens: int = EVAL_MAX_NEW_TOKENS, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> list[list[str]]:
    """Plain-torch batched generation (no KV cache; sequences are ~15 tokens) with left padding.
    Returns, per prompt, ``num_samples`` completion strings (decoded up to the first EOS)."""
    enc = tokenizer(list(prompts), padding=True, return_tensors="pt")
    ids = enc["input_ids"].repeat_interleave(num_samples, dim=0)
    attn = enc["attention_mask"].repeat_interleave(num_samples, dim=0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    new_tokens = []
    for _ in range(max_new_tokens):
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -1, :].float()
        if do_sample:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        new_tokens.append(nxt)
        done |= nxt == eos
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        attn = torch.cat([attn, (~done | (nxt == eos)).long()[:, None]], dim=1)
        if bool(done.all()):
            break
    gen = torch.stack(new_tokens, dim=1).tolist()
    texts = []
    for row in gen:
        if eos in row:
            row = row[: row.index(eos)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def evaluate(model, tokenizer, n: int = EVAL_N, k: int = EVAL_SAMPLES, seed: int = 0) -> dict:
    """Greedy pass@1, sampled pass@1 (mean over k samples at T=1.0) and pass@k on ``n``
    held-out prompts of ``load_builtin_task("arithmetic", "test", n=n, seed=0)``."""
    ds = load_builtin_task("arithmetic", split="test", n=n, seed=0)
    prompts, answers = list(ds["prompt"]), list(ds["answer"])
    greedy = generate(model, tokenizer, prompts, do_sample=False)
    g = torch.Generator().manual_seed(seed)
    sampled = []
    for i in range(0, n, 50):  # chunks keep memory small
        sampled += generate(model, tokenizer, prompts[i:i + 50], do_sample=True, num_samples=k, generator=g)
    greedy_ok = [is_correct(c[0], a) for c, a in zip(greedy, answers)]
    samp_ok = [[is_correct(c, a) for c in cs] for cs, a in zip(sampled, answers)]
    well_formed = sum(len(c) <= 4 and c.isdigit() for cs in sampled for c in cs)  # 1-4 digits, then EOS
    return {
        "n_prompts": n,
        "samples_per_prompt": k,
        "greedy_pass@1": sum(greedy_ok) / n,
        "greedy_pass@1_first64": sum(greedy_ok[:64]) / min(n, 64),
        "sampled_pass@1": sum(map(sum, samp_ok)) / (n * k),
        f"pass@{k}": sum(any(r) for r in samp_ok) / n,
        "well_formed_frac": well_formed / (n * k),
        "examples": [
            {"prompt": p, "answer": a, "greedy": gr[0], "samples": s[:4]}
            for p, a, gr, s in list(zip(prompts, answers, greedy, sampled))[:5]
        ],
    }


# ---- model card -----------------------------------------------------------------------------
def write_card(out: Path, *, command: str, args, n_params: int, train: dict, metrics: dict | None,
               build_s: float) -> None:
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and f.name != "README.md")
    if args.steps is None:
        rule = (
            f"stop early once sampled pass@1 on {VAL_N} train-split problems held out of training "
            f"({VAL_SAMPLES} samples each, T=1.0) reaches {STOP_AT}, checked every {EVAL_EVERY} steps"
        )
        if train["stopped_early"]:
            stop = f"the cosine budget was {MAX_STEPS} steps, cut short by the rule: {rule}."
        else:
            stop = f"the full cosine budget of {MAX_STEPS} steps (the guard rule, {rule}, did not trigger)."
        hist = ", ".join(f"{st}: {acc:.3f}" for st, acc in train["val_history"])
        stop += f" Validation sampled pass@1 by step: {hist}."
    else:
        stop = f"a fixed budget of {args.steps} steps (`--steps`; cosine schedule over them, no early stop)."
    if metrics is None:
        measured = "Not measured (built with `--no-eval`)."
    else:
        k = metrics["samples_per_prompt"]
        ex = "\n".join(
            f"| `{e['prompt']}` | `{e['answer']}` | `{e['greedy']}` | {', '.join(f'`{x}`' for x in e['samples'])} |"
            for e in metrics["examples"]
        )
        measured = f"""{metrics['n_prompts']} prompts of `load_builtin_task("arithmetic", "test", n={metrics['n_prompts']}, seed=0)`,
up to {EVAL_MAX_NEW_TOKENS} new tokens, sampling seeded with `--seed`:

| metric | value |
|---|---|
| greedy pass@1 | {metrics['greedy_pass@1']:.3f} |
| greedy pass@1, first 64 prompts (what `tests/test_tasks.py` checks) | {metrics['greedy_pass@1_first64']:.3f} |
| sampled pass@1 (T=1.0, top_p=1.0, mean over {k} samples/prompt) | {metrics['sampled_pass@1']:.3f} |
| pass@{k} (any of {k} samples correct) | {metrics[f'pass@{k}']:.3f} |
| well-formed samples (1-4 digits then `<eos>`) | {metrics['well_formed_frac']:.3f} |

The gap between sampled pass@1 and greedy / pass@{k} is the room RL has to sharpen the policy.

| prompt | answer | greedy | first samples |
|---|---|---|---|
{ex}"""
    card = f"""# tiny-arith

A {n_params / 1e6:.2f}M-parameter `LlamaForCausalLM` with a character-level tokenizer, pre-trained **from
scratch** by `data/build_tiny_model.py` on the built-in `arithmetic` task of `prorl.tasks`
(addition of 3-digit integers). It is the default model of prorl's offline CPU quick start:
a deliberately *partly* capable starting point, so that RL on the exact-match reward has something
to improve: it knows the format and often the answer, but its samples are spread over wrong sums
(mostly carry mistakes).

## Task format

```
prompt:      147+385=
completion:  532<eos>
```

Prompt and completion are plain text: no chat template, no BOS. A completion is correct when its
last number equals the answer (`exact_match`). Load the data with
`prorl.tasks.load_builtin_task("arithmetic", split="train" | "test")`; the test split (held-out
operand pairs, chosen by a hash of the unordered pair) was never seen in pre-training.

## How it was built

```
{command}
```

- tokenizer: `tokenizers` WordLevel over single characters (printable ASCII + `\\n`, `\\t`) with a
  `Fuse` decoder (`decode(encode(s)) == s`); special tokens `<pad>`=0, `<eos>`=1, `<bos>`=2,
  `<unk>`=3; `padding_side="left"`; chat template `user: ...\\nassistant: `.
- model: Llama, hidden {MODEL_KW['hidden_size']}, {MODEL_KW['num_hidden_layers']} layers, {MODEL_KW['num_attention_heads']} heads, intermediate {MODEL_KW['intermediate_size']}, RoPE, max positions {MODEL_KW['max_position_embeddings']}, tied embeddings, vocab {len_vocab(out)}:
  **{n_params:,} parameters**, fp32 safetensors; folder size {size / 1e6:.2f} MB.
- pre-training: next-token cross-entropy on the completion (`532<eos>`) of train-split problems
  sampled on the fly, batch {BATCH_SIZE}, AdamW (lr {LR} after {WARMUP} linear warmup steps, cosine
  decay towards {MIN_LR_FRAC}x, betas (0.9, 0.98), weight decay {WEIGHT_DECAY}, grad clip 1.0),
  seed {args.seed}, {args.threads} torch thread(s).
- **{train['steps']} steps**: {stop}
- training loss over the last logged steps: {train['final_loss']:.4f}.
- build time: {build_s:.0f} s ({train['train_s']:.0f} s of it training) on a shared CPU, torch {torch.__version__}.
  Same seed and machine -> same weights; another CPU may round differently and stop at a
  different step, with numbers close to the ones below.

## Measured on the held-out split

{measured}

## Notes for RL

A one-off GRPO check on the seed-0 model (not run by this script): 40 steps of 16 train prompts x 8
samples (T=1.0), group-normalised advantages, AdamW from fresh state, batch-mean token loss,
raised held-out greedy pass@1 from 0.55 to 0.70 and sampled pass@1 from 0.31 to 0.40 at lr 3e-5;
lr 1e-4 was unstable and lr 3e-4 collapsed the policy within a step. Keep RL learning rates for
this model around 1e-5 to 3e-5.

## Loading (offline)

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("data/tiny-arith")
model = AutoModelForCausalLM.from_pretrained("data/tiny-arith")
enc = tok(["147+385="], return_tensors="pt")
out = model.generate(**enc, do_sample=False, max_new_tokens=8)
print(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""
    (out / "README.md").write_text(card)


def len_vocab(out: Path) -> int:
    return json.loads((out / "config.json").read_text())["vocab_size"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: data/tiny-arith)")
    ap.add_argument("--steps", type=int, default=None,
                    help="train exactly this many steps (default: stop when validation sampled pass@1 "
                         f">= {STOP_AT}, at most {MAX_STEPS} steps)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed (default {DEFAULT_SEED})")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1, so results do not depend on the core count)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps <= 0:
        ap.error("--steps must be positive")

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    try:
        out_display = str(out.resolve().relative_to(REPO_ROOT))
    except ValueError:
        out_display = str(out)
    command = f"python data/build_tiny_model.py --out {out_display} --seed {args.seed} --threads {args.threads}"
    if args.steps is not None:
        command += f" --steps {args.steps}"

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, vocab {len(tokenizer)}", flush=True)

    if args.steps is None:
        train = pretrain(model, tokenizer, seed=args.seed, max_steps=MAX_STEPS, stop_at=STOP_AT)
    else:
        train = pretrain(model, tokenizer, seed=args.seed, max_steps=args.steps, stop_at=None)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    metrics = None
    if not args.no_eval:
        metrics = evaluate(model, tokenizer, seed=args.seed)
        print(json.dumps({k: v for k, v in metrics.items() if k != "examples"}, indent=2))
        for e in metrics["examples"]:
            print(e)
    build_s = time.time() - t_start
    write_card(out, command=command, args=args, n_params=n_params, train=train, metrics=metrics, build_s=build_s)
    print(f"saved to {out}; {train['steps']} steps; build time {build_s:.0f}s (training {train['train_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
