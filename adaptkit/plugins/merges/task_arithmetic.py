"""Task arithmetic / language-vector scaling: theta_base + lambda * sum_i w_i (theta_i - theta_base).

Ilharco et al. 2023, "Editing models with task arithmetic" (arXiv 2212.04089). With one
adapted model this scales its language vector: lambda < 1 moves back toward the base,
lambda > 1 extrapolates. Same definition as mergekit's `task_arithmetic` (weights default
to 1, `normalize` divides the weighted sum by the sum of the weights).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, MergeMethod, Weights, merge_spec, per_model
from adaptkit.specs import Params


class TaskArithmeticParams(Params):
    lambda_: Coefficient = Field(1.0, description="Scale of the summed task vectors (in [-10, 10]).")
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    normalize: bool = Field(False, description="Divide the weighted sum of task vectors by the sum of the weights.")


class TaskArithmetic(MergeMethod):
    name = "task-arithmetic"
    summary = "Add scaled task / language vectors to a base: base + lambda * sum w_i (model_i - base)"
    reference = "Ilharco et al. 2023, Editing models with task arithmetic, arXiv 2212.04089"
    Params = TaskArithmeticParams
    base = "required"
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: TaskArithmeticParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_, task_vectors_

        weights = per_model(params.weight, len(tensors), "--weight", 1.0)
        return apply_task_vectors_(task_vectors_(tensors, base), base, weights, params.lambda_, params.normalize)


SPEC = merge_spec(TaskArithmetic)
