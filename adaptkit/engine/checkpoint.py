"""Checkpoints: everything a run needs to continue exactly, in safetensors + JSON (no pickle).

A checkpoint directory `checkpoint-<step>/` holds the trained tensors (whole trainable
parameters and compact copies) and the optimizer state in `tensors/` (torch.distributed.checkpoint,
safetensors files in global coordinates, so a run resumes with another process count or
between DDP and FSDP; so is callbacks' per-shard state, such as weight averages), the scheduler,
RNG and optimizer scalars in state.json, and the callbacks' other state. It is written into a
hidden `.checkpoint-<step>.partial` sibling and renamed when complete, so a half-written
checkpoint is never picked up on resume.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from adaptkit.engine.chunked import Chunk, load_chunks, save_chunks
from adaptkit.engine.optim import TrainableSet
from adaptkit.engine.plan import TrainingCallback
from adaptkit.errors import AdaptkitError, InputError
from adaptkit.io.tensors import load_tensors, save_tensors

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TENSORS = "tensors"  # the DCP directory: trainable tensors and optimizer state in global coordinates


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for child in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _placed_state(trainable: TrainableSet, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Chunk], dict[str, Any]]:
    """The trainable tensors and the optimizer state as chunks in global coordinates, and the rest
    of the optimizer state (hyperparameters, step counts) for state.json, all by parameter name."""
    chunks: dict[str, Chunk] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for name, (tensor, offset, shape) in trainable.placed().items():
        chunks[f"trainable/{name}"] = Chunk(tensor.detach().cpu(), offset, shape)
        saved: dict[str, Any] = {"tensors": [], "scalars": {}}
        for key, value in optimizer.state.get(tensor, {}).items():
            if torch.is_tensor(value) and value.shape == tensor.shape and value.ndim:
                chunks[f"optimizer/{name}/{key}"] = Chunk(value.detach().cpu(), offset, shape)
                saved["tensors"].append(key)
            elif torch.is_tensor(value):
                saved["scalars"][key] = [value.item(), str(value.dtype).removeprefix("torch.")]
            else:
                saved["scalars"][key] = [value, None]
        per_param[name] = saved
    names = {id(tensor): name for name, (tensor, _, _) in trainable.placed().items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    return chunks, {"param_groups": groups, "state": per_param}


def _load_optimizer(optimizer: torch.optim.Optimizer, trainable: TrainableSet, saved: dict[str, Any],
                    tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Restore the optimizer from _placed_state's pieces (this process's part of every tensor)."""
    placed = trainable.placed()
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    names = {id(tensor): name for name, (tensor, _, _) in placed.items()}
    mine = [sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups]
    if mine != [sorted(g["params"]) for g in saved["param_groups"]]:
        raise InputError(f"--resume: '{path}' was saved with other optimizer groups than this run's training plan")
    state: dict[int, dict[str, Any]] = {}
    for name, (tensor, _, _) in placed.items():
        entry = saved["state"].get(name, {"tensors": [], "scalars": {}})
        values = {key: tensors[f"optimizer/{name}/{key}"] for key in entry["tensors"]}
        for key, (value, dtype) in entry["scalars"].items():
            values[key] = value if dtype is None else torch.tensor(value, dtype=getattr(torch, dtype))
        if values:
            state[index[id(tensor)]] = values
    groups = []
    for group, current in zip(saved["param_groups"], optimizer.state_dict()["param_groups"]):
        groups.append({**group, "params": current["params"], **({"betas": tuple(group["betas"])} if "betas" in group else {})})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch (CPU and CUDA) and Python RNG states, as a checkpoint stores them."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py_state = random.getstate()
    return tensors, {"python": [py_state[0], list(py_state[1]), py_state[2]]}


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Set the RNG states that `capture_rng` returned."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    run_dir: Path,
    step: int,
    trainable: TrainableSet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    callbacks: list[TrainingCallback],
    metadata: dict[str, Any],
    keep: int | None,
    main: bool = True,
    collective: bool = False,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write checkpoint-<step>/ via a hidden partial sibling; the rename is the commit point.

    `metadata` (loss, plan fingerprint, process layout) is stored in state.json beside the step.
    The tensors go to tensors/ through DCP in global coordinates (engine/chunked.py), so any
    layout resumes them. Replicated (one process, or DDP): only the main process calls this.
    `collective` (FSDP): every process calls it and writes its own chunks; `barrier`
    synchronises the processes around the rename. A full disk (or any OSError) removes the
    partial directory, keeps the previous checkpoints and raises an AdaptkitError naming the problem.
    """
    final = Path(run_dir) / f"checkpoint-{step}"
    tmp = Path(run_dir) / f".checkpoint-{step}.partial"
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / TENSORS).mkdir(parents=True)
        barrier()
        chunks, opt_meta = _placed_state(trainable, optimizer)
        placed_callbacks = {fqn: Chunk(c.tensor.detach().cpu(), c.offset, c.shape) for fqn, c in _callback_chunks(callbacks).items()}
        save_chunks(tmp / TENSORS, {**chunks, **placed_callbacks}, collective)
        if main:
            rng_tensors, rng_meta = capture_rng()
            save_tensors(rng_tensors, tmp / "rng.safetensors")
            callback_tensors = {f"{i}.{k}": v.detach().cpu() for i, cb in enumerate(callbacks) for k, v in cb.state_dict().items()}
            save_tensors(callback_tensors, tmp / "callbacks.safetensors")
            state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta,
                     "callback_tensors": sorted(placed_callbacks), **metadata}
            (tmp / "state.json").write_text(json.dumps(state, default=_json_default))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        kept = latest_checkpoint(run_dir)
        raise AdaptkitError(
            f"saving checkpoint-{step} in '{run_dir}' failed: {reason}; "
            + (f"the previous checkpoint {kept.name} is kept" if kept else "no earlier checkpoint exists")
        ) from None
    barrier()
    if main:
        if final.exists():
            _remove_dir(final)
        os.replace(tmp, final)
        _prune(run_dir, keep)
    barrier()
    return final


def _callback_chunks(callbacks: list[TrainingCallback]) -> dict[str, Chunk]:
    """The callbacks' state in global coordinates (TrainingCallback.placed_state), the live tensors, by checkpoint name."""
    return {f"callbacks/{i}/{key}": chunk for i, cb in enumerate(callbacks) for key, chunk in cb.placed_state().items()}


def _remove_dir(path: Path) -> None:
    """Delete a checkpoint so that a kill midway never leaves a checkpoint-N without all its files."""
    doomed = path.with_name(f".{path.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_partials(run_dir: Path) -> list[str]:
    """Remove what an interrupted run left half-written (hidden *.partial / *.deleting / *.old-* siblings)."""
    removed = []
    for child in Path(run_dir).iterdir():
        if child.name.startswith(".") and (child.name.endswith((".partial", ".deleting")) or ".old-" in child.name):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child.name)
    return sorted(removed)


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if torch.is_tensor(value):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _prune(run_dir: Path, keep: int | None) -> None:
    if not keep:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        _remove_dir(path)


def load_checkpoint(
    path: Path,
    trainable: TrainableSet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    callbacks: list[TrainingCallback],
) -> dict[str, Any]:
    """Restore a checkpoint in place, whatever layout saved it; returns its state.json (step and metadata).

    Each process reads its own part of every tensor (one process, DDP or FSDP with any number of
    processes); the RNG and callback states are the main process's, restored on every process.
    """
    flag = "--resume"
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{flag}: '{path / 'state.json'}' is unreadable ({exc})") from None
    placed = trainable.placed()
    saved = state["optimizer"]["state"]
    if sorted(saved) != sorted(placed):
        raise InputError(f"{flag}: '{path}' holds other trainable parameters than this run's training plan")
    live = _callback_chunks(callbacks)
    if sorted(live) != state.get("callback_tensors", []):
        raise InputError(f"{flag}: '{path}' holds other training-callback tensors than this run keeps (saved by another "
                         "adaptkit version, or with other weight averaging settings: --ema-decay, --lawa-k)")
    chunks = {fqn: Chunk(torch.empty(c.tensor.shape, dtype=c.tensor.dtype), c.offset, c.shape) for fqn, c in live.items()}
    for name, (tensor, offset, shape) in placed.items():
        for fqn in [f"trainable/{name}", *(f"optimizer/{name}/{k}" for k in saved[name]["tensors"])]:
            chunks[fqn] = Chunk(torch.empty(tensor.shape, dtype=tensor.dtype), offset, shape)
    load_chunks(path / TENSORS, chunks)
    with torch.no_grad():
        for fqn, chunk in live.items():
            chunk.tensor.copy_(chunks[fqn].tensor)
    trainable.load_placed({name: chunks[f"trainable/{name}"].tensor for name in placed})
    _load_optimizer(optimizer, trainable, state["optimizer"], {k: c.tensor for k, c in chunks.items()}, path)
    scheduler.load_state_dict(state["scheduler"])
    callback_tensors = load_tensors(path / "callbacks.safetensors", flag)
    for i, cb in enumerate(callbacks):
        prefix = f"{i}."
        mine = {k[len(prefix):]: v for k, v in callback_tensors.items() if k.startswith(prefix)}
        if mine:
            cb.load_state_dict(mine)
    restore_rng(load_tensors(path / "rng.safetensors", flag), state["rng"])
    return state
