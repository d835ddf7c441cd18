"""FSDP on two CPU processes (gloo): the trainer's sharded paths in `prorl.dist`, end to end.

accelerate 1.15 never turns FSDP on for a CPU run: with `cpu=True` (no GPU) it ignores the launch's
`ACCELERATE_USE_FSDP` and runs plain MULTI_CPU data parallel (`fsdp_version: 2`), or stops in
`Accelerator()` with "no available devices found" (`fsdp_version: 1`, which syncs module states on
a GPU). torch's FSDP itself runs on CPU with gloo. So this file, run as a script under torchrun,
builds the Accelerator as `prorl train` does, switches it to the state accelerate sets up for FSDP
on GPUs (distributed_type FSDP plus a plugin like launch/fsdp.yaml's) and runs the real `Trainer`.
From there on it is accelerate's and torch's real FSDP code: `acc.prepare` shards the model
(`fully_shard` / `FullyShardedDataParallel`), backward reduce-scatters, `clip_grad_norm_`,
`get_state_dict`, and prorl's generation / reference / optimizer-state helpers.

    python -m torch.distributed.run --nproc_per_node 2 tests/test_fsdp.py 2 --max_steps 2 ...
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = Path(os.environ.get("PRORL_TEST_MODEL", REPO / "data" / "tiny-arith"))  # any small causal LM folder

FSDP_PLUGIN = {  # launch/fsdp.yaml, minus cpu_ram_efficient_loading (it broadcasts on a GPU)
    2: dict(fsdp_version=2, reshard_after_forward=True),
    1: dict(fsdp_version=1, reshard_after_forward="FULL_SHARD", use_orig_params=True, sync_module_states=False),
}


def force_fsdp(acc, version: int) -> None:
    """Give a CPU Accelerator the FSDP state accelerate sets up on GPUs."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        auto_wrap_policy="transformer_based_wrap",
        state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False,
        **FSDP_PLUGIN[version],
    )
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState.__init__ does
    if version == 1:
        # FSDP1 rejects accelerate's CPU device "cpu:0" as device_id against its compute device "cpu"
        acc.state.device = PartialState._shared_state["device"] = torch.device("cpu")
        # and torch 2.13's FSDP1 segfaults gathering a full state dict with offload_to_cpu=True on a
        # CPU device (accelerate's get_state_dict setting; on GPUs that is the right setting)
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        def get_state_dict(model, unwrap=True):
            with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=True)):
                return model.state_dict()

        acc.get_state_dict = get_state_dict


def _generation_probe(trainer, cfg) -> dict:
    """Inside `unwrapped_for_generation` every process runs a DIFFERENT number of forwards (as the
    sampling loop does when one process's completions all end early); outside it, the sharded model
    must work as before. Logits are compared with the unsharded model."""
    import torch
    from transformers import AutoModelForCausalLM

    from prorl import dist

    acc = trainer.acc
    plain = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path).eval()
    ids = torch.randint(3, plain.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        with dist.unwrapped_for_generation(acc, trainer.model) as policy:
            diffs = [float((policy(input_ids=ids).logits - want).abs().max()) for _ in range(1 + 2 * acc.process_index)]
        after = float((trainer.model(input_ids=ids).logits - want).abs().max())  # the sharded forward again
    return {"rank": acc.process_index, "forwards": len(diffs), "max_diff": max(diffs), "after_diff": after}


def _main(argv: list[str]) -> int:
    """torchrun entry point: `tests/test_fsdp.py [gen] VERSION --option value ...` (VERSION 1 or 2)."""
    from prorl import dist
    from prorl.cli import parse_train_args
    from prorl.trainer import Trainer

    probe_generation = argv[0] == "gen"
    argv = argv[1:] if probe_generation else argv
    version, cfg = int(argv[0]), parse_train_args(argv[1:])
    acc = dist.make_accelerator()
    force_fsdp(acc, version)
    trainer = Trainer(cfg, accelerator=acc)
    sharded_class = type(trainer.model).__name__
    if probe_generation:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"gen_probe_{acc.process_index}.json").write_text(json.dumps(_generation_probe(trainer, cfg)))
        return 0
    trainer.train()
    if acc.is_main_process:
        probe = {"distributed_type": str(acc.distributed_type), "is_fsdp2": acc.is_fsdp2, "model_class": sharded_class}
        (Path(cfg.output_dir) / "fsdp_probe.json").write_text(json.dumps(probe))
    dist.exit_now(0)  # as `prorl train` leaves a finished multi-process run


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(_main(sys.argv[1:]))


# ----------------------------------------------------------------------
# pytest side

import pytest  # noqa: E402

from .procs import free_port, run_tree  # noqa: E402

pytestmark = pytest.mark.slow

# a reward that tells apart any two different completions (of an untrained or a trained model), so
# groups carry signal and every step really updates the policy
REWARD = "def text_hash(prompts, completions, **kw):\n    return [sum(map(ord, c)) % 7 / 6 for c in completions]\n"

COMMON = dict(
    dataset="builtin:arithmetic", batch_size=4, n_samples=4, micro_batch_size=4, max_length=6,
    learning_rate=1e-4, kl_beta=0.01, seed=5, progress_bar=False,
)
# One Adam step moves the weights by ~1e-3 (relative); summing the same gradients in another order
# (reduce-scatter vs all-reduce vs one process) flips near-zero gradient signs: up to ~1e-4.
SAME_RUN = 3e-4


def _fsdp_on_cpu_unavailable() -> str | None:
    import torch.distributed as tdist

    if not tdist.is_available() or not tdist.is_gloo_available():
        return "torch.distributed with the gloo backend is not available in this torch build"
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401
    except ImportError:
        return "this torch has no FSDP2 (torch.distributed.fsdp.fully_shard needs torch >= 2.6)"
    return None


def _two_gpus_unavailable() -> str | None:
    import torch

    if torch.cuda.device_count() < 2:
        return "needs 2 CUDA GPUs: accelerate enables FSDP only on accelerators"
    return None


_SKIP = _fsdp_on_cpu_unavailable()
needs_fsdp_on_cpu = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


def _run(cmd: list[str], timeout: int = 300, cpu: bool = True) -> subprocess.CompletedProcess:
    """A hang (e.g. a collective only some processes reach) fails through the timeout. cpu=True: the
    processes see no GPU (two CPU processes with gloo, also on a machine that has one GPU)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {}))
    r = run_tree(cmd, cwd=REPO, env=env, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-4000:]}"
    return r


def _opts(out, **overrides) -> list[str]:
    assert (TINY_MODEL / "config.json").exists(), f"{TINY_MODEL} missing: run python data/build_tiny_model.py"
    reward = out.parent / "reward_text_hash.py"
    if not reward.exists():
        reward.write_text(REWARD)
    opts = dict(COMMON, model_name_or_path=str(TINY_MODEL), output_dir=str(out), reward_funcs=f"{reward}:text_hash")
    args = []
    for k, v in dict(opts, **overrides).items():
        args += [f"--{k}", str(v)]
    return args


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


def train_fsdp(version: int, out, **overrides):
    return _run([*_torchrun(2), "tests/test_fsdp.py", str(version), *_opts(out, **overrides)])


def probe_generation(version: int, out):
    _run([*_torchrun(2), "tests/test_fsdp.py", "gen", str(version), *_opts(out)], timeout=300)
    return [json.loads((out / f"gen_probe_{r}.json").read_text()) for r in (0, 1)]


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
    assert keys and (a.keys() ^ b.keys()) <= {"lm_head.weight"}, a.keys() ^ b.keys()  # a tied copy may be written
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)) for k in keys)


def _check_sharded_run(tmp_path, version: int):
    """2 steps with 2 processes under FSDP (sharded policy, full reference reset after every step):
    exit 0, really sharded, 2 metric lines, a checkpoint transformers loads, and the same run as DDP."""
    from transformers import AutoModelForCausalLM

    over = dict(max_steps=2, save_every=1, ref_reset_every=1)
    train_fsdp(version, tmp_path / "fsdp", **over)
    probe = json.loads((tmp_path / "fsdp" / "fsdp_probe.json").read_text())
    assert probe["distributed_type"] == "DistributedType.FSDP" and probe["is_fsdp2"] == (version == 2), probe
    assert probe["model_class"].startswith("FSDP") or probe["model_class"] == "FullyShardedDataParallel", probe
    m = metrics(tmp_path / "fsdp")
    assert [x["step"] for x in m] == [1, 2] and all(x["groups"] == 4 and x["trained_samples"] > 0 for x in m)
    ckpt = tmp_path / "fsdp" / "checkpoint-000002"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert sum(p.numel() for p in model.parameters()) > 0
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
    assert diff < SAME_RUN, diff


@needs_fsdp_on_cpu
@pytest.mark.parametrize("version", [2, 1])
def test_generation_forwards_run_no_collectives(tmp_path, version):
    """Processes may run different numbers of forwards while generating (no hang: the run's timeout
    would fail the test), with the logits of the unsharded model; then the sharded model is intact."""
    probes = probe_generation(version, tmp_path / "gen")
    assert [p["forwards"] for p in probes] == [1, 3]
    for p in probes:
        assert p["max_diff"] < 1e-5 and p["after_diff"] < 1e-5, p


@needs_fsdp_on_cpu
def test_fsdp2_two_cpu_processes_train_save_and_match_ddp(tmp_path):
    _check_sharded_run(tmp_path, 2)


@needs_fsdp_on_cpu
def test_fsdp1_two_cpu_processes_train_save_and_match_ddp(tmp_path):
    _check_sharded_run(tmp_path, 1)


@needs_fsdp_on_cpu
def test_fsdp2_checkpoints_move_between_fsdp_and_one_process(tmp_path):
    """The optimizer state saved under FSDP2 is in the plain format (same keys and values as a
    one-process run's); one process resumes an FSDP2 checkpoint and FSDP2 resumes a one-process
    checkpoint, both ending where an uninterrupted one-process run ends."""
    ref = tmp_path / "ref"
    train_plain(1, ref, max_steps=3, save_every=1)
    train_fsdp(2, tmp_path / "a", max_steps=2, save_every=2)
    fsdp2 = tmp_path / "a" / "checkpoint-000002"
    assert json.loads((fsdp2 / "optimizer.json").read_text())["param_groups"][0]["params"] == \
        json.loads((ref / "checkpoint-000002" / "optimizer.json").read_text())["param_groups"][0]["params"]
    opt_f, opt_r = tensors(fsdp2, "optimizer.safetensors"), tensors(ref / "checkpoint-000002", "optimizer.safetensors")
    assert opt_f.keys() == opt_r.keys() and len(opt_f) > 0
    assert max_rel_diff(opt_f, opt_r) < 1e-3, max_rel_diff(opt_f, opt_r)

    train_plain(1, tmp_path / "a", max_steps=3, save_every=3, resume="latest")  # FSDP2 -> 1 process
    train_fsdp(2, tmp_path / "b", max_steps=3, save_every=3, resume=str(ref / "checkpoint-000002"))  # 1 process -> FSDP2
    want = tensors(ref / "checkpoint-000003")
    want_opt = tensors(ref / "checkpoint-000003", "optimizer.safetensors")
    for run in ("a", "b"):
        got = tmp_path / run / "checkpoint-000003"
        assert max_rel_diff(tensors(got), want) < SAME_RUN, run
        got_opt = tensors(got, "optimizer.safetensors")
        assert float(got_opt["0.step"]) == 3.0 and max_rel_diff(got_opt, want_opt) < 1e-2, run  # Adam moments kept
    assert [x["step"] for x in metrics(tmp_path / "a")] == [1, 2, 3]


@pytest.mark.skipif(_two_gpus_unavailable() is not None, reason=_two_gpus_unavailable() or "")
def test_fsdp_yaml_on_two_gpus(tmp_path):
    """The shipped launch/fsdp.yaml through `accelerate launch` (not run in CPU-only CI)."""
    from transformers import AutoModelForCausalLM

    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/fsdp.yaml", "--num_processes", "2",
          "--main_process_port", str(free_port()), "-m", "prorl", "train",
          *_opts(tmp_path / "gpu", max_steps=2, save_every=1, ref_reset_every=1)], cpu=False)
    assert [x["step"] for x in metrics(tmp_path / "gpu")] == [1, 2]
    AutoModelForCausalLM.from_pretrained(tmp_path / "gpu" / "checkpoint-000002")
