"""LayRA-instruct: an instruct model plus part of the language vector, within the LayRA layers.

"Continually Adding New Languages to Multilingual Language Models" (LayRA; arXiv 2509.11414), LayRA-instruct: the language vector of an adapted
base is added to the instruct model of the same base with a coefficient alpha < 1 ("adds part
of the language vector"), giving the adapted model instruction following without
target-language instruction data:

    theta = theta_instruct + alpha (theta_adapted - theta_base)   in `layers`
    theta = theta_instruct                                        elsewhere

`adaptkit instruct-vector apply --base --instruct --model` is the same formula on all layers
(the embedding rows of tokens added by adaptation follow the executor's vocabulary rule:
copied from the adapted model).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, Layers, MergeMethod, merge_spec, select
from adaptkit.specs import Params


class LayraInstructParams(Params):
    instruct: str = Field(description="The instruct model of the same base (a model directory).")
    alpha: Coefficient = Field(1.0, description="Share of the language vector added to the instruct model (paper: alpha < 1, tuned per task).")
    layers: Layers = Field(None, description="The LayRA layers, e.g. '0-9,22-23' ('embed', 'head' too); default: all.")


class LayraInstruct(MergeMethod):
    name = "layra-instruct"
    summary = "LayRA-instruct: instruct model + alpha x language vector (adapted - base) within the LayRA layers"
    reference = "Continually Adding New Languages to Multilingual Language Models (LayRA), arXiv 2509.11414"
    Params = LayraInstructParams
    base = "required"
    max_models = 1
    model_params = ("instruct",)
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: LayraInstructParams, ctx):
        from adaptkit.merge.ops import instruct_plus_language_

        instruct = ctx.aux["instruct"]
        if not select(ctx.name, ctx.layer, params.layers, None):
            return instruct
        return instruct_plus_language_(tensors[0], instruct, base, params.alpha)


SPEC = merge_spec(LayraInstruct)
