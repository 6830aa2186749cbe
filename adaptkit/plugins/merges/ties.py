"""TIES merging: trim each task vector, elect a sign per entry, merge the agreeing entries.

Yadav et al. 2023, "TIES-Merging" (arXiv 2306.01708). Trim keeps the max(1, int(density*n))
entries of largest magnitude of each task vector; the elected sign is that of the sum of
the weighted trimmed vectors; the agreeing nonzero entries are summed and, with
`normalize`, divided by the sum of their weights (a disjoint mean). Same definition and
defaults as mergekit's `ties` except the CLI default density (0.2, the paper's top-20%;
mergekit's YAML default of 1.0 applies to --config files).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, Densities, MergeMethod, Weights, merge_spec, per_model
from adaptkit.specs import Params


class TiesParams(Params):
    density: Densities = Field([0.2], description="Fraction of each task vector kept by trimming, in (0, 1]; one value, or one per --model.")
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    normalize: bool = Field(True, description="Divide by the summed weights of the agreeing entries.")
    lambda_: Coefficient = Field(1.0, description="Scale of the merged task vector.")


class Ties(MergeMethod):
    name = "ties"
    summary = "TIES: trim task vectors, elect signs, disjoint merge onto a base"
    reference = "Yadav et al. 2023, TIES-Merging, arXiv 2306.01708"
    Params = TiesParams
    base = "required"

    def merge_tensor(self, tensors, base, params: TiesParams, ctx):
        from adaptkit.merge.ops import magnitude_trim_, sign_consensus, task_vectors_

        n = len(tensors)
        densities = per_model(params.density, n, "--density", 1.0, broadcast=True)
        weights = per_model(params.weight, n, "--weight", 1.0)
        trimmed = [magnitude_trim_(delta, density) for delta, density in zip(task_vectors_(tensors, base), densities)]
        return sign_consensus(trimmed, weights, params.normalize).mul_(params.lambda_).add_(base)


SPEC = merge_spec(Ties)
