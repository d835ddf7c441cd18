"""The vLLM rollout engine's side of the integration, against `tests/fake_vllm` (vLLM's offline API
surface backed by a transformers model on the CPU; vLLM itself needs a GPU build we cannot install
here). What these tests cannot show: that real vLLM accepts the same calls on a GPU."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prorl import Trainer
from prorl.config import ConfigError
from prorl.sampling import sample_keys

from .conftest import small_run

FAKE = str(Path(__file__).parent / "fake_vllm")


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(FAKE)
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    vllm = importlib.import_module("vllm")
    assert getattr(vllm, "FAKE", False)
    vllm.LLM.instances.clear()
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    yield vllm
    sys.modules.pop("vllm", None)


def _reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _params(model):  # on the CPU, where the fake engine's model lives
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters()}


def _engine(tmp_path, tiny_model, **overrides):
    from accelerate import Accelerator

    from prorl.vllm_rollout import VLLMEngine

    cfg = small_run(tmp_path, rollout_engine="vllm", **overrides)
    _reset_accelerate()  # on a GPU machine an earlier test's Trainer made the process state CUDA
    return VLLMEngine(cfg, Accelerator(cpu=True), tiny_model), cfg


def test_engine_returns_the_builtin_rollout_layout(tmp_path, tiny_model, fake_vllm):
    engine, cfg = _engine(tmp_path, tiny_model, max_prompt_length=32, max_length=5, vllm_gpu_memory_utilization=0.5,
                          vllm_kwargs={"enforce_eager": True, "seed": 7})
    llm = fake_vllm.LLM.instances[-1]
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["max_model_len"] == 37 and llm.kwargs["gpu_memory_utilization"] == 0.5
    assert llm.kwargs["dtype"] == "float32" and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["enforce_eager"] is True and llm.kwargs["seed"] == 7  # vllm_kwargs override prorl's

    # two left-padded prompts, 3 samples each; EOS = a third of the vocabulary, so some stop early
    pad = 0
    prompt_ids = torch.tensor([[pad, pad, 5, 6, 7], [8, 9, 10, 11, 12]])
    prompt_mask = (prompt_ids != pad).long()
    n, P = 3, 2
    keys = sample_keys(1, 0, torch.arange(P).repeat_interleave(n), torch.arange(n).repeat(P))
    vocab = AutoModelForCausalLM.from_pretrained(tiny_model).config.vocab_size
    eos = list(range(0, vocab, 3))
    ro = engine.generate(None, prompt_ids, prompt_mask, n_samples=n, keys=keys, max_new_tokens=5, eos_token_ids=eos,
                         pad_token_id=pad, temperature=0.7, top_p=0.9, top_k=20)

    sent = llm.requests[-P * n:]
    assert [ids for ids, _ in sent] == [[5, 6, 7]] * 3 + [[8, 9, 10, 11, 12]] * 3  # prompt-major, padding stripped
    assert [sp.seed for _, sp in sent] == keys.tolist()  # one request per sample, seeded with its key
    assert all(sp.temperature == 0.7 and sp.top_p == 0.9 and sp.top_k == 20 and sp.stop_token_ids == eos and sp.ignore_eos for _, sp in sent)
    assert torch.equal(ro.prompt_ids, prompt_ids.repeat_interleave(n, 0))
    lengths = ro.completion_mask.sum(1)
    assert ro.completion_ids.shape == (6, int(lengths.max()))
    for row in range(6):
        L = int(lengths[row])
        ids = ro.completion_ids[row, :L].tolist()
        assert ro.completion_mask[row, :L].all() and not ro.completion_mask[row, L:].any()
        assert (ro.completion_ids[row, L:] == pad).all() and (ro.logprobs[row, L:] == 0).all()
        ends_in_eos = ids[-1] in eos
        assert ends_in_eos == (not bool(ro.truncated[row]))  # EOS kept in the completion, mask 1
        assert ends_in_eos or L == 5
        out = llm.outputs[-P * n + row].outputs[0]
        assert ids == list(out.token_ids)
        assert ro.logprobs[row, :L].tolist() == pytest.approx([lp[t].logprob for lp, t in zip(out.logprobs, ids)])
    assert ro.truncated.any() and (~ro.truncated).any(), "pick other keys: the case needs both endings"


def test_a_completion_depends_on_its_key_not_its_row(tmp_path, tiny_model, fake_vllm):
    engine, _ = _engine(tmp_path, tiny_model)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones_like(ids)
    n = 4
    keys = sample_keys(3, 0, torch.arange(2).repeat_interleave(n), torch.arange(n).repeat(2))
    kw = dict(n_samples=n, max_new_tokens=6, eos_token_ids=[1], pad_token_id=0)
    a = engine.generate(None, ids, mask, keys=keys, **kw)
    b = engine.generate(None, ids.flip(0), mask, keys=keys.view(2, n).flip(0).reshape(-1), **kw)  # prompts swapped
    assert torch.equal(a.completion_ids[:n], b.completion_ids[n:]) and torch.equal(a.completion_ids[n:], b.completion_ids[:n])
    c = engine.generate(None, ids, mask, keys=keys + 1, **kw)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_policy_weights_fold_lora_adapters_under_plain_names(tiny_model):
    peft = pytest.importorskip("peft", reason="LoRA is the optional 'peft' extra (in the test extra)")
    from prorl.vllm_rollout import policy_weights

    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert [n for n, _ in policy_weights(plain)] == [n for n, _ in plain.named_parameters()]

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a non-zero update, as after training
    base_before = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    got = {n: t.clone() for n, t in policy_weights(model)}  # copies: merge_and_unload below writes the base in place
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if n in base_before)  # the base is the reference: untouched
    assert list(got) == [n for n, _ in plain.named_parameters()]  # the names vLLM's loaders expect
    merged = dict(model.merge_and_unload().named_parameters())  # PEFT's own merge is the oracle
    assert all(torch.allclose(got[n], merged[n], atol=1e-6) for n in merged)
    assert any(not torch.equal(got[n], plain.get_parameter(n)) for n in got), "the adapters were not folded in"


def test_trainer_syncs_the_policy_into_the_engine_after_every_update(tmp_path, tiny_model, fake_vllm):
    trainer = Trainer(small_run(tmp_path, rollout_engine="vllm", max_steps=3, skip_zero_signal=False, learning_rate=1e-3))
    llm = fake_vllm.LLM.instances[-1]
    assert llm.model_path == tiny_model
    initial = _params(trainer.model)
    m1 = trainer.train_step()
    # step 1 sampled from the loaded weights; its update changed the policy but not the engine yet
    assert llm.worker.loads == 1 and llm.prefix_cache_resets == 1
    assert all(torch.equal(p, initial[n]) for n, p in llm.worker.hf.named_parameters())
    after1 = _params(trainer.model)
    assert any(not torch.equal(after1[n], initial[n]) for n in initial)
    m2 = trainer.train_step()
    assert llm.worker.loads == 2 and llm.prefix_cache_resets == 2
    assert all(torch.equal(p, after1[n]) for n, p in llm.worker.hf.named_parameters())  # step 2 sampled the updated policy
    for m in (m1, m2):
        assert m["trained_samples"] == 16 and all(torch.isfinite(torch.tensor(m[k])) for k in ("loss", "kl", "grad_norm"))
    assert len(llm.requests) == 2 * 4 * 4  # batch_size x n_samples per step, one request each


def test_trainer_with_lora_syncs_merged_weights(tmp_path, tiny_model, fake_vllm):
    pytest.importorskip("peft", reason="LoRA is the optional 'peft' extra (in the test extra)")
    from prorl.vllm_rollout import policy_weights

    trainer = Trainer(small_run(tmp_path, rollout_engine="vllm", max_steps=2, lora_r=4, learning_rate=1e-2, skip_zero_signal=False))
    policy = trainer.acc.unwrap_model(trainer.model)
    trainer.train_step()
    after1 = {n: t.clone() for n, t in policy_weights(policy)}  # the adapters are non-zero now
    trainer.train_step()
    llm = fake_vllm.LLM.instances[-1]
    assert llm.worker.loads == 2  # the fake rejects any name a plain model does not have
    engine = dict(llm.worker.hf.named_parameters())
    assert set(engine) == set(after1)
    assert all(torch.equal(engine[n], after1[n]) for n in after1)  # step 2 sampled the merged step-1 policy
    assert any(not torch.equal(after1[n], t.cpu()) for n, t in policy_weights(policy))


def test_eval_runs_on_the_engine(tmp_path, tiny_model, fake_vllm):
    from prorl.config import load_config
    from prorl.evaluate import run_eval

    cfg = load_config(None, dict(model_name_or_path=tiny_model, dataset="builtin:arithmetic", max_prompts=6, max_length=6,
                                 rollout_engine="vllm"))
    result = run_eval(cfg, ks=[1, 2], n=2)
    llm = fake_vllm.LLM.instances[-1]
    assert llm.worker.loads == 0  # the engine loaded the model itself: nothing to sync
    assert len(llm.requests) == 12 and result["n_prompts"] == 6
    assert 0 <= result["pass@1"] <= result["pass@2"] <= 1


def test_missing_vllm_is_one_line(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails, as on a machine without vLLM
    with pytest.raises(ConfigError, match="rollout_engine=vllm needs vLLM"):
        Trainer(small_run(tmp_path, rollout_engine="vllm"))


def test_vllm_options_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="vllm_kwargs"):
        small_run(tmp_path, vllm_kwargs={"enforce_eager": True})
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        small_run(tmp_path, rollout_engine="vllm", vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="rollout_engine"):
        small_run(tmp_path, rollout_engine="sglang")
