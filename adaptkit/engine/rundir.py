"""The run directory, the one home of its files and checks: `-o/--output` of `adaptkit train`.

    config.yaml      the resolved settings (written once the plan is made; --resume compares against it)
    metrics.jsonl    engine/metrics.py
    checkpoint-N/    engine/checkpoint.py (through engine/checkpointer.py)
    final/           the exported model, written into a hidden partial sibling and swapped in
    run_card.md      engine/cards.py renders it
    .lock            the owner: `pid host start` of the process that trains into it

`RunDir.check` runs before anything loads: a file where the directory belongs, --resume with
--overwrite, a directory another live process owns (its lock), a non-empty directory without
--overwrite or --resume, and a --resume whose settings differ from the run's config.yaml are each
one-line input errors. `RunDir.open` then creates (or, with --overwrite, empties) the directory and
takes the lock: created with O_EXCL, so of two commands racing for one directory exactly one wins.
A lock whose owner is gone (no such pid on this host, or a pid since reused by a process that
started at another time) is stale and taken over. The lock is released when the run ends, however
it ends; a killed run leaves a stale lock, which the next run takes over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from adaptkit.engine.config import TrainConfig

# the settings a checkpoint depends on: --resume refuses a run whose values differ
RESUME_INVARIANT_KEYS = ("model", "data", "method", "method_params", "freeze_special_tokens", "train_embeddings", "embedding_lr",
                         "optimizer", "schedule", "averaging", "batch_size", "max_steps", "epochs", "seed")
RESUME_FREE_KEYS = ("data.num_proc",)  # settings under those keys that do not change what trains
LOCK = ".lock"


def resolved_config_dict(config: "TrainConfig") -> dict[str, Any]:
    return json.loads(config.model_dump_json())


def config_yaml(config: "TrainConfig") -> str:
    """The resolved configuration as a run's config.yaml holds it (and `train --print-config` prints it)."""
    from adaptkit.settings import dump_yaml

    return dump_yaml(resolved_config_dict(config))


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def check_resume_config(run_dir: Path, config: "TrainConfig") -> None:
    """The settings a checkpoint depends on are those of the run; each difference is named with both values."""
    from adaptkit.settings import read_yaml_mapping

    saved = read_yaml_mapping(run_dir / "config.yaml", "--resume")
    current = resolved_config_dict(config)
    differences = []
    for key in RESUME_INVARIANT_KEYS:
        old, new = _flatten(saved.get(key), key), _flatten(current.get(key), key)
        for name in sorted((set(old) | set(new)) - set(RESUME_FREE_KEYS)):
            if json.dumps(old.get(name), sort_keys=True) != json.dumps(new.get(name), sort_keys=True):
                differences.append(f"{name}: {old.get(name)!r} there, {new.get(name)!r} now")
    if differences:
        raise InputError(f"--resume: settings differ from the run in '{run_dir}' ({'; '.join(differences)}); resume with the run's settings or start a new run")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (Linux), or [] where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> Optional[str]:
    """The start time of process `pid` (clock ticks since boot), or None where unknown."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    """A process that runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return _stat(pid)[:1] != ["Z"]


def lock_owner(run_dir: Path) -> Optional[str]:
    """'pid P on HOST' of the live process that holds the run directory's lock, or None (no lock, or a stale one)."""
    try:
        pid_text, host, *started = (run_dir / LOCK).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():  # another host's process cannot be checked: held
        return f"pid {pid} on {host}"
    if pid == os.getpid() or not _alive(pid):
        return None
    if started and _start_time(pid) not in (None, started[0]):  # the pid was reused by a newer process
        return None
    return f"pid {pid} on {host}"


class RunDir:
    """One run's directory: checks, the lock, config.yaml, final/ and the run card."""

    def __init__(self, path: Path, main: bool = True, log: Callable[[str], None] = lambda message: None):
        self.path, self.main, self.log = Path(path), main, log
        self.created = False  # this run made the directory (removed again if planning fails)
        self.locked = False

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @staticmethod
    def check(path: Path, config: "TrainConfig", resume: bool, overwrite: bool) -> None:
        """Everything about -o that can be refused before any data or weights load."""
        path = Path(path)
        if path.exists() and path.is_file():
            raise InputError(f"-o/--output: '{path}' is a file; expected a run directory")
        if resume and overwrite:
            raise InputError("--resume, --overwrite: give one of them (--resume continues the run in -o, --overwrite starts it afresh)")
        owner = lock_owner(path)
        if owner:
            raise InputError(f"-o/--output: '{path}' is in use by another training run ({owner}; lock file '{path / LOCK}'); "
                             "wait for it to end, or choose another path")
        if resume:
            if not (path / "config.yaml").is_file():
                raise InputError(f"--resume: '{path}' holds no run to resume (no config.yaml)")
            check_resume_config(path, config)
            return
        if path.exists() and any(c.name != LOCK for c in path.iterdir()) and not overwrite:
            raise InputError(f"-o/--output: '{path}' exists and is not empty; pass --overwrite, --resume, or choose another path")
        if path.resolve().parent.exists() and not path.resolve().parent.is_dir():
            raise InputError(f"-o/--output: '{path.resolve().parent}' is not a directory")

    def open(self, resume: bool, overwrite: bool, barrier: Callable[[], None]) -> None:
        """Create (or, with --overwrite, empty) the directory and take its lock; on --resume remove
        half-written saves. Every process has checked the directory before it changes."""
        from adaptkit.engine import checkpoint

        self.created = not self.path.exists()
        barrier()
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            if overwrite and not resume:
                for child in self.path.iterdir():
                    if child.name != LOCK:
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            if resume:
                removed = checkpoint.remove_partials(self.path)
                if removed:
                    self.log(f"removed what an interrupted run left half-written: {', '.join(removed)}")
        barrier()

    def _lock(self) -> None:
        owner = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid()) or ''}".strip()
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = lock_owner(self.path)
                if held:
                    raise InputError(f"-o/--output: '{self.path}' is in use by another training run ({held}; lock file '{lock}'); "
                                     "wait for it to end, or choose another path") from None
                lock.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(owner + "\n")
            self.locked = True
            return

    def release(self) -> None:
        """Give the lock up (the end of the run, however it ended)."""
        if self.locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self.locked = False

    @contextlib.contextmanager
    def removed_on_bad_input(self) -> Iterator[None]:
        """Planning inside: on bad input (InputError) a directory this run made goes again, so nothing is left."""
        try:
            yield
        except InputError:
            if self.created and self.main:
                self.release()
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def write_config(self, config: "TrainConfig") -> None:
        from adaptkit.io.atomic import write_text_atomic

        if self.main:
            write_text_atomic(self.path / "config.yaml", config_yaml(config))

    def save_final(self, model: "torch.nn.Module", tokenizer: Any, callbacks: list, state_dict: Optional[dict] = None) -> None:
        """Write final/ into a hidden partial sibling and swap it in; a full disk is a one-line error.
        `state_dict`: the tensors to save (None: the model's own); never inf or NaN weights."""
        import errno

        from adaptkit.errors import AdaptkitError
        from adaptkit.io.atomic import replace_path
        from adaptkit.io.models import save_model

        self._refuse_non_finite(state_dict if state_dict is not None else model.state_dict())
        tmp = self.final.with_name(f".{self.final.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_model(model, tokenizer, tmp, state_dict)
            for callback in callbacks:
                callback.save_extra(model, tmp, state_dict)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise AdaptkitError(f"saving the final model to '{self.final}' failed: {reason}; checkpoints in '{self.path}' are kept (use --resume)") from None
        replace_path(tmp, self.final)

    def _refuse_non_finite(self, tensors: dict) -> None:
        import torch

        from adaptkit.errors import AdaptkitError

        bad = next((name for name, tensor in tensors.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)
        if bad is not None:
            raise AdaptkitError(f"the trained weights are not finite ('{bad}'); final/ not written; {self.kept_checkpoint()}; "
                                "lower --lr or clip gradients (--max-grad-norm)")

    def kept_checkpoint(self) -> str:
        """What an error says about the checkpoints of this run."""
        from adaptkit.engine.checkpoint import latest_checkpoint

        latest = latest_checkpoint(self.path)
        return f"the last good checkpoint {latest.name} in '{self.path}' is kept" if latest else f"no checkpoint was saved in '{self.path}' yet"
