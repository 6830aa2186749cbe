"""DELLA: drop task-vector entries with a probability that falls with their magnitude, rescale, TIES.

Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based
Sampling" (arXiv 2406.11617). MagPrune: within each row of a task vector (a 1-D tensor is one
row), entries are ranked by magnitude and kept with probability
p_keep = (density - epsilon) + 2 epsilon (rank - 1) / (m - 1) (m entries in the row: the smallest
is kept with density - epsilon, the largest with density + epsilon), the same ranking as mergekit's
`della`; survivors are divided by their own p_keep (the paper's 1 / (1 - p_drop); mergekit instead
rescales the whole tensor to its L1 norm). Then TIES's sign election and disjoint merge (`della`)
or a weighted sum (`della-linear`), scaled by lambda and added to the base. The drop is seeded by
(--seed, tensor name), like DARE's.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.merge.base import Coefficient, Densities, MergeMethod, OnePerModel, Weights, merge_spec, per_model
from adaptkit.specs import Params

Epsilon = Annotated[float, Field(ge=0.0, lt=0.5, allow_inf_nan=False)]


class DellaParams(Params):
    density: Densities = Field([0.5], description="Mean probability of keeping a task-vector entry, in (0, 1]; one value, or one per --model.")
    epsilon: Annotated[list[Epsilon], OnePerModel(broadcast=True)] = Field([0.15], description="Spread of the keep probabilities: density +- epsilon, both inside (0, 1); one value, or one per --model.")
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    rescale: bool = Field(True, description="Divide each kept entry by its keep probability.")
    normalize: bool = Field(True, description="Divide by the summed weights (of the agreeing entries, with TIES).")
    lambda_: Coefficient = Field(1.0, description="Scale of the merged task vector.")


def check_della(params: DellaParams, n_models: int) -> None:
    densities = per_model(params.density, n_models, "--density", 1.0, broadcast=True)
    for density, epsilon in zip(densities, per_model(params.epsilon, n_models, "--epsilon", 0.15, broadcast=True)):
        if density < 1.0 and not (0.0 < density - epsilon and density + epsilon < 1.0):
            raise InputError(f"--epsilon: density +- epsilon must lie inside (0, 1), got density {density} and epsilon {epsilon}")


def keep_probabilities(delta, density: float, epsilon: float):
    """Per entry: density - epsilon + 2 epsilon (rank - 1) / (m - 1), ranks by |delta| within each row."""
    import torch

    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(delta.dtype)  # 0 .. m-1
    span = max(rows.shape[1] - 1, 1)
    return ((density - epsilon) + (2 * epsilon / span) * ranks).reshape(delta.shape)


def magprune_(delta, density: float, epsilon: float, generator, rescale: bool):
    """MagPrune in place: keep each entry with its probability, divide survivors by it."""
    import torch

    if density >= 1.0:
        return delta
    probabilities = keep_probabilities(delta, density, epsilon)
    delta.mul_(torch.rand(delta.shape, generator=generator) < probabilities)
    return delta.div_(probabilities) if rescale else delta


def pruned_task_vectors(tensors, base, params: DellaParams, ctx) -> tuple[list, list[float]]:
    n = len(tensors)
    densities = per_model(params.density, n, "--density", 1.0, broadcast=True)
    epsilons = per_model(params.epsilon, n, "--epsilon", 0.15, broadcast=True)
    generator = ctx.generator()
    deltas = [magprune_(t.sub_(base), d, e, generator, params.rescale) for t, d, e in zip(tensors, densities, epsilons)]
    return deltas, per_model(params.weight, n, "--weight", 1.0)


class Della(MergeMethod):
    name = "della"
    summary = "DELLA: magnitude-ranked random drop (MagPrune) and rescale, then TIES onto a base"
    reference = "Deep et al. 2024, DELLA-Merging, arXiv 2406.11617"
    Params = DellaParams
    base = "required"

    def check(self, params: DellaParams, n_models: int, has_base: bool, num_layers: int) -> None:
        super().check(params, n_models, has_base, num_layers)
        check_della(params, n_models)

    def merge_tensor(self, tensors, base, params: DellaParams, ctx):
        from adaptkit.merge.ops import sign_consensus

        deltas, weights = pruned_task_vectors(tensors, base, params, ctx)
        return sign_consensus(deltas, weights, params.normalize).mul_(params.lambda_).add_(base)


SPEC = merge_spec(Della)
