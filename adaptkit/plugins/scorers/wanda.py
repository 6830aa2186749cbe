"""Wanda importance: |W_ij| * ||X_j||_2 (Sun et al., 2024), the score of SSU-Wanda.

X_j is input feature j of the parameter's module over *all* calibration tokens, its L2
norm accumulated in float32 during one no-grad forward pass with hooks, whatever the
model dtype. For a 2-D weight (out, in) the element score is s_ij = |W_ij| * ||X_j||_2
and the column score S_j = sum_i s_ij = ||X_j||_2 * sum_i |W_ij|. The same rule on the
other parameter kinds (see adaptkit.scoring): an embedding row v meets the one-hot
feature v, so s_vd = |E_vd| * sqrt(count_v); a norm scale meets feature i of the norm's
input, s_i = |w_i| * ||X_i||_2; a bias meets the constant 1, s_i = |b_i| * sqrt(tokens).

`variant=reference` reproduces the SSU authors' code (gucci-j/ssu), which departs from the
paper's formula: the column score is S_j = ||W_:,j||_2 * mean_t(x_tj^2) (the L2 norm of the
weight column times the mean squared activation), and a 1-D parameter scores
s_i = |w_i| * (1 + E[x_i^2]) (a bias: E[1^2] = 1). As element scores whose column sums are
S_j: s_ij = W_ij^2 / ||W_:,j||_2 * mean_t(x_tj^2) (0 for an all-zero column); an embedding row v
(one-hot input) scores ||E_v,:||_2 * count_v / N likewise, transposed. The code's Table 3 ablations
rank a linear weight's rows by ||W_i,:||_2 alone (`ssu_rowwise`: no activations) and its elements by
|W_ij| * (1 + mean_t(x_tj^2)) (`ssu_elementwise`); the reference variant ranks rows and elements so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, scorer_spec
from adaptkit.scoring.statistics import input_relation
from adaptkit.specs import Params


class WandaParams(Params):
    variant: Literal["paper", "reference"] = Field("paper", description="paper: |W_ij| * ||X_j||_2; reference: the SSU code's ||W_:,j||_2 * mean(x_j^2) (1-D: |w| * (1 + E[x^2])).")


class WandaScorer(Scorer):
    name = "wanda"
    summary = "|W_ij| * ||X_j||_2 over the calibration tokens (SSU's default score)"
    reference = "Sun et al. 2024, A Simple and Effective Pruning Approach for LLMs (github.com/locuslab/wanda); SSU paper"
    Params = WandaParams
    input_statistics = "features"

    def element_scores(self, sp: ScoredParam):
        if self.params.variant == "reference":
            return self._reference(sp)
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


    def _reference(self, sp: ScoredParam):
        """The SSU reference code's scores (see the module docstring)."""
        stats = self.stats.get(sp.module_name)
        weight = sp.param.detach().float()
        relation = input_relation(sp, stats, "wanda")
        tokens = max(stats.tokens, 1)
        if relation == "columns":
            norms = weight.norm(dim=0, keepdim=True)
            return weight.square() / norms.masked_fill(norms == 0, 1.0) * (stats.sumsq / tokens).unsqueeze(0)
        if relation == "rows":
            norms = weight.norm(dim=1, keepdim=True)
            return weight.square() / norms.masked_fill(norms == 0, 1.0) * (stats.counts / tokens).unsqueeze(1)
        mean_square = stats.sumsq / tokens if relation == "elements" else 1.0
        return weight.abs() * (1.0 + mean_square)

    def unit_scores(self, sp: ScoredParam, granularity: str):
        """The reference code's row-wise and element-wise ablations of a linear weight (see the module docstring)."""
        if self.params.variant != "reference" or granularity == "column":
            return None
        stats = self.stats.get(sp.module_name)
        if input_relation(sp, stats, "wanda") != "columns":
            return None
        weight = sp.param.detach().float()
        if granularity == "row":
            return weight.norm(dim=1)
        return weight.abs() * (1.0 + stats.sumsq / max(stats.tokens, 1)).unsqueeze(0)


SPEC = scorer_spec(WandaScorer)
