"""Bad input through the real CLI (`prorl.cli.main`, in this process for speed): each row gives ONE line on
stderr, `prorl: error: <what>, <where>; <how to fix>`, and exit code 2, or a warning and a run that
goes on. No row writes into, or damages, an existing checkpoint.

The README's "Robustness and bad input" table lists these rows in this order.
"""

import hashlib
import json
import os
import resource
import shutil
import sys
from pathlib import Path

import pytest

from prorl import cli
from prorl.checkpoint import list_checkpoints

from .conftest import REPO, TINY_MODEL
from .procs import free_port, run_tree

FIXTURES = REPO / "tests" / "reward_fixtures.py"
TINY = dict(
    model_name_or_path=str(TINY_MODEL), dataset="builtin:arithmetic", batch_size=2, n_samples=2, max_length=4,
    max_steps=1, save_every=0, kl_beta=0.0, progress_bar="false", seed=1,
)


def prorl_train(capsys, out, *args, **opts):
    """Run `prorl train` with the tiny defaults; return (exit code, stderr lines)."""
    argv = ["train"]
    for k, v in dict(TINY, output_dir=str(out), **opts).items():
        argv += [f"--{k}", str(v)]
    capsys.readouterr()
    try:
        rc = cli.main(argv + list(args))
    except SystemExit as e:  # argparse's own errors exit from inside the parser
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


def snapshot(folder: Path) -> dict:
    """Every file under folder with its content hash: 'unchanged' means byte for byte."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(rc, lines, fragment):
    assert rc == cli.EXIT_USAGE, lines
    assert len(lines) == 1, "expected exactly one line on stderr:\n" + "\n".join(lines)
    assert lines[0].startswith("prorl: error: "), lines[0]
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def assert_nothing_written(out: Path):
    """`out` did not exist before the run: a run that stops at start leaves no folder behind."""
    assert not out.exists(), sorted(p.name for p in out.iterdir())


# ----------------------------------------------------------------------------------------------
# Rows that stop at start. Each setup returns the extra CLI arguments; `t` is the row's tmp folder.

def _write(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _model_copy(t: Path, name: str) -> Path:
    folder = t / name
    shutil.copytree(TINY_MODEL, folder)
    return folder


def _add_tiny_tokenizer(folder: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_MODEL / f, folder)


def _t5_folder(t: Path) -> str:
    from transformers import T5Config

    folder = t / "t5"
    T5Config(vocab_size=101, d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8).save_pretrained(folder)
    _add_tiny_tokenizer(folder)
    return str(folder)


def _uninstalled_tracker() -> str:
    import importlib.util

    missing = [t for t in ("wandb", "trackio") if importlib.util.find_spec(t) is None]
    if not missing:
        pytest.skip("wandb and trackio are both installed here: no tracker is missing")
    return missing[0]


def _needs_peft() -> list:
    pytest.importorskip("peft", reason="LoRA needs the peft extra (in the test extra)")
    return []


def _bert_folder(t: Path) -> str:
    from transformers import BertConfig, BertForMaskedLM

    folder = t / "bert"
    cfg = BertConfig(vocab_size=101, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertForMaskedLM(cfg).save_pretrained(folder)
    _add_tiny_tokenizer(folder)
    return str(folder)


def _small_vocab_model(t: Path) -> str:
    """The tiny model's tokenizer (101 tokens) on a model with a 60-row embedding table."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(TINY_MODEL)
    cfg.vocab_size = 60
    folder = t / "small-vocab"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    _add_tiny_tokenizer(folder)
    return str(folder)


ERRORS = [
    # (id, setup(t) -> extra args, fragment of the one line)
    ("empty prompt file",
     lambda t: ["--dataset", _write(t / "p.txt", b"")], "is an empty file; put one prompt per line (.txt)"),
    ("missing prompt file",
     lambda t: ["--dataset", str(t / "nope.jsonl")], "nope.jsonl' not found: give an existing file or folder"),
    ("missing prompt column",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"question": "1+1="}\n')],
     "has no column 'prompt'; columns are: question (set prompt_column)"),
    ("all prompts empty",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"prompt": ""}\n{"prompt": "  "}\n')],
     "has no non-empty prompts in column 'prompt' (2 rows, all empty); check the file or set prompt_column"),
    ("malformed JSON line",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"prompt": "1+1="}\n{"prompt": "2+2=",\n')],
     "line 2 is not valid JSON"),
    ("prompt column is not text",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"prompt": 5}\n{"prompt": 7}\n')],
     "column 'prompt' holds int64 values, not text; point prompt_column at the prompt text"),
    ("non-UTF-8 bytes",
     lambda t: ["--dataset", _write(t / "p.txt", b"1+1=\n2+\xff\xfe=\n")],
     "is not valid UTF-8 (line 2); re-encode the file as UTF-8"),
    ("config file missing",
     lambda t: ["--config", str(t / "nope.yaml")], "nope.yaml' not found"),
    ("unknown config key",
     lambda t: ["--config", _write(t / "c.yaml", "batchsize: 4\n")],
     "unknown option 'batchsize' (did you mean 'batch_size'?)"),
    ("unknown command-line option",
     lambda t: ["--batchsize", "4"], "unknown option --batchsize (did you mean --batch_size?)"),
    ("wrong type",
     lambda t: ["--batch_size", "four"], "batch_size='four' is not a valid int"),
    ("n_samples < 2",
     lambda t: ["--n_samples", "1"], "n_samples=1 is invalid: must be >= 2"),
    ("eps_low out of range",
     lambda t: ["--eps_low", "1.5"], "eps_low=1.5 is invalid: must be in [0, 1)"),
    ("kl_beta < 0",
     lambda t: ["--kl_beta", "-0.1"], "kl_beta=-0.1 is invalid: must be >= 0"),
    ("adam_beta1 out of range",
     lambda t: ["--adam_beta1", "1.5"], "adam_beta1=1.5 is invalid: must be in [0, 1)"),
    ("model path missing",
     lambda t: ["--model_name_or_path", str(t / "no-model")], "could not be loaded: no such folder"),
    ("folder that is not a model",
     lambda t: ["--model_name_or_path", os.path.dirname(_write(t / "m" / "notes.txt", "hi"))],
     "no config.json, so it is not a saved transformers model"),
    ("model that is not a causal LM",
     lambda t: ["--model_name_or_path", _t5_folder(t)], "is a 't5' model, which is not a causal LM"),
    ("reward function not importable",
     lambda t: ["--reward_funcs", "no_such_module:score"], "cannot import module 'no_such_module'"),
    ("reward file missing",
     lambda t: ["--reward_funcs", f"{t / 'rewards.py'}:score"], "rewards.py' not found"),
    ("reward function with the wrong signature",
     lambda t: ["--reward_funcs", f"{FIXTURES}:wrong_signature"],
     "has the wrong signature (completion); it must be fn(prompts, completions, **kwargs)"),
    ("output_dir under a regular file",
     lambda t: ["--output_dir", str(Path(_write(t / "a-file", "x")) / "out")],
     "is not a writable folder: Not a directory; choose another output_dir"),
    ("resume folder missing",
     lambda t: ["--resume", str(t / "checkpoint-000009")], "checkpoint-000009' not found"),
    ("resume from a folder that is not a checkpoint",
     lambda t: ["--resume", str(_model_copy(t, "plain-model"))],
     "is not a prorl checkpoint (no trainer_state.json); pass a checkpoint-* folder or 'latest'"),
    ("resume latest with no checkpoint",
     lambda t: ["--resume", "latest"], "holds no checkpoint; drop --resume to start fresh"),
    ("config path is a folder",
     lambda t: ["--config", str(t)], "is a directory; give the YAML file inside it"),
    ("tracker not installed",
     lambda t: ["--report_to", _uninstalled_tracker()], "package is not installed; pip install"),
    ("dataset with no rows",
     lambda t: ["--dataset", _write(t / "p.csv", "prompt,answer\n")], "has no rows"),
    ("reward needs a column the dataset lacks",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"prompt": "1+1=", "solution": "2"}\n{"prompt": "2+2=", "solution": "4"}\n'),
                "--reward_funcs", "exact_match"],
     "reward 'exact_match' needs column 'answer', which dataset="),
    ("float16 weights",
     lambda t: ["--dtype", "float16"], "dtype='float16' is invalid: AdamW's eps (1e-8) and small squared gradients are 0 in float16"),
    ("a prompt that is a list of strings",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"prompt": ["1+1=", "2+2="], "answer": "2"}\n')],
     "a prompt is a list holding a str; a list prompt must be chat messages"),
    ("chat messages without role or content",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"prompt": [{"text": "1+1="}], "answer": "2"}\n')],
     "a prompt is a list holding a message with keys ['text']"),
    ("an encoder checkpoint as the policy",
     lambda t: ["--model_name_or_path", _bert_folder(t)], "holds a BertForMaskedLM (no causal language-model head)"),
    ("a tokenizer with more tokens than the model's embeddings",
     lambda t: ["--model_name_or_path", _small_vocab_model(t)], "but the model has only 60 embedding rows"),
    ("LoRA target modules that match nothing",
     lambda t: _needs_peft() + ["--lora_r", "4", "--lora_target_modules", "nope_proj"],
     "lora_target_modules=['nope_proj']: PEFT refused them"),
    ("LoRA dropout out of range",
     lambda t: ["--lora_r", "4", "--lora_dropout", "1.5"], "lora_dropout=1.5 is invalid: must be in [0, 1)"),
    ("kl_beta 0 with reference resets",
     lambda t: ["--ref_reset_every", "2"], "ref_reset_every=2 is invalid: resets the reference policy, and kl_beta=0"),
]


@pytest.mark.parametrize("setup,fragment", [pytest.param(s, f, id=i) for i, s, f in ERRORS])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, tiny_model, setup, fragment):
    extra = setup(tmp_path)
    out = tmp_path / "out"
    rc, lines = prorl_train(capsys, out, *extra)
    assert_one_line_error(rc, lines, fragment)
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------
# Rows that meet an existing run: its checkpoint must come out byte for byte unchanged.

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model) -> Path:
    """A finished one-step run (checkpoint-000001 + metrics.jsonl) to copy into each test."""
    out = tmp_path_factory.mktemp("template") / "out"
    rc = cli.main(["train", *sum(([f"--{k}", str(v)] for k, v in dict(TINY, output_dir=str(out)).items()), [])])
    assert rc == 0 and [p.name for p in list_checkpoints(out)] == ["checkpoint-000001"]
    return out


@pytest.fixture
def used_dir(tmp_path, finished_run) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    return out


def test_fresh_run_into_a_used_output_dir_is_refused(capsys, used_dir):
    before = snapshot(used_dir)
    rc, lines = prorl_train(capsys, used_dir)
    assert_one_line_error(rc, lines, "already holds checkpoints (newest checkpoint-000001); continue that run with --resume latest")
    assert snapshot(used_dir) == before


def test_resume_with_unreadable_trainer_state(capsys, used_dir):
    (used_dir / "checkpoint-000001" / "trainer_state.json").write_text('{"step": 1, "cur')  # damaged by hand
    before = snapshot(used_dir)
    rc, lines = prorl_train(capsys, used_dir, "--resume", "latest")
    assert_one_line_error(rc, lines, "no intact checkpoint in")
    assert "checkpoint-000001: trainer_state.json is unreadable (JSONDecodeError)" in lines[0]
    assert snapshot(used_dir) == before
    # named explicitly, the same checkpoint is one line too
    rc, lines = prorl_train(capsys, used_dir, "--resume", str(used_dir / "checkpoint-000001"))
    assert_one_line_error(rc, lines, "trainer_state.json is unreadable (JSONDecodeError); resume from another checkpoint")


def test_resume_with_a_truncated_safetensors_file_is_one_line(capsys, used_dir):
    model = used_dir / "checkpoint-000001" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-64])  # a copy or a disk cut short
    before = snapshot(used_dir)
    rc, lines = prorl_train(capsys, used_dir, "--resume", "latest")
    assert_one_line_error(rc, lines, "no intact checkpoint in")
    assert "model.safetensors is damaged" in lines[0]
    assert snapshot(used_dir) == before


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.safetensors", "reference.safetensors"])
def test_resume_latest_skips_a_damaged_newest_checkpoint(tmp_path, capsys, caplog, damaged):
    out = tmp_path / "out"
    assert prorl_train(capsys, out, max_steps=2, save_every=1, kl_beta=0.01)[0] == 0
    f = out / "checkpoint-000002" / damaged
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    rc, lines = prorl_train(capsys, out, "--resume", "latest", max_steps=3, save_every=1, kl_beta=0.01)
    assert rc == 0, lines
    assert f"checkpoint-000002 is damaged ({damaged} is damaged" in caplog.text
    assert "resuming from checkpoint-000001 instead" in caplog.text
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # steps 2 and 3 trained again from checkpoint 1; none twice


def test_resume_from_a_checkpoint_of_a_different_model(tmp_path, capsys, used_dir):
    other = _model_copy(tmp_path, "other-model")
    before = snapshot(used_dir)
    rc, lines = prorl_train(capsys, used_dir, "--resume", "latest", model_name_or_path=other)
    assert_one_line_error(rc, lines, f"was trained from model {str(TINY_MODEL)!r}, not {str(other)!r}")
    assert "set model_name_or_path to match or start a new output_dir" in lines[0]
    assert snapshot(used_dir) == before


def test_disk_full_while_saving_keeps_the_previous_checkpoint(capsys, used_dir):
    """RLIMIT_FSIZE makes the kernel refuse writes past 1 MiB (EFBIG, as ENOSPC would): the 3 MB model
    file of checkpoint-000002 cannot be written. CPython ignores SIGXFSZ, so write() fails instead."""
    before = snapshot(used_dir / "checkpoint-000001")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        rc, lines = prorl_train(capsys, used_dir, "--resume", "latest", max_steps=2, save_every=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert_one_line_error(rc, lines, "could not write checkpoint")
    assert "File too large" in lines[0] and "the newest intact checkpoint is checkpoint-000001" in lines[0]
    assert "continue with --resume latest" in lines[0]
    assert [p.name for p in list_checkpoints(used_dir)] == ["checkpoint-000001"]
    assert not list(used_dir.glob(".tmp-*")), "the half-written checkpoint was left behind"
    assert snapshot(used_dir / "checkpoint-000001") == before


# ----------------------------------------------------------------------------------------------
# Rows handled with a warning: the run goes on and finishes.

def _no_pad_model(t: Path) -> str:
    folder = _model_copy(t, "no-pad")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    backend = json.loads((folder / "tokenizer.json").read_text())
    backend["padding"] = None  # the tokenizers backend would otherwise bring its own pad token
    (folder / "tokenizer.json").write_text(json.dumps(backend))
    return str(folder)


WARNINGS = [
    ("prompts longer than max_prompt_length",
     lambda t: ["--max_prompt_length", "2"], "prompt(s) longer than max_prompt_length=2 tokens were truncated from the left"),
    ("tokenizer without pad token",
     lambda t: ["--model_name_or_path", _no_pad_model(t)], "tokenizer has no pad token; using its eos token '<eos>'"),
    ("some prompts empty",
     lambda t: ["--dataset", _write(t / "p.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "", "answer": "0"}\n'
                                                    '{"prompt": "2+2=", "answer": "4"}\n')],
     "skipped 1 empty prompt(s) of 3"),
]


@pytest.mark.parametrize("setup,fragment", [pytest.param(s, f, id=i) for i, s, f in WARNINGS])
def test_questionable_input_warns_and_the_run_goes_on(tmp_path, capsys, caplog, tiny_model, setup, fragment):
    extra = setup(tmp_path)
    out = tmp_path / "out"
    rc, lines = prorl_train(capsys, out, *extra)
    assert rc == 0, lines
    assert not [l for l in lines if l.startswith("prorl: error")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(fragment in w for w in warnings), warnings
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000001"]


# ----------------------------------------------------------------------------------------------
# batch_size not divisible by the number of processes: a real two-process launch.

@pytest.mark.slow
def test_batch_size_not_divisible_by_processes(tmp_path, tiny_model):
    args = sum(([f"--{k}", str(v)] for k, v in dict(TINY, batch_size=3, output_dir=str(tmp_path / "out")).items()), [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "prorl", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = run_tree(cmd, cwd=REPO, env=env, timeout=300)
    assert r.returncode != 0  # torchrun reports its failed workers with exit code 1
    ours = [l for l in r.stderr.splitlines() if l.startswith("prorl: ")]
    assert ours and set(ours) == {"prorl: error: batch_size=3 must be divisible by the number of processes (2)"}, r.stderr[-3000:]
    assert "exitcode  : 2" in r.stderr  # each worker exited with prorl's usage code
    assert_nothing_written(tmp_path / "out")
