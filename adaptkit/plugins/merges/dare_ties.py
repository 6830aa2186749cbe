"""DARE-TIES: DARE's random drop and rescale, then TIES's sign election and disjoint merge.

Yu et al. 2024 (arXiv 2311.03099) with Yadav et al. 2023 (arXiv 2306.01708); see
`dare_linear` for the drop (seeded per tensor, rescaled by 1/density as in the paper).
"""

from __future__ import annotations

from adaptkit.merge.base import MergeMethod, merge_spec
from adaptkit.plugins.merges.dare_linear import DareParams, dropped_task_vectors


class DareTies(MergeMethod):
    name = "dare-ties"
    summary = "DARE drop and rescale, then TIES sign election and disjoint merge onto a base"
    reference = "Yu et al. 2024, DARE, arXiv 2311.03099; Yadav et al. 2023, TIES, arXiv 2306.01708"
    Params = DareParams
    base = "required"

    def merge_tensor(self, tensors, base, params: DareParams, ctx):
        from adaptkit.merge.ops import sign_consensus

        deltas, weights = dropped_task_vectors(tensors, base, params, ctx)
        return sign_consensus(deltas, weights, params.normalize).mul_(params.lambda_).add_(base)


SPEC = merge_spec(DareTies)
