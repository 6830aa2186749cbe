"""SparseGPT-style importance (SSU-SparseGPT): the SSU paper's definition by default, the OBS saliency on request.

`saliency=paper` (default): the SSU paper (Appendix B) scores weight theta_ij by the average
squared activation of its input neuron over the calibration tokens, s_ij = E[x_j^2], as the
SSU authors' code (gucci-j/ssu, `sgpt_based`) ranks columns: no weights, no inverse. So the
column score is S_j = out * E[x_j^2]; every row scores sum_j E[x_j^2]. The same rule on the
other parameter kinds: a norm scale s_i = E[x_i^2], an embedding row s_vd = count_v / N (its
one-hot input), a bias s_i = 1 (constant input 1).

`saliency=obs`: with H = (2/N) X^T X the input second-moment matrix of a linear module over
all N calibration tokens (float32) and damping lambda = damp * mean(diag H) as in SparseGPT,
the OBS saliency of weight W_ij is

    s_ij = W_ij^2 / [(H + lambda I)^-1]_jj

(the error of removing W_ij when the other weights of its row compensate), and the column
score S_j = sum_i s_ij. Input features that are always zero (diag H = 0) get score 0, as
SparseGPT treats dead inputs. Parameters with a diagonal input relation use the diagonal of
H: a norm scale s_i = w_i^2 (H_ii + lambda), an embedding row s_vd = E_vd^2 (2 count_v / N +
lambda), a bias (constant input 1, H = 2) s_i = b_i^2 (2 + lambda). SparseGPT's own mask
selection divides by the squared diagonal of the Cholesky factor of H^-1, which depends on
the column order of its sequential pruning; this order-free OBS form is the one the Wanda
paper tabulates for SparseGPT. H costs in_features^2 float32 per distinct module input
(q/k/v and gate/up share one); `paper` needs only its diagonal.

`saliency=reference`: what the SSU authors' code computes (gucci-j/ssu, `sgpt_based`, `sgpt_rowwise`,
`sgpt_elementwise` in training/src/utils/model_utils.py). Its "E[x_j^2]" is not the mean over the
calibration tokens: after each forward call (one calibration block at the reference's batch size 1;
use calib_batch_size 1) the statistic becomes (previous + this call's mean of x_j^2) / 2, so the last
blocks weigh most (block b of n gets 2^-(n-b+1), the first two 2^-(n-1)). With that statistic r_j:
a linear weight's columns rank by r_j, its rows by sum_j |W_ij| r_j, its elements by |W_ij| alone (the
code's element-wise branch finds r shorter than the weight and falls back to magnitude); 1-D norm
scales are never frozen by the column and row ablations (the code handles only 2-D weights and
biases there) and rank by r_i in the element-wise one. Embeddings rank as under `paper`.
The `ssu-paper/ssu-sparsegpt` preset selects it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, scorer_spec
from adaptkit.scoring.statistics import input_relation
from adaptkit.specs import Params


class SparseGPTParams(Params):
    saliency: Literal["paper", "obs", "reference"] = Field("paper", description="paper: E[x_j^2] (SSU Appendix B); reference: the SSU code's running (prev+new)/2 statistic and its rules; obs: W_ij^2 / [(H + lambda I)^-1]_jj.")
    damp: float = Field(0.01, gt=0, description="With saliency=obs: damping as a fraction of mean(diag H) (SparseGPT: 0.01).")


class SparseGPTScorer(Scorer):
    name = "sparsegpt"
    summary = "E[x_j^2] of each weight's input (SSU-SparseGPT as the paper defines it); --set saliency=obs: W_ij^2 / [(H + lambda I)^-1]_jj"
    reference = "Frantar & Alistarh 2023, SparseGPT (github.com/IST-DASLab/sparsegpt); SSU paper ablation"
    Params = SparseGPTParams
    input_statistics = "gram"

    def __init__(self, params: SparseGPTParams):
        super().__init__(params)
        self.input_statistics = "gram" if params.saliency == "obs" else "features"

    def use_statistics(self, stats) -> None:
        super().use_statistics(stats)
        self._inverse_diagonals: dict[int, object] = {}

    def _inverse_diagonal(self, stats):
        """diag((H + lambda I)^-1) with dead features marked inf (score 0), cached per shared input."""
        import torch

        key = id(stats)
        if key not in self._inverse_diagonals:
            hessian = 2.0 * stats.gram / max(stats.tokens, 1)
            diagonal = hessian.diagonal()
            dead = diagonal == 0
            hessian = hessian.clone()
            hessian[dead, dead] = 1.0
            damping = self.params.damp * float(diagonal.mean())
            hessian.diagonal().add_(damping)
            try:
                inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian)).diagonal().clone()
            except torch.linalg.LinAlgError:
                raise InputError(f"scorer sparsegpt: the damped input Hessian is not positive definite; raise damping with --set damp={self.params.damp * 10:g}") from None
            inverse[dead] = float("inf")
            self._inverse_diagonals[key] = inverse
        return self._inverse_diagonals[key]

    def _diagonal_curvature(self, second_moment, tokens: int):
        """H_ii + lambda for a diagonal input relation, 0 for dead features."""
        hessian = 2.0 * second_moment / max(tokens, 1)
        curvature = hessian + self.params.damp * float(hessian.mean())
        return curvature.masked_fill(hessian == 0, 0.0)

    def element_scores(self, sp: ScoredParam):
        if self.params.saliency == "paper":
            return self._mean_square(sp)
        if self.params.saliency == "reference":
            return self._mean_square(sp, running=True)
        stats = self.stats.get(sp.module_name)
        squared = sp.param.detach().float().square()
        relation = input_relation(sp, stats, "sparsegpt")
        if relation == "columns":
            return squared / self._inverse_diagonal(stats).unsqueeze(0)
        if relation == "rows":
            return squared * self._diagonal_curvature(stats.counts, stats.tokens).unsqueeze(1)
        if relation == "elements":
            return squared * self._diagonal_curvature(stats.sumsq, stats.tokens)
        return squared * 2.0 * (1.0 + self.params.damp)


    def _mean_square(self, sp: ScoredParam, running: bool = False):
        """s_ij = E[x_j^2] of the entry's input (with `running`: the reference's running statistic), broadcast to the parameter's shape."""
        import torch

        stats = self.stats.get(sp.module_name)
        shape = tuple(sp.param.shape)
        tokens = max(stats.tokens, 1)
        relation = input_relation(sp, stats, "sparsegpt")
        mean_square = stats.running if running and stats.running is not None else (stats.sumsq / tokens if stats.sumsq is not None else None)
        if relation == "columns":
            return mean_square.unsqueeze(0).expand(shape)
        if relation == "rows":
            return (stats.counts / tokens).unsqueeze(1).expand(shape)
        if relation == "elements":
            return mean_square
        return torch.ones(shape, dtype=torch.float32, device=sp.param.device)

    def unit_scores(self, sp: ScoredParam, granularity: str):
        """saliency=reference on a linear weight: columns by r_j, rows by sum_j |W_ij| r_j, elements by |W_ij|."""
        if self.params.saliency != "reference":
            return None
        stats = self.stats.get(sp.module_name)
        if input_relation(sp, stats, "sparsegpt") != "columns":
            return None
        weight = sp.param.detach().float().abs()
        if granularity == "column":
            return stats.running.clone()
        if granularity == "row":
            return (weight * stats.running.unsqueeze(0)).sum(1)
        return weight

    def leaves_unscored(self, sp: ScoredParam, granularities: tuple[str, ...]) -> bool:
        """saliency=reference: the column and row ablations never freeze 1-D norm scales."""
        is_bias = sp.param is getattr(sp.module, "bias", None)
        return self.params.saliency == "reference" and sp.param.ndim == 1 and not is_bias and "element" not in granularities


SPEC = scorer_spec(SparseGPTScorer)
