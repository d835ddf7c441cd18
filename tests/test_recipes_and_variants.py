"""End-to-end checks of the algorithm options on the embedded tiny model: every recipe's algorithm
settings, each advantage estimator / policy loss, micro-batch invariance of the whole update,
PPO mini-batches and epochs, dynamic sampling, truncation handling, KL placement and the EMA
reference. One or two optimizer steps each, on a model of ~1M parameters.

The rewards are callables with variance on any model (a random-weight test model included), so that
groups carry signal; the math of the estimators themselves is covered by tests/test_algos.py.
"""

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch

from prorl import Trainer
from prorl.checkpoint import load_trainer_state
from prorl.config import load_config
from prorl.logprobs import completion_logprobs

from .conftest import small_run

RECIPES = Path(__file__).resolve().parents[1] / "launch" / "recipes"
PAPER_RECIPES = ["grpo", "dapo", "dr_grpo", "gspo", "prorl", "prorl_v2"]

# The options that define an algorithm: taken from a recipe unchanged. Everything else in a recipe
# (model, batch shape, lengths, dtype, data, output) is replaced by tiny test values.
ALGORITHM_KEYS = (
    "advantage", "policy_loss", "eps_low", "eps_high", "dual_clip", "loss_agg", "kl_beta", "kl_estimator",
    "kl_in_reward", "skip_zero_signal", "dynamic_sampling_rounds", "oversample", "truncation",
    "ref_update", "ref_ema_alpha", "ref_reset_optimizer", "updates_per_batch", "mini_batches",
    "temperature", "top_p", "top_k", "learning_rate", "weight_decay", "warmup_steps", "max_grad_norm",
)


class Noise:
    """A seeded random reward: variance inside every group whatever the model writes (a random-weight
    model, or the trained tiny-arith model that often writes the same answer four times). Two
    instances with the same seed give the same rewards to two runs that make the same calls."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, prompts, completions, **_):
        return [float(self.rng.randint(0, 9)) for _ in completions]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the CI/dev machines are small and shared: one intra-op thread is faster than oversubscribing
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory) -> str:
    """The test model with ten extra stop tokens (the letters a-j) in its generation config.

    A random-weight model would almost never emit its single EOS within a few tokens, so every
    completion would be cut at max_length with the same length. With ten more stop tokens about one
    token in ten ends a completion: lengths differ and only some completions are truncated, which the
    aggregation, truncation and length-sensitive checks below need. (The trained data/tiny-arith
    model stops by itself and hardly ever writes letters, so for it this changes little.)"""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("model") / "tiny-stops"
    shutil.copytree(tiny_model, out)
    tok = AutoTokenizer.from_pretrained(out)
    extra = tok.convert_tokens_to_ids(list("abcdefghij"))
    assert tok.unk_token_id not in extra, "test model's tokenizer lacks single-letter tokens"
    gen_file = out / "generation_config.json"
    gen = json.loads(gen_file.read_text())
    eos = gen.get("eos_token_id", tok.eos_token_id)
    eos = eos if isinstance(eos, list) else [eos]
    gen["eos_token_id"] = sorted(set(eos) | set(extra))
    gen_file.write_text(json.dumps(gen))
    return str(out)


def run_cfg(tmp_path, model_dir, **overrides):
    base = dict(model_name_or_path=model_dir, max_steps=1, save_every=0, batch_size=2, n_samples=4, max_length=6)
    base.update(overrides)
    return small_run(tmp_path, **base)


def params(tr) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.acc.unwrap_model(tr.model).named_parameters()}


def flat(d: dict) -> torch.Tensor:
    return torch.cat([v.flatten().double() for v in d.values()])


def assert_finite_metrics(m: dict):
    for k, v in m.items():
        if isinstance(v, float):
            assert math.isfinite(v), f"metric {k} = {v}"


def changed(before, after) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------
# the recipes


def recipe_run(name: str, tmp_path, model_dir):
    """The recipe's algorithm keys on a tiny run, with reward functions in the recipe's shape: its
    correctness reward (`math`, mostly constant on the tiny model) is replaced by `Noise`; shaping
    rewards stay, with the recipe's weights (the overlong buffer scaled to the tiny max_length)."""
    recipe = load_config(RECIPES / f"{name}.yaml")
    over = {k: getattr(recipe, k) for k in ALGORITHM_KEYS}
    if recipe.ref_reset_every:
        over["ref_reset_every"] = 1  # exercise the reset within the one step
    funcs = [Noise() if spec == "math" else spec for spec in recipe.reward_funcs]
    over.update(
        reward_funcs=["exact_match" if spec == "math" else spec for spec in recipe.reward_funcs],
        reward_weights=recipe.reward_weights,
        reward_kwargs={"overlong": {"buffer": 2}} if "overlong" in recipe.reward_funcs else {},
        chat_template=False, system_prompt=None, micro_batch_size=8,
    )
    return recipe, run_cfg(tmp_path, model_dir, **over), funcs


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_algorithm_runs_a_step(name, tmp_path, model_dir):
    recipe, cfg, funcs = recipe_run(name, tmp_path, model_dir)
    assert all(getattr(cfg, k) == getattr(recipe, k) for k in ALGORITHM_KEYS)  # the recipe's algorithm
    tr = Trainer(cfg, reward_funcs=funcs)
    before = params(tr)
    m = tr.train_step()
    assert_finite_metrics(m)
    assert m["trained_samples"] > 0, "no group carried signal: the step trained nothing"
    assert changed(before, params(tr)), "the step did not change the policy"
    assert (tr.reference is None) == (recipe.kl_beta == 0)
    if recipe.kl_beta == 0 or recipe.kl_in_reward:
        assert m["kl"] == 0.0
    if recipe.ref_reset_every:
        assert m["ref_reset"] and tr.totals["ref_resets"] == 1
    if not (recipe.ref_reset_every and recipe.ref_reset_optimizer):  # a reset clears Adam's state
        # mini_batches optimizer steps per pass (fewer if fewer samples were kept than mini-batches)
        want = min(recipe.mini_batches, m["trained_samples"]) * recipe.updates_per_batch
        states = [s for s in tr.optimizer.state.values() if "step" in s]
        assert states and all(int(s["step"]) == want for s in states)
    if "overlong" in recipe.reward_funcs:
        assert m["rewards/overlong/mean"] <= 0


# ----------------------------------------------------------------------------------------------
# every estimator and loss


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_each_advantage_estimator_trains(advantage, tmp_path, model_dir):
    tr = Trainer(run_cfg(tmp_path, model_dir, advantage=advantage), reward_funcs=[Noise()])
    before = params(tr)
    m = tr.train_step()
    assert_finite_metrics(m)
    assert m["trained_samples"] > 0 and changed(before, params(tr))


@pytest.mark.parametrize("loss", ["ppo_clip", "gspo", "cispo"])
def test_each_policy_loss_trains(loss, tmp_path, model_dir):
    tr = Trainer(run_cfg(tmp_path, model_dir, policy_loss=loss, mini_batches=2), reward_funcs=[Noise()])
    before = params(tr)
    m = tr.train_step()
    assert_finite_metrics(m)
    assert m["trained_samples"] > 0 and changed(before, params(tr))


# ----------------------------------------------------------------------------------------------
# micro-batch invariance of the whole update


def _one_step_with_grads(tmp_path, model_dir, **overrides):
    tr = Trainer(run_cfg(tmp_path, model_dir, **overrides), reward_funcs=[Noise()])
    # a reference that differs from the policy, so the KL term has a gradient at step 1 too
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tr.reference.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g).to(p.device))
    grads, step = [], tr._optimizer_step

    def spy():  # records the accumulated gradient, then runs the real optimizer step
        grads.append({n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return step()

    tr._optimizer_step = spy
    before = params(tr)
    m = tr.train_step()
    return before, params(tr), grads, m, tr


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"])
def test_micro_batching_does_not_change_the_update(agg, tmp_path, model_dir):
    """micro_batch_size=1 (16 accumulated passes) and 16 (one pass) from the same seed give the same
    gradient and the same parameters: each pass is normalised by the GLOBAL token/sequence counts."""
    common = dict(batch_size=4, n_samples=4, loss_agg=agg, kl_beta=0.05, kl_estimator="k3")
    p0, pa, ga, ma, tr = _one_step_with_grads(tmp_path / "mb1", model_dir, micro_batch_size=1, **common)
    _, pb, gb, mb, _ = _one_step_with_grads(tmp_path / "mb16", model_dir, micro_batch_size=16, **common)
    assert ma["trained_samples"] == mb["trained_samples"] == 16
    lengths = tr._last_samples  # completions differ in length, so token and sequence means differ
    assert len({len(c) for c in lengths[1]}) > 1, "all completions have one length: the modes coincide"
    assert len(ga) == len(gb) == 1
    g1, g16 = flat(ga[0]), flat(gb[0])
    assert (g1 - g16).norm() <= 1e-5 * g16.norm(), f"gradients differ: {float((g1 - g16).norm() / g16.norm()):.2e}"
    a, b, start = flat(pa), flat(pb), flat(p0)
    assert (a - b).norm() <= 1e-6 * b.norm(), f"parameters differ: {float((a - b).norm() / b.norm()):.2e}"
    assert (a - b).norm() <= 1e-3 * (b - start).norm(), "the two updates differ in direction"
    assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-4, abs=1e-7)
    assert ma["grad_norm"] == pytest.approx(mb["grad_norm"], rel=1e-5)
    assert ma["kl"] == pytest.approx(mb["kl"], rel=1e-5) and ma["kl"] > 0


# ----------------------------------------------------------------------------------------------
# PPO mini-batches and epochs


@pytest.mark.parametrize("shape", [dict(mini_batches=2), dict(updates_per_batch=2)])
def test_two_optimizer_steps_per_rollout_use_the_stored_old_logprobs(shape, tmp_path, model_dir):
    # eps 0: any ratio != 1 on the "wrong" side counts as clipped, so clip_frac > 0 proves that the
    # second update compares against the log-probs stored before the first one (a recomputed
    # logp_old would give ratio == 1 and clip_frac == 0)
    over = dict(kl_beta=0.0, eps_low=0.0, eps_high=0.0, learning_rate=1e-3)
    tr = Trainer(run_cfg(tmp_path / "two", model_dir, **over, **shape), reward_funcs=[Noise()])
    m = tr.train_step()
    states = [s for s in tr.optimizer.state.values() if "step" in s]
    assert states and all(int(s["step"]) == 2 for s in states), "expected two Adam steps"
    assert m["clip_frac"] > 0
    one = Trainer(run_cfg(tmp_path / "one", model_dir, **over), reward_funcs=[Noise()])
    m1 = one.train_step()
    assert all(int(s["step"]) == 1 for s in one.optimizer.state.values() if "step" in s)
    assert m1["clip_frac"] == 0.0  # a single on-policy update: the ratio is exactly 1


# ----------------------------------------------------------------------------------------------
# dynamic sampling


class FlatFirstRound:
    """Round 1 of each trainer: every group gets the same reward (zero signal); later rounds: `Noise`.
    Records the prompts it is called with."""

    def __init__(self):
        self.calls, self.noise = [], Noise()

    def __call__(self, prompts, completions, **_):
        self.calls.append(list(prompts))
        if len(self.calls) == 1:
            return [1.0] * len(completions)
        return self.noise(prompts, completions)


def test_dynamic_sampling_refills_the_batch_and_resume_keeps_the_cursor(tmp_path, model_dir):
    over = dict(batch_size=4, n_samples=4, kl_beta=0.0, dynamic_sampling_rounds=2, oversample=1.5, save_every=1)

    # without refilling, an all-zero-signal round trains nothing
    flat_only = Trainer(run_cfg(tmp_path / "off", model_dir, **{**over, "dynamic_sampling_rounds": 0}),
                        reward_funcs=[FlatFirstRound()])
    before = params(flat_only)
    m0 = flat_only.train_step()
    assert (m0["sampling_rounds"], m0["trained_samples"], m0["skipped_groups"]) == (1, 0, 4)
    assert flat_only.cursor == 4 and not changed(before, params(flat_only))

    reward = FlatFirstRound()
    tr = Trainer(run_cfg(tmp_path / "on", model_dir, **over), reward_funcs=[reward])
    last = tr.train()
    # round 1: 4 prompts, all zero signal; round 2: ceil(4 missing x 1.5) = 6 new prompts
    assert last["sampling_rounds"] == 2
    assert tr.cursor == 4 + 6 and last["groups"] == 10
    assert last["trained_samples"] == 4 * 4, "the batch was not refilled to batch_size groups"
    assert last["skipped_groups"] >= 4
    state = load_trainer_state(tmp_path / "on" / "out" / "checkpoint-000001")
    assert state["cursor"] == 10 and state["step"] == 1

    reward2 = FlatFirstRound()
    resumed = Trainer(run_cfg(tmp_path / "on", model_dir, **{**over, "max_steps": 2, "resume": "latest"}),
                      reward_funcs=[reward2])
    assert (resumed.step, resumed.cursor) == (1, 10)
    resumed.train_step()
    # the resumed run draws the stream from position 10 on, not from the start
    want = resumed.dataset[resumed.stream.rows(10, 4)]["prompt"]
    assert reward2.calls[0][:: 4] == want
    assert resumed.cursor == 10 + 4 + 6


# ----------------------------------------------------------------------------------------------
# truncation handling


class Recorder:
    """`1 + Noise` (never 0), remembering the completions' `truncated` flags."""

    def __init__(self):
        self.truncated, self.values, self.noise = [], [], Noise()

    def __call__(self, prompts, completions, truncated=None, **_):
        values = [1.0 + v for v in self.noise(prompts, completions)]
        self.truncated += list(truncated)
        self.values += values
        return values


def _groups(values, n):
    return [values[i : i + n] for i in range(0, len(values), n)]


def test_truncation_modes(tmp_path, model_dir):
    n = 4
    over = dict(batch_size=8, n_samples=n, max_length=4, kl_beta=0.0)
    runs = {}
    for mode in ("none", "zero_reward", "mask"):
        rec = Recorder()
        tr = Trainer(run_cfg(tmp_path / mode, model_dir, truncation=mode, **over), reward_funcs=[rec])
        runs[mode] = (tr.train_step(), rec)
    flags = runs["none"][1].truncated
    assert all(runs[m][1].truncated == flags for m in runs), "same seed, same completions"
    assert 0 < sum(flags) < len(flags), "the test needs some truncated and some finished completions"
    all_cut = [all(g) for g in _groups(flags, n)]
    values = runs["none"][1].values

    def signal(rewards):
        return [len(set(g)) > 1 for g in _groups(rewards, n)]

    # none: truncated completions keep their (non-zero) reward
    m, _ = runs["none"]
    assert m["trained_samples"] == n * sum(signal(values))
    # zero_reward: a truncated completion's reward becomes 0 before advantages; an all-truncated group
    # is then all zeros: no signal, skipped. The reported reward (the reward functions' score) is unchanged.
    zeroed = [0.0 if t else v for v, t in zip(values, flags)]
    m, _ = runs["zero_reward"]
    assert m["trained_samples"] == n * sum(signal(zeroed))
    assert m["skipped_groups"] >= sum(all_cut)
    if any(all_cut):
        assert m["trained_samples"] < runs["none"][0]["trained_samples"]
    assert m["reward_mean"] == pytest.approx(runs["none"][0]["reward_mean"])
    # mask: truncated completions stay in the advantage statistics but get no gradient
    m, _ = runs["mask"]
    kept = sum(not t for g, s in zip(_groups(flags, n), signal(values)) if s for t in g)
    assert m["trained_samples"] == kept < runs["none"][0]["trained_samples"]


def test_zero_reward_zeroes_exactly_the_truncated_rewards(tmp_path, model_dir):
    tr = Trainer(run_cfg(tmp_path, model_dir, truncation="zero_reward", max_length=4, kl_beta=0.0), reward_funcs=[Recorder()])
    r = tr._sample_round(8)
    cut = r.rollout.truncated
    assert bool(cut.any()) and bool((~cut).any())
    assert bool((r.scored > 0).all())  # Recorder's rewards are >= 1
    assert torch.equal(r.rewards, torch.where(cut, torch.zeros_like(r.scored), r.scored))
    assert torch.equal(r.all_rewards, r.rewards)  # what the advantages are computed from (one process)


# ----------------------------------------------------------------------------------------------
# KL placement


def test_kl_in_reward_shifts_rewards_and_leaves_the_loss(tmp_path, model_dir):
    beta = 0.5
    tr = Trainer(run_cfg(tmp_path, model_dir, kl_beta=beta, kl_estimator="k3", kl_in_reward=True), reward_funcs=[Noise()])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tr.reference.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.device))
    r = tr._sample_round(tr.cfg.batch_size)
    ro = r.rollout
    with torch.no_grad():
        pol = completion_logprobs(tr.model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
        ref = completion_logprobs(tr.reference.model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    d = ref - pol
    k3 = torch.where(ro.completion_mask.bool(), torch.exp(d) - d - 1, 0).sum(1)
    assert bool((k3 > 0).all())
    torch.testing.assert_close(r.scored - r.rewards, beta * k3, rtol=1e-3, atol=1e-5)
    m = tr.train_step()
    assert m["kl"] == 0.0, "with kl_in_reward the loss has no KL term"
    assert_finite_metrics(m)
    assert m["trained_samples"] > 0


def test_kl_in_reward_does_not_turn_zero_signal_groups_into_signal(tmp_path, model_dir):
    """Every task reward equal: no group has signal. With kl_in_reward the per-sample KL shift makes
    the rewards differ slightly; GRPO's std normalisation would blow that KL noise up to unit-scale
    advantages. Zero signal (skipping, dynamic sampling) must be judged on the task rewards."""
    tr = Trainer(run_cfg(tmp_path, model_dir, kl_beta=0.05, kl_in_reward=True), reward_funcs=[lambda p, c, **k: [1.0] * len(c)])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tr.reference.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g).to(p.device))
    m = tr.train_step()
    assert m["skipped_groups"] == m["groups"] and m["trained_samples"] == 0


# ----------------------------------------------------------------------------------------------
# EMA reference


def test_ema_reference_update(tmp_path, model_dir):
    alpha = 0.25
    tr = Trainer(run_cfg(tmp_path, model_dir, kl_beta=0.01, ref_update="ema", ref_ema_alpha=alpha, ref_reset_every=1,
                         ref_reset_optimizer=False), reward_funcs=[Noise()])
    old_ref = {k: v.detach().clone() for k, v in tr.reference.model.named_parameters()}
    m = tr.train_step()
    assert m["ref_reset"] and tr.totals["ref_resets"] == 1
    policy = params(tr)
    new_ref = dict(tr.reference.model.named_parameters())
    assert set(policy) == set(old_ref)
    for k in policy:
        want = (1 - alpha) * old_ref[k] + alpha * policy[k]
        torch.testing.assert_close(new_ref[k].detach(), want, rtol=0, atol=1e-6)
    assert changed(old_ref, {k: v.detach() for k, v in new_ref.items()}), "the reference did not move"
    assert changed(policy, {k: v.detach() for k, v in new_ref.items()}), "EMA must not be a hard copy"
    assert tr.optimizer.state, "ref_reset_optimizer=false keeps Adam's state"

