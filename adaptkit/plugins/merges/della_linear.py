"""DELLA with a linear combination: MagPrune's drop and rescale, then a weighted sum onto a base.

Deep et al. 2024 (arXiv 2406.11617), as mergekit's `della_linear`; see `della` for the drop.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import MergeMethod, merge_spec
from adaptkit.plugins.merges.della import DellaParams, check_della, pruned_task_vectors


class DellaLinearParams(DellaParams):
    normalize: bool = Field(False, description="Divide the weighted sum by the sum of the weights.")


class DellaLinear(MergeMethod):
    name = "della-linear"
    summary = "DELLA's MagPrune drop and rescale, then a weighted sum onto a base"
    reference = "Deep et al. 2024, DELLA-Merging, arXiv 2406.11617"
    Params = DellaLinearParams
    base = "required"

    def check(self, params: DellaLinearParams, n_models: int, has_base: bool, num_layers: int) -> None:
        super().check(params, n_models, has_base, num_layers)
        check_della(params, n_models)

    def merge_tensor(self, tensors, base, params: DellaLinearParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_

        deltas, weights = pruned_task_vectors(tensors, base, params, ctx)
        return apply_task_vectors_(deltas, base, weights, params.lambda_, params.normalize)


SPEC = merge_spec(DellaLinear)
