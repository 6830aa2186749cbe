"""The training loop that every method shares, as a sequence of named phases:

    set_up          processes, run directory, device, precision, seed, tokenizer, data, model
    make_plan       the method's plan: what trains (masks), callbacks, distributed sharding
    make_training   optimizer, schedule, the prepared (and compiled) model, the batches
    resume          config.yaml; with --resume, the newest checkpoint
    run_steps       for each step: train_step (micro-batches, callbacks, clip, step, write-back),
                    then log, evaluate (engine/evaluation.py) and checkpoint
    export          final/ (dense model, plus what callbacks save) and the run card

Method-specific behaviour comes only from the TrainingPlan (what trains, masks, callbacks);
the DDP/FSDP differences only from the Strategy chosen at set-up (engine/distributed.py).
This file never looks at a method's name or the distributed mode.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch

from adaptkit.engine import checkpoint as ckpt
from adaptkit.data.mixture import Mixture
from adaptkit.engine.batches import Batches, model_inputs
from adaptkit.engine.config import TrainConfig
from adaptkit.engine.distributed import Strategy
from adaptkit.engine.evaluation import evaluate_now
from adaptkit.engine.optim import TrainableSet, apply_plan, build_optimizer, build_schedule
from adaptkit.engine.plan import MethodContext, TrainingCallback, TrainingMethod, TrainingPlan
from adaptkit.errors import AdaptkitError, InputError

RESUME_INVARIANT_KEYS = ("model", "data", "method", "method_params", "freeze_special_tokens", "train_embeddings", "embedding_lr", "optimizer", "schedule", "averaging", "batch_size", "seed")
RESUME_FREE_KEYS = ("data.num_proc",)  # settings under those keys that do not change what trains
__all__ = ["Batches", "TrainResult", "train", "train_step"]


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    trainable: int
    total: int
    resumed_from: Optional[int] = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    main_process: bool = True  # False on the other processes of a multi-process run (they print nothing)
    processes: int = 1
    distributed: str = "none"
    state_bytes: int = 0  # this process: model parameters it holds + optimizer state

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "final": str(self.final_dir),
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "final_loss": self.final_loss,
            "trainable_parameters": self.trainable,
            "total_parameters": self.total,
            "trainable_fraction": self.trainable / max(1, self.total),
            "resumed_from": self.resumed_from,
            "processes": self.processes,
            "distributed": self.distributed,
            "state_bytes_per_process": self.state_bytes,
        }


@dataclass
class Run:
    """What set-up establishes before planning: processes, device, data and the loaded model."""

    config: TrainConfig
    run_dir: Path
    accelerator: Any
    strategy: Strategy
    device: torch.device
    precision: str
    micro_batch_size: int
    tokenizer: Any
    blocks: Any  # the blocks of all sources, one after the other (what methods see as the training data)
    steps: int
    model: torch.nn.Module
    model_location: str
    log: Callable[[str], None]
    progress: Any
    sources: dict[str, Any] = field(default_factory=dict)  # the blocks of each named source (the mixture)
    created: bool = False  # this run made the run directory (removed again if planning fails)
    trackers: Any = None  # engine/trackers.py: --report-to, fed each metrics row
    evals: list[Any] = field(default_factory=list)  # the eval sets scored during training (engine/evaluation.py)
    old_vocab_size: Optional[int] = None  # rows before `vocab extend`, read when train_embeddings=new-only

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class Training:
    """The planned model and everything that updates it: the state `train_step` works on."""

    plan: TrainingPlan
    trainable: TrainableSet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_model: torch.nn.Module  # prepared by the strategy (DDP-wrapped, or the sharded model)
    forward_model: torch.nn.Module  # train_model, or its torch.compile'd version
    batches: Mixture
    autocast: Callable[[], ContextManager]
    fingerprint: str  # architecture + trainable count: a checkpoint resumes only into the same plan
    counts: tuple[int, int]  # (trainable entries, all entries)
    updating: bool = False  # inside train_step's update (optimizer step .. schedule step): no consistent state


@dataclass
class Meter:
    """The logging window: mean loss and tokens/s since the last logging step, checkpoint time excluded."""

    tokens_per_step: int
    started: float = field(default_factory=lambda: time.perf_counter())
    window_start: float = 0.0
    window_loss: float = 0.0
    window_steps: int = 0
    paused: float = 0.0  # seconds of this window spent writing checkpoints
    last_loss: float = float("nan")
    seconds: float = 0.0  # of the whole loop, set when it ends
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.window_start = self.started

    def add(self, loss: float) -> None:
        self.last_loss = loss
        self.window_loss += loss
        self.window_steps += 1

    def flush(self, step: int, lr: float, grad_norm: float) -> dict[str, Any]:
        """The metrics row of this window; starts the next one."""
        now = time.perf_counter()
        record = {
            "step": step,
            "loss": self.window_loss / self.window_steps,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": self.tokens_per_step * self.window_steps / max(now - self.window_start - self.paused, 1e-9),
            "elapsed_s": now - self.started,
        }
        self.history.append(record)
        self.window_start, self.window_loss, self.window_steps, self.paused = now, 0.0, 0, 0.0
        return record

    @property
    def final_loss(self) -> float:
        """The loss of the last metrics row (the last logging window), as the run reports it."""
        return self.history[-1]["loss"] if self.history else self.last_loss


def total_steps(config: TrainConfig, num_blocks: int) -> int:
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(config.epochs * num_blocks / config.batch_size))


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
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


def _resolved_config_dict(config: TrainConfig) -> dict[str, Any]:
    return json.loads(config.model_dump_json())


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    """The settings a checkpoint depends on are those of the run; each difference is named with both values."""
    from adaptkit.config import read_yaml_mapping

    saved = read_yaml_mapping(run_dir / "config.yaml", "--resume")
    current = _resolved_config_dict(config)
    differences = []
    for key in RESUME_INVARIANT_KEYS:
        old, new = _flatten(saved.get(key), key), _flatten(current.get(key), key)
        for name in sorted((set(old) | set(new)) - set(RESUME_FREE_KEYS)):
            if json.dumps(old.get(name), sort_keys=True) != json.dumps(new.get(name), sort_keys=True):
                differences.append(f"{name}: {old.get(name)!r} there, {new.get(name)!r} now")
    if differences:
        raise InputError(f"--resume: settings differ from the run in '{run_dir}' ({'; '.join(differences)}); resume with the run's settings or start a new run")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a run unless --overwrite; --resume continues one."""
    if run_dir.exists() and run_dir.is_file():
        raise InputError(f"-o/--output: '{run_dir}' is a file; expected a run directory")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise InputError(f"--resume: '{run_dir}' holds no run to resume (no config.yaml)")
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise InputError(f"-o/--output: '{run_dir}' exists and is not empty; pass --overwrite, --resume, or choose another path")
    if run_dir.resolve().parent.exists() and not run_dir.resolve().parent.is_dir():
        raise InputError(f"-o/--output: '{run_dir.resolve().parent}' is not a directory")


def train(
    config: TrainConfig,
    method: TrainingMethod,
    run_dir: Path,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: Any = None,
) -> TrainResult:
    """Run one training job: `config` says how, `method` (with its validated params) what trains."""
    run = set_up(config, Path(run_dir), resume, overwrite, log, progress)
    try:
        plan, trainable = make_plan(run, method)
        training = make_training(run, plan, trainable)
        start_step, resumed_from = resume_from_checkpoint(run, training, resume)
        meter = run_steps(run, training, start_step)
        return export(run, training, meter, start_step, resumed_from)
    finally:
        run.trackers.finish()


def set_up(config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, log: Callable[[str], None], progress: Any) -> Run:
    """Processes, run-directory checks, device, precision and seed; then tokenizer, data and model."""
    from adaptkit.engine import distributed, trackers
    from adaptkit.engine.embedding_rows import recorded_old_rows
    from adaptkit.engine.evaluation import hold_out_validation, load_eval_sets
    from adaptkit.engine.slices import slice_sources
    from adaptkit.io.models import check_context_length, context_length, default_attn_implementation, load_causal_lm, load_tokenizer, resolve_model_source, source_context_length
    from adaptkit.seeding import seed_everything

    report_to = trackers.check_available(config.report_to)
    accelerator = distributed.make_accelerator(config.device, log_with=report_to, logging_dir=trackers.logging_dir(run_dir))
    if not accelerator.is_main_process:  # one voice: only the main process logs and shows progress
        log, progress = (lambda message: None), None
    prepare_run_dir(run_dir, resume, overwrite)
    if resume:
        check_resume_config(run_dir, config)
    device = accelerator.device
    precision = resolve_precision(config, device)
    seed_everything(config.seed)
    world = accelerator.num_processes
    strategy = distributed.make_strategy(accelerator, config.distributed)
    micro = config.micro_batch_size or max(1, config.batch_size // world)
    if config.batch_size % (micro * world):
        raise InputError(f"--batch-size {config.batch_size} must be a multiple of --micro-batch-size {micro} x {world} process(es)")
    source = resolve_model_source(config.model, "--model")
    old_rows = recorded_old_rows(config.train_embeddings, source)
    check_context_length(config.data.seq_len, source_context_length(source), "--seq-len")  # before any weights load
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    sources, blocks = load_data(config, tokenizer, log)
    sources, blocks, held_out = hold_out_validation(sources, blocks, config.data.validation_fraction, config.seed)
    sources, blocks = slice_sources(sources, blocks, config.data.slice, config.data.seq_len)
    evals = load_eval_sets(config, tokenizer, held_out)
    attn = config.attn_implementation or default_attn_implementation(device)
    model = load_causal_lm(source, weight_dtype(precision), config.trust_remote_code, attn).to(device)
    check_context_length(config.data.seq_len, context_length(model.config), "--seq-len")  # GGUF files and Hub ids
    run = Run(config, run_dir, accelerator, strategy, device, precision, micro, tokenizer, blocks,
              total_steps(config, blocks.shape[0]), model, source.location, log, progress, sources, evals=evals, old_vocab_size=old_rows)
    for warning in data_warnings(config, blocks.shape[0], run.steps):
        log(f"warning: {warning}")
    _open_run_dir(run, resume, overwrite)
    run.trackers = trackers.Trackers(accelerator, report_to, config.project, config.run_name or run_dir.name, run_dir)
    run.trackers.start(_resolved_config_dict(config))
    return run


def load_data(config: TrainConfig, tokenizer: Any, log: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """The blocks of each named source (from the token store, built once per node) and of all together."""
    from adaptkit.data.corpus import load_mixture
    from adaptkit.data.store import StoreBlocks

    data = config.data
    mixture = data.mixture()
    if not mixture:
        raise InputError("--data: no training data given")
    groups = [s.spec for s in mixture]
    fields = [s.text_field or data.text_field for s in mixture]
    blocks = load_mixture(groups, tokenizer, data.seq_len, fields, [s.max_tokens for s in mixture], data.max_tokens,
                          data.format, data.cache, "--data", data.num_proc, log)
    together = StoreBlocks([segment for b in blocks for segment in b.segments], data.seq_len)
    return {s.name: b for s, b in zip(mixture, blocks)}, together


def data_warnings(config: TrainConfig, num_blocks: int, steps: int) -> list[str]:
    """What makes a run train on less than it seems: data smaller than one batch, a learning rate that
    never leaves 0 (warmup longer than the run) or never reaches its peak. Each says what to change."""
    from adaptkit.engine.optim import lr_factor

    warnings, seq_len, batch = [], config.data.seq_len, config.batch_size
    if num_blocks < batch:
        warnings.append(f"--data gives {num_blocks} block(s) of {seq_len} tokens ({num_blocks * seq_len:,} tokens), fewer than one batch of "
                        f"{batch} x {seq_len} tokens: every step repeats them; give more text, or a smaller --batch-size or --seq-len")
    warmup = math.ceil(steps * config.schedule.warmup_ratio)
    if not any(lr_factor(step, steps, config.schedule) > 0 for step in range(steps)):
        warnings.append(f"the learning rate stays 0 for all {steps} optimizer step(s) (warmup takes {warmup}), so the weights will not change; "
                        "give more data, --max-steps or --epochs, or --warmup-ratio 0")
    elif warmup >= steps:
        warnings.append(f"warmup takes {warmup} of the {steps} optimizer steps, so the learning rate never reaches --lr {config.optimizer.lr:g}; "
                        "give more data, --max-steps or --epochs, or a smaller --warmup-ratio")
    return warnings


def _open_run_dir(run: Run, resume: bool, overwrite: bool) -> None:
    """Create (or, with --overwrite, replace) the run directory; on --resume remove half-written saves."""
    run.created = not run.run_dir.exists()
    run.accelerator.wait_for_everyone()  # every process has checked the run directory before it changes
    if run.main:
        if overwrite and not resume and run.run_dir.exists():
            shutil.rmtree(run.run_dir)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            removed = ckpt.remove_partials(run.run_dir)
            if removed:
                run.log(f"removed what an interrupted run left half-written: {', '.join(removed)}")
    run.accelerator.wait_for_everyone()


def make_plan(run: Run, method: TrainingMethod) -> tuple[TrainingPlan, TrainableSet]:
    """The method's plan, distributed by the strategy, and the trainable set the optimizer will update."""
    from adaptkit.engine import masked_linear
    from adaptkit.engine.averaging import averaging_callbacks
    from adaptkit.engine.embedding_rows import restrict_embedding_rows

    config = run.config
    ctx = MethodContext(method.params, config, run.tokenizer, run.run_dir, run.steps, run.device, run.blocks, run.log,
                        is_main_process=run.main)
    try:
        plan = method.plan(run.model, ctx)
        plan.callbacks += averaging_callbacks(config.averaging, plan, run.steps, checkpoint_interval(config, run.steps), run.strategy.sharded)
        _freeze_special_tokens_if_set(run, method, plan)
        restrict_embedding_rows(plan, config.train_embeddings, run.old_vocab_size, run.log)
        run.strategy.shard(plan, config.method)
        trainable = apply_plan(plan, sharded=run.strategy.sharded, dtype=weight_dtype(run.precision))
    except InputError:
        if run.created and run.main:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        raise
    masked_linear.install_for_plan(plan, trainable)
    if config.gradient_checkpointing:  # transformers 5 renamed it; keep both spellings working
        (getattr(plan.model, "activation_checkpointing_enable", None) or plan.model.gradient_checkpointing_enable)()
    return plan, trainable


def _freeze_special_tokens_if_set(run: Run, method: TrainingMethod, plan: TrainingPlan) -> None:
    """The run's freeze_special_tokens setting (default: the method's): special-token rows of the
    embeddings and LM head leave the plan (engine/special_tokens.py)."""
    from adaptkit.engine.special_tokens import freeze_special_token_rows

    wanted = run.config.freeze_special_tokens
    if method.freeze_special_tokens if wanted is None else wanted:
        tokens = freeze_special_token_rows(plan, run.tokenizer, run.log)
        plan.summary = f"{plan.summary}; embedding/head rows of {len(tokens)} special tokens frozen"


def make_training(run: Run, plan: TrainingPlan, trainable: TrainableSet) -> Training:
    """Optimizer and schedule over the trainable set, the model the loop runs, the batches."""
    from adaptkit.engine.special_tokens import token_row_parameters
    from adaptkit.io.models import model_fingerprint

    config = run.config
    counts = plan.counts()
    optimizer = build_optimizer(trainable, config.optimizer, run.device, config.embedding_lr, frozenset(token_row_parameters(plan)))
    scheduler = build_schedule(optimizer, config.schedule, run.steps)
    train_model = run.strategy.prepare(plan.model)
    forward_model = torch.compile(train_model) if config.compile else train_model
    accelerator = run.accelerator
    weights = {s.name: s.weight for s in config.data.mixture()}
    batches = Mixture(run.sources, weights, config.batch_size, run.micro_batch_size, config.seed, accelerator.process_index, accelerator.num_processes)
    fingerprint = f"{model_fingerprint(plan.model)}:{counts[0]}"
    return Training(plan, trainable, optimizer, scheduler, train_model, forward_model, batches,
                    autocast_for(run.precision, run.device), fingerprint, counts)


def resume_from_checkpoint(run: Run, training: Training, resume: bool) -> tuple[int, Optional[int]]:
    """Write config.yaml; with --resume, restore the newest checkpoint. Returns (first step, step resumed from)."""
    from adaptkit.io.atomic import write_text_atomic

    if run.main:
        write_text_atomic(run.run_dir / "config.yaml", config_yaml(run.config))
    start_step, resumed_from = 0, None
    latest = ckpt.latest_checkpoint(run.run_dir) if resume else None
    if latest is not None:
        t = training
        state = run.strategy.load_checkpoint(latest, t.trainable, t.optimizer, t.scheduler, t.plan.callbacks)
        if state.get("fingerprint") != t.fingerprint:
            raise InputError(f"--resume: '{latest}' was saved from a model with another architecture or training plan")
        start_step = resumed_from = state["step"]
        if run.main:
            _truncate_metrics(run.run_dir / "metrics.jsonl", start_step)
        run.log(f"resumed from {latest.name}")
    run.accelerator.wait_for_everyone()
    return start_step, resumed_from


def run_steps(run: Run, training: Training, start_step: int) -> Meter:
    """The loop: one train_step per optimizer step, then its metrics row and checkpoint when due.
    An interrupt (Ctrl-C, SIGTERM) saves a checkpoint of the last completed step, then goes on up."""
    meter = Meter(run.config.batch_size * run.config.data.seq_len)
    progress = run.progress
    task = progress.add_task("training", total=run.steps, completed=start_step) if progress else None
    training.train_model.train()
    if start_step == 0:
        evaluate_now(run, training, 0, meter)
    completed, rng = start_step, ckpt.capture_rng()
    try:
        for step in range(start_step, run.steps):
            loss, grad_norm, lr = train_step(run, training, step)
            completed, rng = step + 1, ckpt.capture_rng()
            meter.add(float(loss))
            if completed % run.config.log_steps == 0 or completed == run.steps:
                record = meter.flush(completed, lr, grad_norm)
                record["tokens_by_source"] = tokens_by_source(run, training, completed)
                if run.main:
                    with open(run.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(record) + "\n")
                    run.trackers.log(record)
                if progress:
                    progress.update(task, completed=completed, loss=record["loss"], tps=record["tokens_per_s"], lr=record["lr"])
            elif progress:
                progress.update(task, completed=completed)
            evaluate_now(run, training, completed, meter)
            if _checkpoint_due(run, completed):
                _save_checkpoint(run, training, completed, meter)
            run.accelerator.wait_for_everyone()
    except BaseException as exc:
        if _is_interrupt(exc):
            _save_interrupted(run, training, completed, rng, meter)
        raise
    meter.seconds = time.perf_counter() - meter.started
    return meter


def tokens_by_source(run: Run, training: Training, done: int) -> dict[str, int]:
    """Tokens of each source trained on in the first `done` steps (all processes together)."""
    return {name: seen["tokens"] for name, seen in training.batches.seen(done * run.config.batch_size).items()}


def _is_interrupt(exc: BaseException) -> bool:
    """KeyboardInterrupt, or the CLI's exception for SIGINT/SIGTERM: BaseExceptions that are no Exception."""
    return not isinstance(exc, (Exception, SystemExit, GeneratorExit))


def _save_interrupted(run: Run, t: Training, completed: int, rng: Any, meter: Meter) -> None:
    """Checkpoint the last completed step of an interrupted run, unless it is on disk already or the
    interrupt came in the middle of an update (then the state is neither step; the last checkpoint stays)."""
    if t.updating or run.strategy.sharded or (run.run_dir / f"checkpoint-{completed}").is_dir():
        return  # a sharded save needs every process, which an interrupt does not coordinate
    if completed == 0 or completed >= run.steps:
        return
    ckpt.restore_rng(*rng)  # the RNG as it was when that step completed (a forward pass may have drawn since)
    _save_checkpoint(run, t, completed, meter)


def train_step(run: Run, t: Training, step: int) -> tuple[torch.Tensor, float, float]:
    """One optimizer step: micro-batches (forward, callback losses, backward), gradient transforms,
    compact gradients, clip, optimizer step, write-back, step-end callbacks. Returns (mean loss, grad norm, lr)."""
    model, callbacks, accumulation = t.plan.model, t.plan.callbacks, t.batches.accumulation
    step_loss = torch.zeros((), device=run.device)
    for micro in range(accumulation):
        inputs = model_inputs(t.batches.get(step, micro).to(run.device), run.config.data.packing, run.tokenizer.eos_token_id,
                              getattr(model.config, "_attn_implementation", None))
        with run.strategy.micro_batch(t.train_model, sync=micro == accumulation - 1), t.autocast():
            loss = _add_callback_losses(t.forward_model(**inputs).loss, callbacks, model)
        run.accelerator.backward(loss / accumulation)
        step_loss += loss.detach() / accumulation
    for callback in callbacks:
        callback.transform_gradients(model, step)
    t.trainable.pull_grads()
    optimizer_tensors = [p for group in t.optimizer.param_groups for p in group["params"]]
    grad_norm = run.strategy.clip(optimizer_tensors, run.config.max_grad_norm, run.device)
    lr = t.scheduler.get_last_lr()[0]
    mean_loss = run.strategy.mean_loss(step_loss)
    stop_if_diverged(run, step + 1, float(mean_loss), grad_norm)
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


def stop_if_diverged(run: Run, step: int, loss: float, grad_norm: float) -> None:
    """A non-finite loss or gradient norm stops the run before its update (every process sees the same
    reduced values): exit 1, the checkpoints so far are kept, final/ is not written."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    raise AdaptkitError(f"training diverged at step {step}: loss {loss:.4g}, gradient norm {grad_norm:.4g}; "
                        f"stopped before that update, final/ not written; {_kept_checkpoint(run.run_dir)}; "
                        "lower --lr or clip gradients (--max-grad-norm)")


def _kept_checkpoint(run_dir: Path) -> str:
    latest = ckpt.latest_checkpoint(run_dir)
    return f"the last good checkpoint {latest.name} in '{run_dir}' is kept" if latest else f"no checkpoint was saved in '{run_dir}' yet"


def _add_callback_losses(loss: torch.Tensor, callbacks: list[TrainingCallback], model: torch.nn.Module) -> torch.Tensor:
    """The language-modelling loss plus every callback's loss term (e.g. a regularizer)."""
    for callback in callbacks:
        term = callback.extra_loss(model)
        if term is not None:
            loss = loss + term
    return loss


def checkpoint_interval(config: TrainConfig, steps: int) -> int:
    """Steps between checkpoints: --save-steps, by default every 10% of the run's steps (rounded up); 0: none."""
    return config.save_steps if config.save_steps is not None else math.ceil(steps / 10)


def _checkpoint_due(run: Run, done: int) -> bool:
    """Every checkpoint_interval steps, but not at the end, where final/ is saved."""
    every = checkpoint_interval(run.config, run.steps)
    return bool(every) and done % every == 0 and done < run.steps


def _save_checkpoint(run: Run, t: Training, done: int, meter: Meter) -> None:
    """checkpoint-<done>/, keeping the newest save_total_limit; its time is kept out of tokens/s."""
    began = time.perf_counter()
    metadata = {"loss": meter.last_loss, "fingerprint": t.fingerprint, "processes": run.accelerator.num_processes, "distributed": run.strategy.name}
    run.strategy.save_checkpoint(run.run_dir, done, t.trainable, t.optimizer, t.scheduler, t.plan.callbacks, metadata, run.config.save_total_limit)
    meter.paused += time.perf_counter() - began


def export(run: Run, t: Training, meter: Meter, start_step: int, resumed_from: Optional[int]) -> TrainResult:
    """Save final/ (what the callbacks export: a plain dense model), its model card and the run card."""
    from adaptkit.engine.cards import train_card
    from adaptkit.io.model_card import write_model_card

    config, final_dir = run.config, run.run_dir / "final"
    result = TrainResult(run.run_dir, final_dir, run.steps, meter.tokens_per_step * (run.steps - start_step), meter.seconds,
                         meter.final_loss, *t.counts, resumed_from, meter.history, run.main, run.accelerator.num_processes, run.strategy.name)
    result.state_bytes = _state_bytes(t.plan.model, t.optimizer)
    whole_model = any(callback.exports_whole_model for callback in t.plan.callbacks)
    full_state = run.strategy.full_state(t.plan.model, whole_model)  # a collective under FSDP: every process
    if run.main:
        exported = run.accelerator.unwrap_model(t.train_model)
        for callback in t.plan.callbacks:
            exported = callback.export(exported)
        state = full_state if not whole_model else run.strategy.export_state(exported)  # None: the model's own state_dict
        # (under FSDP the exported module's state_dict() would reshard it: check exactly what is saved)
        _refuse_non_finite(state if state is not None else exported.state_dict(), run.run_dir)
        _save_final(exported, run.tokenizer, t.plan, final_dir, state)
        _write_run_card(run.run_dir, config, t.plan, result, run.model_location, _data_lines(config, t.batches, run.steps))
        write_model_card(final_dir, train_card(config, t.plan, result, run.model_location))
    run.accelerator.wait_for_everyone()
    return result


def _refuse_non_finite(tensors: dict[str, torch.Tensor], run_dir: Path) -> None:
    """Never write a final/ with inf or NaN weights."""
    bad = next((name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)
    if bad is not None:
        raise AdaptkitError(f"the trained weights are not finite ('{bad}'); final/ not written; {_kept_checkpoint(run_dir)}; "
                            "lower --lr or clip gradients (--max-grad-norm)")


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the parameters this process holds (its shards under FSDP) and of its optimizer state."""
    from adaptkit.engine.shards import local_shard

    params = sum(local_shard(p)[0].nbytes for p in model.parameters())
    state = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return params + state


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint a run resumes from (and a row torn by a kill)."""
    from adaptkit.io.atomic import write_text_atomic

    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            rows.append(line)
    write_text_atomic(path, "".join(row + "\n" for row in rows))


def config_yaml(config: TrainConfig) -> str:
    """The resolved configuration as a run's config.yaml holds it (and `train --print-config` prints it)."""
    from adaptkit.config import dump_yaml

    return dump_yaml(_resolved_config_dict(config))


def _save_final(model: torch.nn.Module, tokenizer: Any, plan: TrainingPlan, final_dir: Path, state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write final/ into a hidden partial sibling and swap it in; a full disk is a one-line error."""
    import errno

    from adaptkit.errors import AdaptkitError
    from adaptkit.io.atomic import replace_path
    from adaptkit.io.models import save_model

    tmp = final_dir.with_name(f".{final_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(model, tokenizer, tmp, state_dict)
        for callback in plan.callbacks:
            callback.save_extra(model, tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise AdaptkitError(f"saving the final model to '{final_dir}' failed: {reason}; checkpoints in '{final_dir.parent}' are kept (use --resume)") from None
    replace_path(tmp, final_dir)


def _data_lines(config: TrainConfig, batches: Mixture, steps: int) -> list[str]:
    """The run card's data section: each source's specs (with content hashes), weight, tokens and epochs seen."""
    from adaptkit.data.corpus import file_hash

    seen = batches.seen(steps * config.batch_size)
    total = sum(s.weight for s in config.data.mixture())
    lines = ["", "| source | data | weight (share) | tokens seen | epochs seen |", "|---|---|---|---|---|"]
    for source in config.data.mixture():
        specs = "<br>".join(f"`{p}` sha256 `{file_hash(Path(p))[:16]}`" for p in source.spec)
        row = seen[source.name]
        lines.append(f"| {source.name} | {specs} | {source.weight:g} ({source.weight / total:.1%}) | {row['tokens']:,} | {row['epochs']:.3f} |")
    packing = f"; packing {config.data.packing}" if config.data.packing != "concat" else ""
    caps = f"; at most {config.data.max_tokens:,} tokens in all" if config.data.max_tokens else ""
    return lines + ["", f"Blocks of {config.data.seq_len} tokens{packing}{caps}; a source that runs out is re-shuffled (epochs above 1)."]


def _write_run_card(run_dir: Path, config: TrainConfig, plan: TrainingPlan, result: TrainResult, model_location: str,
                    data_lines: list[str]) -> None:
    import platform

    import transformers

    import adaptkit
    from adaptkit.io.atomic import write_text_atomic

    lines = [
        f"# Run card: {run_dir.name}",
        "",
        f"- method: `{config.method}` {json.dumps(config.method_params) if config.method_params else ''}",
        f"- plan: {plan.summary or 'n/a'}",
        f"- model: `{model_location}`",
        f"- trainable parameters: {result.trainable:,} of {result.total:,} ({100 * result.trainable / max(1, result.total):.2f}%)",
        f"- steps: {result.steps} (batch {config.batch_size} x {config.data.seq_len} tokens), lr {config.optimizer.lr} {config.schedule.name}, warmup {config.schedule.warmup_ratio}",
        f"- final loss: {result.final_loss:.4f}; time this session: {result.seconds:.1f} s" + (f" (resumed from step {result.resumed_from})" if result.resumed_from else ""),
        f"- versions: adaptkit {adaptkit.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        "",
        "## Data",
        *data_lines,
        "",
        "The resolved configuration is in `config.yaml`; metrics per logging step in `metrics.jsonl`.",
        "",
    ]
    write_text_atomic(run_dir / "run_card.md", "\n".join(lines))
