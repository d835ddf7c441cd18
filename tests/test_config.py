import pytest

from prorl.cli import build_parser, parse_train_args
from prorl.config import Config, ConfigError, load_config, option_table


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.n_samples == 8 and cfg.save_every == 200 and cfg.output_dir == "./prorl_checkpoints"
    assert cfg.dtype == "float32"


def test_yaml_then_cli_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 4\nlearning_rate: 3.0e-5\nreward_funcs: [exact_match, format]\n")
    cfg = load_config(f, {"batch_size": "6"})
    assert cfg.batch_size == 6  # CLI wins
    assert cfg.learning_rate == pytest.approx(3e-5)  # YAML beats default
    assert cfg.reward_funcs == ["exact_match", "format"]


def test_cli_parses_types():
    cfg = parse_train_args(["--batch_size", "4", "--kl_beta", "0", "--skip_zero_signal", "false",
                            "--reward_funcs", "exact_match", "format", "--max_steps", "3", "--resume", "none"])
    assert (cfg.batch_size, cfg.kl_beta, cfg.skip_zero_signal, cfg.max_steps, cfg.resume) == (4, 0.0, False, 3, None)
    assert cfg.reward_funcs == ["exact_match", "format"]
    assert parse_train_args(["--chat_template"]).chat_template is True


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"batchsize": 3}, "unknown option 'batchsize' (did you mean 'batch_size'?)"),
        ({"batch_size": "four"}, "batch_size='four' is not a valid int"),
        ({"n_samples": 1}, "n_samples=1 is invalid: must be >= 2"),
        ({"eps_low": 1.5}, "eps_low=1.5 is invalid"),
        ({"dual_clip": 3.0, "policy_loss": "gspo"}, "policy_loss='gspo' with {'dual_clip': 3.0}: dual_clip is only supported by the 'ppo_clip' loss"),
        ({"kl_beta": -0.1}, "kl_beta=-0.1 is invalid"),
        ({"top_p": 0}, "top_p=0.0 is invalid"),
        ({"loss_agg": "mean"}, "loss_agg='mean' is not allowed; choose one of: token_mean"),
        ({"reward_weights": [1.0, 2.0]}, "reward_weights has 2 values but reward_funcs has 1"),
        ({"deterministic": "maybe"}, "deterministic='maybe' is not a valid bool"),
        # every option is untrusted input: blank names and paths, nan/inf numbers, seeds torch cannot take
        ({"output_dir": ""}, "output_dir='' is invalid: must not be blank"),
        ({"reward_fallback": float("nan")}, "reward_fallback=nan is invalid: must be a finite number"),
        ({"oversample": float("inf")}, "oversample=inf is invalid: must be a finite number"),
        ({"seed": -1}, "seed=-1 is invalid: must be in [0, 2**63)"),
        # no reference to reset: refused, rather than logging resets that did nothing
        ({"kl_beta": 0.0, "ref_reset_every": 5}, "ref_reset_every=5 is invalid: resets the reference policy, and kl_beta=0"),
        ({"kl_beta": 0.0, "eval_every": 5, "ref_reset_on_plateau": 2}, "ref_reset_on_plateau=2 is invalid: resets the reference"),
    ],
)
def test_bad_values_name_the_option(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    for name, _, default, _ in option_table():
        assert f"--{name}" in out
    assert "default 200" in out  # save_every


def test_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "launch" / "recipes").glob("*.yaml"))
    assert recipes, "launch/recipes/*.yaml missing"
    for r in recipes:
        assert isinstance(load_config(r), Config), r


def test_readme_config_reference_is_current():
    from prorl.config import REPO_ROOT
    from prorl.docs import END, START, config_reference

    text = (REPO_ROOT / "README.md").read_text()
    current = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert current == config_reference(), "README config reference is stale: run `python -m prorl.docs --write`"


def test_registered_estimators_and_losses_are_selectable(monkeypatch):
    """`algos.register_advantage` / `register_policy_loss` are the source of the allowed names."""
    import torch

    from prorl import algos

    monkeypatch.setitem(algos.ADVANTAGE_ESTIMATORS, "centered", lambda rewards, groups, **kw: rewards - rewards.mean())
    monkeypatch.setitem(algos.POLICY_LOSSES, "plain_pg", lambda logp, logp_old, adv, mask: (-logp * adv, torch.zeros_like(logp)))
    c = load_config(None, {"advantage": "centered", "policy_loss": "plain_pg"})
    assert (c.advantage, c.policy_loss) == ("centered", "plain_pg")
    assert "centered" in dict((r[0], r[3]) for r in option_table())["advantage"]
    with pytest.raises(ConfigError, match="dual_clip"):  # the loss's own signature decides its options
        load_config(None, {"policy_loss": "plain_pg", "dual_clip": 3.0})


def test_config_directory_and_missing_tracker_are_one_line(tmp_path, monkeypatch):
    import importlib.util

    with pytest.raises(ConfigError, match="is a directory; give the YAML file inside it"):
        load_config(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="report_to='wandb' is invalid: the wandb package is not installed; pip install wandb"):
        load_config(None, {"report_to": "wandb"})
    load_config(None, {"report_to": "tensorboard"})  # installed with the test extra
