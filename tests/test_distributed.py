"""Two CPU processes (gloo) are a real distributed run: the same loop must give the same result.
The processes see no GPU even on a machine that has one (`launch()` hides it): these are CPU tests."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prorl.data import PromptStream, epoch_order, steps_per_epoch
from prorl.dist import shard_slice

from .conftest import REPO, TINY_MODEL
from .procs import free_port, run_tree

pytestmark = pytest.mark.slow

COMMON = dict(
    model_name_or_path=str(TINY_MODEL), dataset="builtin:arithmetic", batch_size=4, n_samples=4, micro_batch_size=4,
    max_length=6, learning_rate=1e-4, kl_beta=0.01, seed=5, progress_bar=False,
)


def launch(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N ...`; a hang fails the test through the timeout."""
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    # CPU processes (gloo) also where a GPU is visible: one GPU cannot hold two ranks' devices
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    r = run_tree(cmd, cwd=REPO, env=env, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    return r


def train(nproc: int, out, **overrides):
    opts = dict(COMMON, output_dir=str(out), **overrides)
    args = ["-m", "prorl", "train"]
    for k, v in opts.items():
        args += [f"--{k}", str(v)]
    return launch(nproc, *args)


def metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def weights(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)) for k in a)


def test_sharding_covers_each_prompt_once_per_epoch():
    n, batch, world = 37, 6, 2
    stream = PromptStream(n, seed=1)
    for epoch in range(2):
        seen = []
        for step in range(steps_per_epoch(n, batch)):
            start = epoch * n + step * batch
            rows = stream.rows(start, batch)
            for rank in range(world):
                seen += rows[shard_slice(batch, rank, world)]
        assert len(seen) == len(set(seen)) == 36  # none twice
    # the stream runs on: the prompt left over from epoch 0 is the first of the next batch
    assert stream.rows(36, 1) == [epoch_order(n, 0, 1)[36]] and stream.rows(37, 1) == [epoch_order(n, 1, 1)[0]]
    assert sorted(stream.rows(0, n)) == list(range(n))
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        shard_slice(5, 0, 2)


@pytest.mark.parametrize("estimator", ["grpo", "reinforce_pp_baseline"])
def test_group_split_across_processes_gets_same_advantages(tmp_path, estimator):
    got = {}
    for world in (1, 2):
        f = tmp_path / f"adv{world}.json"
        launch(world, "tests/dist_groups.py", str(f), estimator)
        got[world] = json.loads(f.read_text())
    assert got[2]["world"] == 2
    assert got[1]["keep"] == got[2]["keep"] == [1] * 10 + [0, 0]  # the all-equal group 4 is skipped
    assert torch.allclose(torch.tensor(got[1]["adv"]), torch.tensor(got[2]["adv"]), rtol=0, atol=1e-7)


def test_one_and_two_processes_give_the_same_run(tmp_path):
    """Same seed and global batch: identical completions and rewards per step, parameters equal to
    float round-off (the two runs sum the same gradients in a different order)."""
    # Adam's first step is ~lr * sign(g): where a gradient is ~0, float round-off in the (differently
    # ordered) sum can flip the sign and move that weight by up to 2 * lr. A small lr keeps that
    # round-off effect below the 1e-5 relative tolerance stated here.
    train(1, tmp_path / "one", max_steps=3, save_every=1, learning_rate=1e-6)
    train(2, tmp_path / "two", max_steps=3, save_every=1, learning_rate=1e-6)
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in m2] == [1, 2, 3]
    for a, b in zip(m1, m2):
        assert a["reward_mean"] == b["reward_mean"] and a["completion_len_mean"] == b["completion_len_mean"]
        assert a["skipped_groups"] == b["skipped_groups"] and a["groups"] == b["groups"] == 4
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)
    # one optimizer step from the same rollout batch: parameters agree to ~1e-6 relative
    step1 = max_rel_diff(weights(tmp_path / "two" / "checkpoint-000001"), weights(tmp_path / "one" / "checkpoint-000001"))
    assert step1 < 1e-5, step1
    final = max_rel_diff(weights(tmp_path / "two" / "checkpoint-000003"), weights(tmp_path / "one" / "checkpoint-000003"))
    assert final < 1e-4, final


def test_save_with_two_resume_with_one_and_back(tmp_path):
    train(1, tmp_path / "ref", max_steps=4, save_every=2)
    train(2, tmp_path / "a", max_steps=2, save_every=2)
    train(1, tmp_path / "a", max_steps=4, save_every=2, resume="latest")
    train(1, tmp_path / "b", max_steps=2, save_every=2)
    train(2, tmp_path / "b", max_steps=4, save_every=2, resume="latest")
    want = weights(tmp_path / "ref" / "checkpoint-000004")
    for run in ("a", "b"):
        assert [m["step"] for m in metrics(tmp_path / run)] == [1, 2, 3, 4]
        assert max_rel_diff(weights(tmp_path / run / "checkpoint-000004"), want) < 1e-4
        state = json.loads((tmp_path / run / "checkpoint-000004" / "trainer_state.json").read_text())
        assert state["num_processes"] == (1 if run == "a" else 2)


def test_streaming_draws_the_same_prompts_at_any_process_count_and_resumes_exactly(tmp_path):
    """streaming=true: the main process reads the stream and broadcasts each batch, so 1 and 2
    processes see the same prompts; a resume re-reads the stream up to the saved cursor."""
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                           for a, b in [(i * 37 % 900 + 100, i * 53 % 900 + 100) for i in range(10)]))
    stream = dict(dataset=str(src), streaming=True, shuffle_buffer=4, max_steps=4, save_every=2)
    train(1, tmp_path / "one", **stream)
    train(2, tmp_path / "two", **dict(stream, max_steps=2))
    train(2, tmp_path / "two", **dict(stream, resume="latest"))
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in m2] == [1, 2, 3, 4]
    assert [m["epoch"] for m in m1] == [0.0, 0.0, 1.0, 1.0]  # 10 prompts, 4 per step: step 3 reads into epoch 1
    for a, b in zip(m1, m2):
        assert a["reward_mean"] == b["reward_mean"] and a["completion_len_mean"] == b["completion_len_mean"]
    assert max_rel_diff(weights(tmp_path / "two" / "checkpoint-000004"), weights(tmp_path / "one" / "checkpoint-000004")) < 1e-4


def test_vllm_engine_one_and_two_processes_sample_the_same(tmp_path, monkeypatch):
    """rollout_engine=vllm (against tests/fake_vllm, whose sampling is per request): each process
    starts its own engine, syncs its own copy of the weights after every update and samples its
    share; the per-sample seeds make 1 and 2 processes draw the same completions."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests" / "fake_vllm"), os.environ.get("PYTHONPATH", "")]))
    runs = {}
    for nproc in (1, 2):
        log = tmp_path / f"vllm{nproc}.jsonl"
        monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
        train(nproc, tmp_path / f"p{nproc}", max_steps=2, learning_rate=1e-6, rollout_engine="vllm", skip_zero_signal=False)
        runs[nproc] = [json.loads(l) for l in log.read_text().splitlines()]
    two = runs[2]
    starts = [e for e in two if e["event"] == "start"]
    assert sorted(e["rank"] for e in starts) == ["0", "1"] and {e["world_size"] for e in starts} == {"2"}
    assert sorted(e["seed"] for e in starts) == [5, 6]  # seed + process index
    for rank in ("0", "1"):
        mine = [e["event"] for e in two if e["rank"] == rank and e["event"] != "start"]
        assert mine == ["load_weights", "generate"] * 2  # synced before each step's sampling
        assert [e["requests"] for e in two if e["rank"] == rank and e["event"] == "generate"] == [8, 8]  # its share
    gen1 = [e["seeds"] for e in runs[1] if e["event"] == "generate"]
    per_rank = {r: [e["seeds"] for e in two if e["event"] == "generate" and e["rank"] == r] for r in ("0", "1")}
    for step in range(2):  # the same samples each step, split over the processes
        assert sorted(gen1[step]) == sorted(per_rank["0"][step] + per_rank["1"][step])
    m1, m2 = metrics(tmp_path / "p1"), metrics(tmp_path / "p2")
    for a, b in zip(m1, m2):
        assert a["reward_mean"] == b["reward_mean"] and a["completion_len_mean"] == b["completion_len_mean"]


HUNG_TEARDOWN = """
import sys, time
from prorl import dist

class Acc:  # an accelerator whose process-group teardown never returns
    num_processes, process_index = 2, 1
    def end_training(self):
        time.sleep(60)

print("trained", flush=True)
dist.finish(Acc(), grace_s=1)
print("not reached")
sys.exit(5)
"""


def test_a_hung_teardown_is_abandoned_with_stacks_and_exit_0():
    """dist.finish: a process-group teardown that hangs after a finished run must not hold the job."""
    r = run_tree([sys.executable, "-c", HUNG_TEARDOWN], cwd=REPO, env=dict(os.environ), timeout=30)
    assert r.returncode == 0 and r.stdout == "trained\n", (r.returncode, r.stdout, r.stderr[-2000:])
    assert "rank 1: the process-group teardown did not finish in 1s" in r.stderr
    assert "in end_training" in r.stderr  # the stack of the stuck call, for a bug report


def test_two_process_cli_run_exits_0_with_all_its_output(tmp_path):
    """The CLI leaves a finished multi-process run without interpreter teardown (dist.exit_now);
    its output and files must be complete all the same."""
    r = train(2, tmp_path / "run", max_steps=2, log_every=1)
    assert [l.split("|")[0].split() for l in r.stdout.splitlines() if l.startswith("step")] == [["step", "1"], ["step", "2"]]
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "checkpoint-000002" / "model.safetensors").exists()


def test_two_process_eval_reports_once(tmp_path):
    """`prorl eval` under 2 processes: the main process alone prints the table and writes --json."""
    out = tmp_path / "eval.json"
    r = launch(2, "-m", "prorl", "eval", "--model", str(TINY_MODEL), "--dataset", "builtin:arithmetic", "--k", "1,4",
               "--max_prompts", "8", "--max_length", "6", "--json", str(out))
    lines = r.stdout.splitlines()
    assert sum(l.startswith("pass@1 ") for l in lines) == 1 and sum(l.startswith("{") for l in lines) == 1, r.stdout
    result = json.loads(out.read_text())
    assert result["n_prompts"] == 8 and result["n_samples"] == 4 and 0 <= result["pass@4"] <= 1
