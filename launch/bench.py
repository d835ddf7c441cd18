#!/usr/bin/env python
"""End-to-end GRPO step benchmark: prorl's real `Trainer` (optionally against TRL's `GRPOTrainer`).

    python launch/bench.py                                  # tiny model, prorl only
    python launch/bench.py --model medium --against trl     # both systems, same workload, ratio
    python launch/bench.py --against trl --eos              # completions may stop early at EOS
    python launch/bench.py --prompt_len 128 --n_samples 16  # longer prompts, bigger groups

The workload (fixed, offline, fp32 on CPU):

- a random-init Llama built from a `LlamaConfig` (seeded; no Hub download), with a character-level
  tokenizer made here: `tiny` ~0.45M parameters (hidden 128, 2 layers), `medium` ~25.7M (hidden 512,
  8 layers, intermediate 1408);
- `--n_prompts` (8) prompts x `--n_samples` (8) samples per optimizer step, `--max_new_tokens` (64)
  new tokens, temperature 1, top_p 1, top_k 0, KL beta 0.04 (a reference model), lr 1e-6, one
  update per rollout batch, micro-batches of 16 completions;
- all prompts are `--prompt_len` (16) random characters = tokens, so both systems see the same shapes;
- reward = fraction of the completion's characters that are lowercase letters: it varies within
  every group, so no group carries zero signal and both systems do the same work (prorl's
  `skip_zero_signal` is off anyway);
- without `--eos` the EOS token is outside the model's output vocabulary (the model has V-1 output
  rows, the tokenizer's `<eos>` is id V-1), so every completion is exactly `--max_new_tokens` long;
  with `--eos` the model can emit it (a random-init model does, about once per V tokens) and
  completions stop early.

Batch semantics (TRL counts completions, prorl counts prompts):

    prorl  batch_size=P, n_samples=N, micro_batch_size=16, updates_per_batch=1, mini_batches=1
    TRL    num_generations=N, per_device_train_batch_size=16, gradient_accumulation_steps=P*N/16
           (so steps_per_generation = gradient_accumulation_steps and generation_batch_size = P*N:
           one generation round and one optimizer step per P prompts), num_iterations=1,
           loss_type="dapo" (= prorl's loss_agg=token_mean: token sum over the global token count),
           scale_rewards="group" (= prorl's advantage=grpo), epsilon=0.2 (= prorl's ppo_clip default)

Each system runs in its own fresh subprocess (`--rounds` times, alternating prorl / TRL, so slow
phases of a loaded machine hit both); a step's time is wall-clock from the start of one optimizer
step to the next (rollout, reward, reference log-probs, update). Printed as JSON: the median
seconds per optimizer step over the measured steps (warm-up excluded), completion tokens/s (EOS
included, padding not), the peak RSS of the worker process (`resource.getrusage` high-water, so
imports + models + the steps), and model FLOPs per step against this machine's fp32 `torch.mm`
rate (`flop_fraction`).

TRL runs from any Python that can `import trl` (`--trl_python`, `$PRORL_BENCH_TRL_PYTHON`, or this
one); install it in a separate virtual env, e.g.
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
    # ~0.45M parameters
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    # ~25.7M parameters
    "medium": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8),
}
SPECIALS_HEAD = ["<pad>", "<bos>", "<unk>"]
MICRO_BATCH = 16
LEARNING_RATE = 1e-6
KL_BETA = 0.04
TEMPERATURE = 1.0


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": "",
        "WANDB_DISABLED": "true", "DISABLE_MLFLOW_INTEGRATION": "TRUE", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "PYTHONWARNINGS": "ignore",
    })
    return env


# ----------------------------------------------------------------------
# The workload, written to a folder both systems load from

def build_tokenizer(eos_reachable: bool):
    """Character-level tokenizer: <pad> <bos> <unk>, every printable char, then <eos> as the LAST id."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS_HEAD + chars + ["<eos>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="left", model_max_length=4096,
    )


def build_workload(folder: Path, args) -> dict:
    import torch
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.set_verbosity_error()  # "eos_token_id outside the vocabulary" is on purpose
    transformers.utils.logging.disable_progress_bar()
    tok = build_tokenizer(args.eos)
    eos_id = tok.eos_token_id
    # Without --eos the model has one output row fewer than the tokenizer, so it can never emit <eos>.
    vocab = len(tok) if args.eos else len(tok) - 1
    cfg = LlamaConfig(
        vocab_size=vocab, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=eos_id,
        max_position_embeddings=max(512, args.prompt_len + args.max_new_tokens), rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_dropout=0.0, **MODELS[args.model],
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).float().eval()
    model.generation_config = GenerationConfig(pad_token_id=tok.pad_token_id, eos_token_id=eos_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(folder / "model", safe_serialization=True)
    tok.save_pretrained(folder / "model")

    rng = random.Random(args.seed)
    alphabet = string.ascii_letters + string.digits + "+-*/=() "
    n_prompts = args.n_prompts * (args.warmup + args.steps) * 2  # never wraps into a second epoch
    prompts = ["".join(rng.choice(alphabet) for _ in range(args.prompt_len)) for _ in range(n_prompts)]
    with open(folder / "prompts.jsonl", "w") as fh:
        fh.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)

    n_params = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel()
    head = model.lm_head.weight.numel()  # counted as a matmul even when tied
    return {
        "params": n_params,
        "flop_params": n_params - embed + head,  # every matmul weight a token passes through
        "vocab_size": vocab,
        "eos_reachable": bool(args.eos),
    }


def bench_reward(prompts, completions, **kwargs):
    """Fraction of lowercase letters in the completion: varies within every group."""
    return [sum(ch.islower() for ch in c) / max(len(c), 1) for c in completions]


# ----------------------------------------------------------------------
# Workers (one fresh process per system and round)

def _rss_now_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_prorl(args, folder: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO_ROOT))
    from prorl import Trainer
    from prorl.config import load_config

    total = args.warmup + args.steps
    cfg = load_config(None, dict(
        model_name_or_path=str(folder / "model"), dataset=str(folder / "prompts.jsonl"), max_steps=total,
        batch_size=args.n_prompts, n_samples=args.n_samples, micro_batch_size=MICRO_BATCH, max_length=args.max_new_tokens,
        max_prompt_length=args.prompt_len + 8, temperature=TEMPERATURE, top_p=1.0, top_k=0, kl_beta=KL_BETA,
        learning_rate=LEARNING_RATE, skip_zero_signal=False, save_every=0, progress_bar=False,
        output_dir=str(folder / "prorl_out"), seed=args.seed, dtype="float32",
    ))
    trainer = Trainer(cfg, reward_funcs=[bench_reward])
    rss_ready = _rss_now_mb()
    prof = _profiler(args)
    times, tokens, gen = [], [], []
    for i in range(total):
        if prof is not None and i == total - 1:
            prof.__enter__()
        t0 = time.perf_counter()
        m = trainer.train_step()
        times.append(time.perf_counter() - t0)
        if prof is not None and i == total - 1:
            prof.__exit__(None, None, None)
        tokens.append(round(m["completion_len_mean"] * args.n_prompts * args.n_samples))
        gen.append(m["gen_time"])
    out = {"step_times": times, "step_tokens": tokens, "gen_times": gen, "rss_ready_mb": rss_ready, "peak_rss_mb": _peak_rss_mb()}
    if prof is not None:
        out["profile"] = _profile_table(prof, args)
    return out


def worker_trl(args, folder: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    datasets.disable_progress_bars()
    total = args.warmup + args.steps
    n = args.n_prompts * args.n_samples
    if n % MICRO_BATCH:
        raise SystemExit(f"n_prompts * n_samples = {n} must be a multiple of {MICRO_BATCH}")
    step_tokens = []

    def reward(prompts, completions, completion_ids=None, **kw):
        step_tokens.append(sum(len(c) for c in completion_ids))
        return bench_reward(prompts, completions)

    reward.__name__ = "bench_reward"

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *a, **k):
            self.marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.marks.append(time.perf_counter())

    config = GRPOConfig(
        output_dir=str(folder / "trl_out"), max_steps=total, per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=n // MICRO_BATCH, num_generations=args.n_samples, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=TEMPERATURE, top_p=1.0, top_k=0, beta=KL_BETA,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        loss_type="dapo", scale_rewards="group", epsilon=0.2, seed=args.seed, use_cpu=True, bf16=False, fp16=False,
        model_init_kwargs={"dtype": "float32"}, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, log_completions=False,
    )
    ds = datasets.load_dataset("json", data_files=str(folder / "prompts.jsonl"), split="train")
    clock = Clock()
    trainer = GRPOTrainer(model=str(folder / "model"), reward_funcs=[reward], args=config, train_dataset=ds, callbacks=[clock])
    rss_ready = _rss_now_mb()
    trainer.train()
    times = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    return {"step_times": times, "step_tokens": step_tokens[:total], "gen_times": None, "rss_ready_mb": rss_ready,
            "peak_rss_mb": _peak_rss_mb(), "trl_version": __import__("trl").__version__}


def _profiler(args):
    if not args.profile:
        return None
    import torch

    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False)


def _profile_table(prof, args) -> str:
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def worker_matmul(args) -> dict:
    """This machine's fp32 matmul rate on `--threads` threads: best and median of repeated big torch.mm."""
    import torch

    torch.set_num_threads(args.threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=c)
    rates = []
    t_end = time.perf_counter() + args.matmul_seconds
    while time.perf_counter() < t_end or len(rates) < 5:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    return {"matmul_gflops_best": max(rates) / 1e9, "matmul_gflops_median": statistics.median(rates) / 1e9, "matmul_n": n, "matmul_reps": len(rates)}


# ----------------------------------------------------------------------
# Orchestration

def _run_worker(python: str, kind: str, folder: Path, args) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--_worker", kind, "--_workdir", str(folder)] + _forward(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(args.threads), cwd=str(REPO_ROOT))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-30:])
        raise SystemExit(f"{kind} worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def _forward(args) -> list[str]:
    out = ["--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--prompt_len", str(args.prompt_len), "--n_samples", str(args.n_samples), "--n_prompts", str(args.n_prompts),
           "--max_new_tokens", str(args.max_new_tokens), "--seed", str(args.seed), "--matmul_seconds", str(args.matmul_seconds)]
    if args.eos:
        out.append("--eos")
    if args.profile:
        out.append("--profile")
    return out


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


def _steal_pct(seconds: float = 1.0) -> float | None:
    """Share of CPU time stolen by the hypervisor over `seconds` (from /proc/stat), in percent."""
    def snap():
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(vals), (vals[7] if len(vals) > 7 else 0)

    try:
        t0, s0 = snap()
        time.sleep(seconds)
        t1, s1 = snap()
    except OSError:
        return None
    return round(100.0 * (s1 - s0) / max(t1 - t0, 1), 1)


def summarize(runs: list[dict], warmup: int, info: dict, matmul_best: float, n_seqs: int, prompt_tokens: int) -> dict:
    times, toks = [], []
    for r in runs:
        times += r["step_times"][warmup:]
        toks += r["step_tokens"][warmup:]
    rates = [k / t for k, t in zip(toks, times)]
    med_t = statistics.median(times)
    out = {
        "sec_per_step": med_t,
        "sec_per_step_min": min(times),
        "sec_per_step_all": [round(t, 4) for t in times],
        "completion_tokens_per_step": statistics.mean(toks),
        "completion_tokens_per_s": statistics.median(rates),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_ready_mb": max(r["rss_ready_mb"] for r in runs),
        "measured_steps": len(times),
    }
    gen = [g for r in runs if r.get("gen_times") for g in r["gen_times"][warmup:]]
    if gen:
        out["gen_sec_per_step"] = statistics.median(gen)
    # Model FLOPs of one step (the same formula for both systems; attention-score FLOPs ignored):
    # generation forwards 2N(prompt tokens of each prompt once + completion tokens), reference forward
    # 2N(B*Lp + completion tokens), policy forward+backward 6N(B*Lp + completion tokens).
    N = info["flop_params"]
    tc = statistics.mean(toks)
    flops = 2 * N * (prompt_tokens + tc) + 8 * N * (n_seqs * info["prompt_len"] + tc)
    out["model_flops_per_step"] = flops
    out["achieved_gflops"] = flops / med_t / 1e9
    if matmul_best:
        out["flop_fraction"] = flops / med_t / (matmul_best * 1e9)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--against", choices=["trl"], default=None, help="also run TRL's GRPOTrainer on the same workload")
    ap.add_argument("--steps", type=int, default=3, help="measured optimizer steps per round")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up optimizer steps per round (not measured)")
    ap.add_argument("--rounds", type=int, default=1, help="fresh subprocesses per system, alternating prorl/TRL")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every worker")
    ap.add_argument("--n_prompts", type=int, default=8, help="prompts per optimizer step")
    ap.add_argument("--n_samples", type=int, default=8, help="samples per prompt (group size)")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--prompt_len", type=int, default=16, help="prompt length in tokens (characters)")
    ap.add_argument("--eos", action="store_true", help="let the model emit EOS, so completions stop early")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matmul_seconds", type=float, default=3.0, help="how long to measure the torch.mm rate")
    ap.add_argument("--no_matmul", action="store_true", help="skip the matmul-rate measurement (no flop_fraction)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of prorl's last step (stderr)")
    ap.add_argument("--trl_python", default=None, help="a Python that can import trl (default: $PRORL_BENCH_TRL_PYTHON, then this one)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--_worker", choices=["prorl", "trl", "matmul"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps >= 1, --warmup >= 0, --rounds >= 1")

    if args._worker:
        if args._worker == "matmul":
            result = worker_matmul(args)
        else:
            fn = worker_prorl if args._worker == "prorl" else worker_trl
            result = fn(args, Path(args._workdir))
        profile = result.pop("profile", None)
        if profile:
            print(profile, file=sys.stderr)
        print(json.dumps(result))
        return 0

    trl_python = None
    if args.against == "trl":
        trl_python = _trl_python(args)
        if trl_python is None:
            ap.error("--against trl: no Python with trl found; pass --trl_python or set PRORL_BENCH_TRL_PYTHON")

    machine = {"cpus": os.cpu_count(), "threads": args.threads, "loadavg_before": _loadavg(), "steal_pct_before": _steal_pct()}
    with tempfile.TemporaryDirectory(prefix="prorl_bench_") as tmp:
        folder = Path(tmp)
        info = build_workload(folder, args)
        info["prompt_len"] = args.prompt_len
        matmul = [] if args.no_matmul else [_run_worker(sys.executable, "matmul", folder, args)]
        systems = ["prorl"] + (["trl"] if trl_python else [])
        runs = {s: [] for s in systems}
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            for s in order:
                runs[s].append(_run_worker(sys.executable if s == "prorl" else trl_python, s, folder, args))
        if not args.no_matmul:
            matmul.append(_run_worker(sys.executable, "matmul", folder, args))

    import torch
    import transformers

    machine.update({"loadavg_after": _loadavg(), "steal_pct_after": _steal_pct(), "torch": torch.__version__,
                    "transformers": transformers.__version__})
    best = max((m["matmul_gflops_best"] for m in matmul), default=0.0)
    if matmul:
        machine.update({"matmul_gflops_best": best, "matmul_gflops_median": [m["matmul_gflops_median"] for m in matmul]})
    n_seqs = args.n_prompts * args.n_samples
    prompt_tokens = args.n_prompts * args.prompt_len
    result = {
        "workload": {
            "model": args.model, "params": info["params"], "vocab_size": info["vocab_size"], "n_prompts": args.n_prompts,
            "n_samples": args.n_samples, "max_new_tokens": args.max_new_tokens, "prompt_len": args.prompt_len,
            "eos": args.eos, "temperature": TEMPERATURE, "kl_beta": KL_BETA, "dtype": "float32",
            "micro_batch": MICRO_BATCH, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        },
        "machine": machine,
    }
    for s in systems:
        result[s] = summarize(runs[s], args.warmup, info, best, n_seqs, prompt_tokens)
    if "trl" in result:
        result["trl"]["version"] = runs["trl"][0].get("trl_version")
        p, t = result["prorl"], result["trl"]
        result["ratio"] = {
            "tokens_per_s": p["completion_tokens_per_s"] / t["completion_tokens_per_s"],
            "step_time_speedup": t["sec_per_step"] / p["sec_per_step"],
            "peak_rss": p["peak_rss_mb"] / t["peak_rss_mb"],
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
