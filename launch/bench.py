#!/usr/bin/env python
"""End-to-end GRPO step benchmark: prorl's real `Trainer`, optionally against TRL's `GRPOTrainer`.

    python launch/bench.py                                  # tiny model, prorl only
    python launch/bench.py --model medium --against trl     # both systems, same workload, ratios
    python launch/bench.py --against trl,plain              # also prorl with the plain sampling loop
    python launch/bench.py --against trl --eos              # completions may stop early at EOS
    python launch/bench.py --prompt_len 128 --n_samples 16  # longer prompts, bigger groups
    python launch/bench.py --device cuda --model large --bf16 --against trl [--vllm]   # on a GPU
    python launch/bench.py --device cuda --bf16 --model qwen1.5b --micro_batch 4 --max_new_tokens 1024 --against trl

On a GPU (`--device cuda`): the same workload and lockstep protocol on the first visible GPU, with
`--model large` (~103M parameters, hidden 1024, 8 layers) or `--model qwen1.5b` (Qwen2-1.5B's
configuration with random weights: hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960,
vocabulary 151,936, tied embeddings; token ids past the character tokenizer decode to nothing, and
EOS is one token in 151,936), optionally `--bf16` (prorl
`mixed_precision: bf16`, TRL `bf16=True`; float32 weights in both) and `--vllm` (prorl
`rollout_engine: vllm`, TRL `use_vllm=True, vllm_mode="colocate"`, both at
`--vllm_gpu_memory_utilization`). Peak memory is then `torch.cuda.max_memory_allocated`, and the
matmul limit a 8192^3 `torch.mm` in the step's precision.

The workload (fixed, offline, fp32 on CPU, `--threads` (2) torch threads in every process):

- a random-init Llama built from a seeded `LlamaConfig` (no Hub download) with a character-level
  tokenizer made here: `tiny` ~0.44M parameters (hidden 128, 2 layers), `medium` ~25.8M (hidden 512,
  8 layers, intermediate 1408); tied embeddings;
- `--n_prompts` (8) prompts x `--n_samples` (8) completions per optimizer step, `--max_new_tokens`
  (64) new tokens, temperature 1, top_p 1, top_k 0, KL beta 0.04 (so a reference model and its
  forward pass), lr 1e-6, one update per rollout batch, micro-batches of `--micro_batch` (16) completions;
- every prompt is `--prompt_len` (16) random characters = tokens, so both systems see equal shapes;
- reward = the fraction of lowercase letters in the completion: it varies within every group, so
  no group is skipped (prorl's `skip_zero_signal` is off as well) and both systems do the same work;
- without `--eos` the model cannot emit EOS (its output layer has V-1 rows; the tokenizer's `<eos>`
  is id V-1), so every completion is exactly `--max_new_tokens` tokens; with `--eos` it can (a
  random-init model does about once per V tokens) and completions stop early.

Batch semantics (TRL counts completions, prorl counts prompts):

    prorl  batch_size=P, n_samples=N, micro_batch_size=M, updates_per_batch=1, mini_batches=1,
           loss_agg=token_mean, advantage=grpo, policy_loss=ppo_clip (eps 0.2), kl_estimator=k3
    TRL    num_generations=N, per_device_train_batch_size=M, gradient_accumulation_steps=P*N/M,
           so steps_per_generation=gradient_accumulation_steps and generation_batch_size=P*N: one
           generation round and one optimizer step per P prompts; num_iterations=1 (no old-logprob
           pass, as in prorl); loss_type="dapo" (token sum / global token count = token_mean);
           scale_rewards="group" (= grpo); epsilon=0.2; beta=0.04 (k3 KL in the loss);
           gradient_checkpointing=False (TRL's default is True; prorl's `activation_checkpointing` defaults to off,
           so the like-for-like run turns it off: `--trl_checkpointing` keeps TRL's default)

How it is timed: every system runs in its own fresh process. On a GPU they run one after the other,
each alone on the device (its peak memory is its own). On the CPU they are all started together and
set up in parallel (model load, reference copy, optimizer) but run in LOCKSTEP: the driver lets one process
do one optimizer step while the others wait, and alternates which goes first, so the phases of a
loaded machine hit every system alike. A step is timed from "go" to the end of its optimizer step
(prorl: one `Trainer.train_step()`: rollout, reward, reference log-probs, update; TRL: one
optimizer step of `GRPOTrainer.train()`, its generation included). Reported per system, over the
measured steps (the first `--warmup` steps of each process are left out): the median seconds per
step, the median completion tokens/s (EOS included, padding not), the median process CPU seconds
per step, and the peak RSS (`resource.getrusage` high-water of that process: imports, models,
optimizer and the steps). Ratios are medians of the per-step ratios of lockstep pairs.
`flop_fraction` = the FLOPs a system executes per step / its step time / this machine's fp32 matmul
rate (best of a 2048^3 `torch.mm` loop on `--threads` threads, measured before and after the runs);
FLOPs are 2*N per token for a forward and 6*N for forward+backward, N = the parameters a token passes
through (the output layer included, the input embedding not), attention-score FLOPs and padding
ignored: generation = prompt prefill (TRL: every row; prorl: once per prompt) + every completion
token; reference forward + policy forward/backward = 8*N*(prompt + completion tokens), where prorl
counts a micro-batch's repeated prompt once when it shares it. `model_flops_per_step` and
`model_flop_fraction` use the same, system-independent workload count for everybody (each prompt
once in generation, every sequence's full prompt in training), so they compare useful work.

TRL runs from any Python that can `import trl` (`--trl_python`, `$PRORL_BENCH_TRL_PYTHON`, or this
one); keep it out of the main environment, e.g.
`python -m venv --system-site-packages /tmp/trlenv && /tmp/trlenv/bin/pip install trl`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

MODELS = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "medium": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8),
    "large": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16),
    # Qwen2-1.5B's shape (random weights): grouped-query attention, a 151,936-token vocabulary, qkv biases
    "qwen1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     vocab_size=151936),
}
SYSTEMS = ("prorl", "trl", "plain")  # plain = prorl with `generate(fast=False)`, `completion_logprobs(share_prompts=False)`
LEARNING_RATE = 1e-6
KL_BETA = 0.04
TEMPERATURE = 1.0
TAG = "@@BENCH "  # worker -> driver messages on stdout; everything else there is ignored


def _env(threads: int, device: str = "cpu") -> dict:
    env = dict(os.environ)
    if device != "cpu" and env.get("CUDA_VISIBLE_DEVICES") == "":  # an empty list would hide every GPU
        del env["CUDA_VISIBLE_DEVICES"]
    env.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "WANDB_DISABLED": "true", "WANDB_MODE": "disabled", "DISABLE_MLFLOW_INTEGRATION": "TRUE",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",
    })
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# ----------------------------------------------------------------------
# The workload, written to a folder every system loads from

def build_tokenizer():
    """Character-level tokenizer: <pad> <bos> <unk>, every printable character, then <eos> as the LAST id."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<bos>", "<unk>"] + chars + ["<eos>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="left", model_max_length=1 << 16,
    )


def build_workload(folder: Path, args) -> dict:
    import torch
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.set_verbosity_error()  # "eos_token_id outside the vocabulary" is on purpose
    transformers.utils.logging.disable_progress_bar()
    tok = build_tokenizer()
    eos_id = tok.eos_token_id
    shape = dict(MODELS[args.model])
    vocab = shape.pop("vocab_size", None) or (len(tok) if args.eos else len(tok) - 1)  # without --eos: no output row for <eos>
    common = dict(
        vocab_size=vocab, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=eos_id,
        max_position_embeddings=max(512, args.prompt_len + args.max_new_tokens), rope_theta=10000.0,
        rms_norm_eps=1e-5 if args.model != "qwen1.5b" else 1e-6, tie_word_embeddings=True, attention_dropout=0.0, **shape,
    )
    torch.manual_seed(args.seed)
    if args.model == "qwen1.5b":  # its own architecture (qkv biases); ids past the tokenizer's decode to nothing
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**common)).float().eval()
    else:
        model = LlamaForCausalLM(LlamaConfig(**common)).float().eval()
    model.generation_config = GenerationConfig(pad_token_id=tok.pad_token_id, eos_token_id=eos_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(folder / "model", safe_serialization=True)
    tok.save_pretrained(folder / "model")

    rng = random.Random(args.seed)
    alphabet = string.ascii_letters + string.digits + "+-*/=() "
    n_prompts = args.n_prompts * (args.warmup + args.steps) * 2  # never wraps into a second epoch
    prompts = ["".join(rng.choice(alphabet) for _ in range(args.prompt_len)) for _ in range(n_prompts)]
    with open(folder / "prompts.jsonl", "w") as fh:
        fh.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)

    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return {
        "params": n_params,
        # every matmul weight a token passes through: the input embedding is a lookup, the output layer a matmul
        "flop_params": n_params - model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel(),
        "vocab_size": vocab,
    }


def bench_reward(prompts, completions, **kwargs):
    """The fraction of lowercase letters in the completion: varies within every group."""
    return [sum(ch.islower() for ch in c) / max(len(c), 1) for c in completions]


# ----------------------------------------------------------------------
# Workers: one fresh process per system; they do a step when the driver says "go"

def _rss_now_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _send(msg: dict) -> None:
    sys.stdout.write(TAG + json.dumps(msg) + "\n")
    sys.stdout.flush()


def _wait_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(0)  # the driver went away or stopped us


class _StepClock:
    """Waits for "go", times a step (wall and CPU), reports it."""

    def __init__(self):
        self.i = 0

    def start(self):
        _wait_go()
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self, tokens: int, **extra):
        _sync()  # GPU work queued in the step belongs to the step
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        _send({"step": self.i, "wall": wall, "cpu": cpu, "tokens": int(tokens), **extra})
        self.i += 1


def worker_prorl(args, folder: Path, plain: bool = False) -> None:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO_ROOT))
    import prorl.trainer
    from prorl import Trainer
    from prorl.config import load_config

    if plain:  # prorl.rollout's reference paths, for before/after comparisons of its optimisations
        fast_generate, logprobs = prorl.trainer.generate, prorl.trainer.completion_logprobs
        prorl.trainer.generate = lambda *a, **k: fast_generate(*a, fast=False, **k)
        prorl.trainer.completion_logprobs = lambda *a, **k: logprobs(*a, share_prompts=False, **k)
    total = args.warmup + args.steps
    cfg = load_config(None, dict(
        model_name_or_path=str(folder / "model"), dataset=str(folder / "prompts.jsonl"), max_steps=total,
        batch_size=args.n_prompts, n_samples=args.n_samples, micro_batch_size=args.micro_batch, max_length=args.max_new_tokens,
        max_prompt_length=args.prompt_len + 8, temperature=TEMPERATURE, top_p=1.0, top_k=0, kl_beta=KL_BETA,
        learning_rate=LEARNING_RATE, skip_zero_signal=False, save_every=0, progress_bar=False,
        output_dir=str(folder / ("plain_out" if plain else "prorl_out")), seed=args.seed, dtype="float32",
        mixed_precision="bf16" if args.bf16 else "no", rollout_engine="vllm" if args.vllm else "hf",
        **({"vllm_gpu_memory_utilization": args.vllm_gpu_memory_utilization} if args.vllm else {}),
    ))
    trainer = Trainer(cfg, reward_funcs=[bench_reward])
    rss_ready = _rss_now_mb()
    _send({"ready": True})
    clock = _StepClock()
    for _ in range(total):
        clock.start()
        m = trainer.train_step()
        clock.stop(round(m["completion_len_mean"] * args.n_prompts * args.n_samples), gen=m["gen_time"])
    _wait_go()  # tear down only once every system has finished its steps (see run_round)
    _send({"final": True, "rss_ready_mb": rss_ready, "peak_rss_mb": _peak_rss_mb(), "peak_gpu_mb": _peak_gpu_mb()})


def worker_trl(args, folder: Path) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import transformers
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    total = args.warmup + args.steps
    n = args.n_prompts * args.n_samples
    step_tokens = []

    def reward(prompts, completions, completion_ids=None, **kw):
        step_tokens.append(sum(len(c) for c in completion_ids))  # one call per generation round = per step
        return bench_reward(prompts, completions)

    reward.__name__ = "bench_reward"
    clock = _StepClock()
    ready = {}

    class Lockstep(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kw):
            ready["rss_mb"] = _rss_now_mb()  # after Trainer.train()'s own set-up (optimizer, data loader)
            _send({"ready": True})
            clock.start()

        def on_step_end(self, args_, state, control, **kw):
            clock.stop(step_tokens[-1] if step_tokens else 0)
            if state.global_step < total:
                clock.start()
            else:
                _wait_go()  # TRL's end-of-training work must not overlap another system's timed step

    config = GRPOConfig(
        output_dir=str(folder / "trl_out"), max_steps=total, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=n // args.micro_batch, num_generations=args.n_samples, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=TEMPERATURE, top_p=1.0, top_k=0, beta=KL_BETA,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        loss_type="dapo", scale_rewards="group", epsilon=0.2, seed=args.seed, use_cpu=args.device == "cpu", bf16=args.bf16, fp16=False,
        model_init_kwargs={"dtype": "float32"}, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, log_completions=False,
        # TRL turns activation checkpointing on by default (recompute in the backward to save memory);
        # prorl's is off by default, so TRL's is off here unless --trl_checkpointing: both do the same computation
        gradient_checkpointing=args.trl_checkpointing,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": args.vllm_gpu_memory_utilization} if args.vllm else {}),
    )
    ds = datasets.load_dataset("json", data_files=str(folder / "prompts.jsonl"), split="train")
    trainer = GRPOTrainer(model=str(folder / "model"), reward_funcs=[reward], args=config, train_dataset=ds, callbacks=[Lockstep()])
    trainer.train()
    _send({"final": True, "rss_ready_mb": ready["rss_mb"], "peak_rss_mb": _peak_rss_mb(), "peak_gpu_mb": _peak_gpu_mb(),
           "version": __import__("trl").__version__})


def worker_matmul(args) -> None:
    """This machine's matmul rate: best and median of a repeated torch.mm, 2048^3 fp32 on `--threads`
    CPU threads, or 8192^3 on the GPU in the step's precision (bf16 with --bf16, else fp32)."""
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    n = 8192 if cuda else 2048
    kw = dict(device="cuda", dtype=torch.bfloat16 if args.bf16 else torch.float32) if cuda else {}
    a, b = torch.randn(n, n, **kw), torch.randn(n, n, **kw)
    c = torch.empty(n, n, **kw)
    for _ in range(2):
        torch.mm(a, b, out=c)
    _sync()
    rates = []
    t_end = time.perf_counter() + args.matmul_seconds
    while time.perf_counter() < t_end or len(rates) < 5:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        _sync()
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    _send({"final": True, "best_gflops": max(rates) / 1e9, "median_gflops": statistics.median(rates) / 1e9, "reps": len(rates)})


# ----------------------------------------------------------------------
# Driver

class _Worker:
    def __init__(self, name: str, python: str, folder: Path, args):
        self.name = name
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [python, str(Path(__file__).resolve()), "--_worker", name, "--_workdir", str(folder)] + _forward(args)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1, env=_env(args.threads, args.device), cwd=str(REPO_ROOT))

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.proc.wait()
        self.log.seek(0)
        tail = "\n".join(self.log.read().splitlines()[-40:])
        raise SystemExit(f"{self.name} worker exited with code {self.proc.returncode}:\n{tail}")

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _forward(args) -> list[str]:
    out = ["--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--prompt_len", str(args.prompt_len), "--n_samples", str(args.n_samples), "--n_prompts", str(args.n_prompts),
           "--max_new_tokens", str(args.max_new_tokens), "--seed", str(args.seed), "--matmul_seconds", str(args.matmul_seconds),
           "--micro_batch", str(args.micro_batch)]
    out += ["--device", args.device, "--vllm_gpu_memory_utilization", str(args.vllm_gpu_memory_utilization)]
    flags = {"--eos": args.eos, "--trl_checkpointing": args.trl_checkpointing, "--bf16": args.bf16, "--vllm": args.vllm}
    return out + [f for f, on in flags.items() if on]


def _trl_python(args) -> str | None:
    for cand in (args.trl_python, os.environ.get("PRORL_BENCH_TRL_PYTHON"), sys.executable):
        if cand and subprocess.run([cand, "-c", "import trl"], capture_output=True, env=_env(1)).returncode == 0:
            return cand
    return None


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _cpu_counters():
    """(total jiffies, steal jiffies) from /proc/stat, or None."""
    try:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(vals), (vals[7] if len(vals) > 7 else 0)


def run_round(systems: list[str], pythons: dict, folder: Path, args) -> dict:
    """All systems' workers set up in parallel, then step in lockstep; returns per-system steps and finals.
    On a GPU the systems run one after the other instead, each alone on the device: two copies of a
    1.5B model with their references and Adam states do not fit one 80 GB GPU together, and each
    system's peak memory must be its own."""
    if args.device == "cuda":
        steps, finals = {}, {}
        for s in systems:
            w = _Worker(s, pythons[s], folder, args)
            try:
                w.read()  # ready
                steps[s] = [w.go() for _ in range(args.warmup + args.steps)]
                finals[s] = w.go()
            finally:
                w.close()
        return {"steps": steps, "finals": finals}
    workers = {s: _Worker(s, pythons[s], folder, args) for s in systems}
    try:
        for w in workers.values():
            w.read()  # ready
        steps = {s: [] for s in systems}
        for i in range(args.warmup + args.steps):
            k = i % len(systems)
            for s in systems[k:] + systems[:k]:  # rotate who goes first
                steps[s].append(workers[s].go())
        # only now may the workers wind down (TRL's end of train(), interpreter exit): had they done it
        # straight after their last step, it would have overlapped the next system's last timed step
        finals = {s: workers[s].go() for s in systems}
    finally:
        for w in workers.values():
            w.close()
    return {"steps": steps, "finals": finals}


def matmul_rate(folder: Path, args) -> dict:
    w = _Worker("matmul", sys.executable, folder, args)
    try:
        return w.read()
    finally:
        w.close()


def _flops_per_step(info: dict, args, completion_tokens: float, system: str | None = None) -> float:
    """Model FLOPs of one step (attention-score FLOPs and padding ignored).

    system=None: the workload's FLOPs, the same for every system: generation forwards over each
    prompt once and every completion token, 2N per token; the reference forward (2N) and the policy
    forward+backward (6N) over every sequence's prompt and completion tokens.
    system="prorl"/"plain"/"trl": what that system executes. TRL's generate prefills every row's
    prompt (a prompt n_samples times); prorl prefills a prompt once per group, and its
    `completion_logprobs` runs a micro-batch's repeated prompts once when that saves at least
    `prompt_sharing_threshold` of the micro-batch's tokens ("plain" never shares in training).
    """
    N = info["flop_params"]
    P, n, lp = args.n_prompts, args.n_samples, args.prompt_len
    B = P * n
    prefill = B * lp if system == "trl" else P * lp
    train_prompt = B * lp
    if system == "prorl":
        sys.path.insert(0, str(REPO_ROOT))
        from prorl.logprobs import prompt_sharing_threshold

        threshold = prompt_sharing_threshold(args.device)
        train_prompt = 0
        for start in range(0, B, args.micro_batch):
            rows = min(args.micro_batch, B - start)
            groups = (start + rows - 1) // n - start // n + 1
            shared = (rows - groups) * lp >= threshold * rows * (lp + args.max_new_tokens)
            train_prompt += (groups if shared else rows) * lp
    return 2 * N * (prefill + completion_tokens) + (2 + 6) * N * (train_prompt + completion_tokens)


def summarize(name: str, rounds: list[dict], args, info: dict, matmul_best: float | None) -> dict:
    steps = [st for r in rounds for st in r["steps"][name][args.warmup:]]
    walls = [st["wall"] for st in steps]
    toks = [st["tokens"] for st in steps]
    out = {
        "sec_per_step": statistics.median(walls),
        "sec_per_step_min": min(walls),
        "sec_per_step_all": [round(w, 3) for w in walls],
        "cpu_sec_per_step": statistics.median(st["cpu"] for st in steps),
        "completion_tokens_per_step": statistics.mean(toks),
        "completion_tokens_per_s": statistics.median(k / w for k, w in zip(toks, walls)),
        "peak_rss_mb": max(r["finals"][name]["peak_rss_mb"] for r in rounds),
        **({"peak_gpu_mb": max(r["finals"][name]["peak_gpu_mb"] for r in rounds)} if args.device == "cuda" else {}),
        "rss_ready_mb": max(r["finals"][name]["rss_ready_mb"] for r in rounds),
        "measured_steps": len(steps),
    }
    gens = [st["gen"] for st in steps if "gen" in st]
    if gens:
        out["gen_sec_per_step"] = statistics.median(gens)
    tokens = out["completion_tokens_per_step"]
    out["model_flops_per_step"] = _flops_per_step(info, args, tokens)
    out["executed_flops_per_step"] = _flops_per_step(info, args, tokens, name)
    out["achieved_gflops"] = out["executed_flops_per_step"] / out["sec_per_step"] / 1e9
    if matmul_best:
        # share of the machine's fp32 matmul limit reached by the FLOPs this system executes
        out["flop_fraction"] = out["achieved_gflops"] / matmul_best
        # the workload's FLOPs per second over that limit (can pass 1 when a system skips repeated work)
        out["model_flop_fraction"] = out["model_flops_per_step"] / out["sec_per_step"] / 1e9 / matmul_best
    version = rounds[0]["finals"][name].get("version")
    if version:
        out["version"] = version
    return out


def paired_ratios(a: str, b: str, rounds: list[dict], args) -> dict:
    """Medians over lockstep step pairs of a's speed-up over b (>1: a is faster), and the peak-RSS ratio a/b."""
    tok, step = [], []
    for r in rounds:
        for x, y in zip(r["steps"][a][args.warmup:], r["steps"][b][args.warmup:]):
            tok.append((x["tokens"] / x["wall"]) / (y["tokens"] / y["wall"]))
            step.append(y["wall"] / x["wall"])
    peak = max(r["finals"][a]["peak_rss_mb"] for r in rounds) / max(r["finals"][b]["peak_rss_mb"] for r in rounds)
    out = {"tokens_per_s": statistics.median(tok), "step_time_speedup": statistics.median(step), "peak_rss": peak}
    if args.device == "cuda":
        out["peak_gpu"] = max(r["finals"][a]["peak_gpu_mb"] for r in rounds) / max(r["finals"][b]["peak_gpu_mb"] for r in rounds)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--against", default="", help="comma list of: trl (TRL's GRPOTrainer), plain (prorl with the reference rollout paths: "
                    "generate(fast=False), completion_logprobs(share_prompts=False))")
    ap.add_argument("--steps", type=int, default=5, help="measured optimizer steps per process")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up optimizer steps per process (not measured)")
    ap.add_argument("--rounds", type=int, default=1, help="fresh sets of processes, one after the other")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every process")
    ap.add_argument("--n_prompts", type=int, default=8, help="prompts per optimizer step")
    ap.add_argument("--n_samples", type=int, default=8, help="completions per prompt (the group size)")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--micro_batch", type=int, default=16, help="completions per forward/backward pass in both systems "
                    "(prorl micro_batch_size, TRL per_device_train_batch_size)")
    ap.add_argument("--prompt_len", type=int, default=16, help="prompt length in tokens (= characters)")
    ap.add_argument("--eos", action="store_true", help="let the model emit EOS, so completions stop early")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matmul_seconds", type=float, default=3.0, help="how long each torch.mm rate measurement runs")
    ap.add_argument("--no_matmul", action="store_true", help="skip the matmul-rate measurement (no flop_fraction)")
    ap.add_argument("--trl_checkpointing", action="store_true",
                    help="run TRL with its default activation checkpointing (more compute, less memory); off by default")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: run every system on the first visible GPU")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in both systems (float32 weights); for --device cuda")
    ap.add_argument("--vllm", action="store_true", help="sample with a colocated vLLM engine in both systems (needs vLLM; GPU)")
    ap.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.3, help="with --vllm: GPU share each vLLM engine may take")
    ap.add_argument("--trl_python", default=None, help="a Python that can import trl (default: $PRORL_BENCH_TRL_PYTHON, then this one)")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    ap.add_argument("--_worker", choices=SYSTEMS + ("matmul",), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("need --steps >= 1, --warmup >= 0, --rounds >= 1")
    against = [s.strip() for s in args.against.split(",") if s.strip()]
    if any(s not in ("trl", "plain") for s in against):
        ap.error(f"--against takes a comma list of trl, plain; got {args.against!r}")
    if (args.bf16 or args.vllm) and args.device != "cuda":
        ap.error("--bf16 and --vllm are GPU options: add --device cuda")
    if args.vllm and "plain" in against:
        ap.error("--vllm replaces the sampler that --against plain compares; drop one of them")
    if args.micro_batch < 1:
        ap.error("--micro_batch must be >= 1")
    if "trl" in against and (args.n_prompts * args.n_samples) % args.micro_batch:
        ap.error(f"--n_prompts x --n_samples must be a multiple of --micro_batch={args.micro_batch} (TRL's per-device batch)")
    if args.device == "cuda" and not args._worker:
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA GPU here (a CPU build of torch, or no GPU visible)")

    if args._worker:
        folder = Path(args._workdir) if args._workdir else None
        if args._worker == "matmul":
            worker_matmul(args)
        elif args._worker == "trl":
            worker_trl(args, folder)
        else:
            worker_prorl(args, folder, plain=args._worker == "plain")
        return 0

    systems = ["prorl"] + [s for s in ("trl", "plain") if s in against]
    pythons = {"prorl": sys.executable, "plain": sys.executable}
    if "trl" in systems:
        pythons["trl"] = _trl_python(args)
        if pythons["trl"] is None:
            ap.error("--against trl: no Python with trl found; pass --trl_python or set PRORL_BENCH_TRL_PYTHON")

    machine = {"cpus": os.cpu_count(), "threads": args.threads, "loadavg_before": _loadavg()}
    cpu0, t0 = _cpu_counters(), time.time()
    with tempfile.TemporaryDirectory(prefix="prorl_bench_") as tmp:
        folder = Path(tmp)
        info = build_workload(folder, args)
        matmul = [] if args.no_matmul else [matmul_rate(folder, args)]
        rounds = [run_round(systems, pythons, folder, args) for _ in range(args.rounds)]
        if not args.no_matmul:
            matmul.append(matmul_rate(folder, args))
    cpu1 = _cpu_counters()

    import torch
    import transformers

    machine.update({"loadavg_after": _loadavg(), "wall_s": round(time.time() - t0, 1), "torch": torch.__version__,
                    "transformers": transformers.__version__})
    if args.device == "cuda" and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    if cpu0 and cpu1:
        machine["steal_pct"] = round(100.0 * (cpu1[1] - cpu0[1]) / max(cpu1[0] - cpu0[0], 1), 1)
    best = max((m["best_gflops"] for m in matmul), default=None)
    if matmul:
        machine["matmul_gflops_best"] = best
        machine["matmul_gflops_median"] = [round(m["median_gflops"], 2) for m in matmul]

    result = {
        "workload": {
            "model": args.model, "params": info["params"], "vocab_size": info["vocab_size"], "n_prompts": args.n_prompts,
            "n_samples": args.n_samples, "max_new_tokens": args.max_new_tokens, "prompt_len": args.prompt_len,
            "eos": args.eos, "temperature": TEMPERATURE, "kl_beta": KL_BETA, "dtype": "float32", "device": args.device,
            "bf16_autocast": args.bf16, "vllm": args.vllm,
            "micro_batch": args.micro_batch, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
            "trl_checkpointing": args.trl_checkpointing,
        },
        "machine": machine,
    }
    for s in systems:
        result[s] = summarize(s, rounds, args, info, best)
    for other in systems[1:]:
        result[f"ratio_vs_{other}"] = paired_ratios("prorl", other, rounds, args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
