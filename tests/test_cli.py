import subprocess
import sys

from .conftest import REPO, TINY_MODEL


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "prorl", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_unknown_option_is_one_line_exit_2():
    r = run("train", "--batchsize", "4")
    assert r.returncode == 2
    assert r.stderr.strip() == "prorl: error: unknown option --batchsize (did you mean --batch_size?); `prorl train --help` lists them"


def test_invalid_value_is_one_line_exit_2():
    r = run("train", "--n_samples", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["prorl: error: n_samples=1 is invalid: must be >= 2 (advantages are normalised within each prompt's group)"]


def test_missing_model_is_one_line_exit_2(tmp_path):
    r = run("train", "--model_name_or_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o"))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("prorl: error: ") and "could not be loaded" in last


def test_help_lists_options():
    r = run("train", "--help")
    assert r.returncode == 0 and "--kl_beta" in r.stdout and "--save_every" in r.stdout


def test_cli_trains_with_yaml_and_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model_name_or_path: {TINY_MODEL}\nbatch_size: 2\nn_samples: 2\nmax_length: 4\nmax_steps: 1\n")
    r = run("train", "--config", str(cfg), "--output_dir", str(tmp_path / "o"), "--progress_bar", "false")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "o" / "checkpoint-000001" / "model.safetensors").exists()


def test_a_log_file_gets_plain_lines_and_no_library_noise(tmp_path):
    """stderr redirected (not a terminal): no progress-bar \\r redraws, no PEFT FutureWarning, no
    loading bars; merge prints its one line."""
    import pytest

    pytest.importorskip("peft", reason="LoRA needs the peft extra (in the test extra)")
    r = run("train", "--model_name_or_path", str(TINY_MODEL), "--batch_size", "2", "--n_samples", "2", "--max_length", "4",
            "--max_steps", "2", "--log_every", "1", "--lora_r", "4", "--output_dir", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr and "FutureWarning" not in r.stderr and "Warning" not in r.stderr, r.stderr[-2000:]
    assert [l for l in r.stdout.splitlines() + r.stderr.splitlines() if l.startswith("step ")], "no step lines"
    m = run("merge", str(tmp_path / "o" / "checkpoint-000002"), "--out", str(tmp_path / "merged"))
    assert m.returncode == 0 and m.stderr.strip() == "" and m.stdout.strip().endswith("merged"), (m.stdout, m.stderr)


def test_eval_help_lists_what_eval_reads_with_its_own_defaults():
    r = run("eval", "--help")
    assert r.returncode == 0
    help_line = r.stdout.split("\n  --dataset_split", 1)[1].split("\n  --", 1)[0]
    assert "default 'test'" in help_line, help_line
    assert "--temperature" in r.stdout and "--reward_funcs" in r.stdout
    for training_only in ("--learning_rate", "--batch_size", "--kl_beta", "--save_every", "--output_dir", "--lora_r"):
        assert training_only not in r.stdout, training_only
    bad = run("eval", "--model", str(TINY_MODEL), "--learning_rate", "0.1")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "prorl: error: --learning_rate is a training option; `prorl eval` does not read it (`prorl eval --help` lists what it does)")


def test_an_unknown_model_id_is_the_same_line_for_train_and_eval(tmp_path):
    """A bare name is a Hub id: offline (as in the tests) or misspelt, train and eval say the same."""
    t = run("train", "--model_name_or_path", "no-such-model-xyz", "--output_dir", str(tmp_path / "o"))
    e = run("eval", "--model", "no-such-model-xyz")
    assert t.returncode == e.returncode == 2
    assert t.stderr.strip().splitlines() == e.stderr.strip().splitlines()
    line = t.stderr.strip().splitlines()
    assert len(line) == 1 and "model_name_or_path='no-such-model-xyz' is not a local folder and could not be loaded from the Hub" in line[0]
    assert not (tmp_path / "o").exists()
