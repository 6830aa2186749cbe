"""Random importance (SSU-Rand): i.i.d. uniform [0, 1) scores, seeded.

Each parameter draws from its own generator, seeded from the run seed and the
parameter name, so the scores of one parameter do not depend on which others are
scored. Column/row scores are sums of i.i.d. uniforms, so the frozen columns are a
uniformly random choice. No calibration data is used.
"""

from __future__ import annotations

import hashlib

from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, scorer_spec
from adaptkit.specs import Params


class RandomParams(Params):
    """Random scores take the run's --seed."""


class RandomScorer(Scorer):
    name = "random"
    summary = "Seeded uniform random scores (SSU-Rand)"
    reference = "SSU paper ablation SSU-Rand (github.com/gucci-j/ssu)"
    Params = RandomParams
    needs_calibration = False

    def element_scores(self, sp: ScoredParam):
        import torch

        digest = hashlib.sha256(f"{self.run.seed}:{sp.name}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return torch.rand(tuple(sp.param.shape), generator=generator, dtype=torch.float32)


SPEC = scorer_spec(RandomScorer)
