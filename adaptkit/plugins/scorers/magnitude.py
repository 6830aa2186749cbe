"""Magnitude importance (SSU-Mag, the paper's activation-free ablation). No calibration data is used.

`variant=paper` (default): s_ij = |W_ij|; a column scores S_j = sum_i |W_ij| (a row: sum_j |W_ij|).

`variant=reference`: the SSU authors' code (gucci-j/ssu, `magnitude_based` / `magnitude_rowwise` /
`magnitude_elementwise` in training/src/utils/model_utils.py) ranks a column by its L2 norm
||W_:,j||_2, a row by ||W_i,:||_2, and elements and 1-D parameters by |w|. The `ssu-paper/ssu-mag`
preset selects it, since the paper's tables come from that code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, scorer_spec
from adaptkit.specs import Params


class MagnitudeParams(Params):
    variant: Literal["paper", "reference"] = Field("paper", description="paper: columns by sum |W_ij|; reference: the SSU code's L2 norms of columns (rows).")


class MagnitudeScorer(Scorer):
    name = "magnitude"
    summary = "|W_ij|: weight magnitude, no calibration data (SSU-Mag); --set variant=reference: column/row L2 norms"
    reference = "SSU paper ablation SSU-Mag (github.com/gucci-j/ssu)"
    Params = MagnitudeParams
    needs_calibration = False

    def element_scores(self, sp: ScoredParam):
        return sp.param.detach().float().abs()

    def unit_scores(self, sp: ScoredParam, granularity: str):
        if self.params.variant != "reference" or granularity == "element":
            return None
        return sp.param.detach().float().norm(dim=0 if granularity == "column" else 1)


SPEC = scorer_spec(MagnitudeScorer)
