"""Block expansion (LLaMA-Pro: Wu et al., "LLaMA Pro: Progressive LLaMA with Block Expansion", ACL 2024).

New decoder blocks are inserted into the model, each a copy of the block before it with its output
projections (attention output and MLP down projection, weight and bias) set to zero: every new block adds
zero to the residual stream, so the expanded model computes exactly what the original did. Only the new
blocks train (optionally also the input embeddings and LM head); every original block stays bit for bit.

Where: `every=k` adds a block after every k-th block (LLaMA-Pro's groups: 32 blocks, k=4 -> 40 blocks), or
`positions` names the original blocks after which a copy goes ("3,7"). The saved final/ is a normal
Hugging Face model with more layers (config num_hidden_layers, and layer_types where the config has
them, updated; every attention's layer_idx renumbered, so the KV cache sees one slot per block).
"""

from __future__ import annotations

import copy
from typing import Optional

from pydantic import Field, model_validator

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.layers import LayerSpec
from adaptkit.specs import Params, method_spec


class BlockExpansionParams(Params):
    every: Optional[int] = Field(None, gt=0, description="Add a copy after every k-th block (k=4 on 32 blocks: 8 new ones).")
    positions: Optional[LayerSpec] = Field(None, description="Or: the original blocks after which a copy goes, e.g. '3,7'.")
    train_embeddings: bool = Field(False, description="Also train the input embeddings and LM head.")

    @model_validator(mode="after")
    def _one_placement(self) -> "BlockExpansionParams":
        if (self.every is None) == (self.positions is None):
            raise ValueError("give exactly one of every=K or positions=LIST")
        return self


class BlockExpansion(TrainingMethod):
    name = "block-expansion"
    summary = "Insert copies of blocks with zeroed output projections (every=K or positions=LIST); train only them"
    reference = "LLaMA Pro: Progressive LLaMA with Block Expansion, Wu et al., ACL 2024 (arXiv 2401.02415)"
    Params = BlockExpansionParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        from adaptkit.layers import embedding_parameter_ids, format_layers, num_layers

        after = expansion_points(self.params, num_layers(model))
        new_blocks = expand_blocks(model, after)
        new = {id(p) for block in new_blocks for p in block.parameters()}
        new |= embedding_parameter_ids(model) if self.params.train_embeddings else set()
        plan = TrainingPlan.only(model, lambda _, param: id(param) in new)
        plan.summary = (f"block expansion: {len(after)} new block(s) after block(s) {format_layers(after)}, "
                        f"{num_layers(model)} blocks in all; only the new ones train"
                        + ("; embeddings and head too" if self.params.train_embeddings else ""))
        return plan


def expansion_points(params: BlockExpansionParams, blocks: int) -> list[int]:
    """The original blocks (sorted) after which a copy goes; a position past the last block is an InputError."""
    from adaptkit.errors import InputError
    from adaptkit.layers import parse_layers

    if params.positions is not None:
        return parse_layers(params.positions, blocks, "--set positions")
    if params.every > blocks:
        raise InputError(f"--set every: {params.every} is more than the model's {blocks} blocks (expected 1-{blocks})")
    return list(range(params.every - 1, blocks, params.every))


def expand_blocks(model, after: list[int]) -> list:
    """Insert, after each block in `after`, a copy of it with zeroed output projections; renumber the
    blocks' layer_idx and update the config. Returns the new blocks."""
    import torch

    from adaptkit.layers import ATTENTION_OUTPUT, MLP_DOWN, find_layers, find_projection

    prefix, layers = find_layers(model)
    blocks, added, wanted = [], [], set(after)
    for index, block in enumerate(layers):
        blocks.append(block)
        if index in wanted:
            twin = copy.deepcopy(block)
            modules = dict(twin.named_modules())
            for role, names in (("attention", ATTENTION_OUTPUT), ("mlp", MLP_DOWN)):
                output = modules[find_projection(twin, role, names, "--method block-expansion")]
                with torch.no_grad():
                    for tensor in (output.weight, output.bias):
                        if tensor is not None:
                            tensor.zero_()
            blocks.append(twin)
            added.append(twin)
    parent_name, _, attribute = prefix.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, torch.nn.ModuleList(blocks))
    _renumber(model, blocks, [i for i in range(len(layers)) for _ in range(1 + (i in wanted))])
    return added


def _renumber(model, blocks: list, source: list[int]) -> None:
    """Block j is a copy of original block source[j]: set every `layer_idx` inside it to j, and the
    config's layer count (and per-layer lists such as layer_types) to the new blocks."""
    for index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    config = model.config
    old = config.num_hidden_layers
    config.num_hidden_layers = len(blocks)
    for key in ("layer_types",):
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == old:
            setattr(config, key, [value[i] for i in source])


SPEC = method_spec(BlockExpansion)
