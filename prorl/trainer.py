"""The training loop: `Trainer.train_step` is sample and score -> group advantages -> policy update
-> metrics, each a method below; `Trainer.train` repeats it with evaluation, checkpoints and the
stop signals.

The formulas are in `prorl.algos`, sampling in `prorl.rollout`, the log-probs the update needs in
`prorl.logprobs`, the reference policy in `prorl.reference`, step metrics in `prorl.metrics`,
distributed calls in `prorl.dist`, saving in `prorl.checkpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from . import algos, checkpoint, dist
from .config import Config
from .data import (
    PromptStream, StreamingPrompts, heldout_reuses_training, load_prompt_sources, prompt_tokenizer, render_prompts, steps_per_epoch,
)
from .evaluate import evaluate
from .logprobs import completion_logprobs
from .metrics import flat_config, format_eval, format_line, local_rows, step_metrics, trim_metrics
from .model import (
    check_token_ids, embedding_rows, enable_activation_checkpointing, eos_ids, load_model_and_tokenizer, mark_layers_for_recompute,
    quiet_libraries, set_seed,
)
from .reference import Reference
from .rewards import check_sources, domain_names, rewards_from_config, score_rollout
from .rollout import concat_rollouts, generate
from .sampling import sample_keys
from .stops import StopSignal, TrainingAborted, explain_oom  # noqa: F401  (TrainingAborted: part of this module's API)

log = logging.getLogger("prorl")


def _launched_world_size() -> int:
    """Processes the launcher started (torchrun and accelerate launch set WORLD_SIZE), known before
    the accelerator exists."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up then constant; a pure function of the step, so resume needs no scheduler state."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    return cfg.learning_rate


@dataclass
class _Round:
    """One sampling round of a step: this process's rollout and scores, plus the gathered rewards."""

    rollout: object
    rewards: torch.Tensor  # [n_local] the rewards advantages are computed from
    scored: torch.Tensor  # [n_local] the reward functions' total (what metrics report)
    rw: object  # RewardOutput
    prompts: list
    completions: list
    lengths: torch.Tensor
    all_rewards: torch.Tensor  # [n_global]
    all_task: torch.Tensor  # [n_global] the rewards before the KL shift: zero signal is judged on these
    all_groups: torch.Tensor  # [n_global]
    offset: int  # where this process's rows start in the gathered tensors
    take: int  # prompts drawn (global)
    domain_ids: torch.Tensor  # [n_local] index into Trainer.domains (-1: the row has no domain)


# Micro-batches merged into one no-grad (reference / old-policy) pass; see `Trainer._update`.
_NOGRAD_MERGE = 4


class Trainer:
    """`Trainer(config, reward_funcs=[...]).train()`.

    reward_funcs: callables `fn(prompts, completions, **columns) -> list[float]` or reward specs
    (built-in names, 'module:function'); defaults to `config.reward_funcs`.
    """

    def __init__(self, config: Config, reward_funcs: Sequence[Callable | str] | None = None, accelerator=None):
        self.cfg = cfg = config.validate()
        # cheap checks first: a bad launch or output_dir must not cost a model load to find out
        dist.shard_slice(cfg.batch_size, 0, _launched_world_size())
        created = not Path(cfg.output_dir).exists()
        checkpoint.ensure_output_dir(cfg.output_dir, fresh=not cfg.resume)
        try:
            self._set_up(cfg, reward_funcs, accelerator)
        except BaseException:  # a model, data or reward error must not leave an empty output_dir behind
            if created:
                checkpoint.remove_if_empty(cfg.output_dir)
            raise

    def _set_up(self, cfg: Config, reward_funcs, accelerator) -> None:
        trackers = None if cfg.report_to == "none" else cfg.report_to
        self.acc = accelerator or dist.make_accelerator(log_with=trackers, project_dir=cfg.output_dir, mixed_precision=cfg.mixed_precision)
        quiet_libraries()
        set_seed(cfg.seed, cfg.deterministic)
        self.out_dir = Path(cfg.output_dir)

        resume_path = checkpoint.resolve_resume(cfg.resume, cfg.output_dir) if cfg.resume else None
        if resume_path is not None:
            checkpoint.check_same_model(cfg, resume_path)
        self.model, self.tokenizer = load_model_and_tokenizer(
            cfg, str(resume_path) if resume_path and not cfg.lora_r else None
        )
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        if cfg.dtype != "float32" and self.acc.is_main_process:
            log.warning("dtype=%s trains the %s weights directly (no float32 master copy): updates smaller than the "
                        "weights' precision are lost; use dtype=float32 unless memory forces otherwise", cfg.dtype, cfg.dtype)
        self.reference: Reference | None = None
        if cfg.lora_r:
            from .lora import attach_lora, load_base_weights  # peft is an optional extra

            if resume_path is not None:
                load_base_weights(self.model, resume_path)  # the base as reference resets left it
            self.model = attach_lora(self.model, cfg, resume_path)
            if cfg.kl_beta > 0:
                self.reference = Reference(self.acc)  # the base, adapters off
        elif cfg.kl_beta > 0:
            self.reference = Reference(self.acc, copy.deepcopy(self.model))
            if resume_path is not None:
                checkpoint.load_reference(self.reference.model, resume_path)

        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.model)

        self.dataset, sources = load_prompt_sources(cfg)
        self.eval_set, eval_sources = load_prompt_sources(cfg.eval_config()) if cfg.eval_every else (None, [])
        reused = heldout_reuses_training(cfg) if cfg.eval_every else []
        if reused and self.acc.is_main_process:
            log.warning("eval_every=%d: %s %s one file with no '%s' split, so the held-out evaluation scores its training "
                        "prompts; set eval_dataset to a held-out file", cfg.eval_every, ", ".join(map(repr, reused)),
                        "is" if len(reused) == 1 else "are", cfg.eval_split)
        self.best_eval, self.evals_since_best = -1.0, 0
        if cfg.streaming:  # read by the main process only, batches broadcast (see _draw_prompts)
            self.stream = StreamingPrompts(self.dataset, cfg.seed, cfg.shuffle_buffer, cfg.data_label())
            self.total_steps = cfg.max_steps
        else:
            self.stream = PromptStream(len(self.dataset), cfg.seed)
            self.steps_per_epoch = steps_per_epoch(len(self.dataset), cfg.batch_size)
            if len(self.dataset) < cfg.batch_size and self.acc.is_main_process:
                log.warning("the dataset has %d prompts, fewer than batch_size=%d: each step draws some of them more than once "
                            "(each draw samples new completions)", len(self.dataset), cfg.batch_size)
            self.total_steps = cfg.max_steps or cfg.n_epochs * self.steps_per_epoch
        dist.local_slice(cfg.batch_size, self.acc)  # batch_size must divide by this job's process count

        self.rewards = rewards_from_config(cfg, reward_funcs)
        if not cfg.streaming:  # the first prompts, tokenised as training will: ids past the embedding table
            first = self.dataset[: min(len(self.dataset), 256)]["prompt"]
            check_token_ids(self.tokenizer, self.model, render_prompts(first, self.tokenizer, cfg), cfg.max_prompt_length,
                            cfg.data_label())
        check_sources(self.rewards, sources + eval_sources)
        self.domains = domain_names(self.rewards, sources + eval_sources)  # per-domain metrics, when there are domains

        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        self.step = 0
        self.stopped_by = None
        self.cursor = 0  # prompts drawn so far (global); more than step * batch_size with dynamic sampling
        self.bad_steps = 0  # consecutive non-finite steps
        self.totals = {"nonfinite_steps": 0, "skipped_groups": 0, "repaired_logit_rows": 0, "ref_resets": 0}
        if resume_path is not None:
            self._load_resume_state(resume_path)
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        if resume_path is not None:  # after prepare: FSDP replaces the parameters the state is keyed by
            dist.load_optimizer_state(self.acc, self.model, self.optimizer, checkpoint.load_optimizer_state(resume_path))
            for group in self.optimizer.param_groups:  # like learning_rate, the config (not the checkpoint) decides these
                group.update(weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2))
        if self.reference is not None:
            self.reference.prepare()
        self.device = self.acc.device
        self.tokenize = prompt_tokenizer(self.tokenizer, cfg.max_prompt_length, self.device, warn=self.acc.is_main_process,
                                         vocab_rows=embedding_rows(self.acc.unwrap_model(self.model)))
        self.weights_version = 0  # bumped by every optimizer step; the vLLM engine syncs when it lags
        self.engine = None
        if cfg.rollout_engine == "vllm":
            from .vllm_rollout import VLLMEngine

            self.engine = VLLMEngine(cfg, self.acc, cfg.resolved_model_path())

    # ------------------------------------------------------------------
    def train(self) -> dict:
        cfg, acc = self.cfg, self.acc
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            trim_metrics(self.out_dir / "metrics.jsonl", self.step)
            trim_metrics(self.out_dir / "samples.jsonl", self.step)  # a rerun rewrites these steps too
        # a bar only on a terminal: redirected to a file, its \r redraws would bury the step lines
        on_terminal = sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="prorl",
                   disable=not (cfg.progress_bar and acc.is_main_process and on_terminal))
        if cfg.report_to != "none":
            name = cfg.run_name or Path(cfg.output_dir).resolve().name
            acc.init_trackers(name, config=flat_config(cfg))
        last = {}
        stop = StopSignal()
        try:
            if self.eval_set is not None and self.step == 0:
                baseline = {"step": 0, **self.evaluate_heldout()}
                self._append_metrics(baseline)
                if acc.is_main_process:
                    bar.write(format_eval(baseline))
            while self.step < self.total_steps:
                last = self.train_step()
                if self.eval_set is not None and self.step % cfg.eval_every == 0:
                    last.update(self.evaluate_heldout())
                    if acc.is_main_process:
                        bar.write(format_eval(last))
                bar.update(1)
                bar.set_postfix(reward=f"{last['reward_mean']:.3f}", kl=f"{last['kl']:.4f}")
                self._append_metrics(last)
                if acc.is_main_process and (self.step % cfg.log_every == 0 or self.step == self.total_steps):
                    bar.write(format_line(last))
                if acc.is_main_process and cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._log_samples(bar)
                if int(dist.global_max(acc, torch.tensor(int(stop.received), device=self.device))):
                    self.stopped_by = stop.name  # a scheduler's pre-emption notice or Ctrl-C: save and leave
                    if stop.name != "SIGINT":  # Ctrl-C already said so when it was pressed
                        log.warning("received %s: saving step %d and exiting; continue with --resume latest", stop.name, self.step)
                    break
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.save()
            self.save()
        finally:
            bar.close()
            stop.restore()
        dist.finish(acc)
        return last

    def _append_metrics(self, metrics: dict) -> None:
        if self.cfg.report_to != "none":
            numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
            self.acc.log(numbers, step=metrics["step"])
        if self.acc.is_main_process:
            with open(self.out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(metrics) + "\n")

    def _log_samples(self, bar) -> None:
        rows = [
            {"step": self.step, "prompt": p, "completion": c, "reward": r, **({"domain": d} if d is not None else {})}
            for p, c, r, d in list(zip(*self._last_samples))[: self.cfg.n_logged_samples]
        ]
        with open(self.out_dir / "samples.jsonl", "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        if rows:
            bar.write(f"sample @ step {self.step}: {rows[0]['prompt']!r} -> {rows[0]['completion']!r} (reward {rows[0]['reward']:.3f})")

    def evaluate_heldout(self) -> dict:
        """pass@k, mean reward and length on the held-out prompts; may trigger a plateau reset."""
        cfg = self.cfg
        prompts = render_prompts(self.eval_set["prompt"], self.tokenizer, cfg)
        columns = {c: self.eval_set[c] for c in self.eval_set.column_names if c != "prompt"}
        with dist.unwrapped_for_generation(self.acc, self.model) as policy, self._sampler(policy) as sample:
            result = evaluate(
                policy, self.tokenizer, prompts, columns, self.rewards, acc=self.acc, n=cfg.eval_n, ks=cfg.eval_k, sampler=sample,
                max_length=cfg.max_length, temperature=cfg.eval_temperature or cfg.temperature, top_p=cfg.top_p,
                top_k=cfg.top_k, seed=cfg.seed, threshold=cfg.eval_threshold, eos_token_ids=self.eos_ids,
                tokenize=self.tokenize,
            )
        metrics = {f"eval/{k}": v for k, v in result.items() if not k.endswith(("n_prompts", "n_samples"))}
        score = result.get("pass@1", result[f"pass@{cfg.eval_k[0]}"])
        if score > self.best_eval:
            self.best_eval, self.evals_since_best = score, 0
        else:
            self.evals_since_best += 1
            if cfg.ref_reset_on_plateau and self.evals_since_best >= cfg.ref_reset_on_plateau and self.step > 0:
                self._reset_reference()
                self.evals_since_best = 0
                metrics["ref_reset"] = True
        return metrics

    # ------------------------------------------------------------------
    def _draw_prompts(self, first: int, take: int, share: slice) -> dict[str, list]:
        """This process's share of the next `take` prompts (global), as columns.

        A map-style dataset is indexed directly (each process reads only its share); a stream is read
        by the main process and broadcast, so every process count draws the same prompts."""
        if not self.cfg.streaming:
            local = self.stream.rows(first, share.stop - share.start) if share.stop > share.start else []
            return self.dataset[local]
        rows = dist.broadcast_object(self.acc, self.stream.take(take) if self.acc.is_main_process else None)[share]
        keys = rows[0].keys() if rows else ["prompt"]
        return {k: [r[k] for r in rows] for k in keys}

    def _epoch(self) -> float:
        """Passes over the data so far (a stream's length is unknown: the epoch being read)."""
        return float(self.stream.epoch) if self.cfg.streaming else self.cursor / len(self.dataset)

    def _sample_round(self, take: int) -> _Round:
        """Draw `take` prompts (global), sample this process's share, score it, gather rewards."""
        cfg, acc, n = self.cfg, self.acc, self.cfg.n_samples
        positions = list(range(self.cursor, self.cursor + take))
        self.cursor += take
        share = dist.local_slice(take, acc)
        positions = positions[share]
        batch = self._draw_prompts(positions[0] if positions else 0, take, share)
        prompts = render_prompts(batch["prompt"], self.tokenizer, cfg)

        group = torch.tensor(positions, device=self.device).repeat_interleave(n)
        keys = sample_keys(cfg.seed, 0, group, torch.arange(n, device=self.device).repeat(len(prompts)))
        chunk = cfg.rollout_batch_size or max(len(prompts), 1)
        parts = []
        with dist.unwrapped_for_generation(acc, self.model) as policy, self._sampler(policy) as sample, explain_oom(
            f"generating {len(prompts)} prompts x {n} samples x up to {cfg.max_length} tokens on one process: "
            f"lower rollout_batch_size (now {cfg.rollout_batch_size or 'all'} prompts per call; results unchanged), then max_length"
        ):
            for i in range(0, len(prompts), chunk):
                prompt_ids, prompt_mask = self.tokenize(prompts[i : i + chunk])
                parts.append(sample(
                    policy, prompt_ids, prompt_mask, n_samples=n, keys=keys[i * n : (i + chunk) * n],
                    max_new_tokens=cfg.max_length, eos_token_ids=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id,
                    temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                ))
        ro = concat_rollouts(parts, pad_token_id=self.tokenizer.pad_token_id)
        columns = {c: batch[c] for c in batch if c != "prompt"}
        completions, lengths, rw, rep_prompts = score_rollout(self.rewards, self.tokenizer, ro, prompts, columns,
                                                              n=n, max_length=cfg.max_length)
        scored = torch.tensor(rw.total, dtype=torch.float32, device=self.device)
        rewards = scored
        if cfg.truncation == "zero_reward":  # "stop properly": no credit for a completion cut at max_length
            rewards = torch.where(ro.truncated, torch.zeros_like(rewards), rewards)
        # a group whose task rewards are all equal has no signal, whatever the per-sample KL shift below
        all_task = dist.gather_varlen(acc, rewards)
        if cfg.kl_in_reward and self.reference is not None:
            rewards = rewards - cfg.kl_beta * self.reference.sequence_kl(
                self.model, ro, micro_batch=cfg.micro_batch_size, estimator=cfg.kl_estimator, temperature=cfg.temperature)
        all_rewards = dist.gather_varlen(acc, rewards)
        all_groups = dist.gather_varlen(acc, group)
        offset = dist.rank_offset(acc, rewards.numel(), self.device)
        domain_ids = [self.domains.index(d) if d in self.domains else -1 for d in batch.get("domain", [None] * len(prompts))]
        return _Round(ro, rewards, scored, rw, rep_prompts, completions, lengths, all_rewards, all_task, all_groups, offset, take,
                      torch.tensor(domain_ids, dtype=torch.long, device=self.device).repeat_interleave(n))

    @contextlib.contextmanager
    def _sampler(self, policy):
        """The sampling function (`rollout.generate`'s signature) for this engine. The built-in loop
        runs under the forwards' autocast; the vLLM engine first takes the policy's current weights
        if an update happened since it last did (collective under FSDP/ZeRO-3: `policy` is gathered)."""
        if self.engine is None:
            with self.acc.autocast():
                yield functools.partial(generate, cuda_graphs=self.cfg.cuda_graphs)
            return
        if self.engine.synced_version != self.weights_version:
            from .vllm_rollout import policy_weights

            self.engine.sync(policy_weights(policy), self.weights_version)
        yield self.engine.generate

    def train_step(self) -> dict:
        """sample and score -> group advantages -> policy update -> metrics."""
        cfg, t0 = self.cfg, time.perf_counter()
        rounds = self._sample_rounds()
        t_gen = time.perf_counter() - t0
        self._stop_if_every_reward_failed(rounds)
        ro, advantages, keep, zero_signal = self._advantages(rounds)
        with explain_oom(
            f"the policy update: lower micro_batch_size (now {cfg.micro_batch_size} completions per pass; results "
            "unchanged), then max_length"
        ):
            update = self._update(ro, advantages, keep.nonzero().squeeze(-1))
        self.step += 1
        reset = self._maybe_reset_reference()
        self._last_samples = ([p for r in rounds for p in r.prompts], [c for r in rounds for c in r.completions],
                              torch.cat([r.scored for r in rounds]).tolist(),
                              [self.domains[i] if i >= 0 else None for i in torch.cat([r.domain_ids for r in rounds]).tolist()])
        self.totals["skipped_groups"] += int(zero_signal.sum()) // cfg.n_samples
        self.totals["repaired_logit_rows"] += int(dist.global_sum(self.acc, torch.tensor([ro.repaired_rows], device=self.device)))
        m = {"step": self.step, "epoch": self._epoch(),
             **step_metrics(self.acc, rounds, ro, update, keep, zero_signal, self.rewards.names, cfg.n_samples, self.domains)}
        m.update(ref_reset=reset, lr=lr_at(self.step - 1, cfg), gen_time=t_gen,
                 nonfinite_steps=self.totals["nonfinite_steps"], repaired_logit_rows=self.totals["repaired_logit_rows"],
                 ref_resets=self.totals["ref_resets"])
        m["step_time"] = time.perf_counter() - t0
        m["tokens_per_s"] = m.pop("completion_tokens") / max(m["step_time"], 1e-9)
        first_error = m.pop("first_reward_error")
        if m["reward_faults"] and self.acc.is_main_process:
            log.warning("step %d: %d reward faults (samples got reward_fallback=%s): %s", self.step, m["reward_faults"],
                        cfg.reward_fallback, first_error)
        return m

    def _stop_if_every_reward_failed(self, rounds: list[_Round]) -> None:
        """Every reward function faulted on every sample of the step (global): the whole batch got the
        fallback, and training on it would be a wasted run, so stop before the update. (One failing
        function beside a working one is isolated as before: its samples get the fallback.)"""
        total = sum(r.all_rewards.numel() for r in rounds)
        names = self.rewards.names
        local = torch.tensor([[sum(r.rw.faults.get(name, 0) for r in rounds), sum(r.rw.applied.get(name, 0) for r in rounds)]
                              for name in names], device=self.device, dtype=torch.float64)
        counts = dist.global_sum(self.acc, local).tolist()  # per function: samples faulted, samples scored
        if total and all(faulted >= scored for faulted, scored in counts):
            error = next((r.rw.first_error[n] for n in names for r in rounds if r.rw.first_error.get(n)), "no error text")
            raise TrainingAborted(
                f"every reward function ({', '.join(names)}) failed on all {total} samples of step {self.step + 1} "
                f"({error}); nothing would be learned: fix the reward or the dataset's columns (reward_strict=true shows the traceback)"
            )

    def _sample_rounds(self) -> list[_Round]:
        """Sample and score batch_size prompts; with dynamic sampling, draw more until the batch is
        full of groups that carry signal (or the extra rounds run out)."""
        cfg, n = self.cfg, self.cfg.n_samples
        rounds, take, signal = [], cfg.batch_size, 0
        for _ in range(1 + cfg.dynamic_sampling_rounds):
            rounds.append(self._sample_round(take))
            zero = algos.zero_signal_mask(rounds[-1].all_task, rounds[-1].all_groups)
            signal += int((~zero).sum()) // n
            missing = cfg.batch_size - signal
            if missing <= 0 or not cfg.skip_zero_signal:
                break
            world = self.acc.num_processes
            take = world * math.ceil(math.ceil(missing * cfg.oversample) / world)
        return rounds

    def _advantages(self, rounds: list[_Round]):
        """Advantages over whole groups (global; the first batch_size groups with signal are used):
        (rollout of all rounds, advantages [n_local], keep [n_local] bool, zero_signal [N] bool)."""
        cfg = self.cfg
        advantages, keep, zero_signal = algos.batch_advantages(
            torch.cat([r.all_rewards for r in rounds]), torch.cat([r.all_task for r in rounds]),
            torch.cat([r.all_groups for r in rounds]), local_rows(rounds), cfg.advantage,
            skip_zero_signal=cfg.skip_zero_signal, max_groups=cfg.batch_size if cfg.dynamic_sampling_rounds else None,
        )
        ro = concat_rollouts([r.rollout for r in rounds], pad_token_id=self.tokenizer.pad_token_id)
        if cfg.truncation == "mask":  # DAPO overlong filtering: cut completions give no gradient
            keep = keep & ~ro.truncated
        return ro, advantages, keep, zero_signal

    # ------------------------------------------------------------------
    def _micro_batches(self, kept: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Row indices per micro-batch; every process runs the same number of passes (FSDP/DDP need it).
        A process with fewer kept rows runs zero-weight passes (index tensor empty).

        Groups are ordered by their longest completion, so a micro-batch holds completions of similar
        length and `_update` trims less padding away in vain; a group's rows stay adjacent (prompt
        sharing). The loss is a sum over rows with global normalisers, so the order is free."""
        mb, n = self.cfg.micro_batch_size, self.cfg.n_samples
        if kept.numel() > mb:
            group = kept // n  # a round's rollout is prompt-major: rows g*n .. g*n+n-1 are one group
            longest = torch.zeros(int(group.max()) + 1, dtype=lengths.dtype, device=lengths.device)
            longest.scatter_reduce_(0, group, lengths[kept], reduce="amax")
            order = torch.argsort(longest[group] * (int(group.max()) + 1) + group, descending=True, stable=True)
            kept = kept[order]
        local = [kept[i : i + mb] for i in range(0, kept.numel(), mb)]
        count = int(dist.global_max(self.acc, torch.tensor(len(local), device=self.device)))
        return local + [kept[:0]] * (count - len(local))

    def _update(self, ro, advantages, kept) -> dict:
        """`updates_per_batch` passes over the kept samples, each split into `mini_batches` optimizer
        steps; every step's loss is normalised by that mini-batch's GLOBAL token/sequence counts."""
        cfg, acc = self.cfg, self.acc
        fwd = dict(temperature=cfg.temperature)
        if cfg.activation_checkpointing:
            mark_layers_for_recompute(acc.unwrap_model(self.model))

        # Row lengths and first prompt columns on the host, once: trimming a micro-batch then needs no
        # GPU sync (three per micro-batch otherwise, each draining the queue the CPU is racing to fill).
        lengths = ro.completion_mask.sum(1)
        pm = ro.prompt_mask.bool()
        first_col = torch.where(pm.any(1), pm.long().argmax(1), pm.size(1)).tolist()
        length_of = lengths.tolist()

        def rows(idx):
            # an empty micro-batch still runs a pass on one row (weight 0) so collectives stay matched
            return idx if idx.numel() else torch.zeros(1, dtype=torch.long, device=self.device)

        def cut(host_rows):
            # columns that are padding in every row of the micro-batch are cut: less compute, same math
            host_rows = host_rows or [0]  # an empty micro-batch runs on row 0, as `rows` does
            p0 = min(first_col[i] for i in host_rows)
            return (0 if p0 == pm.size(1) else p0), max(max(length_of[i] for i in host_rows), 1)

        def inputs(idx, host_rows):
            p0, lc = cut(host_rows)
            r = rows(idx)
            return ro.prompt_ids[r, p0:], ro.prompt_mask[r, p0:], ro.completion_ids[r, :lc], ro.completion_mask[r, :lc]

        plan = []  # (micro-batches as (device rows, host rows), global tokens, global sequences) per mini-batch
        for chunk in torch.tensor_split(kept, cfg.mini_batches):
            counts = torch.tensor([float(lengths[chunk].sum()), float(chunk.numel())], device=self.device)
            tokens, seqs = dist.global_sum(acc, counts).tolist()
            micro = self._micro_batches(chunk, lengths)
            host = torch.cat(micro).tolist() if micro else []  # one read-back per mini-batch, split on the host
            bounds = [0]
            for idx in micro:
                bounds.append(bounds[-1] + idx.numel())
            plan.append(([(idx, host[a:b]) for idx, a, b in zip(micro, bounds, bounds[1:])], tokens, seqs))

        # log-probs of the frozen reference, and of the sampling policy when the update goes off-policy
        off_policy = cfg.updates_per_batch * cfg.mini_batches > 1
        kl_in_loss = self.reference is not None and not cfg.kl_in_reward
        ref_logp, old_logp = {}, {}
        with torch.no_grad():
            for c, (micro, _, _) in enumerate(plan):
                # Without autograd a pass keeps no activations, so _NOGRAD_MERGE micro-batches run as one
                # pass (a fraction of the update's memory, a quarter of the launches); each gets its rows back.
                for j0 in range(0, len(micro), _NOGRAD_MERGE):
                    part = micro[j0 : j0 + _NOGRAD_MERGE]
                    idx = torch.cat([rows(i) for i, _ in part])
                    host = [r for _, h in part for r in (h or [0])]
                    args = inputs(idx, host)  # built per pass, not kept for the whole update: at scale they are a sizeable copy of the rollout
                    ref = self.reference.logprobs(self.model, *args, **fwd) if kl_in_loss else None
                    old = None
                    if off_policy:
                        with acc.autocast():
                            old = completion_logprobs(self.model, *args, **fwd)
                    start = 0
                    for j, (_, h) in enumerate(part, start=j0):
                        n, lc = max(len(h), 1), cut(h)[1]
                        if ref is not None:
                            ref_logp[c, j] = ref[start : start + n, :lc]
                        if old is not None:
                            old_logp[c, j] = old[start : start + n, :lc]
                        start += n

        scale = dist.grad_average_correction(acc)
        sums = torch.zeros(5, device=self.device)  # loss, kl, clipped, entropy (token sums), tokens
        norms, n_steps = [], 0
        for _ in range(cfg.updates_per_batch):
            for c, (micro, num_tokens, num_seqs) in enumerate(plan):
                if num_seqs == 0:
                    continue  # same decision on every process: the counts are global
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(self.step, cfg)
                self.optimizer.zero_grad(set_to_none=True)
                for j, (idx, host_rows) in enumerate(micro):
                    args = inputs(idx, host_rows)
                    mask = args[3].float() * (1.0 if idx.numel() else 0.0)
                    last = j == len(micro) - 1
                    with contextlib.nullcontext() if last else acc.no_sync(self.model):
                        with acc.autocast():
                            logp, entropy = completion_logprobs(self.model, *args, with_entropy=True, **fwd)
                        logp_old = old_logp[c, j] if off_policy else logp.detach()
                        per_token, clipped = algos.policy_loss(
                            cfg.policy_loss, logp, logp_old, advantages[rows(idx)], mask, **cfg.loss_kwargs()
                        )
                        kl = torch.zeros_like(logp)
                        if kl_in_loss:
                            kl = algos.kl_penalty(logp, ref_logp[c, j], cfg.kl_estimator, mask=mask)
                            per_token = per_token + cfg.kl_beta * kl
                        loss = algos.aggregate(
                            per_token, mask, cfg.loss_agg, num_tokens=num_tokens, num_seqs=num_seqs, max_length=cfg.max_length
                        )
                        acc.backward(loss * scale)
                    m = mask.bool()
                    sums += torch.stack([
                        loss.detach(),
                        torch.where(m, kl.detach(), 0).sum(),
                        torch.where(m, clipped.detach().float(), 0).sum(),
                        torch.where(m, entropy, 0).sum(),
                        mask.sum(),
                    ])
                norms.append(self._optimizer_step())
                self.weights_version += 1
                n_steps += 1
        sums = dist.global_sum(acc, sums)
        tokens = max(float(sums[4]), 1.0)
        return {
            "loss": float(sums[0]) / max(n_steps, 1),
            "kl": float(sums[1]) / tokens,
            "clip_frac": float(sums[2]) / tokens,
            "entropy": float(sums[3]) / tokens,
            "grad_norm": max(norms) if norms else 0.0,
        }

    def _optimizer_step(self) -> float:
        """Clip and step, unless the gradients are non-finite: then skip, count, and maybe abort."""
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        norm = float(self.acc.clip_grad_norm_(params, max_norm))  # gradients are synced: same on every process
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.totals["nonfinite_steps"] += 1
            log.warning("step %d: non-finite gradients (norm=%s); update skipped (%d in a row)", self.step + 1, norm, self.bad_steps)
            if self.bad_steps >= cfg.max_bad_steps:
                raise TrainingAborted(
                    f"{self.bad_steps} consecutive steps had non-finite loss or gradients; lower learning_rate, "
                    f"set max_grad_norm, or use dtype=float32 (max_bad_steps={cfg.max_bad_steps})"
                )
            return norm
        try:
            self.optimizer.step()
            overflow = False
        except RuntimeError as err:  # CUDA's fused AdamW checks its scalars: 1 - lr x weight_decay out of float range
            if "overflow" not in str(err):
                raise
            overflow = True
        finite = not overflow and bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
        if not finite:
            # nothing is saved from here on, so the last checkpoint stays the last good state
            raise TrainingAborted(
                f"a parameter became non-finite at step {self.step + 1} despite finite gradients (norm {norm:.3g}); "
                "resume from the last checkpoint with a lower learning_rate or max_grad_norm"
            )
        self.bad_steps = 0
        return norm

    def _maybe_reset_reference(self) -> bool:
        """ProRL: periodically make the current policy the new reference (and optionally reset Adam)."""
        cfg = self.cfg
        if self.reference is None or not cfg.ref_reset_every or self.step % cfg.ref_reset_every:
            return False
        self._reset_reference()
        return True

    def _reset_reference(self) -> None:
        alpha = 1.0 if self.cfg.ref_update == "reset" else self.cfg.ref_ema_alpha
        self.reference.reset(self.model, alpha)
        if self.cfg.ref_reset_optimizer and alpha == 1.0:  # an EMA step is not a reset: keep Adam's moments
            self.optimizer.state.clear()
        self.totals["ref_resets"] += 1

    # ------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint the current step (collective: call on every process)."""
        acc = self.acc
        acc.wait_for_everyone()
        model_state = acc.get_state_dict(self.model)
        optimizer_state = dist.optimizer_state_to_save(acc, self.model, self.optimizer)
        path = checkpoint.checkpoint_dir(self.out_dir, self.step)
        if acc.is_main_process:
            checkpoint.save_checkpoint(
                path,
                model=acc.unwrap_model(self.model),
                model_state=model_state,
                tokenizer=self.tokenizer,
                reference=self.reference.model if self.reference is not None else None,
                optimizer_state=optimizer_state,
                extra_tensors=self.reference.tensors_to_save(self.model, self.totals["ref_resets"]) if self.reference else None,
                trainer_state={
                    "step": self.step,
                    "cursor": self.cursor,
                    "epoch": self._epoch(),
                    "totals": self.totals,
                    "bad_steps": self.bad_steps,
                    "best_eval": self.best_eval,
                    "evals_since_best": self.evals_since_best,
                    "num_processes": acc.num_processes,
                    # absolute when local: `prorl merge` must find the base from any working directory
                    "model_name_or_path": checkpoint.loadable_from_anywhere(self.cfg.resolved_model_path()),
                    "model_fingerprint": checkpoint.model_fingerprint(model_state),
                    "config": self.cfg.to_dict(),
                },
            )
            checkpoint.prune_checkpoints(self.out_dir, self.cfg.save_total_limit)
        acc.wait_for_everyone()
        return path

    def _load_resume_state(self, path: Path) -> None:
        state = checkpoint.load_trainer_state(path)
        self.step = int(state["step"])
        self.cursor = int(state.get("cursor", self.step * self.cfg.batch_size))
        self.totals.update(state.get("totals", {}))
        self.bad_steps = int(state.get("bad_steps", 0))
        self.best_eval = float(state.get("best_eval", -1.0))
        self.evals_since_best = int(state.get("evals_since_best", 0))
        if self.acc.is_main_process:
            log.info("resumed from %s at step %d", path, self.step)
            if self.cfg.streaming and self.cursor:
                log.info("streaming: re-reading the first %d prompts to continue exactly where the run stopped", self.cursor)
                self.stream.seek(self.cursor)


# ----------------------------------------------------------------------
