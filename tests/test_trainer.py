"""End-to-end runs on the embedded tiny model (a few seconds each)."""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from prorl import Trainer
from prorl.config import ConfigError

from .conftest import REPO, small_run


def _params(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def test_run_saves_loadable_checkpoints_and_metrics(tmp_path, tiny_model):
    cfg = small_run(tmp_path)
    trainer = Trainer(cfg)
    before = _params(trainer.model)
    last = trainer.train()
    out = tmp_path / "out"
    ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-000002", "checkpoint-000004"]
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    for key in ("loss", "reward_mean", "reward_std", "kl", "clip_frac", "entropy", "completion_len_mean",
                "skipped_groups", "step_time", "rewards/exact_match/mean"):
        assert key in lines[0], key
    assert last["step"] == 4
    # the final checkpoint loads with plain transformers and holds the trained weights
    final = out / "checkpoint-000004"
    model = AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)
    after = _params(model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed nothing"
    trained = _params(trainer.acc.unwrap_model(trainer.model))
    assert all(torch.equal(trained[k], after[k]) for k in trained)
    assert (final / "model.safetensors").exists() and not list(final.glob("*.bin")) and not list(final.glob("*.pt"))
    ref = load_file(str(final / "reference.safetensors"))
    assert all(torch.equal(ref[k], before[k]) for k in ref if k in before)  # reference stays frozen


def test_resume_continues_exactly(tmp_path, tiny_model):
    full = Trainer(small_run(tmp_path / "a"))
    full.train()
    want = _params(full.acc.unwrap_model(full.model))
    # stop after step 2 (as if killed after that checkpoint), then resume to 4
    Trainer(small_run(tmp_path / "b", max_steps=2)).train()
    resumed = Trainer(small_run(tmp_path / "b", resume="latest"))
    assert resumed.step == 2
    resumed.train()
    got = _params(resumed.acc.unwrap_model(resumed.model))
    assert all(torch.equal(want[k], got[k]) for k in want), "resume drifted from the uninterrupted run"
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    a = [json.loads(l)["reward_mean"] for l in (tmp_path / "a" / "out" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l)["reward_mean"] for l in (tmp_path / "b" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert a == b


def test_same_seed_same_run_and_kl_zero_has_no_reference(tmp_path, tiny_model):
    t1 = Trainer(small_run(tmp_path / "x", max_steps=2, kl_beta=0.0, save_every=0))
    assert t1.reference is None
    m1 = t1.train()
    m2 = Trainer(small_run(tmp_path / "y", max_steps=2, kl_beta=0.0, save_every=0)).train()
    assert m1["reward_mean"] == m2["reward_mean"] and m1["loss"] == m2["loss"]
    assert m1["kl"] == 0.0


def test_reference_reset_and_callable_rewards(tmp_path, tiny_model):
    def count_ones(prompts, completions, **kw):
        return [float(c.count("1")) for c in completions]

    tr = Trainer(small_run(tmp_path, max_steps=2, ref_reset_every=1, save_every=0), reward_funcs=[count_ones])
    tr.train()
    assert tr.totals["ref_resets"] == 2
    policy = tr.acc.unwrap_model(tr.model).state_dict()
    assert all(torch.equal(v, tr.reference.model.state_dict()[k]) for k, v in policy.items())
    assert not tr.optimizer.state  # ProRL resets the optimizer with the reference


def test_nonfinite_gradients_are_skipped_then_abort(tmp_path, tiny_model):
    from prorl.trainer import TrainingAborted

    tr = Trainer(small_run(tmp_path, max_steps=3, max_bad_steps=2, save_every=0),
                 reward_funcs=[lambda p, c, **k: [float(i % 3) for i in range(len(c))]])  # every group has signal
    before = _params(tr.acc.unwrap_model(tr.model))
    weight = tr.acc.unwrap_model(tr.model).get_input_embeddings().weight
    weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    with pytest.raises(TrainingAborted, match="2 consecutive steps had non-finite"):
        tr.train()
    after = _params(tr.acc.unwrap_model(tr.model))
    assert all(torch.equal(before[k], after[k]) for k in before), "a non-finite step was applied"
    assert tr.totals["nonfinite_steps"] == 2


def test_resume_from_another_model_is_refused(tmp_path, tiny_model):
    Trainer(small_run(tmp_path, max_steps=1)).train()
    with pytest.raises(ConfigError, match="was trained from model"):
        Trainer(small_run(tmp_path, model_name_or_path=str(tmp_path / "other"), resume="latest"))


def test_tensorboard_gets_the_same_metric_names(tmp_path, tiny_model):
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra; install prorl[test]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(small_run(tmp_path, max_steps=2, save_every=0, report_to="tensorboard", run_name="tb")).train()
    events = list((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    lines = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    numeric = {k for k, v in lines[0].items() if isinstance(v, (int, float)) and k != "step"}
    assert numeric <= tags, numeric - tags
    assert [e.step for e in acc.Scalars("reward_mean")] == [1, 2]


def test_lora_trains_adapters_with_base_as_reference(tmp_path, tiny_model):
    peft = pytest.importorskip("peft", reason="LoRA needs the peft extra: pip install 'prorl[peft]'")

    def count_ones(prompts, completions, **kw):
        return [float(c.count("1")) for c in completions]

    cfg = small_run(tmp_path, max_steps=2, lora_r=4, learning_rate=1e-2)
    tr = Trainer(cfg, reward_funcs=[count_ones])
    assert tr.reference.model is None  # the base is the reference: no second copy of the weights
    base_before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model).state_dict().items()}
    tr.train()
    ckpt = tmp_path / "out" / "checkpoint-000002"
    assert (ckpt / "adapter_model.safetensors").exists() and (ckpt / "adapter_config.json").exists()
    metrics = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero: policy == base
    # the adapters changed the policy, the base weights did not change
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert all(torch.equal(base_before[k], v) for k, v in base.state_dict().items())
    trained = peft.PeftModel.from_pretrained(base, str(ckpt))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with trained.disable_adapter():
            plain = trained(input_ids=ids).logits
        adapted = trained(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)
    # merged export equals the adapted policy
    from prorl.lora import merge_checkpoint

    merge_checkpoint(str(ckpt), str(tmp_path / "merged"))  # the base comes from the checkpoint
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)
    # resume continues from the saved adapters
    Trainer(small_run(tmp_path, max_steps=3, lora_r=4, learning_rate=1e-2, resume="latest"), reward_funcs=[count_ones]).train()
    assert (tmp_path / "out" / "checkpoint-000003" / "adapter_model.safetensors").exists()


def test_lora_reference_reset_folds_adapters_into_the_base_and_resumes_exactly(tmp_path, tiny_model):
    """ProRL resets under LoRA: the base (the reference) becomes the policy, the policy is unchanged,
    and checkpoints carry the changed base so resume and merge see it."""
    peft = pytest.importorskip("peft", reason="LoRA needs the peft extra: pip install 'prorl[peft]'")
    from prorl.lora import fold_adapters_into_base

    # the fold itself: policy unchanged, base == policy after a hard reset, halfway after alpha=0.5
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                                peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ids = torch.tensor([[5, 6, 7, 8, 9]])

    def both():
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=ids).logits
        with torch.no_grad():
            return base, model(input_ids=ids).logits

    base0, policy0 = both()
    assert not torch.allclose(base0, policy0, atol=1e-4)
    fold_adapters_into_base(model, alpha=0.5)
    base1, policy1 = both()
    assert torch.allclose(policy1, policy0, atol=1e-5) and not torch.allclose(base1, base0, atol=1e-4)
    fold_adapters_into_base(model, alpha=1.0)
    base2, policy2 = both()
    assert torch.allclose(policy2, policy0, atol=1e-5) and torch.allclose(base2, policy0, atol=1e-5)

    def count_ones(prompts, completions, **kw):  # varies within nearly every group: every step updates
        return [float(sum(map(ord, c)) % 7) for c in completions]

    run = dict(lora_r=4, learning_rate=1e-2, kl_beta=0.05, ref_reset_every=2, save_every=2)
    Trainer(small_run(tmp_path / "a", max_steps=4, **run), reward_funcs=[count_ones]).train()
    m = [json.loads(l) for l in (tmp_path / "a" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [x["kl"] > 1e-6 for x in m] == [False, True, False, True]  # KL restarts from 0 after each reset
    assert m[1]["ref_reset"] and m[3]["ref_reset"]
    ckpt = tmp_path / "a" / "out" / "checkpoint-000004"
    assert (ckpt / "lora_base.safetensors").exists()
    # stop at 2, resume to 4: bit-identical adapters and base layers
    Trainer(small_run(tmp_path / "b", max_steps=2, **run), reward_funcs=[count_ones]).train()
    Trainer(small_run(tmp_path / "b", max_steps=4, resume="latest", **run), reward_funcs=[count_ones]).train()
    resumed = tmp_path / "b" / "out" / "checkpoint-000004"
    for f in ("adapter_model.safetensors", "lora_base.safetensors"):
        a, b = load_file(str(ckpt / f)), load_file(str(resumed / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    # `prorl merge` applies the reset base, then the adapters: it reproduces the trained policy
    r = subprocess.run([sys.executable, "-m", "prorl", "merge", str(ckpt), "--out", str(tmp_path / "merged")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    from prorl.lora import load_base_weights

    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    load_base_weights(plain, ckpt)
    trained = peft.PeftModel.from_pretrained(plain, str(ckpt))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5)
        without_base = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(ckpt))
        assert not torch.allclose(merged(input_ids=ids).logits, without_base(input_ids=ids).logits, atol=1e-4)
    r = subprocess.run([sys.executable, "-m", "prorl", "merge", str(tmp_path / "a" / "out"), "--out", str(tmp_path / "m2")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "is not a LoRA checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _one_step(tmp_path, hook_dtypes=None, prepare=None, **over):
    tr = Trainer(small_run(tmp_path, max_steps=1, kl_beta=0.05, **over), reward_funcs=[_varied])
    if prepare is not None:
        prepare(tr)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    if hook_dtypes is not None:  # output dtypes of the first linear layer of the policy and of the reference
        for name, model in (("policy", tr.model), ("reference", tr.reference.model)):
            layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
            layer.register_forward_hook(lambda mod, inp, out, name=name: hook_dtypes.setdefault(name, set()).add(out.dtype))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m = tr.train_step()
    return tr, m, saved[0]


def _varied(prompts, completions, **kw):
    return [float(sum(map(ord, c)) % 7) for c in completions]


def test_activation_checkpointing_stores_less_and_gives_the_same_update(tmp_path):
    plain, m_plain, saved_plain = _one_step(tmp_path / "plain")
    ckpt, m_ckpt, saved_ckpt = _one_step(tmp_path / "ckpt", activation_checkpointing=True)
    assert ckpt.model.is_activation_checkpointing and not ckpt.model.training  # dropout stays off
    # activations kept for the backward: only the checkpoints' inputs, not every layer's intermediates
    assert saved_ckpt < 0.5 * saved_plain, (saved_ckpt, saved_plain)
    assert m_ckpt["reward_mean"] == m_plain["reward_mean"] and m_ckpt["loss"] == pytest.approx(m_plain["loss"], rel=1e-5, abs=1e-7)
    assert m_ckpt["grad_norm"] == pytest.approx(m_plain["grad_norm"], rel=1e-5)  # the same gradient
    # Adam's first step is ~lr * sign(g): round-off (prompt sharing is off under checkpointing) may
    # flip the sign of a near-zero gradient, moving that weight by up to 2 * lr, never more
    a, b = _params(ckpt.model), _params(plain.model)
    lr = ckpt.cfg.learning_rate
    assert all(float((a[k] - b[k]).abs().max()) <= 2.01 * lr for k in a)
    start = _params(Trainer(small_run(tmp_path / "fresh", max_steps=1)).model)
    assert any(not torch.equal(v, start[k]) for k, v in a.items())  # the step did change the weights
    # a model.eval() between steps (a user's notebook, a callback) must not turn checkpointing off
    _, _, saved_after_eval = _one_step(tmp_path / "eval", prepare=lambda tr: tr.model.eval(), activation_checkpointing=True)
    assert saved_after_eval == saved_ckpt


def test_bf16_autocast_runs_every_forward_in_bf16_and_keeps_float32_weights(tmp_path):
    dtypes32, dtypes16 = {}, {}
    _, m32, _ = _one_step(tmp_path / "fp32", hook_dtypes=dtypes32)
    bf16, m16, _ = _one_step(tmp_path / "bf16", hook_dtypes=dtypes16, mixed_precision="bf16")
    assert dtypes32 == {"policy": {torch.float32}, "reference": {torch.float32}}
    assert dtypes16 == {"policy": {torch.bfloat16}, "reference": {torch.bfloat16}}  # sampling, update and reference
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in bf16.optimizer.state.values())
    assert math.isfinite(m16["loss"]) and math.isfinite(m16["kl"]) and m16["grad_norm"] > 0
    with pytest.raises(ConfigError, match="mixed_precision"):
        small_run(tmp_path, mixed_precision="bf16", dtype="bfloat16")


def test_activation_checkpointing_with_lora_trains_the_adapters(tmp_path):
    pytest.importorskip("peft", reason="LoRA needs the peft extra: pip install 'prorl[peft]'")
    plain, m_plain, saved_plain = _one_step(tmp_path / "plain", lora_r=4, learning_rate=1e-2)
    ckpt, m_ckpt, saved_ckpt = _one_step(tmp_path / "ckpt", lora_r=4, learning_rate=1e-2, activation_checkpointing=True)
    assert saved_ckpt < 0.5 * saved_plain, (saved_ckpt, saved_plain)
    assert m_ckpt["grad_norm"] > 0 and m_ckpt["grad_norm"] == pytest.approx(m_plain["grad_norm"], rel=1e-4)


def test_merge_from_another_folder_and_its_bad_arguments(tmp_path, tiny_model, monkeypatch):
    """A LoRA run started with a relative model path merges from any working directory; a wrong
    --out, checkpoint or --base is one line (exit 2), and nothing is written or overwritten."""
    pytest.importorskip("peft", reason="LoRA needs the peft extra: pip install 'prorl[peft]'")
    monkeypatch.chdir(REPO)
    Trainer(small_run(tmp_path, max_steps=1, lora_r=4, save_every=1, model_name_or_path="data/tiny-arith")).train()
    ckpt = tmp_path / "out" / "checkpoint-000001"

    def merge(*args):
        r = subprocess.run([sys.executable, "-m", "prorl", "merge", *map(str, args)], capture_output=True, text=True, cwd=tmp_path)
        return r.returncode, r.stderr.strip().splitlines()

    rc, err = merge(ckpt, "--out", tmp_path / "merged")
    assert rc == 0, err
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    (tmp_path / "a-file").write_text("keep me")
    for args, fragment in [
        ((ckpt, "--out", tmp_path / "a-file"), "is an existing file; choose a folder path"),
        ((ckpt, "--out", tmp_path / "merged"), "is a folder that is not empty"),
        ((tmp_path / "nope", "--out", tmp_path / "m3"), "not found; pass a checkpoint-* folder of a LoRA run"),
        ((ckpt, "--out", tmp_path / "m4", "--base", tmp_path / "no-model"), "base model: model_name_or_path="),
    ]:
        rc, err = merge(*args)
        assert rc == 2 and len(err) == 1 and fragment in err[0], (args, err)
    assert (tmp_path / "a-file").read_text() == "keep me" and not (tmp_path / "m3").exists() and not (tmp_path / "m4").exists()
