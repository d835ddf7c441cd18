"""Mixing prompt sources (`datasets`), per-domain rewards and per-domain metrics."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from prorl.config import ConfigError, load_config
from prorl.data import default_domain, load_prompt_sources
from prorl.evaluate import _summary
from prorl.metrics import domain_metrics
from prorl.rewards import DomainRewards, RewardConfigError, check_sources, domain_names, rewards_from_config


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def sources(tmp_path):
    qa = _jsonl(tmp_path / "qa.jsonl", [{"prompt": f"{i}+1=", "answer": i + 1} for i in range(6)])
    code = _jsonl(tmp_path / "code.jsonl", [{"prompt": f"def f{i}(x):\n", "test": "def check(c):\n    assert c(1) == 1\n",
                                             "entry_point": f"f{i}"} for i in range(3)])
    return qa, code


def cfg(**kw):
    return load_config(None, dict(progress_bar=False, **kw))


# ---- config ---------------------------------------------------------------------------------------


def test_config_errors_name_the_entry_and_the_fix():
    cases = [
        (dict(dataset="a.jsonl", datasets=[{"dataset": "b.jsonl"}]), "dataset and datasets are both set"),
        (dict(datasets=[{"datset": "b.jsonl"}]), "did you mean 'dataset'"),
        (dict(datasets=[{"domain": "math"}]), r"datasets\[0\] names no dataset"),
        (dict(datasets=[{"dataset": "a", "domain": "my math"}]), r"datasets\[0\].domain='my math'"),
        (dict(datasets=[{"dataset": "a", "weight": 0}]), r"datasets\[0\].weight=0.0 must be a finite number > 0"),
        (dict(datasets=[{"dataset": "a", "weight": 2}, {"dataset": "b"}]), "set mixture=interleave"),
        (dict(datasets=[{"dataset": "a", "domain": "code"}], reward_funcs={"math": ["math"]}), r"\['code'\] in datasets have no rewards"),
        (dict(reward_funcs={"math": []}), "domain 'math' has no reward functions"),
        (dict(reward_funcs={"math": ["math"]}, reward_weights=[1.0]), "reward_weights must be too"),
        (dict(reward_funcs={"math": ["math"]}, reward_weights={"math": [1.0, 2.0]}), r"reward_weights\[math\] has 2 values"),
        (dict(reward_funcs=["math"], reward_weights={"math": [1.0]}), "give reward_weights as a list too"),
        (dict(mixture="shuffle"), "mixture='shuffle' is not allowed; choose one of: concatenate, interleave"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            cfg(**overrides)


def test_command_line_takes_yaml_lists_and_mappings():
    from prorl.cli import parse_train_args

    c = parse_train_args(["--datasets", "[{dataset: a.jsonl, domain: math}, b.jsonl]", "--reward_funcs",
                          "{math: [math], b: [exact_match]}"])
    assert c.datasets == [{"dataset": "a.jsonl", "domain": "math"}, {"dataset": "b.jsonl"}]
    assert c.reward_funcs == {"math": ["math"], "b": ["exact_match"]}
    assert parse_train_args(["--reward_funcs", "math", "format"]).reward_funcs == ["math", "format"]


def test_default_domain_names():
    assert default_domain("data/gsm8k.jsonl") == "gsm8k"
    assert default_domain("openai/gsm8k") == "gsm8k"
    assert default_domain("reasoning_gym:leg_counting,basic_arithmetic") == "reasoning_gym"
    assert default_domain("builtin:arithmetic") == "builtin"
    assert default_domain("./my data/") == "my_data"


# ---- loading and mixing ---------------------------------------------------------------------------


def test_concatenate_keeps_every_row_with_its_domain_and_each_sources_columns(sources, caplog):
    qa, code = sources
    c = cfg(datasets=[{"dataset": qa, "domain": "qa"}, {"dataset": code}, {"dataset": "builtin:arithmetic", "max_prompts": 5,
                                                                             "domain": "math"}])
    ds, srcs = load_prompt_sources(c)
    assert len(ds) == 6 + 3 + 5
    assert ds["domain"] == ["qa"] * 6 + ["code"] * 3 + ["math"] * 5
    assert [s.domains for s in srcs] == [["qa"], ["code"], ["math"]]
    assert srcs[0].columns == ["answer"] and sorted(srcs[1].columns) == ["entry_point", "test"] and srcs[2].columns == ["answer"]
    # qa's integer answers and arithmetic's text answers share a column: read as text, with a warning
    assert ds[0]["answer"] == "1" and ds[-1]["answer"].isdigit()
    assert "column 'answer' is int64" in caplog.text and "read as text" in caplog.text
    assert ds[6]["answer"] is None and ds[0]["test"] is None  # a column another source lacks is None there


def test_interleave_draws_by_weight_reproducibly(sources):
    qa, code = sources
    spec = dict(datasets=[{"dataset": "builtin:arithmetic", "domain": "math", "weight": 3, "max_prompts": 300},
                          {"dataset": qa, "domain": "qa", "weight": 1}], mixture="interleave", seed=7)
    first = load_prompt_sources(cfg(mixture_stopping="first_exhausted", **spec))[0]
    again = load_prompt_sources(cfg(mixture_stopping="first_exhausted", **spec))[0]
    assert first["prompt"] == again["prompt"]  # same seed, same mixture on every process and every run
    share = first["domain"].count("math") / len(first)
    assert 0.6 < share < 0.9, share  # about 3:1 until qa's 6 rows run out
    full = load_prompt_sources(cfg(**spec))[0]  # all_exhausted: until the 300 math rows were all drawn
    assert set(full["prompt"]) >= set(load_prompt_sources(cfg(**spec))[0]["prompt"][:10])
    assert len(set(p for p, d in zip(full["prompt"], full["domain"]) if d == "math")) == 300
    other = load_prompt_sources(cfg(**dict(spec, seed=8), mixture_stopping="first_exhausted"))[0]
    assert other["domain"] != first["domain"]


def test_remove_columns_and_conflicting_columns(sources, tmp_path):
    qa, code = sources
    meta = _jsonl(tmp_path / "meta.jsonl", [{"prompt": "x", "meta": {"a": 1}}])
    meta2 = _jsonl(tmp_path / "meta2.jsonl", [{"prompt": "y", "meta": [1, 2]}])
    with pytest.raises(ConfigError, match=r"column 'meta' of .*meta.jsonl.* and of .*meta2.jsonl.* cannot be mixed; rename it"):
        load_prompt_sources(cfg(datasets=[{"dataset": meta}, {"dataset": meta2}]))
    ds, _ = load_prompt_sources(cfg(datasets=[{"dataset": meta, "remove_columns": ["meta"]}, {"dataset": meta2}]))
    assert ds["meta"] == [None, [1, 2]]
    with pytest.raises(ConfigError, match=r"remove_columns names \['nope'\]"):
        load_prompt_sources(cfg(datasets=[{"dataset": meta, "remove_columns": ["nope"]}]))
    chat = _jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ConfigError, match="prompts of .* cannot be mixed; make every source's prompts the same kind"):
        load_prompt_sources(cfg(datasets=[{"dataset": qa}, {"dataset": chat}]))


def test_prompt_template_builds_prompts_from_columns(tmp_path):
    src = _jsonl(tmp_path / "mc.jsonl", [{"question": "Which is a gas?", "options": ["Iron", "Neon"], "answer": "B"},
                                        {"question": "2+2?", "options": ["4", "5"], "answer": "A"}])
    ds, _ = load_prompt_sources(cfg(dataset=src, prompt_column="question", prompt_template="Q: {prompt}\n{options:letters}\nA:"))
    assert ds[0]["prompt"] == "Q: Which is a gas?\n(A) Iron\n(B) Neon\nA:"
    arc = _jsonl(tmp_path / "arc.jsonl", [{"prompt": "Pick", "choices": {"text": ["x", "y"], "label": ["1", "2"]}}])
    assert load_prompt_sources(cfg(dataset=arc, prompt_template="{prompt}\n{choices:letters}"))[0][0]["prompt"] == "Pick\n(1) x\n(2) y"
    with pytest.raises(ConfigError, match=r"prompt_template names \{topic\}, not a column .* columns: prompt, options, answer"):
        load_prompt_sources(cfg(dataset=src, prompt_column="question", prompt_template="{topic}: {prompt}"))
    with pytest.raises(ConfigError, match=r"has an empty \{\} field: put a column name inside, or write literal braces as \{\{ and \}\}"):
        load_prompt_sources(cfg(dataset=src, prompt_column="question", prompt_template="{prompt} in \\boxed{}"))
    with pytest.raises(ConfigError, match=r"does not format the rows .*Unknown format code"):
        load_prompt_sources(cfg(dataset=src, prompt_column="question", prompt_template="{prompt:d}"))


def test_streaming_mixture_reads_every_source(sources):
    from prorl.data import StreamingPrompts

    qa, code = sources
    c = cfg(datasets=[{"dataset": qa, "domain": "qa"}, {"dataset": code, "domain": "code"}], mixture="interleave",
            streaming=True, max_steps=1)
    ds, srcs = load_prompt_sources(c)
    rows = StreamingPrompts(ds, seed=1, shuffle_buffer=4).take(12)
    assert {r["domain"] for r in rows} == {"qa", "code"}
    assert srcs[0].domains == ["qa"]


def test_heldout_set_of_a_mixture_is_each_sources_own(sources):
    qa, code = sources
    c = cfg(datasets=[{"dataset": "builtin:arithmetic", "domain": "math", "eval_max_prompts": 7},
                      {"dataset": qa, "domain": "qa", "eval_dataset": code, "remove_columns": ["answer"]}],
            eval_max_prompts=2)
    held, srcs = load_prompt_sources(c.eval_config())
    assert held["domain"] == ["math"] * 7 + ["qa"] * 2  # eval_max_prompts per source; eval_dataset replaces the source
    test_split = set(load_prompt_sources(cfg(dataset="builtin:arithmetic", dataset_split="test"))[0]["prompt"])
    assert set(held["prompt"][:7]) <= test_split


# ---- per-domain rewards ---------------------------------------------------------------------------


def _by_letter(prompts, completions, **_):
    return [float(c.startswith("A")) for c in completions]


def _length(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def _broken(prompts, completions, **_):
    raise RuntimeError("grader down")


def test_each_sample_is_scored_by_its_own_domains_rewards():
    c = cfg(reward_funcs={"letters": ["a"], "both": ["a", "b"]}, reward_weights={"both": [1.0, 0.5]})
    rewards = rewards_from_config(c, funcs={"letters": [_by_letter], "both": [_by_letter, _length]})
    assert isinstance(rewards, DomainRewards) and rewards.names == ["_by_letter", "_length"]
    out = rewards(["p"] * 4, ["Ab", "bbb", "A", "cc"], {"domain": ["letters", "both", "both", "letters"]})
    assert out.total == [1.0, 0.0 + 0.5 * 3, 1.0 + 0.5 * 1, 0.0]
    assert out.per_func["_by_letter"] == [1.0, 0.0, 1.0, 0.0]
    assert out.per_func["_length"][1:3] == [3.0, 1.0] and math.isnan(out.per_func["_length"][0])
    assert out.applied == {"_by_letter": 4, "_length": 2}


def test_a_failing_domain_reward_is_isolated_to_its_samples():
    c = cfg(reward_funcs={"x": ["a"], "y": ["b"]}, reward_fallback=-1.0)
    rewards = rewards_from_config(c, funcs={"x": [_by_letter], "y": [_broken]})
    out = rewards(["p"] * 3, ["A", "A", "A"], {"domain": ["x", "y", "x"]})
    assert out.total == [1.0, -1.0, 1.0]
    assert out.faults == {"_by_letter": 0, "_broken": 1} and "[y] raised RuntimeError: grader down" in out.first_error["_broken"]
    with pytest.raises(RewardConfigError, match=r"domain\(s\) \['z'\] have no rewards"):
        rewards(["p"], ["A"], {"domain": ["z"]})
    with pytest.raises(RewardConfigError, match="no 'domain' column"):
        rewards(["p"], ["A"], {})


def test_start_up_checks_each_domains_columns_in_its_own_source(sources):
    qa, code = sources
    c = cfg(datasets=[{"dataset": qa, "domain": "qa"}, {"dataset": code, "domain": "code"}],
            reward_funcs={"qa": ["exact_match"], "code": ["exact_match"]})
    _, srcs = load_prompt_sources(c)
    # the mixture has an 'answer' column, but the code source's rows do not: exact_match cannot score them
    with pytest.raises(RewardConfigError, match=r"reward 'exact_match' needs column 'answer', which dataset=.*code.jsonl.*domain code"):
        check_sources(rewards_from_config(c), srcs)
    ok = cfg(datasets=c.datasets, reward_funcs={"qa": ["exact_match"], "code": ["code"]})
    check_sources(rewards_from_config(ok), srcs)
    assert domain_names(rewards_from_config(ok), srcs) == ["code", "qa"]
    flat = cfg(dataset=qa, reward_funcs={"qa": ["exact_match"]})
    with pytest.raises(RewardConfigError, match="has no 'domain' column"):
        check_sources(rewards_from_config(flat), load_prompt_sources(flat)[1])
    with pytest.raises(RewardConfigError, match=r"reward kwargs given for \['math'\], which no domain"):
        rewards_from_config(cfg(reward_funcs={"qa": ["exact_match"]}, reward_kwargs={"math": {}}))


# ---- per-domain metrics ---------------------------------------------------------------------------


def test_domain_metrics_by_hand():
    acc = SimpleNamespace(num_processes=1)
    # two rounds of groups of 2: round 1 has a 'math' group (rewards 1, 0) and a 'code' group (0, 0:
    # zero signal); round 2 one more 'math' group (1, 1: zero signal)
    r1 = SimpleNamespace(rewards=torch.zeros(4), scored=torch.tensor([1.0, 0.0, 0.0, 0.0]), lengths=torch.tensor([2, 4, 6, 8]),
                         domain_ids=torch.tensor([0, 0, 1, 1]), offset=0, all_rewards=torch.zeros(4))
    r2 = SimpleNamespace(rewards=torch.zeros(2), scored=torch.tensor([1.0, 1.0]), lengths=torch.tensor([3, 3]),
                         domain_ids=torch.tensor([0, 0]), offset=0, all_rewards=torch.zeros(2))
    zero = torch.tensor([False, False, True, True, True, True])
    m = domain_metrics(acc, [r1, r2], zero, ["math", "code", "stem"])
    assert m["domain/math/reward_mean"] == pytest.approx(3 / 4)
    assert m["domain/math/zero_signal_frac"] == pytest.approx(2 / 4)
    assert m["domain/math/completion_len_mean"] == pytest.approx((2 + 4 + 3 + 3) / 4)
    assert m["domain/code/reward_mean"] == 0.0 and m["domain/code/zero_signal_frac"] == 1.0 and m["domain/code/samples"] == 2
    assert not any(k.startswith("domain/stem/") for k in m)  # no rows this step: nothing reported


def test_eval_summary_per_domain_by_hand():
    # per prompt: correct of n=4, reward sum, length sum, domain
    table = torch.tensor([[4, 4.0, 8, 0], [0, 0.0, 4, 0], [1, 1.0, 12, 1]], dtype=torch.float64)
    s = _summary(table[table[:, 3] == 0], 4, [1, 4])
    assert s == {"pass@1": 0.5, "pass@4": 0.5, "reward_mean": 0.5, "completion_len_mean": 1.5}
    s = _summary(table[table[:, 3] == 1], 4, [1, 4])
    assert s["pass@1"] == 0.25 and s["pass@4"] == 1.0


# ---- the offline five-domain recipe, end to end -------------------------------------------------

RECIPE = "launch/recipes/prorl_mix_offline.yaml"
DOMAINS = ("code", "instructions", "math", "puzzles", "stem")
TIMING = ("step_time", "gen_time", "tokens_per_s")


def _mix_run(tmp_path, name, **overrides):
    from prorl.trainer import Trainer

    c = load_config(RECIPE, dict(dict(output_dir=str(tmp_path / name), progress_bar=False, max_steps=4, save_every=2), **overrides))
    Trainer(c).train()
    return tmp_path / name


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def repo_cwd(monkeypatch):
    from .conftest import REPO

    pytest.importorskip("reasoning_gym", reason="the recipe's puzzles domain needs the puzzles extra (in the test extra)")
    monkeypatch.chdir(REPO)  # the recipe's data/mix paths are relative to the repository root


@pytest.mark.slow
def test_offline_mix_trains_logs_every_domain_and_resumes_bit_identically(tmp_path, repo_cwd):
    from safetensors.torch import load_file

    full = _mix_run(tmp_path, "full", sample_every=2, n_logged_samples=64)
    rows = _metrics(full)
    logged_samples = [json.loads(line) for line in (full / "samples.jsonl").read_text().splitlines()]
    assert len(logged_samples) == 2 * 64 and {s["domain"] for s in logged_samples} <= set(DOMAINS)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    logged = {k.split("/")[1] for m in rows for k in m if k.startswith("domain/")}
    assert logged == set(DOMAINS), logged  # every domain had samples in some step, and reported them
    for m in rows:
        present = {k.split("/")[1] for k in m if k.startswith("domain/")}
        assert len(present) >= 3 and sum(m[f"domain/{d}/samples"] for d in present) == 16 * 4
        assert sum(m[f"domain/{d}/reward_mean"] * m[f"domain/{d}/samples"] for d in present) / 64 == pytest.approx(m["reward_mean"])
    assert any(m["domain/math/reward_mean"] > 0 for m in rows if "domain/math/reward_mean" in m)  # the domain it can do
    assert all(m["reward_faults"] == 0 for m in rows), [m.get("reward_faults") for m in rows]

    part = _mix_run(tmp_path, "part", max_steps=2)
    _mix_run(tmp_path, "part", resume="latest")
    got, want = _metrics(part), rows
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in TIMING} == {k: v for k, v in w.items() if k not in TIMING}
    a, b = load_file(str(part / "checkpoint-000004" / "model.safetensors")), load_file(str(full / "checkpoint-000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_offline_mix_one_and_two_processes_give_the_same_domain_rewards(tmp_path, repo_cwd):
    from .test_distributed import launch

    for nproc in (1, 2):
        launch(nproc, "-m", "prorl", "train", "--config", RECIPE, "--max_steps", "3", "--save_every", "0",
               "--output_dir", str(tmp_path / f"p{nproc}"), "--progress_bar", "false")
    one, two = _metrics(tmp_path / "p1"), _metrics(tmp_path / "p2")
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two):
        keys = sorted(k for k in a if k.startswith("domain/") or k.startswith("rewards/"))
        assert keys == sorted(k for k in b if k.startswith("domain/") or k.startswith("rewards/")) and keys
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
        assert a["reward_mean"] == b["reward_mean"]


@pytest.mark.slow
def test_eval_reports_pass_at_k_per_domain(tmp_path, repo_cwd, tiny_model):
    from .test_cli import run

    out = tmp_path / "e.json"
    r = run("eval", "--model", tiny_model, "--config", RECIPE, "--k", "1,2", "--n", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["n_prompts"] == 16 + 4 * 3 + 4 * 2  # eval_max_prompts per source; the puzzles' per task
    for d in DOMAINS:
        assert 0 <= result[f"domain/{d}/pass@1"] <= result[f"domain/{d}/pass@2"] <= 1
        assert f"domain/{d}/pass@1" in r.stdout
    assert result["domain/math/n_prompts"] == 16 and result["domain/puzzles/n_prompts"] == 8
    per_domain = sum(result[f"domain/{d}/pass@1"] * result[f"domain/{d}/n_prompts"] for d in DOMAINS) / result["n_prompts"]
    assert per_domain == pytest.approx(result["pass@1"])
