"""Checkpoints: everything a run needs to continue exactly, in safetensors + JSON (no pickle).

A checkpoint directory `checkpoint-<step>/` holds the trained tensors (whole trainable
parameters and compact copies), the optimizer state, the scheduler state, RNG states
and callback state. It is written into a hidden `.checkpoint-<step>.partial` sibling and
renamed when complete, so a half-written checkpoint is never picked up on resume.
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

from adaptkit.engine.optim import TrainableSet
from adaptkit.engine.plan import TrainingCallback
from adaptkit.errors import AdaptkitError, InputError
from adaptkit.io.tensors import load_tensors, save_tensors

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


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


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


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
    shard: tuple[int, int] | None = None,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write checkpoint-<step>/ via a hidden partial sibling; the rename is the commit point.

    `metadata` (loss, plan fingerprint, process layout) is stored in state.json beside the step.

    Unsharded (one process, or DDP): only the main process calls this. Sharded (FSDP):
    every process calls it with shard=(rank, world) and writes its own trainable and
    optimizer files; `barrier` synchronises the processes around the rename.
    A full disk (or any OSError) removes the partial directory, keeps the previous
    checkpoints and raises an AdaptkitError naming the problem.
    """
    final = Path(run_dir) / f"checkpoint-{step}"
    tmp = Path(run_dir) / f".checkpoint-{step}.partial"
    main = shard is None or shard[0] == 0
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        suffix = "" if shard is None else f".rank{shard[0]}-of-{shard[1]}"
        save_tensors({k: v.cpu() for k, v in trainable.state_tensors().items()}, tmp / f"trainable{suffix}.safetensors")
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_tensors(opt_tensors, tmp / f"optimizer{suffix}.safetensors")
        if main:
            rng_tensors, rng_meta = capture_rng()
            save_tensors(rng_tensors, tmp / "rng.safetensors")
            callback_tensors = {f"{i}.{k}": v.detach().cpu() for i, cb in enumerate(callbacks) for k, v in cb.state_dict().items()}
            save_tensors(callback_tensors, tmp / "callbacks.safetensors")
            state = {"step": step, "shards": shard[1] if shard else None, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta, **metadata}
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
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint in place; returns its state.json (step and metadata).

    A sharded (FSDP) checkpoint resumes only with the same number of processes and FSDP.
    """
    flag = "--resume"
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{flag}: '{path / 'state.json'}' is unreadable ({exc})") from None
    saved = state.get("shards")
    now = shard[1] if shard else None
    if saved != now:
        def describe(n: int | None) -> str:
            return f"sharded over {n} processes (--distributed fsdp)" if n else "unsharded (one process or DDP)"

        raise InputError(f"{flag}: '{path}' was saved {describe(saved)}; this run is {describe(now)}; resume it the same way")
    suffix = "" if shard is None else f".rank{shard[0]}-of-{shard[1]}"
    trainable.load_state_tensors(load_tensors(path / f"trainable{suffix}.safetensors", flag))
    optimizer.load_state_dict(_unflatten_optimizer(load_tensors(path / f"optimizer{suffix}.safetensors", flag), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    callback_tensors = load_tensors(path / "callbacks.safetensors", flag)
    for i, cb in enumerate(callbacks):
        prefix = f"{i}."
        mine = {k[len(prefix):]: v for k, v in callback_tensors.items() if k.startswith(prefix)}
        if mine:
            cb.load_state_dict(mine)
    restore_rng(load_tensors(path / "rng.safetensors", flag), state["rng"])
    return state
