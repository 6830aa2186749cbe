"""Transformer layers of a causal LM: where the block list is, which block a parameter is in, and
layer selections written by users ("0-11", "0,1,5-7"; merges also "embed" and "head").

Shared by the layer-aware training methods (layer-freeze, layer-selective, LayRA, soft-reg,
HFT, S2FT) and the layer-aware merges (revert, layer-swap, LayRA presets, LiNeS). Light at
import (no torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Optional

from pydantic import AfterValidator, BeforeValidator

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
_ITEM_RE = re.compile(r"(\d+)(?:-(\d+))?")

# Projection names by role, for the architectures transformers ships (Llama, OLMo-2, Qwen2, Mistral,
# Gemma, Phi-3 use the first names; GPT-style models the others).
ATTENTION_OUTPUT = ("o_proj", "out_proj", "dense", "c_proj")
MLP_DOWN = ("down_proj", "fc2", "w2", "c_proj", "dense_4h_to_h")


def layer_index(name: str) -> Optional[int]:
    """The transformer-block index in a parameter or module name (`model.layers.3.mlp...` -> 3), or None."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def position(name: str, layer: Optional[int]) -> str:
    """Where a tensor sits, from its name: 'layer' inside a block, 'embed' for embeddings, 'head'
    for what follows the blocks (final norm, LM head)."""
    if layer is not None:
        return "layer"
    return "embed" if "embed" in name or name.endswith(("wte.weight", "wpe.weight")) else "head"


def find_layers(model: "torch.nn.Module") -> tuple[str, "torch.nn.ModuleList"]:
    """(qualified name, module list) of the transformer blocks, found by structure.

    The block list is the longest `nn.ModuleList` whose children share one class (with
    `config.num_hidden_layers` entries when the model has a config), wherever the
    architecture or a wrapper (peft) puts it.
    """
    import torch

    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: Optional[tuple[str, torch.nn.ModuleList]] = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1 or (expected is not None and len(module) != expected):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise InputError("--model: cannot find the transformer block list of this model (a ModuleList of identical blocks)")
    return best


def decoder_of(model: "torch.nn.Module") -> "torch.nn.Module":
    """The decoder stack without the LM head (`model.get_decoder()`), or the model itself."""
    decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    return decoder if decoder is not None else model


def num_layers(model: "torch.nn.Module") -> int:
    return len(find_layers(model)[1])


def parameter_layers(model: "torch.nn.Module") -> dict[str, Optional[int]]:
    """Parameter name -> index of the transformer block holding it (None: embeddings, final norm, head)."""
    prefix, _ = find_layers(model)
    start = f"{prefix}."
    found: dict[str, Optional[int]] = {}
    for name, _ in model.named_parameters():
        found[name] = int(name[len(start):].split(".", 1)[0]) if name.startswith(start) else None
    return found


def embedding_parameter_ids(model, embeddings: bool = True, head: bool = True) -> set[int]:
    """ids of the input-embedding and LM-head weights (one id when they are tied)."""
    keep: set[int] = set()
    if embeddings:
        keep.add(id(model.get_input_embeddings().weight))
    output = model.get_output_embeddings()
    if head and output is not None:
        keep.add(id(output.weight))
    return keep


def _to_text(value: Any) -> Any:
    """Let `--set layers=3` and `layers: [0, 1]` in YAML mean the same as the text forms."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


@dataclass(frozen=True)
class LayerSelection:
    """Which transformer blocks a selection names, and (where `ends` are allowed) the embeddings and head.

    Syntax: comma-separated items, each `N` or `A-B` (inclusive); with `ends`, also `embed`
    (the embedding tensors) and `head` (final norm and LM head), e.g. `embed,0-3,22-23`.
    Training methods take blocks only; merges take both.
    """

    layers: frozenset[int] = frozenset()
    embed: bool = False
    head: bool = False
    text: str = ""

    @classmethod
    def read(cls, text: "str | int | list[int]", ends: bool = False) -> "LayerSelection":
        """Parse a selection without knowing the model; ValueError names what is wrong."""
        items = [item.strip() for item in str(_to_text(text)).split(",")]
        text = ",".join(items)
        layers: set[int] = set()
        embed = head = False
        for item in items:
            if ends and item in ("embed", "head"):
                embed, head = embed or item == "embed", head or item == "head"
                continue
            match = _ITEM_RE.fullmatch(item)
            if not match:
                also = " (also 'embed', 'head')" if ends else ""
                raise ValueError(f"expected layer indices and ranges such as '0-11' or '0,1,5-7'{also}, got '{text}'")
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) is not None else low
            if high < low:
                raise ValueError(f"range '{item}' runs backwards; write it as low-high")
            layers.update(range(low, high + 1))
        return cls(frozenset(layers), embed, head, text)

    @classmethod
    def parse(cls, text: "str | int | list[int]", flag: str, ends: bool = False) -> "LayerSelection":
        """`read`, with errors as one-line InputErrors naming `flag`."""
        try:
            return cls.read(text, ends)
        except ValueError as exc:
            raise InputError(f"{flag}: {exc}") from None

    def check(self, num_layers: int, flag: str) -> "LayerSelection":
        """Refuse blocks the model does not have; returns the selection."""
        outside = [i for i in self.layers if i >= num_layers]
        if outside:
            raise InputError(f"{flag}: layer {max(outside)} is outside the model, which has {num_layers} layers (0-{num_layers - 1})")
        return self

    @property
    def indices(self) -> list[int]:
        """The selected block indices, sorted."""
        return sorted(self.layers)

    def contains(self, name: str, layer: Optional[int]) -> bool:
        """Whether the tensor `name` (in block `layer`, None outside the blocks) is selected."""
        where = position(name, layer)
        if where == "layer":
            return layer in self.layers
        return self.embed if where == "embed" else self.head


def check_layer_syntax(text: str) -> str:
    """Validate the form of a block selection without knowing the model (for parameter models)."""
    return LayerSelection.read(text).text


LayerSpec = Annotated[str, BeforeValidator(_to_text), AfterValidator(check_layer_syntax)]
"""A pydantic field type for layer selections: "0-11", "0,1,5-7", 3 or [0, 1]."""


def parse_layers(text: "str | int | list[int]", num_layers: int, flag: str = "--set layers") -> list[int]:
    """Sorted, unique layer indices of a selection like "0-11" or "0,1,5-7", checked against the model."""
    return LayerSelection.parse(text, flag).check(num_layers, flag).indices


def format_layers(indices: list[int]) -> str:
    """The compact text form of sorted indices: [0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    start = prev = None
    for index in sorted(set(indices)):
        if start is None:
            start = prev = index
        elif index == prev + 1:
            prev = index
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = index
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)


def block_linears(block: "torch.nn.Module") -> dict[str, list[str]]:
    """The linear projections of one transformer block by role: {"attention": [...], "mlp": [...]}.

    Roles come from the parent module's name (`self_attn`/`attention`/`attn` vs
    `mlp`/`feed_forward`/`ffn`), which every transformers decoder follows.
    """
    import torch

    roles: dict[str, list[str]] = {"attention": [], "mlp": []}
    for name, module in block.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        parent = name.rsplit(".", 1)[0].lower() if "." in name else ""
        if "attn" in parent or "attention" in parent:
            roles["attention"].append(name)
        elif "mlp" in parent or "feed_forward" in parent or "ffn" in parent:
            roles["mlp"].append(name)
    return roles


def find_projection(block: "torch.nn.Module", role: str, names: tuple[str, ...], flag: str) -> str:
    """The qualified name, inside `block`, of the projection of `role` called one of `names`."""
    candidates = block_linears(block)[role]
    for wanted in names:
        for name in candidates:
            if name.rsplit(".", 1)[-1] == wanted:
                return name
    raise InputError(f"{flag}: cannot find the {role} projection ({' / '.join(names)}) in the model's blocks (found: {', '.join(candidates) or 'none'})")
