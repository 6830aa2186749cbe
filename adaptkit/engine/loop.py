"""The training loop that every method shares, as a sequence of named phases:

    set_up          processes, run directory (engine/rundir.py), device, precision, seed, tokenizer, data, model
    make_plan       the one plan (engine/planner.py), distributed by the strategy, and its trainable set
    make_training   optimizer, schedule, prepared model, batches; MetricsLog (engine/metrics.py),
                    Evaluator (engine/evaluation.py), Checkpointer (engine/checkpointer.py)
    resume          config.yaml; with --resume, the newest checkpoint
    run_steps       for each step: train_step, then log, evaluate and checkpoint when due
    export          final/ (dense model, plus what callbacks save) and the cards (engine/cards.py)

Method-specific behaviour comes only from the TrainingPlan (what trains, masks, callbacks), the DDP/FSDP
differences only from the Strategy (engine/distributed.py): no method name or distributed mode is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch

from adaptkit.data.mixture import Mixture
from adaptkit.engine.batches import Batches, model_inputs
from adaptkit.engine.checkpointer import Checkpointer
from adaptkit.engine.config import TrainConfig
from adaptkit.engine.distributed import Strategy
from adaptkit.engine.divergence import Divergence
from adaptkit.engine.evaluation import Evaluator
from adaptkit.engine.metrics import MetricsLog
from adaptkit.engine.optim import TrainableSet, apply_plan, build_optimizer, build_schedule
from adaptkit.engine.plan import MethodContext, TrainingCallback, TrainingMethod, TrainingPlan
from adaptkit.engine.precision import autocast_for, weight_dtype
from adaptkit.engine.result import TrainResult
from adaptkit.engine.rundir import RunDir
from adaptkit.engine.training_data import TrainingData

__all__ = ["Batches", "TrainResult", "train", "train_step"]


@dataclass
class TrainingRun:
    """What set-up establishes before planning: processes, device, data and the loaded model."""

    config: TrainConfig
    dir: RunDir
    strategy: Strategy
    device: torch.device
    tokenizer: Any
    model: torch.nn.Module
    data: TrainingData
    steps: int
    accelerator: Any = None
    precision: str = "fp32"
    micro_batch_size: int = 1
    model_location: str = ""
    log: Callable[[str], None] = print
    progress: Any = None
    trackers: Any = None  # engine/trackers.py: --report-to, fed each metrics row
    new_vocab_rows: Optional[list[int]] = None  # rows `vocab extend` / `vocab transplant` added, read when train_embeddings=new-only

    @property
    def main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process


@dataclass
class Training:
    """The planned model and everything that updates, logs, evaluates and saves it."""

    plan: TrainingPlan
    trainable: TrainableSet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_model: torch.nn.Module  # prepared by the strategy (DDP-wrapped, or the sharded model)
    forward_model: torch.nn.Module  # train_model, or its torch.compile'd version
    batches: Mixture
    autocast: Callable[[], ContextManager]
    divergence: Divergence
    fingerprint: str = ""  # architecture + trainable count: a checkpoint resumes only into the same plan
    counts: tuple[int, int] = (0, 0)  # (trainable entries, all entries)
    updating: bool = False  # inside train_step's update (optimizer step .. schedule step): no consistent state
    metrics: Optional[MetricsLog] = None
    evaluator: Optional[Evaluator] = None
    checkpointer: Optional[Checkpointer] = None
    optimizer_tensors: list[torch.Tensor] = field(default_factory=list)
    lm_loss: Optional[Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]] = None  # engine/lm_loss.py; None: the model's own


def train(config: TrainConfig, method: TrainingMethod, run_dir: Path, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print, progress: Any = None) -> TrainResult:
    """Run one training job: `config` says how, `method` (with its validated params) what trains."""
    run = set_up(config, Path(run_dir), resume, overwrite, log, progress, method)
    try:
        plan, trainable = make_plan(run, method)
        training = make_training(run, plan, trainable)
        start_step, resumed_from = resume_run(run, training, resume)
        run_steps(run, training, start_step)
        return export(run, training, training.metrics, start_step, resumed_from)
    finally:
        run.trackers.finish()
        run.dir.release()


def set_up(config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, log: Callable[[str], None], progress: Any,
           method: Optional[TrainingMethod] = None) -> TrainingRun:
    """Processes, run-directory checks, memory plan, device, precision and seed; then tokenizer, data and model."""
    from adaptkit.engine import distributed, trackers
    from adaptkit.engine.embedding_rows import recorded_new_rows
    from adaptkit.engine.lm_loss import check_kernel
    from adaptkit.engine.memory_plan import check_fits
    from adaptkit.engine.precision import micro_batch_size, resolve_precision
    from adaptkit.engine.rundir import resolved_config_dict
    from adaptkit.engine.training_data import data_warnings, load_training_data, total_steps
    from adaptkit.io.models import check_context_length, context_length, default_attn_implementation, load_causal_lm, load_tokenizer, resolve_model_source, source_context_length
    from adaptkit.seeding import seed_everything

    RunDir.check(run_dir, config, resume, overwrite)
    report_to = trackers.check_available(config.report_to)
    accelerator = distributed.make_accelerator(config.device, log_with=report_to, logging_dir=trackers.logging_dir(run_dir))
    if not accelerator.is_main_process:  # one voice: only the main process logs and shows progress
        log, progress = (lambda message: None), None
    device, precision = accelerator.device, resolve_precision(config, accelerator.device)
    check_kernel(config.loss, device)
    if method is not None:  # the memory plan against the device's free memory, before anything loads
        check_fits(config, method, accelerator.num_processes, distributed.resolve_mode(config.distributed, accelerator.num_processes), device)
    seed_everything(config.seed)
    micro = micro_batch_size(config, accelerator.num_processes)
    source = resolve_model_source(config.model, "--model")
    new_rows = recorded_new_rows(config.train_embeddings, source)
    check_context_length(config.data.seq_len, source_context_length(source), "--seq-len")  # before any weights load
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    data = load_training_data(config, tokenizer, log)
    attn = config.attn_implementation or default_attn_implementation(device)
    model = load_causal_lm(source, weight_dtype(precision), config.trust_remote_code, attn).to(device)
    check_context_length(config.data.seq_len, context_length(model.config), "--seq-len")  # GGUF files and Hub ids
    run = TrainingRun(config, RunDir(run_dir, accelerator.is_main_process, log), distributed.make_strategy(accelerator, config.distributed), device,
              tokenizer, model, data, total_steps(config, data.blocks.shape[0]), accelerator, precision, micro, source.location, log,
              progress, new_vocab_rows=new_rows)
    for warning in data_warnings(config, data.blocks.shape[0], run.steps):
        log(f"warning: {warning}")
    run.dir.open(resume, overwrite, accelerator.wait_for_everyone)
    run.trackers = trackers.Trackers(accelerator, report_to, config.project, config.run_name or run_dir.name, run_dir)
    run.trackers.start(resolved_config_dict(config))
    return run


def make_plan(run: TrainingRun, method: TrainingMethod) -> tuple[TrainingPlan, TrainableSet]:
    """The one plan (engine/planner.py), distributed by the strategy, and the trainable set the optimizer will update."""
    from adaptkit.engine import masked_linear
    from adaptkit.engine.averaging import averaging_callbacks
    from adaptkit.engine.checkpointer import checkpoint_interval
    from adaptkit.engine.planner import build_plan

    config = run.config
    ctx = MethodContext(method.params, config, run.tokenizer, run.dir.path, run.steps, run.device, run.data.blocks, run.log,
                        is_main_process=run.main)
    with run.dir.removed_on_bad_input():
        plan = build_plan(method, run.model, ctx, run.new_vocab_rows)
        run.strategy.shard(plan, config.method)
        plan.callbacks += averaging_callbacks(config.averaging, plan, run.steps, checkpoint_interval(config, run.steps))
        trainable = apply_plan(plan, sharded=run.strategy.sharded, dtype=weight_dtype(run.precision))
    masked_linear.install_for_plan(plan, trainable)
    if config.gradient_checkpointing:  # transformers 5 renamed it; keep both spellings working
        (getattr(plan.model, "activation_checkpointing_enable", None) or plan.model.gradient_checkpointing_enable)()
    return plan, trainable


def make_training(run: TrainingRun, plan: TrainingPlan, trainable: TrainableSet) -> Training:
    """Optimizer and schedule over the trainable set, the model the loop runs, the batches; metrics, evaluator, checkpointer."""
    from adaptkit.engine.lm_loss import select_loss
    from adaptkit.engine.special_tokens import token_row_parameters
    from adaptkit.io.models import model_fingerprint

    config, accelerator = run.config, run.accelerator
    optimizer = build_optimizer(trainable, config.optimizer, run.device, config.embedding_lr, frozenset(token_row_parameters(plan)))
    train_model = run.strategy.prepare(plan.model)
    batches = Mixture(run.data.sources, {s.name: s.weight for s in config.data.mixture()}, config.batch_size, run.micro_batch_size, config.seed, accelerator.process_index, accelerator.num_processes)
    for warning in batches.starved(run.steps * config.batch_size) if run.main else []:
        run.log(f"warning: {warning}")
    counts = plan.counts()
    t = Training(plan, trainable, optimizer, build_schedule(optimizer, config.schedule, run.steps), train_model,
                 torch.compile(train_model) if config.compile else train_model, batches, autocast_for(run.precision, run.device),
                 Divergence(optimizer, run.device, run.dir.kept_checkpoint), f"{model_fingerprint(plan.model)}:{counts[0]}", counts,
                 optimizer_tensors=[p for group in optimizer.param_groups for p in group["params"]])
    with run.dir.removed_on_bad_input():  # loss.chunked=on with a head the chunked loss does not cover
        t.lm_loss = select_loss(config.loss, plan.model, run.device, run.micro_batch_size * config.data.seq_len, run.log)
    t.metrics = MetricsLog.for_run(run, t)
    t.evaluator = Evaluator(run.data.evals, config, run.steps, run.tokenizer, accelerator, run.device, run.log, run.dir.path / "curves.png")
    t.checkpointer = Checkpointer(run.dir, run.strategy, t, t.metrics, config, run.steps, accelerator.num_processes, t.divergence.check)
    return t


def resume_run(run: TrainingRun, t: Training, resume: bool) -> tuple[int, Optional[int]]:
    """config.yaml; with --resume the newest checkpoint, metrics.jsonl trimmed to it. Returns (first step, step resumed from)."""
    run.dir.write_config(run.config)
    resumed_from = t.checkpointer.resume() if resume else None
    if resume:
        t.metrics.trim(resumed_from or 0)
    run.accelerator.wait_for_everyone()
    return resumed_from or 0, resumed_from


def run_steps(run: TrainingRun, t: Training, start_step: int) -> None:
    """The loop: one train_step per optimizer step, then its metrics row, evaluation and checkpoint when due.
    An interrupt (Ctrl-C, SIGTERM) saves a checkpoint of the last completed step, then goes on up."""
    metrics, evaluator, checkpointer = t.metrics, t.evaluator, t.checkpointer
    metrics.show(run.progress, start_step)
    t.train_model.train()
    if start_step == 0:
        evaluator.maybe_evaluate(t.plan.model, 0, metrics)
    try:
        for step in range(start_step, run.steps):
            loss, grad_norm, lr = train_step(run, t, step)
            checkpointer.step_done(step + 1)
            metrics.maybe_log(step + 1, loss, grad_norm, lr)
            evaluator.maybe_evaluate(t.plan.model, step + 1, metrics)
            checkpointer.maybe_save(step + 1)
            run.accelerator.wait_for_everyone()
    except BaseException as exc:
        checkpointer.save_interrupted(exc)
        raise
    metrics.finish()


def train_step(run: TrainingRun, t: Training, step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step: micro-batches (forward, callback losses, backward), gradient transforms, compact gradients,
    clip, non-finite check, update, write-back, step-end callbacks. Returns device tensors (mean loss, grad norm) and lr."""
    model, callbacks, accumulation = t.plan.model, t.plan.callbacks, t.batches.accumulation
    step_loss = torch.zeros((), device=run.device)
    for micro in range(accumulation):
        inputs = model_inputs(t.batches.get(step, micro).to(run.device), run.config.data.packing, run.tokenizer.eos_token_id,
                              getattr(model.config, "_attn_implementation", None))
        with run.strategy.micro_batch(t.train_model, sync=micro == accumulation - 1), t.autocast():
            loss = step_loss_of(t.forward_model, inputs, callbacks, model, t.lm_loss)
        run.strategy.backward(loss / accumulation)
        step_loss += loss.detach() / accumulation
        for callback in callbacks:
            callback.after_backward(model, step, micro)
    for callback in callbacks:
        callback.transform_gradients(model, step)
    t.trainable.pull_grads()
    grad_norm = run.strategy.clip(t.optimizer_tensors, run.config.max_grad_norm, run.device)
    lr = t.scheduler.get_last_lr()[0]
    mean_loss = run.strategy.mean_loss(step_loss)
    t.divergence.update(step + 1, mean_loss, grad_norm)  # a non-finite step leaves weights and state as they were
    t.updating = True  # from here to the schedule step, an interrupt leaves the state between two steps
    t.optimizer.step()
    t.trainable.push()
    for callback in callbacks:
        callback.on_step_end(model, step)
    t.optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    t.scheduler.step()
    t.updating = False
    return mean_loss, grad_norm, lr


def step_loss_of(forward_model: torch.nn.Module, inputs: dict[str, torch.Tensor], callbacks: list[TrainingCallback],
                 model: torch.nn.Module, lm_loss: Optional[Callable[..., torch.Tensor]] = None) -> torch.Tensor:
    """The loss of one micro-batch: the language-modelling loss (`lm_loss`, engine/lm_loss.py; default the
    model's own) plus every callback's loss term (e.g. a regularizer)."""
    loss = lm_loss(forward_model, inputs) if lm_loss is not None else forward_model(**inputs).loss
    for callback in callbacks:
        term = callback.extra_loss(model)
        if term is not None:
            loss = loss + term
    return loss


def export(run: TrainingRun, t: Training, metrics: MetricsLog, start_step: int, resumed_from: Optional[int]) -> TrainResult:
    """Save final/ (what the callbacks export: a plain dense model), its model card and the run card."""
    from adaptkit.engine.cards import data_lines, train_card, write_run_card
    from adaptkit.engine.memory_plan import held_state_bytes
    from adaptkit.io.model_card import write_model_card

    t.divergence.check()
    config = run.config
    result = TrainResult(run.dir.path, run.dir.final, run.steps, metrics.tokens_per_step * (run.steps - start_step), metrics.seconds,
                         metrics.final_loss, *t.counts, resumed_from, metrics.history, run.main, run.accelerator.num_processes, run.strategy.name)
    result.state_bytes = held_state_bytes(t.plan.model, t.optimizer)
    for callback in t.plan.callbacks:  # a collective under FSDP: every process
        callback.gather(t.plan.model, run.main)
    whole_model = any(callback.exports_whole_model for callback in t.plan.callbacks)
    full_state = run.strategy.full_state(t.plan.model, whole_model)  # a collective under FSDP: every process
    if run.main:
        exported = run.accelerator.unwrap_model(t.train_model)
        for callback in t.plan.callbacks:
            exported = callback.export(exported)
        state = full_state if not whole_model else run.strategy.export_state(exported)  # None: the model's own state_dict
        run.dir.save_final(exported, run.tokenizer, t.plan.callbacks, state)
        write_run_card(run.dir.path, config, t.plan, result, run.model_location, data_lines(config, t.batches, run.steps))
        write_model_card(run.dir.final, train_card(config, t.plan, result, run.model_location))
    run.accelerator.wait_for_everyone()
    return result
