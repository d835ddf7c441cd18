"""Every distributed call of the trainer lives here, so the loop reads as single-process code.

With one process each helper is the identity; under `accelerate launch` / `torchrun` they gather,
reduce and shard through the Accelerator's process group (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import contextlib

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from .config import ConfigError


def _has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)  # torch >= 2.6 covers CUDA, XPU, MPS, ...
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


def make_accelerator(log_with=None, project_dir: str | None = None) -> Accelerator:
    # Precision is ours (Config.dtype), not accelerate's autocast: fp32 stays bit-exact by default.
    # cpu=True on a machine without an accelerator makes `accelerate launch`/`torchrun` with several
    # processes a real gloo process group (accelerate would otherwise leave each process alone).
    return Accelerator(mixed_precision="no", log_with=log_with, project_dir=project_dir, cpu=not _has_accelerator())


def local_slice(n_global: int, acc: Accelerator, what: str = "batch_size") -> slice:
    """This process's contiguous share of a global batch of `n_global` prompts."""
    return shard_slice(n_global, acc.process_index, acc.num_processes, what)


def shard_slice(n_global: int, rank: int, world: int, what: str = "batch_size") -> slice:
    if n_global % world:
        raise ConfigError(f"{what}={n_global} must be divisible by the number of processes ({world})")
    per = n_global // world
    return slice(rank * per, (rank + 1) * per)


def gather_varlen(acc: Accelerator, x: torch.Tensor) -> torch.Tensor:
    """Concatenate each process's 1-D (or [n, ...]) tensor in rank order; lengths may differ."""
    if acc.num_processes == 1:
        return x
    n = torch.tensor([x.size(0)], device=x.device)
    sizes = acc.gather(n).tolist()
    padded = acc.pad_across_processes(x, dim=0)
    gathered = acc.gather(padded)
    width = max(sizes)
    parts = [gathered[r * width : r * width + s] for r, s in enumerate(sizes)]
    return torch.cat(parts, dim=0)


def rank_offset(acc: Accelerator, n_local: int, device) -> int:
    """Where this process's rows start in a `gather_varlen` result."""
    if acc.num_processes == 1:
        return 0
    sizes = acc.gather(torch.tensor([n_local], device=device)).tolist()
    return int(sum(sizes[: acc.process_index]))


def global_sum(acc: Accelerator, x: torch.Tensor) -> torch.Tensor:
    return x if acc.num_processes == 1 else acc.reduce(x.clone(), reduction="sum")


def global_max(acc: Accelerator, x: torch.Tensor) -> torch.Tensor:
    if acc.num_processes == 1:
        return x
    return acc.gather(x.reshape(1)).max()


def grad_average_correction(acc: Accelerator) -> float:
    """DDP averages gradients over processes; our losses are already divided by GLOBAL normalisers,
    so each process's loss is scaled by the world size to turn that average back into a sum."""
    return float(acc.num_processes)


def broadcast_object(acc: Accelerator, obj):
    if acc.num_processes == 1:
        return obj
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


# ----------------------------------------------------------------------
# Sharded models (FSDP / DeepSpeed ZeRO-3): the only places that need to know about sharding.

@contextlib.contextmanager
def unwrapped_for_generation(acc: Accelerator, model):
    """Yield a module that can run token-by-token generation.

    Plain and DDP models: the unwrapped module. Sharded models must gather their full parameters
    first, which is what this context is for (see the FSDP/DeepSpeed branches).
    """
    yield acc.unwrap_model(model)


def prepare_reference(acc: Accelerator, reference):
    """Place the frozen reference policy: a plain copy on this process's device (not wrapped: it never
    needs gradient sync)."""
    return reference.to(acc.device)


def copy_policy_into_reference(acc: Accelerator, model, reference) -> None:
    """ProRL's reference reset: reference <- current policy weights."""
    reference.load_state_dict(acc.unwrap_model(model).state_dict())


def optimizer_state_to_save(acc: Accelerator, model, optimizer) -> dict:
    """The full optimizer state dict (collective under sharding: call on every process)."""
    return optimizer.state_dict()
