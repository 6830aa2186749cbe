"""LayRA-series: the second of two languages adapted one after the other, added to the first with lambda'.

"Continually Adding New Languages to Multilingual Language Models" (LayRA; arXiv 2509.11414),
LayRA-series: stage 2 is trained from the stage-1 result theta_1 (the base adapted to the first
language), and its update is added back with a coefficient lambda':

    theta = theta_1 + lambda' (theta_adapted2 - theta_1)   in `layers`
    theta = theta_1                                        elsewhere

`--base` is theta_1 (the stage-1 model), `--model` the stage-2 result trained from it.
Default lambda' = 0.5, the paper's value: its Series rows (Tables 1-2, GlgSwa) equal the "Swa 0.5"
rows of its lambda' sweep (Appendix A.3, Tables 19-22).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import Coefficient, Layers, MergeMethod, merge_spec, select
from adaptkit.specs import Params


class LayraSeriesParams(Params):
    lambda_prime: Coefficient = Field(0.5, description="Scale of the stage-2 update added to the stage-1 model (the paper's 0.5).")
    layers: Layers = Field(None, description="The LayRA layers, e.g. '0-9,22-23' ('embed', 'head' too); default: all.")


class LayraSeries(MergeMethod):
    name = "layra-series"
    summary = "LayRA-series: stage-1 model (--base) + lambda' x (stage-2 model - stage-1 model) within the LayRA layers"
    reference = "Continually Adding New Languages to Multilingual Language Models (LayRA), arXiv 2509.11414"
    Params = LayraSeriesParams
    base = "required"
    max_models = 1
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: LayraSeriesParams, ctx):
        from adaptkit.merge.ops import apply_task_vectors_, task_vectors_

        if not select(ctx.name, ctx.layer, params.layers, None):
            return base
        return apply_task_vectors_(task_vectors_(tensors, base), base, [1.0], params.lambda_prime)


SPEC = merge_spec(LayraSeries)
