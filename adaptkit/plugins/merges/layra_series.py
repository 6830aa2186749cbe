"""LayRA-series preset: an instruct model plus the language vector of a series-adapted base,
within the LayRA layers.

Owodunni & Kumar 2025 (arXiv 2509.11414) adapt a base model to new languages one after the
other with LayRA (LayRA-series) and show that model arithmetic gives the adapted model
instruction following without target-language instruction data, with a coefficient
(lambda') tuned per task. We could not read the exact formula here; our reading, a preset
of the one-step instruction residual restricted by a layer list:

    theta = theta_instruct + lambda' (theta_adapted - theta_base)   in `layers`
    theta = theta_instruct                                          elsewhere

`adaptkit instruct-vector apply --base --instruct --model` is the same formula on all
layers (the embedding rows of tokens added by adaptation follow the executor's
vocabulary rule: copied from the adapted model).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, Layers, MergeMethod, merge_spec, select
from adaptkit.specs import Params


class LayraSeriesParams(Params):
    instruct: str = Field(description="The instruct model of the same base (a model directory).")
    lambda_prime: Coefficient = Field(1.0, description="Scale of the language vector added to the instruct model.")
    layers: Layers = Field(None, description="The LayRA layers, e.g. '0-1,22-23' ('embed', 'head' too); default: all.")


class LayraSeries(MergeMethod):
    name = "layra-series"
    summary = "LayRA-series preset: instruct model + lambda' x language vector within the LayRA layers"
    reference = "Owodunni & Kumar 2025, Continually adding new languages (LayRA), arXiv 2509.11414"
    Params = LayraSeriesParams
    base = "required"
    max_models = 1
    model_params = ("instruct",)

    def merge_tensor(self, tensors, base, params: LayraSeriesParams, ctx):
        from adaptkit.merge.ops import instruct_plus_language_

        instruct = ctx.aux["instruct"]
        if not select(ctx.name, ctx.layer, params.layers, None):
            return instruct
        return instruct_plus_language_(tensors[0], instruct, base, params.lambda_prime)


SPEC = merge_spec(LayraSeries)
