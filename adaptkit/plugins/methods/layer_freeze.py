"""Layer freezing: hard-freeze a user-given range or list of transformer layers; everything else trains.

Hard layer freezing is one of the layer-aware alignment strategies compared in
"Parameter Alignment Mitigates Catastrophic Forgetting in Multilingual Expert Language Models" (arXiv 2606.00284): the chosen blocks
(e.g. the lower half, `--set layers=0-11`) keep their source weights bit for bit, while the
other blocks, the embeddings, the final norm and the LM head are trained in full. The paper's
abstract states the strategy (and that it best preserves comprehension), not which layers it
freezes: the layers are the user's choice (no default), and training the embeddings and head in
full is adaptkit's.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.layers import LayerSpec, format_layers, num_layers, parameter_layers, parse_layers
from adaptkit.specs import Params, method_spec


class LayerFreezeParams(Params):
    layers: LayerSpec = Field(description="Layers to freeze: a range or list such as '0-11' or '0,1,5-7'.")


class LayerFreeze(TrainingMethod):
    name = "layer-freeze"
    summary = "Freeze the given transformer layers (e.g. layers=0-11); train everything else"
    reference = "Layer-aware alignment strategies, arXiv 2606.00284"
    Params = LayerFreezeParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        frozen = set(parse_layers(self.params.layers, num_layers(model), "--set layers"))
        where = parameter_layers(model)
        return TrainingPlan.only(
            model,
            lambda name, _: where[name] not in frozen,
            summary=f"layer freezing: layers {format_layers(sorted(frozen))} frozen, the rest trains",
        )


SPEC = method_spec(LayerFreeze)
