"""Smoke test of the end-to-end benchmark (`launch/bench.py`): it runs and prints the documented JSON.

No timing assertions here: speed targets live in the benchmark's output, never in tests.
"""

import json
import os
import subprocess
import sys

from .conftest import REPO


def test_bench_tiny_one_step_prints_json_with_the_keys():
    cmd = [sys.executable, str(REPO / "launch" / "bench.py"), "--model", "tiny", "--steps", "1", "--warmup", "0",
           "--matmul_seconds", "0.2"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert set(out) == {"workload", "machine", "prorl"}  # prorl only: no --against
    w = out["workload"]
    assert (w["model"], w["n_prompts"], w["n_samples"], w["max_new_tokens"], w["kl_beta"]) == ("tiny", 8, 8, 64, 0.04)
    assert 300_000 < w["params"] < 700_000
    p = out["prorl"]
    for key in ("sec_per_step", "completion_tokens_per_s", "completion_tokens_per_step", "cpu_sec_per_step",
                "peak_rss_mb", "rss_ready_mb", "model_flops_per_step", "achieved_gflops", "flop_fraction", "measured_steps"):
        assert key in p, key
    assert p["measured_steps"] == 1
    assert p["completion_tokens_per_step"] == 8 * 8 * 64  # EOS is unreachable without --eos
    assert p["sec_per_step"] > 0 and p["completion_tokens_per_s"] > 0 and p["peak_rss_mb"] > 0
    assert 0 < p["flop_fraction"] and out["machine"]["matmul_gflops_best"] > 0
    assert out["machine"]["threads"] == 2


def test_bench_refuses_gpu_options_without_a_gpu_run():
    for args, message in ((["--bf16"], "add --device cuda"), (["--device", "cuda", "--vllm", "--against", "plain"], "drop one of them")):
        r = subprocess.run([sys.executable, str(REPO / "launch" / "bench.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr[-500:])
