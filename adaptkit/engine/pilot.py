"""A short plain fine-tune run while planning, for methods that choose what to train from a trial run
(LoTA's mask calibration), through the engine's own step (engine/loop.py's `train_step`): the same
inputs (packing, document masks), precision, clipping, device-side non-finite check and update.

It uses the run's own settings: AdamW with the run's optimizer config, the run's schedule
stretched over the pilot steps, the run's batch size, micro-batches and precision, and the run's
deterministic batches (steps 0..N-1). It trains every parameter (a full plan, no callbacks).
Every process computes it in full on the global batches (in micro-batches of the size the main
loop uses per process) with no gradient reduction (engine/distributed.py's LocalStrategy), so the
decision it informs is the same in every process. The RNG state is restored afterwards, so the
main run does not depend on whether a pilot ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from adaptkit.engine.plan import MethodContext


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def pilot_finetune(model: torch.nn.Module, ctx: "MethodContext", steps: int) -> list[float]:
    """Fully fine-tune `model` in place for `steps` optimizer steps; returns the loss of each step."""
    from adaptkit.engine.batches import Batches
    from adaptkit.engine.distributed import LocalStrategy
    from adaptkit.engine.divergence import Divergence
    from adaptkit.engine.loop import Training, TrainingRun, train_step
    from adaptkit.engine.optim import apply_plan, build_optimizer, build_schedule
    from adaptkit.engine.plan import TrainingPlan
    from adaptkit.engine.precision import autocast_for, micro_batch_size, resolve_precision
    from adaptkit.engine.rundir import RunDir
    from adaptkit.engine.training_data import TrainingData

    config, plan = ctx.config, TrainingPlan.full(model)
    trainable = apply_plan(plan)
    optimizer = build_optimizer(trainable, config.optimizer, ctx.device)
    batches = Batches(ctx.train_blocks, config.batch_size, micro_batch_size(config, _world_size()), config.seed)
    run = TrainingRun(config, RunDir(ctx.output_dir, main=False), LocalStrategy(), ctx.device, ctx.tokenizer, model,
              TrainingData({}, ctx.train_blocks), steps, log=ctx.log)
    t = Training(plan, trainable, optimizer, build_schedule(optimizer, config.schedule, steps), model, model, batches,
                 autocast_for(resolve_precision(config, ctx.device), ctx.device), Divergence(optimizer, ctx.device, lambda: "no checkpoint is kept by a pilot run"),
                 optimizer_tensors=[p for group in optimizer.param_groups for p in group["params"]])
    losses: list[torch.Tensor] = []
    model.train()
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        for step in range(steps):
            losses.append(train_step(run, t, step)[0])
            if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
                t.divergence.check()
                ctx.log(f"pilot fine-tune: step {step + 1}/{steps}, loss {float(losses[-1]):.4f}")
    del optimizer, t
    return [float(loss) for loss in losses]
