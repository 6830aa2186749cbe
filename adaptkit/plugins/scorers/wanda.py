"""Wanda importance: |W_ij| * ||X_j||_2 (Sun et al., 2024), the score of SSU-Wanda.

X_j is input feature j of the parameter's module over *all* calibration tokens, its L2
norm accumulated in float32 during one no-grad forward pass with hooks, whatever the
model dtype. For a 2-D weight (out, in) the element score is s_ij = |W_ij| * ||X_j||_2
and the column score S_j = sum_i s_ij = ||X_j||_2 * sum_i |W_ij|. The same rule on the
other parameter kinds (see adaptkit.scoring): an embedding row v meets the one-hot
feature v, so s_vd = |E_vd| * sqrt(count_v); a norm scale meets feature i of the norm's
input, s_i = |w_i| * ||X_i||_2; a bias meets the constant 1, s_i = |b_i| * sqrt(tokens).

Deviation from the SSU authors' code (gucci-j/ssu): there the column score is
||W_:,j||_2 * mean_t x_tj^2 and row scores ignore activations; here both follow the
Wanda element score above, summed over the other axis, as the paper states it.
"""

from __future__ import annotations

from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, scorer_spec
from adaptkit.scoring.statistics import input_relation
from adaptkit.specs import Params


class WandaParams(Params):
    """Wanda has no parameters of its own."""


class WandaScorer(Scorer):
    name = "wanda"
    summary = "|W_ij| * ||X_j||_2 over the calibration tokens (SSU's default score)"
    reference = "Sun et al. 2024, A Simple and Effective Pruning Approach for LLMs (github.com/locuslab/wanda); SSU paper"
    Params = WandaParams
    input_statistics = "features"

    def element_scores(self, sp: ScoredParam):
        stats = self.stats.get(sp.module_name)
        weight = sp.param.detach().float().abs()
        relation = input_relation(sp, stats, "wanda")
        if relation == "columns":
            return weight * stats.sumsq.sqrt().unsqueeze(0)
        if relation == "rows":
            return weight * stats.counts.sqrt().unsqueeze(1)
        if relation == "elements":
            return weight * stats.sumsq.sqrt()
        return weight * float(stats.tokens) ** 0.5


SPEC = scorer_spec(WandaScorer)
