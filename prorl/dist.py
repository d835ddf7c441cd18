"""Every distributed call of the trainer lives here, so the loop reads as single-process code.

With one process each helper is the identity; under `accelerate launch` / `torchrun` they gather,
reduce and shard through the Accelerator's process group (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from .config import ConfigError


def _has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)  # torch >= 2.6 covers CUDA, XPU, MPS, ...
    return bool(acc.is_available()) if acc is not None else torch.cuda.is_available()


def make_accelerator(log_with=None, project_dir: str | None = None, mixed_precision: str = "no") -> Accelerator:
    # Precision is the config's (dtype, mixed_precision), never the launcher's: an `accelerate config`
    # default of fp16 must not silently change a run, and fp32 stays bit-exact by default.
    # cpu=True on a machine without an accelerator makes `accelerate launch`/`torchrun` with several
    # processes a real gloo process group (accelerate would otherwise leave each process alone).
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed_precision)) != mixed_precision:
        # a second Trainer in one process (a notebook) with another precision: accelerate keeps one
        # global state and refuses the change; reset that state (the process group is kept)
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, log_with=log_with, project_dir=project_dir, cpu=not _has_accelerator())


# A process-group teardown that does not return within this many seconds is abandoned (see `finish`).
TEARDOWN_GRACE_S = 60.0


def finish(acc: Accelerator, grace_s: float = TEARDOWN_GRACE_S) -> None:
    """End a run: close the trackers and destroy the process group. Call on every process after the
    run's last collective (Trainer.save's closing barrier), so every checkpoint and metric is on disk.

    Destroying a gloo/NCCL group can hang (a peer that closed its connections first, a backend bug),
    and a hang there would hold a cluster job's machines with nothing left to do. So under several
    processes a watchdog gives the teardown `grace_s` seconds; then it prints every thread's stack
    to stderr and exits 0, since the run itself has finished (exit 1, 30 s later, if that watchdog
    cannot run)."""
    if acc.num_processes == 1:
        acc.end_training()
        return
    done = threading.Event()

    def watchdog():
        if not done.wait(grace_s):
            sys.stderr.write(f"prorl: rank {acc.process_index}: the process-group teardown did not finish in {grace_s:g}s; "
                             "exiting anyway (the run and its last checkpoint are complete). Stacks:\n")
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            exit_now(0)

    threading.Thread(target=watchdog, name="prorl-teardown-watchdog", daemon=True).start()
    # backstop without Python: should the stuck call hold the GIL, the thread above never runs
    faulthandler.dump_traceback_later(grace_s + 30, exit=True)
    try:
        acc.end_training()
    finally:
        done.set()
        faulthandler.cancel_dump_traceback_later()


def exit_now(code: int) -> None:
    """Leave a distributed worker at once, skipping interpreter teardown: once the process group is
    gone, destructors of DDP/backend objects and their threads are all that is left to run, and they
    are where exit-time hangs come from. Output and logs are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


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
#
# What each mode does (see launch/fsdp.yaml, launch/deepspeed_zero3.yaml):
# - FSDP2 (`fsdp_version: 2`): generation unshards every FSDP unit once and keeps it unsharded
#   until the rollout ends, so the sampling loop's forwards run no collectives (processes may stop
#   after different numbers of tokens). The reference stays a full frozen copy per process.
# - FSDP1: same idea through `summon_full_params` plus plain (hook-free) forwards; needs
#   `fsdp_use_orig_params: true`. Under FSDP1 a state_dict() is a collective (it all-gathers), so
#   Trainer.save gathers the state on every process and only then lets the main process write.
# - DeepSpeed ZeRO-3: gathers parameters for generation (not run by the test suite: DeepSpeed is not
#   installed there); checkpoints carry no optimizer state (DeepSpeed keeps it in flat partitions),
#   so a resume restarts Adam's moments.

from accelerate.utils import DistributedType  # noqa: E402

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _fsdp_version(acc: Accelerator) -> int:
    """2 for FSDP2, 1 for FSDP1, 0 when the model is not FSDP-sharded."""
    if acc.distributed_type != DistributedType.FSDP:
        return 0
    return 2 if getattr(acc, "is_fsdp2", False) else 1


def _is_zero3(acc: Accelerator) -> bool:
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return False
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", 0) == 3


def _clean_name(name: str) -> str:
    """A parameter name as the plain (unwrapped) model spells it."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _plain_param_names(acc: Accelerator, model) -> list[str]:
    """Trainable parameter names in the order of the plain model's `parameters()`, i.e. the order of
    the optimizer the trainer builds before `acc.prepare` (optimizer state dicts are keyed by it)."""
    names = [_clean_name(n) for n, p in acc.unwrap_model(model).named_parameters() if p.requires_grad]
    if any("flat_param" in n for n in names):
        raise ConfigError("FSDP1 needs fsdp_use_orig_params: true in the accelerate config (see launch/fsdp.yaml)")
    return names


@contextlib.contextmanager
def _fsdp2_unsharded(model):
    """Every FSDP2 unit all-gathered once (collective, same on every process), then kept unsharded
    (no reshard after forward) so the forwards inside run no collectives; resharded on exit."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    states = [u._get_fsdp_state() for u in units]
    root = states[0]
    if getattr(root, "_is_root", None) is None and hasattr(root, "_lazy_init"):
        root._lazy_init()  # what the first forward would do; it fixes the root's own reshard policy
    saved = [(s, getattr(s, "_auto_reshard_after_forward", None), [(g, g.post_forward_mesh_info) for g in _param_groups(s)]) for s in states]
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
    for u in units:
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()
        for state, auto, groups in saved:  # back to the per-unit policy accelerate/torch chose
            if auto is not None:
                state._auto_reshard_after_forward = auto
            for group, mesh_info in groups:
                group.post_forward_mesh_info = mesh_info


@contextlib.contextmanager
def _fsdp1_unsharded(model):
    """FSDP1: full parameters of every unit (`summon_full_params`, collective), and each wrapper's
    forward temporarily replaced by its wrapped module's plain forward: FSDP1's own forward would
    reshard and re-gather per call, which deadlocks when processes stop sampling at different steps."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    units = [m for m in model.modules() if isinstance(m, FSDP)]
    with FSDP.summon_full_params(model, writeback=False, recurse=True):
        for u in units:
            u.forward = u._fsdp_wrapped_module.forward  # instance attribute shadows FSDP.forward
        try:
            yield model.module if isinstance(model, FSDP) else model
        finally:
            for u in units:
                vars(u).pop("forward", None)


def _zero3_engine_hooks(engine, add: bool) -> None:
    """Remove (add=False) or re-register ZeRO-3's per-module fetch/release hooks (as TRL does)."""
    opt = getattr(engine, "optimizer", None)
    if opt is None:
        return
    offload = getattr(opt, "parameter_offload", opt)
    if add:
        offload._register_hooks_recursively(offload.module)
        return
    for p in offload.module.parameters(recurse=True):
        if hasattr(p, "ds_active_sub_modules"):
            p.ds_active_sub_modules.clear()
    for hook in list(offload.forward_hooks) + list(offload.backward_hooks):
        hook.remove()
    offload.forward_hooks, offload.backward_hooks = [], []


def _param_groups(state) -> list:
    """An FSDP2 unit's parameter groups: torch 2.13 keeps a list, torch 2.11 one group (or None)."""
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is not None:
        return list(groups)
    group = getattr(state, "_fsdp_param_group", None)
    return [group] if group is not None else []


@contextlib.contextmanager
def unwrapped_for_generation(acc: Accelerator, model):
    """Yield a module that can run token-by-token generation.

    Plain and DDP models: the unwrapped module. Sharded models gather their full parameters for the
    duration (collective: every process enters and leaves together; the forwards inside are local,
    so processes may run different numbers of decoding steps). Peak memory: one full copy of the
    policy's parameters per process while sampling.
    """
    version = _fsdp_version(acc)
    if version == 2:
        with _fsdp2_unsharded(model):
            yield acc.unwrap_model(model)
    elif version == 1:
        with _fsdp1_unsharded(model) as inner:
            yield inner
    elif _is_zero3(acc):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            _zero3_engine_hooks(model, add=False)
            try:
                yield acc.unwrap_model(model)
            finally:
                _zero3_engine_hooks(model, add=True)
    else:
        yield acc.unwrap_model(model)


def prepare_reference(acc: Accelerator, reference):
    """Place the frozen reference policy: a plain copy on this process's device (not wrapped: it never
    needs gradient sync).

    Under FSDP / ZeRO-3 too it stays a full, unsharded copy per process (memory: one extra model per
    GPU, in `dtype`); sharding it needs the trainer to save it collectively (see the README).
    With `fsdp_cpu_ram_efficient_loading` only rank 0 is guaranteed to have loaded real weights
    (transformers < 5 leaves other ranks empty), so the copy is broadcast from rank 0.
    """
    reference = reference.to(acc.device)
    if acc.num_processes > 1 and _only_rank0_loaded(acc):
        with torch.no_grad():
            for t in list(reference.parameters()) + list(reference.buffers()):
                torch.distributed.broadcast(t.data, src=0)
    return reference


def _only_rank0_loaded(acc: Accelerator) -> bool:
    import os

    on = lambda var: os.environ.get(var, "false").lower() in ("1", "true", "yes")  # noqa: E731
    return acc.distributed_type == DistributedType.FSDP and on("ACCELERATE_USE_FSDP") and on("FSDP_CPU_RAM_EFFICIENT_LOADING")


def copy_policy_into_reference(acc: Accelerator, model, reference, alpha: float = 1.0) -> None:
    """ProRL's reference reset: reference <- current policy weights (alpha=1), or an EMA step
    reference <- (1 - alpha) * reference + alpha * policy. Collective under sharding (call on every
    process); a sharded policy is gathered one parameter at a time."""
    version = _fsdp_version(acc)
    if version == 0 and not _is_zero3(acc) and alpha == 1.0:
        reference.load_state_dict(acc.unwrap_model(model).state_dict())
        return
    ref_params = dict(reference.named_parameters())

    def mix(ref: torch.Tensor, policy: torch.Tensor) -> None:
        policy = policy.to(device=ref.device, dtype=ref.dtype)
        ref.copy_(policy) if alpha == 1.0 else ref.lerp_(policy, alpha)

    with torch.no_grad():
        if version == 2:
            from torch.distributed.tensor import DTensor

            for name, p in acc.unwrap_model(model).named_parameters():  # same order on every process
                mix(ref_params[_clean_name(name)], p.full_tensor() if isinstance(p, DTensor) else p)
        elif version == 1:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.summon_full_params(model, writeback=False, recurse=True):
                inner = model.module if isinstance(model, FSDP) else model
                for name, ref in ref_params.items():
                    mix(ref, _attr_path(inner, name))
        elif _is_zero3(acc):
            import deepspeed

            for name, p in acc.unwrap_model(model).named_parameters():
                with deepspeed.zero.GatheredParameters([p]):
                    mix(ref_params[_clean_name(name)], p)
        else:
            for name, p in acc.unwrap_model(model).named_parameters():
                mix(ref_params[_clean_name(name)], p)


def _attr_path(root, name: str):
    """`root.a.b.weight` by attribute access (FSDP1/checkpoint wrappers forward attributes)."""
    obj = root
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def optimizer_state_to_save(acc: Accelerator, model, optimizer) -> dict | None:
    """The full optimizer state dict (collective under sharding: call on every process).

    Always in the plain format (`optimizer.state_dict()` of the unsharded model: state keyed by the
    parameter's index in `model.parameters()`), so a run saved with FSDP resumes under DDP, one
    process or FSDP with any number of processes. Under FSDP the full state is gathered to the main
    process (CPU); other processes get `{}`. ZeRO-3: None (no optimizer state is saved).
    """
    version = _fsdp_version(acc)
    if version == 0:
        if _is_zero3(acc):
            if acc.is_main_process:
                import logging

                logging.getLogger("prorl").warning(
                    "DeepSpeed ZeRO-3: checkpoints hold no optimizer state; a resume restarts Adam's moments"
                )
            return None
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    torch_opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wrapper
    if not torch_opt.state:  # no step yet, or just reset (ref_reset_optimizer): nothing to gather, and
        # get_optimizer_state_dict would "initialise" it with a zero-gradient step (Adam's step count 1)
        return _empty_optimizer_state(torch_opt) if acc.is_main_process else {}
    names = _plain_param_names(acc, model)
    # cpu_offload gathers to the main process's CPU only; on a CPU device there is nothing to offload,
    # and torch 2.13's FSDP1 then returns exp_avg/exp_avg_sq aliasing one buffer (wrong values)
    offload = acc.device.type != "cpu"
    full = get_optimizer_state_dict(model, torch_opt, options=StateDictOptions(full_state_dict=True, cpu_offload=offload))
    if not acc.is_main_process:
        return {}
    index = {name: i for i, name in enumerate(names)}
    state = {index[_clean_name(fqn)]: _own_storage(st) for fqn, st in full["state"].items()}
    groups = [dict(g, params=sorted(index[_clean_name(f)] for f in g["params"])) for g in full["param_groups"]]
    return {"state": state, "param_groups": groups}


def _empty_optimizer_state(torch_opt) -> dict:
    """What `optimizer.state_dict()` of the plain optimizer returns before its first step."""
    groups, start = [], 0
    for g in torch_opt.param_groups:
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    return {"state": {}, "param_groups": groups}


def _own_storage(param_state: dict) -> dict:
    """Tensors that view a larger or shared buffer (a gather buffer) get their own storage, so
    safetensors can write them."""
    out, seen = {}, set()
    for key, value in param_state.items():
        if torch.is_tensor(value):
            ptr = value.untyped_storage().data_ptr()
            if ptr in seen or value.untyped_storage().nbytes() != value.numel() * value.element_size():
                value = value.clone()
            seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def load_optimizer_state(acc: Accelerator, model, optimizer, state: dict | None) -> None:
    """Load a plain-format optimizer state dict (what `optimizer_state_to_save` writes) into the
    PREPARED optimizer: every process passes the same full state; under FSDP each keeps its shard.

    Must run after `acc.prepare`: FSDP replaces the parameters, and `acc.prepare` does not carry
    optimizer state over from the old ones (a state loaded before would be silently dropped)."""
    if state is None or _is_zero3(acc):
        return
    version = _fsdp_version(acc)
    if version == 0:
        optimizer.load_state_dict(state)
        return
    if not state["state"]:  # saved before any step: leave the fresh optimizer alone (set_optimizer_state_dict
        return  # would take a zero-gradient step to create state, starting Adam's step count at 1)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _plain_param_names(acc, model)
    by_name = {
        "state": {names[int(i)]: st for i, st in state["state"].items()},
        "param_groups": [dict(g, params=[names[int(i)] for i in g["params"]]) for g in state["param_groups"]],
    }
    torch_opt = getattr(optimizer, "optimizer", optimizer)
    set_optimizer_state_dict(model, torch_opt, by_name, options=StateDictOptions(full_state_dict=True))
