"""LayRA: LoRA on the first and last transformer layers only, with trainable embeddings and LM head.

"Continually Adding New Languages to Multilingual Language Models" (arXiv 2509.11414), §3.2: rank 8,
alpha 16, dropout 0.05 on the linear projections of the first 10 and the last 2 layers, and the token
embeddings and LM head trained in full (peft
`modules_to_save`, kept tied when the model ties them; trained in place as in `lora`). The layers are configurable with
`first`/`last` or an explicit `layers` selection ('0-9,30-31'). Saved like `lora`: merged dense
model in final/, PEFT adapter in final/adapter/.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from adaptkit.engine.plan import MethodContext
from adaptkit.layers import LayerSpec, num_layers, parse_layers
from adaptkit.plugins.methods.lora import LoRA, LoRAParams
from adaptkit.specs import method_spec


class LayRAParams(LoRAParams):
    first: int = Field(10, ge=0, description="Adapt the first N layers.")
    last: int = Field(2, ge=0, description="Adapt the last N layers.")
    layers: Optional[LayerSpec] = Field(None, description="Explicit layer selection such as '0-9,30-31' (instead of first/last).")
    train_embeddings_and_head: bool = Field(True, description="Train the token embeddings and LM head in full.")


def layra_layers(total: int, first: int, last: int) -> list[int]:
    return sorted(set(range(min(first, total))) | set(range(max(0, total - last), total)))


class LayRA(LoRA):
    name = "layra"
    summary = "LayRA: LoRA (r 8, alpha 16) on the first 10 and last 2 layers plus trainable embeddings and LM head"
    reference = "Continually Adding New Languages to Multilingual Language Models (LayRA), arXiv 2509.11414"
    Params = LayRAParams
    extras = ("peft",)

    def lora_settings(self, model, ctx: MethodContext) -> dict:
        p = self.params
        total = num_layers(model)
        layers = parse_layers(p.layers, total, "--set layers") if p.layers is not None else layra_layers(total, p.first, p.last)
        if not layers:
            from adaptkit.errors import InputError

            raise InputError("--set first/last: LayRA needs at least one layer (first + last is 0)")
        return {**super().lora_settings(model, ctx), "layers_to_transform": layers}


SPEC = method_spec(LayRA)
