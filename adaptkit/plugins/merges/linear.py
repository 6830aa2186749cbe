"""Linear merge: a weighted average of models (model soups).

Wortsman et al. 2022, "Model soups" (arXiv 2203.05482); the same definition as mergekit's
`linear`: sum_i w_i theta_i, divided by sum_i w_i when `normalize` (the default).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.merge.base import MergeMethod, Weights, merge_spec, per_model
from adaptkit.specs import Params


class LinearParams(Params):
    weight: Weights = Field(None, description="One weight per --model (default: equal weights).")
    normalize: bool = Field(True, description="Divide by the sum of the weights.")


class Linear(MergeMethod):
    name = "linear"
    summary = "Weighted average of models (optionally normalized)"
    reference = "Wortsman et al. 2022, Model soups, arXiv 2203.05482"
    Params = LinearParams
    base = "none"
    row_separable = True  # elementwise

    def check(self, params: LinearParams, n_models: int, has_base: bool, num_layers: int) -> None:
        super().check(params, n_models, has_base, num_layers)
        if params.normalize and abs(sum(per_model(params.weight, n_models, "--weight", 1.0))) < 1e-8:
            raise InputError("--weight: the weights sum to 0, so they cannot be normalized; pass --no-normalize")

    def merge_tensor(self, tensors, base, params: LinearParams, ctx):
        from adaptkit.merge.ops import weighted_sum_

        weights = per_model(params.weight, len(tensors), "--weight", 1.0)
        merged = weighted_sum_(tensors, weights)
        return merged.div_(sum(weights)) if params.normalize else merged


SPEC = merge_spec(Linear)
