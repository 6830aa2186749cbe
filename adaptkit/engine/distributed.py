"""Several processes: DDP (replicated parameters) or FSDP2 (`fully_shard`, sharded parameters).

Under DDP every process holds the whole model and the gradients are averaged before
the engine reads them. Under FSDP each parameter is a DTensor sharded along dim 0
(torch's `fully_shard`, one unit per decoder layer plus the root); the engine then
optimizes only the local shard of each trainable parameter (and, for a masked one, only
the trainable entries of that shard), so the optimizer state is sharded too.
"""

from __future__ import annotations

import atexit
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Optional

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from adaptkit.engine.optim import TrainableSet
    from adaptkit.engine.plan import TrainingPlan


def launched_world_size() -> int:
    """Processes a launcher (torchrun, accelerate launch, mpirun) started, from its environment."""
    import os

    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def make_accelerator(device: str, log_with: Optional[list[str]] = None, logging_dir: Optional[Path] = None):
    """An Accelerator that joins the launcher's process group: gloo on CPU, NCCL/RCCL on GPUs.

    accelerate treats a run as multi-process on CPU only when asked for the CPU, so a
    launched run without a GPU asks for it (otherwise every process would train alone).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from adaptkit.errors import AdaptkitError

    launched = launched_world_size()
    cpu = device == "cpu" or (launched > 1 and not torch.cuda.is_available())
    project = ProjectConfiguration(project_dir=str(logging_dir), logging_dir=str(logging_dir)) if log_with else None
    accelerator = Accelerator(cpu=cpu, log_with=log_with or None, project_config=project)  # trackers: engine/trackers.py
    if launched > 1 and accelerator.num_processes != launched:
        raise AdaptkitError(f"the launcher started {launched} processes but only {accelerator.num_processes} joined the process group")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        atexit.unregister(leave_process_group)  # once, however many runs this process makes in the group
        atexit.register(leave_process_group)
    return accelerator


def leave_process_group() -> None:
    """Tear down the gloo process group this process joined, when the process exits (an atexit hook that
    `make_accelerator` registers: the group stays for every run the process makes in it).

    Left to the interpreter's exit, gloo's threads can end the process in std::terminate (SIGABRT,
    "terminate called without an active exception") when a peer has already gone: measured with
    `benchmarks/stress_pg_exit.py`, 5 of 16 two-process exits on the idle machine and 1 of 12 beside two
    busy processes (5 of 12 in another run), 0 of 16 and 0 of 12 with this exit hook. An NCCL group is left to the launcher: its
    teardown can wait on a peer stuck in a collective, and the exit must not wait.
    """
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.destroy_process_group()
    except Exception:  # the process exits anyway; a peer that has gone must not turn its exit code into a traceback
        pass


def resolve_mode(requested: str, world_size: int) -> str:
    """'none' (one process), 'ddp' or 'fsdp'; 'auto' is DDP when there are several processes."""
    if world_size == 1:
        return "none"
    return "ddp" if requested == "auto" else requested


class Strategy:
    """What differs between one process, DDP and FSDP, chosen once at set-up (`make_strategy`).

    This base is the replicated case (one process, or DDP through accelerate): every process holds
    the whole model, accelerate averages the gradients, the main process alone writes checkpoints.
    """

    sharded = False  # each process optimizes only its shard of every trainable parameter

    def __init__(self, accelerator: Any, name: str):
        self.accelerator = accelerator
        self.name = name  # 'none', 'ddp' or 'fsdp', as recorded in results and checkpoints

    def shard(self, plan: "TrainingPlan", method: str) -> None:
        """Distribute the planned model before the engine builds its trainable set (replicated: nothing)."""

    def prepare(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """The module the loop runs forward and backward through."""
        return self.accelerator.prepare_model(model)

    def micro_batch(self, model: "torch.nn.Module", sync: bool) -> ContextManager:
        """Context of one micro-batch's forward and backward; gradients are reduced only when `sync`."""
        return nullcontext() if sync else self.accelerator.no_sync(model)

    def backward(self, loss: "torch.Tensor") -> None:
        self.accelerator.backward(loss)

    def clip(self, tensors: list["torch.Tensor"], max_norm: Optional[float], device: "torch.device") -> "torch.Tensor":
        """Clip the optimizer tensors' gradients to `max_norm` (None: no clipping); returns the norm before, on the device."""
        return clip_grad_norm_(tensors, max_norm, device)

    def mean_loss(self, loss: "torch.Tensor") -> "torch.Tensor":
        """The loss averaged over processes."""
        return self.accelerator.reduce(loss, reduction="mean") if self.accelerator.num_processes > 1 else loss

    def full_state(self, model: "torch.nn.Module", whole_model: bool = False) -> "Optional[dict[str, torch.Tensor]]":
        """The whole model's tensors for export, or None when the model itself holds them.

        `whole_model`: a callback exports from the model itself, which must then hold whole tensors.
        """
        return None

    def export_state(self, exported: "torch.nn.Module") -> "Optional[dict[str, torch.Tensor]]":
        """The tensors to save of a model exported from the whole model (see full_state), or None: its own state_dict."""
        return None

    def save_checkpoint(self, run_dir: Path, step: int, trainable: "TrainableSet", optimizer: Any, scheduler: Any,
                        callbacks: list, metadata: dict[str, Any], keep: Optional[int]) -> None:
        """Write checkpoint-<step>/ (engine/checkpoint.py): replicated, the main process writes it all;
        sharded, every process writes its chunks (a collective)."""
        from adaptkit.engine import checkpoint

        main = self.accelerator.is_main_process
        if not (self.sharded or main):
            return
        barrier = self.accelerator.wait_for_everyone if self.sharded else (lambda: None)
        checkpoint.save_checkpoint(run_dir, step, trainable, optimizer, scheduler, callbacks, metadata, keep, main, self.sharded, barrier)

    def load_checkpoint(self, path: Path, trainable: "TrainableSet", optimizer: Any, scheduler: Any, callbacks: list) -> dict[str, Any]:
        """Restore a checkpoint saved by any layout (each process reads its own part)."""
        from adaptkit.engine import checkpoint

        return checkpoint.load_checkpoint(path, trainable, optimizer, scheduler, callbacks)


class LocalStrategy(Strategy):
    """This process alone, whatever the launch: a step computed in full by every process on the same
    batches (the pilot fine-tune of engine/pilot.py), with no gradient reduction and no collective."""

    def __init__(self) -> None:
        super().__init__(None, "none")

    def prepare(self, model: "torch.nn.Module") -> "torch.nn.Module":
        return model

    def micro_batch(self, model: "torch.nn.Module", sync: bool) -> ContextManager:
        return nullcontext()

    def backward(self, loss: "torch.Tensor") -> None:
        loss.backward()

    def mean_loss(self, loss: "torch.Tensor") -> "torch.Tensor":
        return loss


class ShardedStrategy(Strategy):
    """FSDP2: parameters, gradients and optimizer state sharded along dim 0 over the processes."""

    sharded = True

    def shard(self, plan: "TrainingPlan", method: str) -> None:
        whole = sorted({type(cb).__name__ for cb in plan.callbacks if not cb.shard_aware})
        if whole:
            raise InputError(f"--distributed fsdp: method '{method}' uses training callbacks ({', '.join(whole)}) that need whole parameters; use --distributed ddp")
        fully_shard_model(plan.model)

    def prepare(self, model: "torch.nn.Module") -> "torch.nn.Module":
        return model

    def micro_batch(self, model: "torch.nn.Module", sync: bool) -> ContextManager:
        model.set_requires_gradient_sync(sync)
        return nullcontext()

    def clip(self, tensors: list["torch.Tensor"], max_norm: Optional[float], device: "torch.device") -> "torch.Tensor":
        return clip_sharded_grad_norm_(tensors, max_norm, device)

    def full_state(self, model: "torch.nn.Module", whole_model: bool = False) -> "Optional[dict[str, torch.Tensor]]":
        if whole_model:  # the end of training: the model stays unsharded from here on
            unshard_model(model)
            return None
        return full_state_dict(model, self.accelerator.is_main_process)  # a collective: every process calls it

    def export_state(self, exported: "torch.nn.Module") -> "Optional[dict[str, torch.Tensor]]":
        # an FSDP2 module's state_dict() would reshard it again (into DTensors without the export's changes)
        from adaptkit.engine.shards import held_state_dict

        return held_state_dict(exported)


def make_strategy(accelerator: Any, requested: str) -> Strategy:
    """The strategy for this run: replicated ('none' or 'ddp') or sharded ('fsdp')."""
    mode = resolve_mode(requested, accelerator.num_processes)
    return (ShardedStrategy if mode == "fsdp" else Strategy)(accelerator, mode)


def fully_shard_model(model: "torch.nn.Module") -> "torch.nn.Module":
    """Shard `model` in place with FSDP2: each decoder layer is a unit, the rest belongs to the root."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        raise InputError("--distributed fsdp: needs torch >= 2.6 (torch.distributed.fsdp.fully_shard); use --distributed ddp") from None
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module)
    fully_shard(model)
    return model


def unshard_model(model: "torch.nn.Module") -> None:
    """All-gather every FSDP2 unit of `model` in place (a collective): its parameters become whole plain tensors."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()


def clip_sharded_grad_norm_(tensors: Iterable["torch.Tensor"], max_norm: float | None, device: "torch.device") -> "torch.Tensor":
    """Clip gradients that each hold one process's shard: the norm sums squares over all processes."""
    import torch.distributed as dist

    return clip_grad_norm_(tensors, max_norm, device, lambda total: dist.all_reduce(total, op=dist.ReduceOp.SUM))


def clip_grad_norm_(tensors: Iterable["torch.Tensor"], max_norm: float | None, device: "torch.device",
                    all_reduce: "Callable[[torch.Tensor], None] | None" = None) -> "torch.Tensor":
    """Clip the gradients (each process's part of them, summed over processes by `all_reduce`) to `max_norm`
    (None: measure only); the norm before, a float32 tensor on the device (no host sync). The formula of
    torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6), at most 1), with the sum of squares
    taken so that one process and N FSDP processes get the same float32 coefficient: FSDP2 shards dim 0, so
    each dim-0 slice of a gradient is whole in one process; its norm is taken in float32 (the same bits in
    the whole tensor and in the shard), squared and summed in float64 (1-D tensors, split inside by the
    shards, element by element in float64). One process's sum and the shards' sums then differ far below
    float32 resolution and round alike. (A float32 sum over whole tensors differs in the last bit between
    the two orders, and Adam amplifies that where a row's only gradient is a penalty near its eps:
    soft-reg's pull on embedding rows absent from the batches.) Cost: one float32 pass over the gradients."""
    import torch

    from adaptkit.engine.shards import local_grad_tensor

    grads = [local_grad_tensor(t.grad) for t in tensors if t.grad is not None]
    wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    squares = torch.zeros((), dtype=wide, device=device)
    for grad in grads:
        grad = grad.detach()
        parts = grad.reshape(-1) if grad.dim() < 2 else torch.linalg.vector_norm(grad.reshape(grad.shape[0], -1), dim=1)
        parts = parts.to(device, wide)
        squares += torch.dot(parts, parts)
    if all_reduce is not None:
        all_reduce(squares)
    norm = squares.sqrt()
    if max_norm:
        coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for (grad_device, dtype), group in _by_device_and_dtype(grads).items():
            torch._foreach_mul_(group, coefficient.to(grad_device, dtype))
    return norm.float()


def _by_device_and_dtype(tensors: list["torch.Tensor"]) -> dict[tuple[Any, Any], list["torch.Tensor"]]:
    groups: dict[tuple[Any, Any], list] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return groups


def full_state_dict(model: "torch.nn.Module", keep: bool) -> dict[str, "torch.Tensor"]:
    """The full (unsharded) tensors of a sharded model. Every process must call this (each
    tensor is an all-gather); only where `keep` is true (the main process) are they kept. Names that
    share one tensor (tied embeddings and head) share one gathered tensor, so that saving writes it once
    as it does for a model that was never sharded."""
    from adaptkit.engine.shards import full_tensor

    state, gathered = {}, {}
    for name, tensor in model.state_dict(keep_vars=True).items():  # the parameters themselves: tied names, one object
        if id(tensor) not in gathered:
            gathered[id(tensor)] = full_tensor(tensor.detach()).cpu()
        if keep:
            state[name] = gathered[id(tensor)]
    return state
