"""LayRA-merge preset: language vectors of separately adapted models, summed onto the base
within the LayRA layers.

Owodunni & Kumar 2025, "Continually adding new languages to multilingual language models"
(arXiv 2509.11414) add languages with Layer-Selective LoRA (LayRA: LoRA on selected
initial and final blocks only) and compare adapting to several languages one after the
other (LayRA-series) with adapting to each separately and merging the results
(LayRA-merge). We could not read the paper's exact merge formula here; our reading, as a
preset of task arithmetic restricted by a layer list:

    theta = theta_base + lambda * sum_i w_i (theta_i - theta_base)   in `layers`
    theta = theta_base                                               elsewhere

With LayRA-trained inputs the restriction changes nothing (other blocks did not move);
with fully fine-tuned inputs it makes the merge layer-selective.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, Layers, MergeMethod, Weights, merge_spec, per_model, select
from adaptkit.specs import Params


class LayraMergeParams(Params):
    lambda_: Coefficient = Field(1.0, description="Scale of the summed language vectors.")
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    layers: Layers = Field(None, description="The LayRA layers, e.g. '0-1,22-23' ('embed', 'head' too); default: all.")


class LayraMerge(MergeMethod):
    name = "layra-merge"
    summary = "LayRA-merge preset: sum language vectors of separately adapted models within the LayRA layers"
    reference = "Owodunni & Kumar 2025, Continually adding new languages (LayRA), arXiv 2509.11414"
    Params = LayraMergeParams
    base = "required"

    def merge_tensor(self, tensors, base, params: LayraMergeParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_, task_vectors_

        if not select(ctx.name, ctx.layer, params.layers, None):
            return base
        weights = per_model(params.weight, len(tensors), "--weight", 1.0)
        return apply_task_vectors_(task_vectors_(tensors, base), base, weights, params.lambda_)


SPEC = merge_spec(LayraMerge)
