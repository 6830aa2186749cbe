"""Optimizer, learning-rate schedule and masked (compact) parameters.

A parameter that trains only partly (an UpdateMask) is optimized through a compact
copy of its trainable entries (float32 master copy; in bf16-pure precision bf16, like the weights,
unless the plan's `masked_dtype` asks for float32 in every mode): the optimizer holds state only for those
entries, weight decay touches only them, and after each step they are written back
into the model. Frozen entries are never written, so they stay bit-identical to the
source weights, weight decay included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from adaptkit.engine.config import OptimizerConfig, ScheduleConfig
from adaptkit.engine.masks import UpdateMask
from adaptkit.engine.plan import TrainingPlan


class CompactParameter:
    """The trainable entries of one model parameter, as an nn.Parameter of `dtype` (float32 master
    copy, or bf16 in bf16-pure precision) that the optimizer updates.

    Works on the part of the parameter this process owns: the whole tensor, or under FSDP
    its dim-0 shard (see engine/distributed.py). With no mask (a whole parameter under
    FSDP), the compact parameter is the fp32 shard itself, sharing its storage.
    """

    def __init__(self, name: str, param: torch.nn.Parameter, mask: Optional[UpdateMask], dtype: torch.dtype = torch.float32):
        from adaptkit.engine.shards import local_shard

        self.name = name
        self.param = param
        local, offset = local_shard(param)
        self.granularity = mask.granularity if mask is not None else "whole"
        self.dim = 1 if self.granularity == "column" else 0
        rows = slice(offset, offset + local.shape[0])
        if mask is None:
            self.selector = None
        elif mask.granularity == "element":
            self.selector = mask.trainable[rows].to(param.device)
        elif mask.granularity == "row":
            self.selector = mask.trainable[rows].nonzero().squeeze(1).to(param.device)
        else:
            self.selector = mask.trainable.nonzero().squeeze(1).to(param.device)
        self.shares_storage = self.selector is None and local.dtype == dtype
        self.compact = torch.nn.Parameter(local if self.shares_storage else self.take(local).to(dtype, copy=True))
        self.offset, self.global_shape = self._global_place(mask, offset, tuple(param.shape))

    def _global_place(self, mask: Optional[UpdateMask], offset: int, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """(first row, shape) of this compact copy within the compact copy of the whole parameter.

        The processes' compact copies, in rank order, concatenate along dim 0 to the one a single
        process holds (shards are consecutive rows; a row or element mask keeps the row order), so a
        checkpoint in these coordinates is the same for any number of processes."""
        if mask is None:
            return offset, shape
        kept = int(mask.trainable.sum())
        if mask.granularity == "column":
            return offset, (shape[0], kept, *shape[2:])
        before = int(mask.trainable[:offset].sum())
        return before, ((kept, *shape[1:]) if mask.granularity == "row" else (kept,))

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.selector is None:
            return tensor
        if self.granularity == "element":
            return tensor[self.selector]
        return tensor.index_select(self.dim, self.selector)

    def pull_grad(self) -> None:
        """Move the trainable part of this process's gradient onto the compact copy.

        An empty model gradient (a layer that wrote the compact gradient itself) leaves nothing to move.
        A whole (unmasked) parameter keeps its gradient until zero_grad, as in one process, so that
        on_step_end callbacks read it (AdaLoRA's allocator); under FSDP it is the same storage.
        """
        from adaptkit.engine.shards import local_grad

        grad = local_grad(self.param)
        if grad is not None:
            self.compact.grad = self.take(grad).to(self.compact.dtype)
            if self.selector is not None:
                self.param.grad = None

    @torch.no_grad()
    def push(self) -> None:
        """Write the updated trainable entries back into the model parameter (its local shard)."""
        from adaptkit.engine.shards import local_shard

        if self.shares_storage:
            return
        local = local_shard(self.param)[0]  # looked up each time: DDP may have moved the parameter's storage
        values = self.compact.detach().to(local.dtype)
        if self.selector is None:
            local.copy_(values)
        elif self.granularity == "element":
            local.masked_scatter_(self.selector, values)
        else:
            local.index_copy_(self.dim, self.selector, values)


@dataclass
class TrainableSet:
    """What the optimizer updates: whole parameters and compact copies of masked ones."""

    whole: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    compact: dict[str, CompactParameter] = field(default_factory=dict)

    def optimizer_tensors(self) -> dict[str, torch.nn.Parameter]:
        tensors = dict(self.whole)
        tensors.update({f"{name}#compact": c.compact for name, c in self.compact.items()})
        return tensors

    def pull_grads(self) -> None:
        for c in self.compact.values():
            c.pull_grad()

    def push(self) -> None:
        for c in self.compact.values():
            c.push()

    def placed(self) -> dict[str, tuple[torch.nn.Parameter, int, tuple[int, ...]]]:
        """Each trainable parameter's optimizer tensor with its place in global coordinates,
        (tensor, first row, global shape), by parameter name: the same names and global shapes
        for one process, DDP and FSDP with any number of processes (checkpoints)."""
        places = {name: (p, 0, tuple(p.shape)) for name, p in self.whole.items()}
        places.update({name: (c.compact, c.offset, c.global_shape) for name, c in self.compact.items()})
        return places

    @torch.no_grad()
    def load_placed(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set every optimizer tensor (by parameter name, this process's part) and write it into the model."""
        for name, p in self.whole.items():
            p.copy_(tensors[name])
        for name, c in self.compact.items():
            c.compact.copy_(tensors[name])
            c.push()


def apply_plan(plan: TrainingPlan, sharded: bool = False, dtype: torch.dtype = torch.float32) -> TrainableSet:
    """Set requires_grad from the plan and build compact copies (of `dtype`) for masked parameters.

    `sharded` (FSDP): every trainable parameter goes through a CompactParameter over its local shard.
    """
    trainable = TrainableSet()
    params = dict(plan.model.named_parameters())
    unknown = [name for name in plan.trainable if name not in params]
    if unknown:
        raise ValueError(f"training plan names parameters the model does not have: {unknown[:3]}")
    for name, param in params.items():
        if name not in plan.trainable:
            param.requires_grad_(False)
            continue
        param.requires_grad_(True)
        mask = plan.trainable[name]
        if mask is None and not sharded:
            trainable.whole[name] = param
        else:
            if mask is not None:
                mask.check_fits(name, tuple(param.shape), "training plan")
            own = getattr(torch, plan.masked_dtype) if mask is not None and plan.masked_dtype else dtype
            trainable.compact[name] = CompactParameter(name, param, mask, own)
    return trainable


def _decays(name: str, trainable: TrainableSet) -> bool:
    """Weight decay on matrices only; biases and norm weights (1-D) get none, as in HF Trainer."""
    base = name.removesuffix("#compact")
    param = trainable.whole.get(base)
    if param is None:
        param = trainable.compact[base].param
    return param.ndim >= 2


def fused_available(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu")


def build_optimizer(trainable: TrainableSet, config: OptimizerConfig, device: torch.device,
                    embedding_lr: Optional[float] = None, embedding_names: frozenset[str] = frozenset()) -> torch.optim.AdamW:
    """AdamW over the trainable set: decay / no-decay groups at `config.lr`; with `embedding_lr`, the
    tensors named in `embedding_names` (input embeddings, LM head) in groups of their own at that lr."""
    tensors = trainable.optimizer_tensors()
    separate = embedding_lr is not None
    groups = []
    for embedding in (False, True):
        chosen = {n: p for n, p in tensors.items() if (separate and n.removesuffix("#compact") in embedding_names) == embedding}
        lr = {"lr": embedding_lr} if embedding else {}
        groups += [{"params": [p for n, p in chosen.items() if _decays(n, trainable)], "weight_decay": config.weight_decay, **lr},
                   {"params": [p for n, p in chosen.items() if not _decays(n, trainable)], "weight_decay": 0.0, **lr}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the training plan leaves nothing to train")
    fused = fused_available(device) if config.fused is None else config.fused
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)


def lr_factor(step: int, total: int, config: ScheduleConfig) -> float:
    """Multiplier of the peak lr at `step` of `total` (see ScheduleConfig): linear warmup over
    ceil(total * warmup_ratio) steps (from 0, or from the floor for rewarm), then the named decay to the
    floor min_lr_ratio; wsd stays at the peak until its cooldown, the last ceil(total * cooldown_ratio) steps."""
    floor, warmup = config.min_lr_ratio, math.ceil(total * config.warmup_ratio)
    if step < warmup:
        start = floor if config.name == "rewarm" else 0.0
        return start + (1.0 - start) * step / warmup
    if config.name == "constant":
        return 1.0
    if config.name == "wsd":
        cooldown = math.ceil(total * config.cooldown_ratio)
        begin = total - cooldown
        if step < begin or cooldown == 0:
            return 1.0
        return floor + (1.0 - floor) * _decay_shape(config.cooldown_shape, (step - begin) / cooldown)
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * _decay_shape("linear" if config.name == "linear" else "cosine", progress)


def _decay_shape(shape: str, progress: float) -> float:
    """From 1 at progress 0 down to 0 at progress 1 (clamped there)."""
    progress = min(1.0, max(0.0, progress))
    if shape == "linear":
        return 1.0 - progress
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))
