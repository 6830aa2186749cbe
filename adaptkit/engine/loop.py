"""The training loop that every method shares, readable top to bottom.

    set up -> load model, tokenizer, data -> method plan -> optimizer and schedule
    -> (resume) -> for each step: micro-batches, backward, method gradient transforms,
       compact masked gradients, clip, step, write back, callbacks, log, checkpoint
    -> export and save final/ -> run card

Method-specific behaviour comes only from the TrainingPlan (what trains, masks,
callbacks); this file never looks at a method's name.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from adaptkit.engine import checkpoint as ckpt
from adaptkit.engine.config import TrainConfig
from adaptkit.engine.optim import apply_plan, build_optimizer, build_schedule
from adaptkit.engine.plan import MethodContext, TrainingPlan
from adaptkit.errors import InputError

RESUME_INVARIANT_KEYS = ("model", "data", "method", "method_params", "mask", "calib", "optimizer", "schedule", "batch_size", "seed")


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
class Batches:
    """Deterministic batches: sample i of the run is block perm_epoch[i mod N], epoch = i // N.

    The batch of (step, micro-step, process) depends on nothing else, so a resumed run and
    a run with another number of processes see exactly the same global batches.
    """

    blocks: torch.Tensor
    batch_size: int
    micro_batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    _orders: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders[epoch] = torch.randperm(self.blocks.shape[0], generator=generator)
            for old in sorted(self._orders)[:-2]:  # a batch spans at most two epochs
                del self._orders[old]
        return self._orders[epoch]

    def get(self, step: int, micro: int) -> torch.Tensor:
        n = self.blocks.shape[0]
        start = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro_batch_size
        rows = [self._order(i // n)[i % n] for i in range(start, start + self.micro_batch_size)]
        return self.blocks[torch.stack(rows)]


def total_steps(config: TrainConfig, num_blocks: int) -> int:
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(config.epochs * num_blocks / config.batch_size))


def _check_needs(needs: frozenset[str], config: TrainConfig, method: str) -> None:
    if "mask" in needs and not (config.mask or config.calib):
        raise InputError(f"--method {method}: needs --mask DIR (from `adaptkit mask`) or --calib DIR (from `adaptkit calibrate`)")
    if "calibration" in needs and not config.calib:
        raise InputError(f"--method {method}: needs --calib DIR (from `adaptkit calibrate`)")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _precision(config: TrainConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _resolved_config_dict(config: TrainConfig) -> dict[str, Any]:
    return json.loads(config.model_dump_json())


def _check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    from adaptkit.config import read_yaml_mapping

    saved = read_yaml_mapping(run_dir / "config.yaml", "--resume")
    current = _resolved_config_dict(config)
    for key in RESUME_INVARIANT_KEYS:
        if json.dumps(saved.get(key), sort_keys=True) != json.dumps(current.get(key), sort_keys=True):
            raise InputError(f"--resume: setting '{key}' differs from the run in '{run_dir}' ({saved.get(key)!r} there, {current.get(key)!r} now)")


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
    run_dir: Path,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: Any = None,
) -> TrainResult:
    """Run one training job described by `config`, writing the run directory `run_dir`."""
    from adaptkit.data.corpus import load_blocks
    from adaptkit.engine import distributed
    from adaptkit.io.models import default_attn_implementation, load_causal_lm, load_tokenizer, model_fingerprint, resolve_model_source
    from adaptkit.registry import get_spec

    # --- Set up: processes, devices, precision --------------------------------------
    accelerator = distributed.make_accelerator(config.device)
    main = accelerator.is_main_process
    if not main:  # one voice: only the main process logs and shows progress
        log, progress = (lambda message: None), None
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, overwrite)
    if resume:
        _check_resume_config(run_dir, config)
    device = accelerator.device
    precision = _precision(config, device)
    _seed_everything(config.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    mode = distributed.resolve_mode(config.distributed, world)
    shard = (rank, world) if mode == "fsdp" else None
    micro = config.micro_batch_size or max(1, config.batch_size // world)
    if config.batch_size % (micro * world):
        raise InputError(f"--batch-size {config.batch_size} must be a multiple of --micro-batch-size {micro} x {world} process(es)")

    # --- Model, tokenizer, data, method (all validated before anything is written) ---
    spec = get_spec("method", config.method, "--method")
    params = spec.validate_params(config.method_params, "--set")
    _check_needs(spec.needs, config, config.method)
    source = resolve_model_source(config.model, "--model")
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    blocks = load_blocks(config.data.paths, tokenizer, config.data.seq_len, config.data.text_field, config.data.format, config.data.cache)
    steps = total_steps(config, blocks.shape[0])
    attn = config.attn_implementation or default_attn_implementation(device)
    model = load_causal_lm(source, torch.float32, config.trust_remote_code, attn).to(device)
    method = spec.load()(params)

    created = not run_dir.exists()
    accelerator.wait_for_everyone()  # every process has checked the run directory before it changes
    if main:
        if overwrite and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            removed = ckpt.remove_partials(run_dir)
            if removed:
                log(f"removed what an interrupted run left half-written: {', '.join(removed)}")
    accelerator.wait_for_everyone()
    ctx = MethodContext(params, config, tokenizer, run_dir, steps, device, blocks, log)
    try:
        plan: TrainingPlan = method.plan(model, ctx)
        if mode == "fsdp":
            if plan.callbacks:
                names = ", ".join(sorted({type(cb).__name__ for cb in plan.callbacks}))
                raise InputError(f"--distributed fsdp: method '{config.method}' uses training callbacks ({names}) that need whole parameters; use --distributed ddp")
            distributed.fully_shard_model(plan.model)
        trainable = apply_plan(plan, sharded=mode == "fsdp")
    except InputError:
        if created and main:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    model = plan.model
    if config.gradient_checkpointing:  # transformers 5 renamed it; keep both spellings working
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    n_trainable, n_total = plan.counts()
    fingerprint = f"{model_fingerprint(model)}:{n_trainable}"

    # --- Optimizer and schedule -----------------------------------------------------
    optimizer = build_optimizer(trainable, config.optimizer, device)
    scheduler = build_schedule(optimizer, config.schedule, steps)
    train_model = model if mode == "fsdp" else accelerator.prepare_model(model)
    forward_model = torch.compile(train_model) if config.compile else train_model
    batches = Batches(blocks, config.batch_size, micro, config.seed, rank, world)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

    if main:
        from adaptkit.io.atomic import write_text_atomic

        write_text_atomic(run_dir / "config.yaml", _config_yaml(config))
    start_step, resumed_from = 0, None
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is not None:
            state = ckpt.load_checkpoint(latest, trainable, optimizer, scheduler, plan.callbacks, shard)
            if state.get("fingerprint") != fingerprint:
                raise InputError(f"--resume: '{latest}' was saved from a model with another architecture or training plan")
            start_step = resumed_from = state["step"]
            if main:
                _truncate_metrics(run_dir / "metrics.jsonl", start_step)
            log(f"resumed from {latest.name}")
    accelerator.wait_for_everyone()

    # --- The loop ------------------------------------------------------------------------
    metrics_file = run_dir / "metrics.jsonl"
    tokens_per_step = config.batch_size * config.data.seq_len
    started = time.perf_counter()
    window_start, window_loss, window_steps = started, 0.0, 0
    last_loss = float("nan")
    history: list[dict[str, Any]] = []
    train_model.train()
    task = progress.add_task("training", total=steps, completed=start_step, loss=float("nan"), tps=0.0) if progress else None
    for step in range(start_step, steps):
        step_loss = torch.zeros((), device=device)
        for micro_step in range(batches.accumulation):
            input_ids = batches.get(step, micro_step).to(device)
            sync = micro_step == batches.accumulation - 1
            if mode == "fsdp":
                train_model.set_requires_gradient_sync(sync)
            with (nullcontext() if sync or mode == "fsdp" else accelerator.no_sync(train_model)), autocast():
                loss = forward_model(input_ids=input_ids, labels=input_ids).loss
                for callback in plan.callbacks:
                    extra = callback.extra_loss(model)
                    if extra is not None:
                        loss = loss + extra
            accelerator.backward(loss / batches.accumulation)
            step_loss += loss.detach() / batches.accumulation

        for callback in plan.callbacks:
            callback.transform_gradients(model, step)
        trainable.pull_grads()
        opt_tensors = [p for group in optimizer.param_groups for p in group["params"]]
        if mode == "fsdp":
            grad_norm = distributed.clip_sharded_grad_norm_(opt_tensors, config.max_grad_norm, device)
        elif config.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(opt_tensors, config.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in opt_tensors if p.grad is not None])))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        trainable.push()
        for callback in plan.callbacks:
            callback.on_step_end(model, step)
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        scheduler.step()

        if world > 1:
            step_loss = accelerator.reduce(step_loss, reduction="mean")
        last_loss = float(step_loss)
        window_loss += last_loss
        window_steps += 1
        done = step + 1
        if done % config.log_steps == 0 or done == steps:
            now = time.perf_counter()
            record = {
                "step": done,
                "loss": window_loss / window_steps,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_step * window_steps / max(now - window_start, 1e-9),
                "elapsed_s": now - started,
            }
            history.append(record)
            if main:
                with open(metrics_file, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            if progress:
                progress.update(task, completed=done, loss=record["loss"], tps=record["tokens_per_s"])
            window_start, window_loss, window_steps = now, 0.0, 0
        elif progress:
            progress.update(task, completed=done)
        if config.save_steps and done % config.save_steps == 0 and done < steps and (main or shard):
            extra = {"loss": last_loss, "fingerprint": fingerprint, "processes": world, "distributed": mode}
            ckpt.save_checkpoint(run_dir, done, trainable, optimizer, scheduler, plan.callbacks, extra, config.save_total_limit, shard,
                                 accelerator.wait_for_everyone if shard else (lambda: None))
        accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started

    # --- Export and save ---------------------------------------------------------------
    final_dir = run_dir / "final"
    result = TrainResult(run_dir, final_dir, steps, tokens_per_step * (steps - start_step), seconds, last_loss, n_trainable, n_total, resumed_from, history, main, world, mode)
    result.state_bytes = _state_bytes(model, optimizer)
    full_state = distributed.full_state_dict(model, main) if mode == "fsdp" else None  # a collective: every process
    if main:
        export = accelerator.unwrap_model(train_model)
        for callback in plan.callbacks:
            export = callback.export(export)
        _save_final(export, tokenizer, plan, final_dir, full_state)
        _write_run_card(run_dir, config, plan, result, source.location)
    accelerator.wait_for_everyone()
    return result


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the parameters this process holds (its shards under FSDP) and of its optimizer state."""
    from adaptkit.engine.distributed import local_shard

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


def _config_yaml(config: TrainConfig) -> str:
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


def _write_run_card(run_dir: Path, config: TrainConfig, plan: TrainingPlan, result: TrainResult, model_location: str) -> None:
    import platform

    import transformers

    import adaptkit
    from adaptkit.data.corpus import file_hash
    from adaptkit.io.atomic import write_text_atomic

    data_lines = "\n".join(f"- `{p}` sha256 `{file_hash(Path(p))[:16]}`" for p in config.data.paths)
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
        data_lines,
        "",
        "The resolved configuration is in `config.yaml`; metrics per logging step in `metrics.jsonl`.",
        "",
    ]
    write_text_atomic(run_dir / "run_card.md", "\n".join(lines))
