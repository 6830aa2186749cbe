"""Which parameters a scorer scores: found structurally, not from a list of names.

Every parameter of the model except those of embedding modules (`nn.Embedding`) and of the
output embedding (`model.get_output_embeddings()`, the LM head), which the SSU paper always
trains; `include_embeddings=True` scores them too. For Llama, OLMo-2, Qwen2 and other
transformers decoders this is every attention and MLP projection of the blocks (2-D), their
norms and biases (1-D), and the final norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Optional

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass
class ScoredParam:
    """One scored parameter and the module it belongs to."""

    name: str
    param: "torch.nn.Parameter"
    module_name: str
    module: "torch.nn.Module"
    embedding: bool = False

    @property
    def is_matrix(self) -> bool:
        return self.param.ndim == 2

    @property
    def group(self) -> str:
        return module_group(self.name)


def module_group(name: str) -> str:
    """The module type of a parameter, from its attribute names: 'q_proj', 'q_proj.bias', 'input_layernorm', 'lm_head'."""
    parts = name.split(".")
    if len(parts) == 1:
        return parts[0]
    return parts[-2] if parts[-1] == "weight" else f"{parts[-2]}.{parts[-1]}"


def scored_parameters(model: "torch.nn.Module", include_embeddings: bool = False, only: Optional[Collection[str]] = None) -> list[ScoredParam]:
    """The parameters a scorer scores (see the module docstring), in model order; `only`: just these names."""
    import torch

    modules = dict(model.named_modules())
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    scored = []
    for name, param in model.named_parameters():
        if only is not None and name not in only:
            continue
        module_name = name.rpartition(".")[0]
        module = modules[module_name]
        embedding = isinstance(module, torch.nn.Embedding) or (output is not None and module is output)
        if embedding and not include_embeddings:
            continue
        scored.append(ScoredParam(name, param, module_name, module, embedding))
    if not scored and only is None:
        raise InputError("--model: the model has no parameters to score besides embeddings (pass --include-embeddings)")
    return scored
