"""Experiment trackers (`--report-to tensorboard,mlflow,wandb,trackio`) through accelerate's tracker integration.

The accelerator is made with `log_with=` the chosen trackers and `project_dir=` the run directory
(`logging_dir` RUN_DIR/logs); `start` calls `accelerator.init_trackers` with the resolved config
(flattened, as hyperparameters), `log` sends every metrics.jsonl row as it is written (nested
values flattened to `a/b`, non-numbers left out), `finish` closes the trackers. accelerate logs on
the main process only. Where each back-end writes:

- tensorboard: event files in RUN_DIR/logs/PROJECT/
- mlflow: the store MLFLOW_TRACKING_URI names; without it a local SQLite store RUN_DIR/logs/mlflow.db
- wandb: RUN_DIR/logs/wandb/ (WANDB_MODE=offline keeps it there; `wandb sync` uploads it later)
- trackio: its local database (TRACKIO_DIR, default ~/.cache/huggingface/trackio)

Rows are logged as they are written, wherever that is (engine/loop.py's training rows,
engine/evaluation.py's evaluation rows).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}  # tracker -> package (= extra)


def check_available(names: list[str]) -> list[str]:
    """The trackers, each one whose package accelerate cannot find refused in one line naming the extra."""
    if not names:
        return []
    from accelerate.tracking import get_available_trackers

    from adaptkit.errors import MissingExtraError

    available = {str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()}
    for name in names:
        if name not in available:
            raise MissingExtraError(PACKAGES[name], PACKAGES[name], f"--report-to {name}")
    return list(dict.fromkeys(names))


def logging_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "logs"


def mlflow_default_uri(run_dir: Path) -> str:
    """Without MLFLOW_TRACKING_URI: a SQLite store in the run (MLflow 3 keeps its file store in maintenance mode)."""
    return f"sqlite:///{(logging_dir(run_dir) / 'mlflow.db').resolve()}"


def flat_numbers(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row as tracker scalars: nested dicts flattened to 'a/b', numbers only (bools as 0/1).
    A row's first top-level text field names it: {"eval": "ha", "ppl": 3.1} logs 'eval/ha/ppl'."""
    label = next(((k, v) for k, v in row.items() if isinstance(v, str)), None)
    return _numbers(row, f"{label[0]}/{label[1]}/" if label else "")


def _numbers(values: dict[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)):
            out[name] = float(value) if isinstance(value, float) else int(value)
    return out


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The resolved config as flat hyperparameters (a.b = value); lists and None as their JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


class Trackers:
    """The run's trackers: started once the run directory exists, fed each metrics row, closed at the end."""

    def __init__(self, accelerator: Any, names: list[str], project: str, run_name: str, run_dir: Path):
        self.accelerator, self.names, self.project, self.run_name, self.run_dir = accelerator, names, project, run_name, Path(run_dir)
        self.started = False

    def start(self, config: dict[str, Any]) -> None:
        if not self.names or not self.accelerator.is_main_process:
            return
        directory = logging_dir(self.run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        kwargs = {"wandb": {"name": self.run_name, "dir": str(directory)}, "mlflow": {"run_name": self.run_name},
                  "trackio": {"name": self.run_name}}
        if "mlflow" in self.names and not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            mlflow.set_tracking_uri(mlflow_default_uri(self.run_dir))
        self.accelerator.init_trackers(self.project, config=hyperparameters(config), init_kwargs=kwargs)
        self.started = True

    def log(self, row: dict[str, Any]) -> None:
        if self.started:
            values = flat_numbers({k: v for k, v in row.items() if k != "step"})
            self.accelerator.log(values, step=int(row["step"]) if "step" in row else None)

    def finish(self) -> None:
        """Close every tracker (not accelerator.end_training: that would also end the process group)."""
        if self.started:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()
            self.started = False
