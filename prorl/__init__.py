"""prorl: prolonged reinforcement learning from verifiable rewards for causal language models.

    from prorl import Config, Trainer
    Trainer(Config(batch_size=8, n_samples=8), reward_funcs=[my_reward]).train()
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, load_config  # noqa: E402

__all__ = ["Config", "ConfigError", "Trainer", "load_config"]


def __getattr__(name):
    # The trainer pulls in transformers/accelerate; import it on first use so `prorl --help` is fast.
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    raise AttributeError(name)
