"""A set of scores: per-parameter scores by granularity with their metadata, in memory and on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adaptkit.io.mask_files import load_score_file, save_score_file

if TYPE_CHECKING:
    import torch


@dataclass
class ScoreSet:
    """Per-parameter scores by granularity, with metadata (scorer, model fingerprint, calibration hash, shapes)."""

    scores: dict[str, dict[str, "torch.Tensor"]]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, list[int]]:
        return json.loads(self.metadata.get("shapes", "{}"))

    def save(self, directory: Path) -> Path:
        """Write scores.safetensors in `directory` (format: adaptkit.io.mask_files)."""
        return save_score_file(directory, self.scores, self.metadata)


def load_scores(path: Path, flag: str = "--scores") -> ScoreSet:
    """Load scores.safetensors from a directory (or the file itself)."""
    scores, metadata = load_score_file(path, flag)
    return ScoreSet(scores, metadata)
