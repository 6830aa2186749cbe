"""DARE with a linear combination: drop task-vector entries at random, rescale, add to the base.

Yu et al. 2024, "Language Models are Super Mario" (arXiv 2311.03099): each entry of each
task vector is kept with probability `density` and survivors are divided by `density`
(the paper's 1/(1-p)); mergekit rescales to the original L1 norm instead. The drop is
seeded by (--seed, tensor name), so a merge is reproducible whatever the tensor order.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, Densities, MergeMethod, Weights, merge_spec, per_model
from adaptkit.specs import Params


class DareParams(Params):
    density: Densities = Field([0.5], description="Probability of keeping each task-vector entry, in (0, 1]; one value, or one per --model.")
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    rescale: bool = Field(True, description="Divide kept entries by the density (keeps the expected update).")
    normalize: bool = Field(False, description="Divide by the sum of the weights.")
    lambda_: Coefficient = Field(1.0, description="Scale of the merged task vector.")


def dropped_task_vectors(tensors, base, params: DareParams, ctx) -> tuple[list, list[float]]:
    """The DARE-dropped task vectors of every model (seeded per tensor) and their weights."""
    from adaptkit.merge.ops import dare_drop_

    n = len(tensors)
    densities = per_model(params.density, n, "--density", 1.0, broadcast=True)
    weights = per_model(params.weight, n, "--weight", 1.0)
    generator = ctx.generator()
    deltas = [dare_drop_(tensor.sub_(base), density, generator, params.rescale) for tensor, density in zip(tensors, densities)]
    return deltas, weights


class DareLinear(MergeMethod):
    name = "dare-linear"
    summary = "DARE: random drop and rescale of task vectors, then a weighted sum onto a base"
    reference = "Yu et al. 2024, Language Models are Super Mario (DARE), arXiv 2311.03099"
    Params = DareParams
    base = "required"

    def merge_tensor(self, tensors, base, params: DareParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_

        deltas, weights = dropped_task_vectors(tensors, base, params, ctx)
        return apply_task_vectors_(deltas, base, weights, params.lambda_, params.normalize)


SPEC = merge_spec(DareLinear)
