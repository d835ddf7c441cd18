"""Rewards per domain: in a mixed run each sample is scored by its own domain's reward functions.

    reward_funcs: {math: [math], code: [code], puzzles: [reasoning_gym], instructions: [ifeval]}

`DomainRewards` splits a batch by the 'domain' column, calls each domain's `Rewards` on its samples
(same fault isolation, fallback, timeout and weights as a single list) and puts the results back in
batch order. A function's per-sample values are NaN where it did not apply (another domain's
sample); `RewardOutput.applied` says how many samples each function scored.
"""

from __future__ import annotations

import math

from .base import RewardConfigError, RewardOutput, Rewards, build_rewards


def rewards_from_config(cfg, funcs=None) -> "Rewards | DomainRewards":
    """The reward set a run's config describes (`funcs` in place of cfg.reward_funcs, e.g. callables
    given to the Python API; a mapping routes by domain), with its weights, kwargs, fallback,
    strictness and timeout. Training and `prorl eval` both build theirs here, so they cannot score
    differently."""
    specs = funcs if funcs is not None else cfg.reward_funcs
    options = dict(fallback=cfg.reward_fallback, strict=cfg.reward_strict, timeout_s=cfg.reward_timeout)
    if not isinstance(specs, dict):
        return build_rewards(list(specs), cfg.reward_weights, kwargs=_with_sandbox(cfg, specs, cfg.reward_kwargs), **options)
    weights = cfg.reward_weights or {}
    unknown = sorted(set(cfg.reward_kwargs) - {str(s) for specs_ in specs.values() for s in specs_})
    if unknown:
        raise RewardConfigError(f"reward kwargs given for {unknown}, which no domain in reward_funcs uses; key them by the exact spec string")
    by_domain = {}
    for domain, domain_specs in specs.items():
        kwargs = _with_sandbox(cfg, domain_specs, {k: v for k, v in cfg.reward_kwargs.items() if k in {str(s) for s in domain_specs}})
        try:
            by_domain[domain] = build_rewards(list(domain_specs), weights.get(domain), kwargs=kwargs, **options)
        except RewardConfigError as e:
            raise RewardConfigError(f"reward_funcs[{domain}]: {e}") from None
    return DomainRewards(by_domain)


def _with_sandbox(cfg, specs, kwargs: dict) -> dict:
    """The `code` reward's isolation level from the top-level `code_sandbox`, unless its own
    reward_kwargs set `sandbox`."""
    if "code" not in [str(s) for s in specs]:
        return kwargs
    code = dict(kwargs.get("code") or {})
    code.setdefault("sandbox", cfg.code_sandbox)
    return {**kwargs, "code": code}


class DomainRewards:
    """One `Rewards` per domain; called like `Rewards`, with a 'domain' column in `columns`."""

    def __init__(self, by_domain: dict[str, Rewards]):
        self.by_domain = dict(by_domain)
        first = next(iter(self.by_domain.values()))
        self.fallback, self.strict, self.timeout_s = first.fallback, first.strict, first.timeout_s

    @property
    def domains(self) -> list[str]:
        return list(self.by_domain)

    @property
    def names(self) -> list[str]:
        """Every function's metric name, each once (a function used by two domains reports both)."""
        out = []
        for rewards in self.by_domain.values():
            out += [n for n in rewards.names if n not in out]
        return out

    def __repr__(self) -> str:
        return "DomainRewards(" + ", ".join(f"{d}: {r!r}" for d, r in self.by_domain.items()) + ")"

    def check_columns(self, columns_by_domain: dict[str, list[str]], source: str) -> None:
        """Each domain's rewards against the columns of the sources that domain's rows come from."""
        for domain, columns in columns_by_domain.items():
            if domain not in self.by_domain:
                raise RewardConfigError(
                    f"rows of domain {domain!r} (from {source}) have no rewards: add {domain} to reward_funcs "
                    f"(it has {', '.join(self.by_domain)})"
                )
            self.by_domain[domain].check_columns(columns, f"{source} (domain {domain})")

    def __call__(self, prompts, completions, columns=None, *, completion_lengths=None, truncated=None, max_length=None) -> RewardOutput:
        columns = dict(columns or {})
        n = len(completions)
        domains = columns.get("domain")
        if domains is None or len(domains) != n:
            raise RewardConfigError("reward_funcs is per domain but the prompts have no 'domain' column: use `datasets` "
                                    "(each source gets its domain) or a dataset with a 'domain' column")
        unknown = sorted({str(d) for d in domains} - set(self.by_domain))
        if unknown:
            raise RewardConfigError(f"prompts of domain(s) {unknown} have no rewards: add them to reward_funcs "
                                    f"(it has {', '.join(self.by_domain)})")
        names = self.names
        total = [0.0] * n
        per_func = {name: [math.nan] * n for name in names}
        faults, first_error, applied = dict.fromkeys(names, 0), {}, dict.fromkeys(names, 0)
        for domain, rewards in self.by_domain.items():
            rows = [i for i, d in enumerate(domains) if d == domain]
            if not rows:
                continue

            def pick(values):
                return None if values is None else [values[i] for i in rows]

            out = rewards(pick(prompts), pick(completions), {c: pick(v) for c, v in columns.items()},
                          completion_lengths=pick(completion_lengths), truncated=pick(truncated), max_length=max_length)
            for k, i in enumerate(rows):
                total[i] = out.total[k]
            for name, values in out.per_func.items():
                for k, i in enumerate(rows):
                    per_func[name][i] = values[k]
                faults[name] += out.faults.get(name, 0)
                applied[name] += len(rows)
                if name in out.first_error:
                    first_error.setdefault(name, f"[{domain}] {out.first_error[name]}")
        return RewardOutput(total=total, per_func=per_func, faults=faults, first_error=first_error, applied=applied)


def check_sources(rewards, sources) -> None:
    """At start: every source's rows have rewards, and those rewards find the columns they read in
    that source (`data.Source` records; a column another source has does not count)."""
    for src in sources:
        if not isinstance(rewards, DomainRewards):
            rewards.check_columns(src.columns, src.label)
        elif src.domains == []:
            raise RewardConfigError(
                f"reward_funcs is per domain but dataset={src.label!r} has no 'domain' column: list it under `datasets` "
                "with a domain, or add a 'domain' column"
            )
        elif src.domains is not None:  # a stream's own domain column is checked batch by batch
            rewards.check_columns({d: src.columns for d in src.domains}, repr(src.label))


def domain_names(rewards, sources) -> list[str]:
    """The domains a run reports metrics for: those of its sources and of its per-domain rewards."""
    names = {d for src in sources for d in (src.domains or [])}
    if isinstance(rewards, DomainRewards):
        names |= set(rewards.domains)
    return sorted(names)
