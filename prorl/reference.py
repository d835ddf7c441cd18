"""The reference policy that the KL penalty pulls towards (`kl_beta > 0`), and its ProRL resets.

One of two kinds, told apart here and nowhere else:
- a frozen copy of the policy (full fine-tuning): `Reference(acc, model=copy)`;
- the LoRA base, i.e. the policy with its adapters off (no second copy): `Reference(acc)`.
A run with `kl_beta: 0` has no reference at all (`Trainer.reference is None`).
"""

from __future__ import annotations

import torch

from . import algos, dist
from .logprobs import completion_logprobs


class Reference:
    def __init__(self, acc, model=None):
        self.acc = acc
        self.model = model  # the frozen copy, or None for the LoRA base
        if model is not None:
            model.requires_grad_(False).eval()

    def prepare(self) -> None:
        """Place the frozen copy on this process's device (after `accelerator.prepare` of the policy)."""
        if self.model is not None:
            self.model = dist.prepare_reference(self.acc, self.model)

    @torch.no_grad()
    def logprobs(self, policy, *inputs, **kw) -> torch.Tensor:
        """`completion_logprobs` under the reference; `policy` is the (prepared) policy, whose base is
        the reference in a LoRA run."""
        if self.model is not None:
            with self.acc.autocast():
                return completion_logprobs(self.model, *inputs, **kw)
        from .lora import adapters_disabled  # peft is an optional extra

        with adapters_disabled(self.acc.unwrap_model(policy)) as base, self.acc.autocast():
            return completion_logprobs(base, *inputs, **kw)

    @torch.no_grad()
    def sequence_kl(self, policy, ro, *, micro_batch: int, estimator: str, temperature: float) -> torch.Tensor:
        """Per-completion KL(pi || pi_ref) summed over tokens, from the sampler's log-probs: [B]."""
        out = []
        for i in range(0, ro.completion_ids.size(0), micro_batch):
            sl = slice(i, i + micro_batch)
            ref = self.logprobs(policy, ro.prompt_ids[sl], ro.prompt_mask[sl], ro.completion_ids[sl],
                                ro.completion_mask[sl], temperature=temperature)
            kl = algos.kl_penalty(ro.logprobs[sl], ref, estimator, mask=ro.completion_mask[sl])
            out.append(torch.where(ro.completion_mask[sl].bool(), kl, 0).sum(1))
        return torch.cat(out) if out else torch.zeros(0, device=ro.logprobs.device)

    def reset(self, policy, alpha: float = 1.0) -> None:
        """ProRL: the reference becomes the policy (alpha=1) or takes an EMA step towards it. A LoRA
        run folds its adapters into the base (the policy itself does not change). Collective under
        sharding: call on every process."""
        if self.model is None:
            from .lora import fold_adapters_into_base

            fold_adapters_into_base(self.acc.unwrap_model(policy), alpha)
        else:
            dist.copy_policy_into_reference(self.acc, policy, self.model, alpha=alpha)

    def tensors_to_save(self, policy, resets: int) -> dict | None:
        """What a checkpoint needs beyond the frozen copy: after a reset a LoRA run's base is no longer
        the model on disk, so its changed layers are saved."""
        if self.model is not None or not resets:
            return None
        from .lora import BASE_FILE, base_weights

        return {BASE_FILE: base_weights(self.acc.unwrap_model(policy))}
