"""Precision and batch arithmetic, the one home of each: the resolved precision, the forward
pass's autocast, the dtype of the weights, and the micro-batch a process runs per forward pass."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable, ContextManager

import torch

from adaptkit.errors import InputError

if TYPE_CHECKING:
    from adaptkit.engine.config import TrainConfig


def resolve_precision(config: "TrainConfig", device: torch.device) -> str:
    """--precision, with auto: bf16 on a GPU that supports it, else fp32."""
    if config.precision != "auto":
        return config.precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast_for(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """A factory of the forward pass's autocast context (bf16 autocast for bf16 and bf16-pure, or none)."""
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision.startswith("bf16") else nullcontext


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights and of what the optimizer updates: bf16 in bf16-pure (no fp32 master
    copy, as the SSU reference trains a bf16-loaded model with the HF Trainer's --bf16), else float32."""
    return torch.bfloat16 if precision == "bf16-pure" else torch.float32


def micro_batch_size(config: "TrainConfig", processes: int) -> int:
    """Sequences per forward pass and process: --micro-batch-size, by default the batch divided over
    the processes (no accumulation). The batch must be a whole number of micro-batches of all processes."""
    processes = max(1, processes)
    micro = config.micro_batch_size or max(1, config.batch_size // processes)
    if config.batch_size % (micro * processes):
        raise InputError(f"--batch-size {config.batch_size} must be a multiple of --micro-batch-size {micro} x {processes} process(es)")
    return micro
