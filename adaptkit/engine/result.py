"""What a training run returns (and `adaptkit train --json` prints)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


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
