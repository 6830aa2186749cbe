"""Model Breadcrumbs with TIES: the breadcrumbs mask, then TIES's sign election and disjoint merge.

Davari & Belilovsky 2023 (arXiv 2312.06795) with Yadav et al. 2023 (arXiv 2306.01708), as
mergekit's `breadcrumbs_ties`; see `breadcrumbs` for the mask. `normalize` (default off, as in
mergekit) divides by the summed weights of the agreeing entries.
"""

from __future__ import annotations

from adaptkit.merge.base import MergeMethod, merge_spec
from adaptkit.plugins.merges.breadcrumbs import BreadcrumbsParams, trimmed_task_vectors


class BreadcrumbsTies(MergeMethod):
    name = "breadcrumbs-ties"
    summary = "Model Breadcrumbs mask, then TIES sign election and disjoint merge onto a base"
    reference = "Davari & Belilovsky 2023, Model Breadcrumbs, arXiv 2312.06795; Yadav et al. 2023, TIES, arXiv 2306.01708"
    Params = BreadcrumbsParams
    base = "required"

    def merge_tensor(self, tensors, base, params: BreadcrumbsParams, ctx):
        from adaptkit.merge.ops import sign_consensus

        deltas, weights = trimmed_task_vectors(tensors, base, params)
        return sign_consensus(deltas, weights, params.normalize).mul_(params.lambda_).add_(base)


SPEC = merge_spec(BreadcrumbsTies)
