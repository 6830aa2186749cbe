"""When a run saves and how it resumes: `checkpoint-N/` every `--save-steps` steps (by default every
10% of the run), one more when an interrupt (Ctrl-C, SIGTERM) ends the run between two steps, and
the newest one restored by --resume. The format is engine/checkpoint.py's; the strategy
(engine/distributed.py) says which processes write. A save's time is kept out of tokens/s."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional

from adaptkit.engine import checkpoint as ckpt
from adaptkit.errors import AdaptkitError, InputError

if TYPE_CHECKING:
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.metrics import MetricsLog
    from adaptkit.engine.rundir import RunDir


def checkpoint_interval(config: "TrainConfig", steps: int) -> int:
    """Steps between checkpoints: --save-steps, by default every 10% of the run's steps (rounded up); 0: none."""
    return config.save_steps if config.save_steps is not None else math.ceil(steps / 10)


def is_interrupt(exc: BaseException) -> bool:
    """KeyboardInterrupt, or the CLI's exception for SIGINT/SIGTERM: BaseExceptions that are no Exception."""
    return not isinstance(exc, (Exception, SystemExit, GeneratorExit))


class Checkpointer:
    """Saves and restores the state of one run: `training` (engine/loop.py's Training) holds the
    trainable set, optimizer, schedule, callbacks and the plan's fingerprint."""

    def __init__(self, run_dir: "RunDir", strategy: Any, training: Any, metrics: "MetricsLog", config: "TrainConfig",
                 steps: int, processes: int, before_save: Callable[[], None] = lambda: None):
        self.run_dir, self.strategy, self.training, self.metrics = run_dir, strategy, training, metrics
        self.every, self.keep, self.steps, self.processes = checkpoint_interval(config, steps), config.save_total_limit, steps, processes
        self.before_save = before_save  # the divergence check: nothing non-finite is saved
        self.completed, self.rng = 0, ckpt.capture_rng()  # the last completed step and the RNG state right after it

    def step_done(self, step: int) -> None:
        """Remember the completed step and the RNG as it was then (what an interrupt saves)."""
        self.completed, self.rng = step, ckpt.capture_rng()

    def maybe_save(self, step: int) -> None:
        """checkpoint-<step>/ every interval, but not at the end, where final/ is saved."""
        if self.every and step % self.every == 0 and step < self.steps:
            self.save(step)

    def save(self, step: int) -> None:
        """checkpoint-<step>/, keeping the newest save_total_limit; its time is kept out of tokens/s."""
        self.before_save()
        t = self.training
        with self.metrics.paused():
            metadata = {**self.metrics.state(), "fingerprint": t.fingerprint, "processes": self.processes, "distributed": self.strategy.name}
            self.strategy.save_checkpoint(self.run_dir.path, step, t.trainable, t.optimizer, t.scheduler, t.plan.callbacks, metadata, self.keep)

    def save_interrupted(self, exc: BaseException) -> None:
        """An interrupt: checkpoint the last completed step, unless it is on disk already, the run has not
        begun or is done, or the interrupt came in the middle of an update (then the state is neither
        step; the last checkpoint stays). A sharded save needs every process, which an interrupt does not coordinate."""
        done = self.completed
        if not is_interrupt(exc) or self.training.updating or self.strategy.sharded or not 0 < done < self.steps:
            return
        if (self.run_dir.path / f"checkpoint-{done}").is_dir():
            return
        ckpt.restore_rng(*self.rng)  # the RNG as it was when that step completed (a forward pass may have drawn since)
        try:
            self.before_save()
        except AdaptkitError:  # a run that diverged before the interrupt saves nothing; the interrupt goes on up
            return
        self.save(done)

    def resume(self) -> Optional[int]:
        """Restore the newest checkpoint, if any: the step it saved (None: none to resume from)."""
        latest = ckpt.latest_checkpoint(self.run_dir.path)
        if latest is None:
            return None
        t = self.training
        state = self.strategy.load_checkpoint(latest, t.trainable, t.optimizer, t.scheduler, t.plan.callbacks)
        if state.get("fingerprint") != t.fingerprint:
            raise InputError(f"--resume: '{latest}' was saved from a model with another architecture or training plan")
        self.metrics.load_state(state)
        self.run_dir.log(f"resumed from {latest.name}")
        self.completed = state["step"]
        return state["step"]
