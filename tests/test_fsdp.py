"""FSDP on two CPU processes (gloo): the trainer's sharded paths in `prorl.dist`, end to end.

accelerate (1.15) never turns FSDP on for a CPU run: with `cpu=True` (or no GPU) the launch's
`ACCELERATE_USE_FSDP` is ignored and the run is plain MULTI_CPU data parallel (with
`fsdp_cpu_ram_efficient_loading` it even fails in `Accelerator()`: "no available devices found").
torch's FSDP itself works on CPU with gloo. So this file, run as a script under torchrun, builds the
Accelerator exactly as `prorl train` does and then switches it to FSDP (the state accelerate would
have on GPUs: distributed_type FSDP plus an FSDP plugin like launch/fsdp.yaml's), and runs the real
`Trainer`. Everything after that is accelerate's and torch's real FSDP code: `acc.prepare` shards the
model (`fully_shard` / `FullyShardedDataParallel`), backward reduce-scatters, `clip_grad_norm_`,
`get_state_dict`, and our generation / reference / optimizer-state helpers.

    python -m torch.distributed.run --nproc_per_node 2 tests/test_fsdp.py 2 --max_steps 2 ...
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = Path(os.environ.get("PRORL_TEST_MODEL", REPO / "data" / "tiny-arith"))  # override: any tiny causal LM folder

FSDP_PLUGIN = {  # launch/fsdp.yaml, minus what needs a GPU (cpu_ram_efficient_loading broadcasts on CUDA)
    2: dict(fsdp_version=2, reshard_after_forward=True),
    1: dict(fsdp_version=1, reshard_after_forward="FULL_SHARD", use_orig_params=True, sync_module_states=False),
}


def force_fsdp(acc, version: int) -> None:
    """Give a CPU Accelerator the FSDP state accelerate sets up on GPUs."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        auto_wrap_policy="transformer_based_wrap",
        state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False,
        **FSDP_PLUGIN[version],
    )
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState.__init__ does
    if version == 1:  # FSDP1 rejects device_id "cpu:0" (accelerate's CPU device) against its compute device "cpu"
        import torch

        acc.state.device = PartialState._shared_state["device"] = torch.device("cpu")


def _main(argv: list[str]) -> int:
    """torchrun entry point: `tests/test_fsdp.py VERSION --option value ...` (VERSION 1 or 2)."""
    from prorl import dist
    from prorl.cli import parse_train_args
    from prorl.trainer import Trainer

    version, args = int(argv[0]), argv[1:]
    cfg = parse_train_args(args)
    acc = dist.make_accelerator()
    force_fsdp(acc, version)
    trainer = Trainer(cfg, accelerator=acc)
    sharded = type(trainer.model).__name__
    trainer.train()
    if acc.is_main_process:
        (Path(cfg.output_dir) / "fsdp_probe.json").write_text(
            json.dumps({"distributed_type": str(acc.distributed_type), "is_fsdp2": acc.is_fsdp2, "model_class": sharded})
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(_main(sys.argv[1:]))


# ----------------------------------------------------------------------
# pytest side

import pytest  # noqa: E402

pytestmark = pytest.mark.slow

# a reward with signal even for an untrained model, so every step really updates the policy
REWARD = "def digit_frac(prompts, completions, **kw):\n    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]\n"

COMMON = dict(
    dataset="builtin:arithmetic", batch_size=4, n_samples=4, micro_batch_size=4, max_length=6,
    learning_rate=1e-4, kl_beta=0.01, seed=5, progress_bar=False,
)


def _fsdp_on_cpu_unavailable() -> str | None:
    import torch.distributed as tdist

    if not tdist.is_available() or not tdist.is_gloo_available():
        return "torch.distributed with the gloo backend is not available in this torch build"
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401
    except ImportError:
        return "this torch has no FSDP2 (torch.distributed.fsdp.fully_shard needs torch >= 2.6)"
    if not (TINY_MODEL / "config.json").exists():
        return f"{TINY_MODEL} missing: run python data/build_tiny_model.py"
    return None


_SKIP = _fsdp_on_cpu_unavailable()
needs_fsdp_on_cpu = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """A hang (e.g. a collective only some processes reach) fails through the timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-4000:]}"
    return r


def _opts(out, **overrides) -> list[str]:
    reward = out.parent / "reward_digits.py"
    if not reward.exists():
        reward.write_text(REWARD)
    opts = dict(COMMON, model_name_or_path=str(TINY_MODEL), output_dir=str(out), reward_funcs=f"{reward}:digit_frac")
    args = []
    for k, v in dict(opts, **overrides).items():
        args += [f"--{k}", str(v)]
    return args


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(_port())]


def train_fsdp(version: int, out, **overrides):
    return _run([*_torchrun(2), "tests/test_fsdp.py", str(version), *_opts(out, **overrides)])


def train_plain(nproc: int, out, **overrides):
    launcher = [sys.executable] if nproc == 1 else _torchrun(nproc)
    return _run([*launcher, "-m", "prorl", "train", *_opts(out, **overrides)])


def metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def tensors(ckpt, name="model.safetensors"):
    from safetensors.torch import load_file

    return load_file(str(ckpt / name))


def max_rel_diff(a: dict, b: dict) -> float:
    keys = a.keys() & b.keys()
    assert keys and all(k in keys or k == "lm_head.weight" for k in a.keys() | b.keys())  # tied copy may be written
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)) for k in keys)


@needs_fsdp_on_cpu
def test_fsdp2_two_cpu_processes_train_save_and_match_ddp(tmp_path):
    """2 steps with 2 processes under FSDP2 (sharded policy, full reference reset after every step):
    exit 0, really sharded, 2 metric lines, a checkpoint transformers loads, and the same run as DDP."""
    from transformers import AutoModelForCausalLM

    over = dict(max_steps=2, save_every=1, ref_reset_every=1)
    train_fsdp(2, tmp_path / "fsdp", **over)
    probe = json.loads((tmp_path / "fsdp" / "fsdp_probe.json").read_text())
    assert probe["distributed_type"] == "DistributedType.FSDP" and probe["is_fsdp2"], probe
    assert probe["model_class"].startswith("FSDP"), probe  # fully_shard swapped the class: the policy was sharded
    m = metrics(tmp_path / "fsdp")
    assert [x["step"] for x in m] == [1, 2] and all(x["groups"] == 4 and x["trained_samples"] > 0 for x in m)
    ckpt = tmp_path / "fsdp" / "checkpoint-000002"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert model.config.model_type and sum(p.numel() for p in model.parameters()) > 0
    # the reference reset gathered the sharded policy: right after it, reference == policy exactly
    policy, ref = tensors(ckpt), tensors(ckpt, "reference.safetensors")
    assert max(float((policy[k] - ref[k]).abs().max()) for k in ref) == 0.0
    assert m[1]["kl"] == 0.0 and m[1]["ref_resets"] == 2  # step 2 started from the reset reference

    # same seed, same global batch: FSDP and DDP sample the same completions and end at the same weights
    train_plain(2, tmp_path / "ddp", **over)
    for a, b in zip(m, metrics(tmp_path / "ddp")):
        assert a["reward_mean"] == b["reward_mean"] and a["completion_len_mean"] == b["completion_len_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)
    diff = max_rel_diff(policy, tensors(tmp_path / "ddp" / "checkpoint-000002"))
    assert diff < 1e-4, diff


@needs_fsdp_on_cpu
def test_fsdp2_checkpoint_resumes_on_one_process(tmp_path):
    """The optimizer state saved under FSDP2 is in the plain format (same keys and values as a
    one-process run's), and one process resumes it to where an uninterrupted run ends."""
    train_plain(1, tmp_path / "ref", max_steps=3, save_every=1)
    train_fsdp(2, tmp_path / "a", max_steps=2, save_every=2)
    ref2, fsdp2 = tmp_path / "ref" / "checkpoint-000002", tmp_path / "a" / "checkpoint-000002"
    assert json.loads((fsdp2 / "optimizer.json").read_text())["param_groups"][0]["params"] == \
        json.loads((ref2 / "optimizer.json").read_text())["param_groups"][0]["params"]
    opt_f, opt_r = tensors(fsdp2, "optimizer.safetensors"), tensors(ref2, "optimizer.safetensors")
    assert opt_f.keys() == opt_r.keys() and len(opt_f) > 0
    assert all(opt_f[k].shape == opt_r[k].shape for k in opt_r)
    assert max_rel_diff(opt_f, opt_r) < 1e-3, max_rel_diff(opt_f, opt_r)

    train_plain(1, tmp_path / "a", max_steps=3, save_every=3, resume="latest")
    assert [x["step"] for x in metrics(tmp_path / "a")] == [1, 2, 3]
    diff = max_rel_diff(tensors(tmp_path / "a" / "checkpoint-000003"), tensors(tmp_path / "ref" / "checkpoint-000003"))
    assert diff < 1e-4, diff
