"""Magnitude importance: s_ij = |W_ij| (SSU-Mag, the paper's activation-free ablation).

Column score S_j = sum_i |W_ij|. No calibration data is used.
"""

from __future__ import annotations

from adaptkit.scoring import Scorer, ScoredParam
from adaptkit.specs import Params, ScorerSpec


class MagnitudeParams(Params):
    """Magnitude has no parameters."""


class MagnitudeScorer(Scorer):
    def element_scores(self, sp: ScoredParam):
        return sp.param.detach().float().abs()


SPEC = ScorerSpec(
    name="magnitude",
    factory="adaptkit.plugins.scorers.magnitude:MagnitudeScorer",
    summary="|W_ij|: weight magnitude, no calibration data (SSU-Mag)",
    reference="SSU paper ablation SSU-Mag (github.com/gucci-j/ssu)",
    params=MagnitudeParams,
    needs_calibration=False,
)
