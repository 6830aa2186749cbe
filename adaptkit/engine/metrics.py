"""metrics.jsonl, the one home of its rows: appended, trimmed on resume, read back, sent to the trackers.

Two kinds of rows, one JSON object a line:
- training rows, at every `log_steps` step and the last: `step`, `loss` (the mean of the window's
  step losses), `lr`, `grad_norm`, `tokens_per_s` (all processes), `tokens_per_s_per_device`,
  `mfu` (where the device's peak is known or given, engine/throughput.py), `elapsed_s` and
  `tokens_by_source`;
- evaluation rows (engine/evaluation.py): `step`, `eval`, `role`, `ppl`, `bits_per_byte`, ...

The logging window stays on the device: each step adds its loss there (no host synchronisation);
the host reads it at logging steps only. Time spent evaluating and saving is kept out of tokens/s
(`paused`). The window's loss sum and step count are part of a checkpoint, so a resumed run logs
the same first loss as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, eval rows) of a metrics.jsonl file."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval" in r]


def trim_metrics(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step` (a run resumes from that step); drop later ones and a row torn by a kill."""
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


class MetricsLog:
    """The rows of one run: the logging window, metrics.jsonl, the trackers, and the progress display."""

    def __init__(self, path: Path, trackers: Any, main: bool, tokens_per_step: int, log_steps: int, steps: int,
                 device: torch.device, processes: int = 1, flops_per_token: float = 0.0, peak_flops: Optional[float] = None):
        self.path, self.trackers, self.main = Path(path), trackers, main
        self.tokens_per_step, self.log_steps, self.steps, self.processes = tokens_per_step, log_steps, steps, processes
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.extras: Callable[[int], dict[str, Any]] = lambda step: {}  # more values of a training row (tokens by source)
        self.before_read: Callable[[], None] = lambda: None  # the divergence check, before any row is written
        self.progress, self.task = None, None
        dtype = torch.float32 if device.type == "mps" else torch.float64  # float64: the sum a Python float would make
        self.window_loss = torch.zeros((), dtype=dtype, device=device)
        self.window_steps = 0  # steps in the loss window (restored on resume)
        self.timed_steps = 0  # steps of this window trained in this process's clock
        self.started = self.window_start = time.perf_counter()
        self.paused_s = 0.0  # seconds of this window spent evaluating or saving
        self.seconds = 0.0  # of the whole loop, set when it ends
        self.history: list[dict[str, Any]] = []
        self.last_loss: Optional[torch.Tensor] = None  # the latest step's loss, on the device

    def show(self, progress: Any, start: int) -> None:
        """Report to a progress display (a Rich progress bar or plain lines), starting at step `start`."""
        self.progress = progress
        self.task = progress.add_task("training", total=self.steps, completed=start) if progress else None

    def due(self, step: int) -> bool:
        return step % self.log_steps == 0 or step == self.steps

    def maybe_log(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> Optional[dict[str, Any]]:
        """Add the step's loss to the window (on the device); at a logging step, write the window's row."""
        self.last_loss = loss.detach()
        self.window_loss += self.last_loss.to(self.window_loss.dtype)
        self.window_steps += 1
        self.timed_steps += 1
        if not self.due(step):
            if self.progress:
                self.progress.update(self.task, completed=step)
            return None
        self.before_read()
        record = self.flush(step, lr, float(grad_norm))
        record.update(self.extras(step))
        self.append([record])
        if self.progress:
            self.progress.update(self.task, completed=step, loss=record["loss"], tps=record["tokens_per_s"], lr=record["lr"],
                                 tps_device=record["tokens_per_s_per_device"], mfu=record.get("mfu"))
        return record

    def flush(self, step: int, lr: float, grad_norm: float) -> dict[str, Any]:
        """The training row of this window (the host reads the window here); starts the next one."""
        from adaptkit.engine.throughput import mfu

        now = time.perf_counter()
        tokens_per_s = self.tokens_per_step * self.timed_steps / max(now - self.window_start - self.paused_s, 1e-9)
        record = {"step": step, "loss": float(self.window_loss) / self.window_steps, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / self.processes, "elapsed_s": now - self.started}
        if self.peak_flops:
            record["mfu"] = mfu(tokens_per_s, self.flops_per_token, self.peak_flops, self.processes)
        self.history.append(record)
        self.window_loss.zero_()
        self.window_start, self.window_steps, self.timed_steps, self.paused_s = now, 0, 0, 0.0
        return record

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write rows to metrics.jsonl and send them to the trackers (the main process)."""
        if not self.main or not rows:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
        for row in rows:
            self.trackers.log(row)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is kept out of tokens/s (evaluation, checkpoints)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - began

    def trim(self, step: int) -> None:
        """Resuming at `step`: drop the rows written after it (at step 0, every row: step 0's evaluation runs again)."""
        if self.main:
            trim_metrics(self.path, step if step else -1)

    def state(self) -> dict[str, Any]:
        """The loss window as a checkpoint stores it (a host read: checkpoints are synchronisation points)."""
        last = float("nan") if self.last_loss is None else float(self.last_loss)
        return {"loss": last, "window_loss": float(self.window_loss), "window_steps": self.window_steps}

    def load_state(self, state: dict[str, Any]) -> None:
        if "window_steps" in state:
            self.window_loss.fill_(float(state["window_loss"]))
            self.window_steps = int(state["window_steps"])

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self.started

    @property
    def final_loss(self) -> float:
        """The loss of the last training row (the last logging window), as the run reports it."""
        return self.history[-1]["loss"] if self.history else float("nan")
