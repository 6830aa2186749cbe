"""Model Breadcrumbs: drop both the smallest and the largest (outlier) entries of each task vector.

Davari & Belilovsky 2023, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
Masks" (arXiv 2312.06795), as mergekit's `breadcrumbs`: of the n entries of a task vector sorted
by magnitude, the int(gamma * n) largest are dropped as outliers and the smallest ones so that
int(density * n) remain (fewer outliers are dropped when density + gamma > 1); the kept task
vectors are summed with their weights (divided by the summed weights with `normalize`), scaled
by lambda and added to the base. `breadcrumbs-ties` adds TIES's sign election.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from adaptkit.merge.base import Coefficient, Densities, MergeMethod, OnePerModel, Weights, merge_spec, per_model
from adaptkit.specs import Params

Gamma = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


class BreadcrumbsParams(Params):
    density: Densities = Field([0.9], description="Fraction of each task vector kept, in (0, 1]; one value, or one per --model.")
    gamma: Annotated[list[Gamma], OnePerModel(broadcast=True)] = Field([0.01], description="Fraction of largest-magnitude entries dropped as outliers, in [0, 1); one value, or one per --model.")
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    normalize: bool = Field(False, description="Divide by the summed weights (of the agreeing entries, with TIES).")
    lambda_: Coefficient = Field(1.0, description="Scale of the merged task vector.")


def outlier_trim_(delta, density: float, gamma: float):
    """Keep the entries ranked [n_bot, n_bot + int(density n)) by ascending |delta|, in place."""
    import torch

    if density >= 1.0:
        return delta
    n = delta.numel()
    kept = int(density * n)
    bottom = max(0, n - kept - int(gamma * n))
    order = torch.sort(delta.abs().reshape(-1), descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[order[bottom:bottom + kept]] = 1
    return delta.mul_(mask.reshape(delta.shape))


def trimmed_task_vectors(tensors, base, params: BreadcrumbsParams) -> tuple[list, list[float]]:
    n = len(tensors)
    densities = per_model(params.density, n, "--density", 1.0, broadcast=True)
    gammas = per_model(params.gamma, n, "--gamma", 0.01, broadcast=True)
    weights = per_model(params.weight, n, "--weight", 1.0)
    return [outlier_trim_(t.sub_(base), d, g) for t, d, g in zip(tensors, densities, gammas)], weights


class Breadcrumbs(MergeMethod):
    name = "breadcrumbs"
    summary = "Model Breadcrumbs: drop small and outlier task-vector entries, then a weighted sum onto a base"
    reference = "Davari & Belilovsky 2023, Model Breadcrumbs, arXiv 2312.06795"
    Params = BreadcrumbsParams
    base = "required"

    def merge_tensor(self, tensors, base, params: BreadcrumbsParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_

        deltas, weights = trimmed_task_vectors(tensors, base, params)
        return apply_task_vectors_(deltas, base, weights, params.lambda_, params.normalize)


SPEC = merge_spec(Breadcrumbs)
