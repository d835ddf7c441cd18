"""Nothing lost, nothing crashes: real kills of real `python -m prorl train` processes, and faults
injected into real training runs (the model, the reward functions, the disk), never into the code
under test.

Every kill is followed by `--resume latest`; the finished run must equal an uninterrupted one bit for
bit (weights and optimizer state), with each step exactly once in metrics.jsonl.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prorl import cli
from prorl.checkpoint import STATE_FILE, checkpoint_dir, list_checkpoints, resolve_resume, save_checkpoint

from .conftest import REPO, TINY_MODEL

pytestmark = pytest.mark.slow

FIXTURES = REPO / "tests" / "reward_fixtures.py"
STEPS = 6
# Deterministic and tiny; count_ones gives reward variance even on a random-init model, so steps update.
RUN = dict(
    model_name_or_path=str(TINY_MODEL), dataset="builtin:arithmetic", max_steps=STEPS, batch_size=2, n_samples=4,
    micro_batch_size=8, max_length=5, learning_rate=1e-3, kl_beta=0.01, save_every=1, seed=11,
    deterministic="true", progress_bar="false", reward_funcs=f"{FIXTURES}:count_ones",
)
ALTERNATING = f"{FIXTURES}:alternating"  # signal in every group: every step runs an optimizer step
# metrics that depend only on the data, the sampling keys and the weights: equal in every exact replay
EXACT = ("loss", "reward_mean", "reward_std", "kl", "entropy", "grad_norm", "completion_len_mean", "epoch")


def argv(out, **overrides):
    args = []
    for k, v in dict(RUN, output_dir=str(out), **overrides).items():
        args += [f"--{k}", *map(str, v)] if isinstance(v, list) else [f"--{k}", str(v)]
    return args


def train_here(out, **overrides) -> int:
    """`prorl train` in this process (the same CLI code path, without paying the import again)."""
    return cli.main(["train", *argv(out, **overrides)])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every run here, in this process or a child, uses one intra-op thread: the same float reduction
    order everywhere (runs are compared bit for bit), and no oversubscription of a small CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start(out, log: Path, **overrides) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "ab") as fh:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen([sys.executable, "-m", "prorl", "train", *argv(out, **overrides)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=fh)


def wait_for(what: str, cond, proc: subprocess.Popen, log: Path, timeout: float = 240.0):
    """Poll cond() every millisecond or so; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.001)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def steps_logged(out) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass  # the line being written when the process was killed
    return steps


def metrics(out) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def tensors(ckpt: Path) -> dict:
    out = {f"model.{k}": v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    out.update({f"optim.{k}": v for k, v in load_file(str(ckpt / "optimizer.safetensors")).items()})
    out.update({f"ref.{k}": v for k, v in load_file(str(ckpt / "reference.safetensors")).items()})
    return out


def assert_same_run(got_out: Path, want_out: Path) -> None:
    final = checkpoint_dir(got_out, STEPS)
    got, want = tensors(final), tensors(checkpoint_dir(want_out, STEPS))
    assert got.keys() == want.keys()
    drifted = [k for k in want if not torch.equal(got[k], want[k])]
    assert not drifted, f"resumed run differs from the uninterrupted one in {drifted[:5]}"
    assert json.loads((final / STATE_FILE).read_text())["cursor"] == STEPS * RUN["batch_size"]
    got_m, want_m = metrics(got_out), metrics(want_out)
    assert [m["step"] for m in got_m] == list(range(1, STEPS + 1)), "each step exactly once, no gaps"
    for g, w in zip(got_m, want_m):
        assert {k: g[k] for k in EXACT} == {k: w[k] for k in EXACT}, f"step {w['step']} replayed differently"
    assert not list(got_out.glob(".tmp-*")) and not list(got_out.glob(".deleting-*")), "crash debris left behind"


def assert_latest_is_complete(out: Path) -> Path:
    """What --resume latest would pick is a complete checkpoint-N folder, never a temporary one."""
    latest = resolve_resume("latest", str(out))
    assert latest.name.startswith("checkpoint-") and not latest.name.startswith((".tmp-", ".old-", ".deleting-"))
    assert all(p.name.startswith("checkpoint-") for p in list_checkpoints(out))
    assert (latest / "model.safetensors").is_file() and (latest / STATE_FILE).is_file()
    return latest


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert train_here(out) == 0
    m = metrics(out)
    assert any(x["skipped_groups"] < x["groups"] for x in m), "no step carried signal: the test would prove nothing"
    return out


# ----------------------------------------------------------------------------------------------
# (a) SIGKILL at three different moments, then --resume latest


def test_sigkill_at_three_moments_then_resume_is_bit_identical(tmp_path, uninterrupted):
    out, log = tmp_path / "out", tmp_path / "stderr.log"

    # 1. right after step 2 is logged: its checkpoint is (most likely) not written yet
    proc = start(out, log)
    wait_for("step 2 in metrics.jsonl", lambda: 2 in steps_logged(out), proc, log)
    kill9(proc)
    first = assert_latest_is_complete(out)
    assert int(first.name.split("-")[1]) <= 2

    # 2. in the middle of writing a checkpoint (a .tmp-checkpoint-* folder of this process exists; the
    # first kill may have left one behind mid-save, which must not count)
    def tmp_folders():
        found = set()
        for p in out.glob(".tmp-checkpoint-*"):
            try:
                st = p.stat()
            except FileNotFoundError:  # removed between the listing and the look
                continue
            found.add((p.name, st.st_ino, st.st_ctime_ns))
        return found

    stale = tmp_folders()
    proc = start(out, log, resume="latest")
    wait_for("a checkpoint save in progress", lambda: tmp_folders() - stale, proc, log)
    kill9(proc)
    assert_latest_is_complete(out)  # whether or not the rename happened before the kill landed

    # 3. between steps, right after a checkpoint has appeared
    before = {p.name for p in list_checkpoints(out)}
    proc = start(out, log, resume="latest")
    wait_for("a new checkpoint", lambda: {p.name for p in list_checkpoints(out)} - before, proc, log)
    kill9(proc)
    assert_latest_is_complete(out)
    assert max(steps_logged(out)) < STEPS, "the run finished before the third kill"

    # no resumed process ever took a temporary folder for a checkpoint
    resumed_from = [l for l in log.read_text().splitlines() if "resumed from" in l]
    assert len(resumed_from) == 2 and not any(".tmp-" in l or ".old-" in l for l in resumed_from), resumed_from

    # 4. resume to the end
    assert train_here(out, resume="latest") == 0
    assert_same_run(out, uninterrupted)


# ----------------------------------------------------------------------------------------------
# (b) SIGTERM: finish the step, save, exit 0 by itself


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path, uninterrupted):
    out, log = tmp_path / "out", tmp_path / "stderr.log"
    proc = start(out, log)
    wait_for("step 2 in metrics.jsonl", lambda: 2 in steps_logged(out), proc, log)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert time.monotonic() - t0 < 60
    stopped_at = max(steps_logged(out))
    assert 2 <= stopped_at < STEPS
    assert assert_latest_is_complete(out) == checkpoint_dir(out, stopped_at), "no checkpoint of the step it stopped at"
    assert f"received SIGTERM: saving step {stopped_at} and exiting" in log.read_text()
    assert train_here(out, resume="latest") == 0
    assert_same_run(out, uninterrupted)


# ----------------------------------------------------------------------------------------------
# checkpoint folder states a crash can leave (no model needed)


class _Saveable:
    def __init__(self, name):
        self.name = name

    def save_pretrained(self, folder, **kw):
        (Path(folder) / self.name).write_text("x")


def _save(root, step):
    return save_checkpoint(checkpoint_dir(root, step), model=_Saveable("w"), model_state=None, tokenizer=_Saveable("t"),
                           optimizer_state=None, trainer_state={"step": step})


def test_crash_debris_is_never_a_checkpoint_and_is_cleaned_up(tmp_path):
    _save(tmp_path, 1)
    # a kill mid-save of step 2 (temporary folder, even one that already holds every file) and mid-prune
    (tmp_path / ".tmp-checkpoint-000002").mkdir()
    (tmp_path / ".tmp-checkpoint-000002" / STATE_FILE).write_text('{"step": 2}')
    (tmp_path / ".deleting-checkpoint-000000").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000001"]
    assert resolve_resume("latest", str(tmp_path)).name == "checkpoint-000001"
    _save(tmp_path, 2)  # the next successful save removes the debris
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000001", "checkpoint-000002"]


def test_kill_between_the_renames_of_a_same_step_resave_loses_nothing(tmp_path):
    _save(tmp_path, 3)
    # re-saving step 3 renames checkpoint-000003 to .old-checkpoint-000003, then the new one into place;
    # a kill between the two renames leaves only the .old folder, which must still be found
    (tmp_path / "checkpoint-000003").rename(tmp_path / ".old-checkpoint-000003")
    assert resolve_resume("latest", str(tmp_path)).name == ".old-checkpoint-000003"
    _save(tmp_path, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000003"]


# ----------------------------------------------------------------------------------------------
# (c) faults injected into real training runs


def _finite_checkpoint(ckpt: Path) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt)  # loadable with plain transformers
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert all(bool(v.isfinite().all()) for v in state.values()), f"{ckpt.name} holds non-finite weights"
    return state


def test_reward_functions_that_raise_hang_or_return_nan_do_not_stop_training(tmp_path, tiny_model, caplog):
    from prorl.config import load_config
    from prorl.trainer import Trainer

    specs = [f"{FIXTURES}:{name}" for name in ("count_ones", "raises", "returns_nan", "hangs")]
    cfg = load_config(None, dict(RUN, output_dir=str(tmp_path / "out"), max_steps=2, save_every=0, kl_beta=0.0,
                                 reward_funcs=specs, reward_timeout=0.5))
    tr = Trainer(cfg)
    before = {k: v.clone() for k, v in tr.acc.unwrap_model(tr.model).state_dict().items()}
    t0 = time.monotonic()
    tr.train()
    assert time.monotonic() - t0 < 120, "a hung reward function held up training"
    per_step = RUN["batch_size"] * RUN["n_samples"]
    lines = metrics(tmp_path / "out")
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        # raises: every sample; returns_nan: every other sample; hangs: every sample (timed out)
        assert m["reward_faults"] == per_step + per_step // 2 + per_step
        assert m["rewards/reward_fixtures.raises/mean"] == 0.0 and m["rewards/reward_fixtures.hangs/mean"] == 0.0
        assert m["rewards/reward_fixtures.returns_nan/mean"] == 0.5  # fallback 0 for the NaNs, 1.0 for the rest
        assert math.isfinite(m["reward_mean"]) and math.isfinite(m["loss"])
    after = tr.acc.unwrap_model(tr.model).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the healthy reward's signal was not trained on"
    text = caplog.text
    assert "KeyError: 'answer'" in text and "timed out after 0.5s" in text and "not a finite number" in text
    assert (tmp_path / "out" / "checkpoint-000002" / "model.safetensors").is_file()


def test_reward_too_big_for_float32_is_a_fault_not_a_crash(tmp_path, tiny_model, caplog):
    # 1e39 is a finite Python float but inf in the trainer's float32 rewards
    out = tmp_path / "out"
    rc = train_here(out, max_steps=1, save_every=0, kl_beta=0.0,
                    reward_funcs=[f"{FIXTURES}:count_ones", f"{FIXTURES}:too_big_for_float32"])
    assert rc == 0
    (m,) = metrics(out)
    assert m["reward_faults"] == RUN["batch_size"] * RUN["n_samples"] // 2 and math.isfinite(m["reward_mean"])
    assert "returned 1e+39 at index 1, which is not a finite number in float32" in caplog.text


def test_nan_logits_skip_the_update_then_abort_and_keep_the_last_checkpoint(tmp_path, tiny_model):
    """The model itself starts producing NaN (fp16 overflow, a bad kernel) from step 3 on: sampling repairs
    the rows, the NaN loss gives non-finite gradients, the update is skipped, and after max_bad_steps the
    run aborts with one line; the checkpoints on disk stay finite."""
    from prorl.config import load_config
    from prorl.trainer import Trainer, TrainingAborted

    out = tmp_path / "out"
    tr = Trainer(load_config(None, dict(RUN, output_dir=str(out), max_bad_steps=2, reward_funcs=ALTERNATING)))

    def poison(module, args, output):
        if tr.step >= 2:  # during step 3 and later
            return output * float("nan")
        return output

    # on the output layer: sampling runs the whole model, the update runs the head on hidden-state chunks
    tr.model.get_output_embeddings().register_forward_hook(poison)
    with pytest.raises(TrainingAborted) as err:
        tr.train()
    message = str(err.value)
    assert "\n" not in message and "2 consecutive steps had non-finite loss or gradients" in message
    assert "learning_rate" in message and "max_grad_norm" in message
    lines = metrics(out)
    assert [m["step"] for m in lines] == [1, 2, 3]  # step 4 aborted before logging
    assert lines[2]["nonfinite_steps"] == 1 and lines[2]["repaired_logit_rows"] > 0
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000001", "checkpoint-000002", "checkpoint-000003"]
    two, three = _finite_checkpoint(out / "checkpoint-000002"), _finite_checkpoint(out / "checkpoint-000003")
    assert all(torch.equal(two[k], three[k]) for k in two), "the skipped step 3 changed the weights"


def test_parameter_turning_non_finite_aborts_with_one_line_and_keeps_checkpoint(tmp_path, tiny_model, capsys):
    """Resumed with a mistyped learning rate (1e37 instead of 1e-6): AdamW's decoupled weight decay
    (1 - lr x 1e3) overflows float32, so finite gradients give infinite weights. The run must abort
    with one line and save nothing; the checkpoint before it stays loadable and finite."""
    out = tmp_path / "out"
    assert train_here(out, max_steps=2, learning_rate=1e-6, weight_decay=1e3, reward_funcs=ALTERNATING) == 0
    good = _finite_checkpoint(out / "checkpoint-000002")
    capsys.readouterr()
    assert train_here(out, resume="latest", learning_rate=1e37, weight_decay=1e3, reward_funcs=ALTERNATING) == cli.EXIT_ABORTED
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("prorl: aborted: a parameter became non-finite at step ")
    assert "despite finite gradients" in lines[-1] and "lower learning_rate" in lines[-1]
    for ckpt in list_checkpoints(out):
        _finite_checkpoint(ckpt)  # nothing non-finite was ever saved
    again = _finite_checkpoint(out / "checkpoint-000002")
    assert all(torch.equal(good[k], again[k]) for k in good)
    assert max(steps_logged(out)) == 2 and [p.name for p in list_checkpoints(out)][-1] == "checkpoint-000002"


def _raise_oom_when(grad_enabled: bool):
    def hook(module, args, kwargs):
        if torch.is_grad_enabled() == grad_enabled:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total)")

    return hook


@pytest.mark.parametrize("phase,grad_enabled,option", [
    ("generating", False, "rollout_batch_size"),
    ("the policy update", True, "micro_batch_size"),
])
def test_out_of_memory_is_one_line_naming_the_option(tmp_path, tiny_model, phase, grad_enabled, option):
    """No GPU here: the real model's forward raises the allocator's OutOfMemoryError, as CUDA does."""
    from prorl.config import load_config
    from prorl.trainer import Trainer, TrainingAborted

    tr = Trainer(load_config(None, dict(RUN, output_dir=str(tmp_path / "out"), kl_beta=0.0, save_every=0,
                                        reward_funcs=ALTERNATING)))
    # the transformer body: what every forward (sampling, reference, update) runs
    tr.model.get_decoder().register_forward_pre_hook(_raise_oom_when(grad_enabled), with_kwargs=True)
    with pytest.raises(TrainingAborted) as err:
        tr.train()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"out of memory during {phase}")
    assert f"lower {option}" in message and "max_length" in message
    assert not list_checkpoints(tmp_path / "out"), "an aborted step must not be saved"


def test_a_step_where_every_reward_failed_on_every_sample_stops_before_the_update(tmp_path, tiny_model, capsys):
    """The run-on-nothing case: the only reward raises on every sample. One line, exit 3, no weights
    changed, nothing saved (a working reward beside it keeps training, see the test above)."""
    out = tmp_path / "out"
    rc = train_here(out, max_steps=2, save_every=1, reward_funcs=f"{FIXTURES}:raises")
    assert rc == cli.EXIT_ABORTED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("prorl: aborted: every reward function (reward_fixtures.raises) failed on all ")
    assert "KeyError: 'answer'" in last and "fix the reward or the dataset's columns" in last
    assert not list_checkpoints(out)


def test_ctrl_c_saves_the_current_step_and_a_second_one_aborts(tmp_path, uninterrupted):
    """The first Ctrl-C is a SIGTERM with a word to the user: finish the step, save, exit 0, and the
    resumed run equals the uninterrupted one. Two in a row abort with one line (exit 130), no traceback."""
    out, log = tmp_path / "out", tmp_path / "stderr.log"
    proc = start(out, log)
    wait_for("step 2 in metrics.jsonl", lambda: 2 in steps_logged(out), proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    stopped_at = max(steps_logged(out))
    assert assert_latest_is_complete(out) == checkpoint_dir(out, stopped_at)
    text = log.read_text()
    assert "prorl: Ctrl-C: finishing this step, then saving it and exiting" in text and "Traceback" not in text
    assert train_here(out, resume="latest") == 0
    assert_same_run(out, uninterrupted)

    out2, log2 = tmp_path / "out2", tmp_path / "stderr2.log"
    proc = start(out2, log2, reward_funcs=f"{FIXTURES}:slow_alternating")  # a step is still running at the second Ctrl-C
    wait_for("step 1 in metrics.jsonl", lambda: 1 in steps_logged(out2), proc, log2)
    proc.send_signal(signal.SIGINT)
    wait_for("the first Ctrl-C noticed", lambda: "prorl: Ctrl-C" in log2.read_text(), proc, log2, timeout=30)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, log2.read_text()[-3000:]
    lines = log2.read_text().strip().splitlines()
    assert lines[-1].startswith("prorl: interrupted; nothing after the last checkpoint was saved")
    assert "Traceback" not in log2.read_text()


def test_resume_auto_reruns_the_same_command_before_and_after_the_first_checkpoint(tmp_path, uninterrupted):
    """A pre-empted job is requeued with the identical command line: `resume=auto` starts fresh when
    the folder has no checkpoint yet (killed before the first) and resumes when it has one; the end
    result is the uninterrupted run's, bit for bit."""
    out, log = tmp_path / "out", tmp_path / "stderr.log"
    same = dict(resume="auto", save_every=3)

    proc = start(out, log, **same)  # 1. killed after step 1, before the first checkpoint (step 3)
    wait_for("step 1 in metrics.jsonl", lambda: 1 in steps_logged(out), proc, log)
    kill9(proc)
    assert not list_checkpoints(out) and (out / "metrics.jsonl").exists()

    proc = start(out, log, **same)  # 2. the same command starts over; killed once a checkpoint exists
    wait_for("a checkpoint", lambda: list_checkpoints(out), proc, log)
    kill9(proc)

    assert train_here(out, **same) == 0  # 3. the same command resumes and finishes
    assert_same_run(out, uninterrupted)
    assert steps_logged(out) == list(range(1, STEPS + 1)), "a step is logged twice or missing"
