"""LiNeS: layer-increasing network scaling of task vectors.

Wang et al. 2025, "LiNeS: Post-training layer scaling prevents forgetting and enhances
model merging" (arXiv 2410.17146). The (weighted, summed) task vector of block l is scaled
by alpha + (beta - alpha) * l / (L - 1): shallow layers, which hold general features, move
little; deep layers keep their update. Every tensor outside the blocks (embeddings, final
norm, LM head) is scaled by alpha, as the authors' reference code does. The paper writes the
scale of block l (counted from 1) as alpha + beta' (l - 1) / (L - 1); our beta is the last block's scale, so
the paper's beta' = beta - alpha.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, MergeMethod, Weights, merge_spec, per_model
from adaptkit.specs import Params


class LinesParams(Params):
    alpha: Coefficient = Field(0.0, description="Scale of the update at the first layer and outside the blocks (embeddings, final norm, LM head).")
    beta: Coefficient = Field(1.0, description="Scale of the update at the last layer.")
    weight: Weights = Field(None, description="One weight per --model for summing task vectors (default 1 each).")


def depth(ctx) -> float:
    """0 for the first block and every tensor outside the blocks, 1 for the last block."""
    if ctx.layer is None:
        return 0.0
    return ctx.layer / (ctx.num_layers - 1) if ctx.num_layers > 1 else 1.0


class Lines(MergeMethod):
    name = "lines"
    summary = "Layer-scaled task vectors: scale alpha at the first layer rising linearly to beta at the last"
    reference = "Wang et al. 2025, LiNeS, arXiv 2410.17146"
    Params = LinesParams
    base = "required"
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: LinesParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_, task_vectors_

        weights = per_model(params.weight, len(tensors), "--weight", 1.0)
        scale = params.alpha + (params.beta - params.alpha) * depth(ctx)
        return apply_task_vectors_(task_vectors_(tensors, base), base, weights, scale)


SPEC = merge_spec(Lines)
