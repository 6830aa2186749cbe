"""Progress of long work: a Rich bar on a terminal, plain lines on stderr otherwise (a cluster job's
log file), nothing with --quiet, nor with --json unless --progress is given too (a study's steps).

The engine reports through the small interface it has always used (`add_task`, then `update` with
`completed=` and, at each logging step, `loss=`, `tps=`, `lr=` and, where known, `tps_device=` and
`mfu=`); both classes here implement it. A plain line looks like

    train: step 20/200 (10%), loss 4.1234, lr 1.00e-04, 1,234 tok/s, ETA 0:01:23

with several processes `2,468 tok/s (1,234 per device)`, and on a GPU whose peak is known `, MFU 41.2%`.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def metrics_text(loss: float, lr: Optional[float], tps: float, tps_device: Optional[float] = None, mfu: Optional[float] = None) -> str:
    """'loss 4.1234, lr 1.00e-04, 1,234 tok/s' (lr left out when unknown; tokens/s per device when it
    differs from the total, MFU when known)."""
    text = f"loss {loss:.4f}" + (f", lr {lr:.2e}" if lr is not None else "") + f", {tps:,.0f} tok/s"
    if tps_device is not None and round(tps_device) != round(tps):
        text += f" ({tps_device:,.0f} per device)"
    return text + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")


def plain_line(text: str) -> None:
    """One line on stderr, flushed at once (a log file shows it while the job runs)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class ProgressLines:
    """Plain progress lines: one per update that carries metrics (the engine's logging steps)."""

    def __init__(self, name: str, write: Callable[[str], None] = plain_line, clock: Callable[[], float] = time.monotonic):
        self.name, self.write, self.clock = name, write, clock
        self.tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: int, completed: int = 0, **_: Any) -> int:
        self.tasks[len(self.tasks)] = {"total": total, "first": completed, "completed": completed, "started": self.clock()}
        return len(self.tasks) - 1

    def update(self, task: int, completed: Optional[int] = None, loss: Optional[float] = None, tps: Optional[float] = None,
               lr: Optional[float] = None, tps_device: Optional[float] = None, mfu: Optional[float] = None, **_: Any) -> None:
        state = self.tasks[task]
        if completed is not None:
            state["completed"] = completed
        if loss is None:
            return
        done, total = state["completed"], state["total"]
        line = f"{self.name}: step {done}/{total} ({100 * done / max(1, total):.0f}%), {metrics_text(loss, lr, tps or 0.0, tps_device, mfu)}"
        if done > state["first"] and done < total:
            rate = (self.clock() - state["started"]) / (done - state["first"])
            line += f", ETA {_clock(rate * (total - done))}"
        self.write(line)


class ProgressBar:
    """The Rich bar on a terminal; the metrics column stays empty until the first logging step."""

    def __init__(self, progress: Any):
        self.progress = progress

    def add_task(self, description: str, total: int, completed: int = 0, **_: Any) -> int:
        return self.progress.add_task(description, total=total, completed=completed, metrics="")

    def update(self, task: int, completed: Optional[int] = None, loss: Optional[float] = None, tps: Optional[float] = None,
               lr: Optional[float] = None, tps_device: Optional[float] = None, mfu: Optional[float] = None, **_: Any) -> None:
        fields = {"metrics": metrics_text(loss, lr, tps or 0.0, tps_device, mfu)} if loss is not None else {}
        self.progress.update(task, completed=completed, **fields)


@contextmanager
def training_progress(console: Any, name: str = "train") -> Iterator[tuple[Optional[Any], Callable[[str], None]]]:
    """(progress for the engine or None, a log function) for a console: a bar on a terminal,
    plain lines when stderr is not a terminal, none with --quiet/--json."""
    if console.silent:
        yield None, console.print
        return
    if not sys.stderr.isatty():
        yield ProgressLines(name), plain_line
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[metrics]}"), TimeRemainingColumn()]
    with Progress(*columns, console=console.rich, transient=False) as progress:
        yield ProgressBar(progress), progress.console.print


def notes(console: Any, name: str) -> Callable[[str], None]:
    """A function that reports a stage of a command (`calibrate`, `evaluate`): dim text on a terminal,
    'NAME: message (12.3 s)' lines on stderr otherwise, nothing with --quiet/--json."""
    started = time.monotonic()
    if console.silent:
        return lambda message: None
    if not sys.stderr.isatty():
        return lambda message: plain_line(f"{name}: {message} ({time.monotonic() - started:.1f} s)")
    return lambda message: console.print(f"[dim]{message}[/dim]")
