"""Layer swapping: chosen layers from the first model, everything else from the second.

Bandarkar et al. 2025, "Layer swapping for zero-shot cross-lingual transfer in LLMs"
(arXiv 2410.01335): e.g. the bottom and top blocks of a language expert put into a task
expert. `layers` uses the same syntax as `revert` (`embed` and `head` select the
embeddings and the final norm + LM head); `modules` narrows it to matching tensor names.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from adaptkit.merge.base import MergeMethod, RequiredLayers, merge_spec, select
from adaptkit.specs import Params


class LayerSwapParams(Params):
    layers: RequiredLayers = Field(description="Layers taken from the first --model, e.g. 'embed,0-3,22-23'; the rest come from the second.")
    modules: Optional[list[str]] = Field(None, description="Only tensors whose name contains one of these are swapped in.")


class LayerSwap(MergeMethod):
    name = "layer-swap"
    summary = "Chosen layers from the first model, the rest from the second"
    reference = "Bandarkar et al. 2025, Layer swapping for zero-shot cross-lingual transfer, arXiv 2410.01335"
    Params = LayerSwapParams
    base = "none"
    min_models = 2
    max_models = 2
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: LayerSwapParams, ctx):
        return tensors[0] if select(ctx.name, ctx.layer, params.layers, params.modules) else tensors[1]


SPEC = merge_spec(LayerSwap)
