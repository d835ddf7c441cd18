import json
import math

import pytest

from prorl.evaluate import pass_at_k

from .test_cli import run


def test_pass_at_k_matches_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k failures: some draw must pass
    with pytest.raises(ValueError, match="at least 8 samples"):
        pass_at_k(4, 1, 8)


def test_eval_cli_table_and_json(tmp_path, tiny_model):
    out = tmp_path / "e.json"
    r = run("eval", "--model", tiny_model, "--k", "1,2", "--n", "2", "--max_prompts", "16", "--max_length", "6",
            "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pass@1" in r.stdout and "pass@2" in r.stdout
    result = json.loads(out.read_text())
    assert result["n_prompts"] == 16 and result["n_samples"] == 2
    assert 0 <= result["pass@1"] <= result["pass@2"] <= 1


def test_plot_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib", reason="plotting is the optional 'plot' extra (in the test extra)")
    from prorl.plot import plot_run

    rows = [{"step": s, "reward_mean": s / 10, "kl": 0.01 * s, "entropy": 1 - s / 10, "completion_len_mean": 4,
             "completion_len_max": 6, "clip_frac": 0.0, "skipped_groups": 1, "ref_reset": s == 2,
             "domain/math/reward_mean": s / 8, "domain/code/reward_mean": s / 20, "domain/math/zero_signal_frac": 0.5}
            for s in range(1, 5)]
    rows.insert(0, {"step": 0, "eval/pass@1": 0.3, "eval/domain/math/pass@1": 0.5})
    rows[-1]["eval/pass@1"] = 0.4
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(tmp_path)
    names = {p.name for p in written}
    assert {"reward.png", "kl.png", "entropy.png", "heldout_pass_at_k.png"} <= names
    # a mixed run: one chart per per-domain metric, a line per domain
    assert {"domain_reward_mean.png", "domain_zero_signal_frac.png", "domain_heldout_pass_at_k.png"} <= names
    assert "domain_completion_len_mean.png" not in names  # not logged: no empty chart
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_eval_cli_reads_a_streamed_dataset(tmp_path, tiny_model):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(100, 130)))
    out = tmp_path / "e.json"
    r = run("eval", "--model", tiny_model, "--dataset", str(src), "--dataset_split", "train", "--streaming", "true",
            "--max_prompts", "8", "--n", "2", "--max_length", "6", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(out.read_text())["n_prompts"] == 8


def test_eval_refuses_a_reward_whose_column_is_missing(tmp_path, tiny_model):
    """Before: exact_match faulted on every sample and eval reported pass@1 0.0 with exit 0."""
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "solution": str(2 * a)}) + "\n" for a in range(10)))
    r = run("eval", "--model", tiny_model, "--dataset", str(src), "--dataset_split", "train", "--n", "2", "--max_length", "4")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "reward 'exact_match' needs column 'answer'" in lines[0] and "rename_columns" in lines[0]
