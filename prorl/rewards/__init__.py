"""Reward functions for RL from verifiable rewards, and their robust execution.

    from prorl.rewards import build_rewards
    rewards = build_rewards(["math", "format"], weights=[1.0, 0.2])
    out = rewards(prompts, completions, {"answer": answers},
                  completion_lengths=lengths, truncated=truncated, max_length=1024)
    out.total, out.per_func, out.faults, out.first_error

Built-ins: exact_match, math, code, code_heuristic, format, length_penalty, overlong, choice, ifeval,
reasoning_gym (with the `puzzles` extra).
"""

from .base import (
    RewardConfigError,
    RewardError,
    RewardOutput,
    Rewards,
    build_rewards,
    builtin_names,
    cancellation_event,
    score_rollout,
)
from .routing import DomainRewards, check_sources, domain_names, rewards_from_config

# Importing these registers their built-ins.
from . import choice, code, ifeval, math, puzzles, shaping  # noqa: E402,F401  (isort: skip)
from .sandbox import SandboxResult, run_python

__all__ = [
    "DomainRewards",
    "check_sources",
    "domain_names",
    "rewards_from_config",
    "score_rollout",
    "RewardConfigError",
    "RewardError",
    "RewardOutput",
    "Rewards",
    "SandboxResult",
    "build_rewards",
    "builtin_names",
    "cancellation_event",
    "run_python",
]
