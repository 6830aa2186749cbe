"""LayRA-merge: language vectors of separately adapted models, averaged onto the base within the LayRA layers.

"Continually Adding New Languages to Multilingual Language Models" (LayRA;
arXiv 2509.11414) add languages with Layer-Selective LoRA (LayRA: LoRA on selected initial
and final blocks only) and, in LayRA-merge, adapt the base to each language separately and
merge the results:

    theta = theta_base + lambda * sum_i w_i (theta_i - theta_base)   in `layers`
    theta = theta_base                                               elsewhere

with lambda = 1/n by default (the paper's choice: the average of the n adapted models) and
w_i = 1. With LayRA-trained inputs the restriction changes nothing (other blocks did not
move); with fully fine-tuned inputs it makes the merge layer-selective.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from adaptkit.merge.base import Coefficient, Layers, MergeMethod, Weights, merge_spec, per_model, select
from adaptkit.specs import Params


class LayraMergeParams(Params):
    lambda_: Optional[Coefficient] = Field(None, description="Scale of the summed language vectors; default 1/n (the average of the adapted models).")
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    layers: Layers = Field(None, description="The LayRA layers, e.g. '0-1,22-23' ('embed', 'head' too); default: all.")


class LayraMerge(MergeMethod):
    name = "layra-merge"
    summary = "LayRA-merge: base + lambda (default 1/n) x the summed language vectors of separately adapted models, within the LayRA layers"
    reference = "Continually Adding New Languages to Multilingual Language Models (LayRA), arXiv 2509.11414"
    Params = LayraMergeParams
    base = "required"
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: LayraMergeParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_, task_vectors_

        if not select(ctx.name, ctx.layer, params.layers, None):
            return base
        weights = per_model(params.weight, len(tensors), "--weight", 1.0)
        scale = params.lambda_ if params.lambda_ is not None else 1.0 / len(tensors)
        return apply_task_vectors_(task_vectors_(tensors, base), base, weights, scale)


SPEC = merge_spec(LayraMerge)
