"""prorl: prolonged reinforcement learning from verifiable rewards for causal language models."""

__version__ = "0.1.0"
