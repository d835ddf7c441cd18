"""Reward functions for the robustness tests, loaded by spec: 'tests/reward_fixtures.py:NAME'.

They are real reward functions (no mocks): each misbehaves the way user code does in practice.
"""

import time


def count_ones(prompts, completions, **kwargs):
    """A reward with variance even on a random-init model: how many '1' characters were written."""
    return [float(c.count("1")) for c in completions]


def alternating(prompts, completions, **kwargs):
    """0, 1, 0, 1, ... : every group (n_samples >= 2) carries signal, so every step updates the policy."""
    return [float(i % 2) for i in range(len(completions))]


def raises(prompts, completions, **kwargs):
    """A reward function with a bug."""
    raise KeyError("answer")


def returns_nan(prompts, completions, **kwargs):
    """NaN for every other sample (a 0/0 inside a scorer)."""
    return [float("nan") if i % 2 else 1.0 for i in range(len(completions))]


def too_big_for_float32(prompts, completions, **kwargs):
    """Finite in Python (float64) but infinite once stored as the trainer's float32 rewards."""
    return [1e39 if i % 2 else 0.0 for i in range(len(completions))]


def hangs(prompts, completions, **kwargs):
    """A scorer stuck on a network call; reward_timeout must cut it off."""
    time.sleep(3600)
    return [0.0] * len(completions)


def wrong_signature(completion):
    """Takes one completion, not (prompts, completions, **kwargs)."""
    return 0.0


def slow_alternating(prompts, completions, **kwargs):
    """`alternating`, after a second's wait (a slow scorer): a step lasts long enough to be interrupted in."""
    time.sleep(1.0)
    return alternating(prompts, completions)
