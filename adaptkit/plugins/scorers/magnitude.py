"""Magnitude importance: s_ij = |W_ij| (SSU-Mag, the paper's activation-free ablation).

Column score S_j = sum_i |W_ij|. No calibration data is used.
"""

from __future__ import annotations

from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, scorer_spec
from adaptkit.specs import Params


class MagnitudeParams(Params):
    """Magnitude has no parameters."""


class MagnitudeScorer(Scorer):
    name = "magnitude"
    summary = "|W_ij|: weight magnitude, no calibration data (SSU-Mag)"
    reference = "SSU paper ablation SSU-Mag (github.com/gucci-j/ssu)"
    Params = MagnitudeParams
    needs_calibration = False

    def element_scores(self, sp: ScoredParam):
        return sp.param.detach().float().abs()


SPEC = scorer_spec(MagnitudeScorer)
