import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = Path(os.environ.get("PRORL_TEST_MODEL", REPO / "data" / "tiny-arith"))
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model() -> str:
    assert (TINY_MODEL / "config.json").exists(), "data/tiny-arith missing: run python data/build_tiny_model.py"
    return str(TINY_MODEL)


def small_run(tmp_path, **overrides):
    """A few-second training config on the embedded model."""
    from prorl.config import load_config

    base = dict(
        model_name_or_path=str(TINY_MODEL), dataset="builtin:arithmetic", max_steps=4, batch_size=4, n_samples=4,
        micro_batch_size=8, max_length=6, learning_rate=1e-4, kl_beta=0.01, save_every=2,
        output_dir=str(tmp_path / "out"), progress_bar=False, seed=3,
    )
    base.update(overrides)
    return load_config(None, base)


def toy_llama():
    """A random 2-layer Llama (vocabulary 24, grouped-query attention, EOS 1, pad 0) for the sampler
    and log-prob tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, eos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def toy_prompts():
    """Three left-padded prompts for `toy_llama`: (ids [3, 5], mask [3, 5])."""
    import torch

    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 2, 3, 4, 5], [0, 9, 9, 3, 2]])
    return ids, (ids != 0).long()


def require(level: str) -> str:
    """A code-sandbox isolation level for a test: skip without "strict", except as root on Linux
    (where CI runs and namespaces must work), where its absence fails the test."""
    import sys

    from prorl.rewards.sandbox import SandboxUnavailableError, check_sandbox_level

    if level == "strict":
        try:
            check_sandbox_level("strict")
        except SandboxUnavailableError as e:
            if sys.platform.startswith("linux") and os.getuid() == 0:
                pytest.fail(f"strict sandbox must work as root on Linux: {e}")
            pytest.skip(str(e))
    return level
