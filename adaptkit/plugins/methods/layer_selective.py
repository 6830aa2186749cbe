"""Layer-selective fine-tuning: fully train chosen transformer layers (default: the first and the
last) plus the token embeddings and the LM head; every other parameter stays frozen.

The chosen-layer baseline of layer-aware language adaptation (cf. LayRA, "Continually Adding New Languages to Multilingual Language
Models", arXiv 2509.11414, which places its adapters on the first and last layers for the same reason:
those layers carry most of the language-specific processing).
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.layers import LayerSpec, embedding_parameter_ids, format_layers, num_layers, parameter_layers, parse_layers
from adaptkit.specs import Params, method_spec


class LayerSelectiveParams(Params):
    layers: Optional[LayerSpec] = Field(None, description="Layers to train in full, e.g. '0,23' or '0-3'; default: the first and the last.")
    embeddings: bool = Field(True, description="Also train the input token embeddings.")
    head: bool = Field(True, description="Also train the LM head (the output embeddings).")


class LayerSelective(TrainingMethod):
    name = "layer-selective"
    summary = "Fully train chosen layers (default first and last) plus embeddings and LM head"
    reference = "Layer-aware adaptation baseline; cf. LayRA, arXiv 2509.11414"
    Params = LayerSelectiveParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        total = num_layers(model)
        layers = parse_layers(self.params.layers, total, "--set layers") if self.params.layers is not None else sorted({0, total - 1})
        chosen = set(layers)
        where = parameter_layers(model)
        extra = embedding_parameter_ids(model, self.params.embeddings, self.params.head)
        parts = [f"layers {format_layers(layers)}"] + (["embeddings"] if self.params.embeddings else []) + (["LM head"] if self.params.head else [])
        return TrainingPlan.only(
            model,
            lambda name, param: where[name] in chosen or id(param) in extra,
            summary=f"layer-selective: {', '.join(parts)} train in full, the rest is frozen",
        )


SPEC = method_spec(LayerSelective)
