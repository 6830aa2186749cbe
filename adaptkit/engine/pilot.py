"""A short plain fine-tune run while planning, for methods that choose what to train from a trial run
(LoTA's mask calibration).

It uses the run's own settings: AdamW with the run's optimizer config, the run's schedule
stretched over the pilot steps, the run's batch size, micro-batches, clipping and precision, and
the run's deterministic batches (steps 0..N-1). Every process computes it in full on the global
batches (in micro-batches of the size the main loop uses per process), so the decision it informs
is the same in every process. The RNG state is restored
afterwards, so the main run does not depend on whether a pilot ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from adaptkit.engine.batches import Batches
from adaptkit.engine.loop import autocast_for, resolve_precision
from adaptkit.engine.optim import apply_plan, build_optimizer, build_schedule
from adaptkit.engine.plan import TrainingPlan

if TYPE_CHECKING:
    from adaptkit.engine.plan import MethodContext


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def pilot_finetune(model: torch.nn.Module, ctx: "MethodContext", steps: int) -> list[float]:
    """Fully fine-tune `model` in place for `steps` optimizer steps; returns the loss of each step."""
    config = ctx.config
    trainable = apply_plan(TrainingPlan.full(model))
    optimizer = build_optimizer(trainable, config.optimizer, ctx.device)
    scheduler = build_schedule(optimizer, config.schedule, steps)
    batches = Batches(ctx.train_blocks, config.batch_size, config.micro_batch_size or max(1, config.batch_size // _world_size()), config.seed)
    autocast = autocast_for(resolve_precision(config, ctx.device), ctx.device)
    losses: list[float] = []
    model.train()
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        for step in range(steps):
            total = 0.0
            for micro in range(batches.accumulation):
                input_ids = batches.get(step, micro).to(ctx.device)
                with autocast():
                    loss = model(input_ids=input_ids, labels=input_ids).loss / batches.accumulation
                loss.backward()
                total += float(loss.detach())
            if config.max_grad_norm:  # same tensors in the same order as the main loop
                torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
            if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
                ctx.log(f"pilot fine-tune: step {step + 1}/{steps}, loss {total:.4f}")
    del optimizer, scheduler
    return losses
