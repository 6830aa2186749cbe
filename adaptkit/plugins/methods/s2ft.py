"""Structured Sparse Fine-Tuning (S2FT): train a few selected channels of the MLP down projections
(variant `down`) and, with `down+output`, a few selected heads of the attention output projections.

Yang et al., "S2FT: Efficient, Scalable and Generalizable LLM Fine-tuning by Structured Sparsity",
NeurIPS 2024 (arXiv 2412.06289), in the variants the SSU repository compares against
(github.com/gucci-j/ssu: `s2ft_down*`, `s2ft_down_output`):

- a channel of a down projection is one column of its (hidden, intermediate) weight; a head of
  an output projection is the head_dim columns of its (hidden, heads * head_dim) weight;
- channels (and heads) are sampled at random, globally over all layers, as the S2FT authors and the
  SSU code do (`s2ft_select_ffn_up_down`, `s2ft_select_mha_heads`): floor(layers * channels * ratio)
  of them (at least one), each pool with a fresh `random.Random(seed)`, so a seed selects the same
  channels and heads as the reference;
- the budget is a `ratio` of the selectable channels, or `lora_rank` r: as many trainable
  parameters as LoRA of rank r on every linear projection of every layer; with `down+output` one
  ratio is applied to both pools so that the total matches the LoRA budget. The SSU scripts'
  s2ft_down_16/32/64 runs give the ratios 0.03 / 0.055 / 0.11 themselves (rounded from this
  formula's 0.0277 / 0.0554 / 0.1108 on OLMo-2 7B): the `ssu-paper/s2ft-down-16/32/64` presets use
  those ratios, not `lora_rank`;
- the token embeddings and the LM head train in full, as the SSU repository's S2FT runs unfreeze
  them (`train_embeddings_and_head=false` freezes them: S2FT's own definition);
- everything else is frozen. Default: ratio 0.015 (the SSU repository's s2ft_down setting).

The engine trains the selected columns through compact float32 copies in every precision mode
(`bf16-pure` included: the reference trains a zero-initialised fp32 delta `s2` beside its bf16
weights, so small updates accumulate there as here) and writes them back into the dense weights
after each step, so the saved model is a plain Hugging Face model (no permutation, no side
tensors, nothing to convert). What remains different from the reference's delta: the forward
uses the bf16-rounded sum W + delta (the reference adds x·delta computed separately), and weight
decay shrinks W + delta (the reference's decays the delta alone).

The reference permutes the selected heads (q/k/v rows, o columns) and channels (up/gate rows,
down columns) to the front and never permutes them back (its convert_s2_to_linear.py only fuses the
delta). For the MLP this is function-preserving; for OLMo-2's attention it is not: q_norm/k_norm
normalise the full q/k width with a per-channel scale that is not permuted, so from the start its
`down+output` model scales each moved head's q/k channels with another head's norm weights. adaptkit
permutes nothing, so its `down+output` starts from (and saves) the unpermuted model; the trainable
entries are the same heads' o_proj columns. With `fast_backward` (default) the projections' backward computes
weight gradients only for the selected columns (the engine's compact linear backward), which is
the compute saving S2FT gets from permuting the selected channels into a dense block, without
permuting anything; multi-process runs use the plain backward.
"""

from __future__ import annotations

import random
from typing import Literal, Optional

from pydantic import Field, model_validator

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.errors import InputError
from adaptkit.layers import ATTENTION_OUTPUT, MLP_DOWN, block_linears, embedding_parameter_ids, find_layers, find_projection
from adaptkit.specs import Params, method_spec

DEFAULT_RATIO = 0.015


class StructuredSparseParams(Params):
    variant: Literal["down", "down+output"] = Field("down", description="'down': MLP down-projection channels; 'down+output': also attention output heads.")
    ratio: Optional[float] = Field(None, gt=0, le=1, description=f"Fraction of the selectable channels (and heads) that train (default {DEFAULT_RATIO}).")
    lora_rank: Optional[int] = Field(None, gt=0, description="Budget as LoRA of this rank on all linear projections (e.g. 16, 32, 64); instead of ratio.")
    seed: Optional[int] = Field(None, description="Seed of the random selection (default: the run's --seed).")
    fast_backward: bool = Field(True, description="Compute weight gradients only for the selected channels (single-process runs).")
    train_embeddings_and_head: bool = Field(True, description="Also train the token embeddings and LM head in full, as the SSU repository's S2FT runs do.")

    @model_validator(mode="after")
    def _one_budget(self):
        if self.ratio is not None and self.lora_rank is not None:
            raise ValueError("give either ratio or lora_rank, not both")
        return self


def _head_dim(model, weight) -> int:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if weight.shape[1] % head_dim:
        raise InputError(f"--method s2ft: the attention output projection has {weight.shape[1]} inputs, not a multiple of head_dim {head_dim}")
    return head_dim


def lora_parameter_count(model, rank: int) -> int:
    """Parameters LoRA of `rank` adds on every linear projection of every transformer layer."""
    _, blocks = find_layers(model)
    total = 0
    for block in blocks:
        modules = dict(block.named_modules())
        for role in block_linears(block).values():
            for name in role:
                total += rank * (modules[name].in_features + modules[name].out_features)
    return total


def sample_units(rng: random.Random, layers: int, units: int, ratio: float) -> dict[int, list[int]]:
    """Globally sampled (layer, unit) pairs, floor(layers * units * ratio) of them (at least one)."""
    count = max(1, int(layers * units * ratio))
    chosen: dict[int, list[int]] = {}
    for flat in sorted(rng.sample(range(layers * units), count)):
        chosen.setdefault(flat // units, []).append(flat % units)
    return chosen


class StructuredSparseFineTuning(TrainingMethod):
    name = "s2ft"
    summary = "Structured Sparse Fine-Tuning: train selected MLP down-projection channels (and attention output heads)"
    reference = "Yang et al., S2FT, NeurIPS 2024, arXiv 2412.06289"
    Params = StructuredSparseParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        import torch

        from adaptkit.engine.masks import UpdateMask

        params = self.params
        prefix, blocks = find_layers(model)
        flag = "--method s2ft"
        down = [f"{prefix}.{i}.{find_projection(b, 'mlp', MLP_DOWN, flag)}.weight" for i, b in enumerate(blocks)]
        weights = dict(model.named_parameters())
        hidden, channels = weights[down[0]].shape
        pools = {"down": (down, channels, 1)}
        if params.variant == "down+output":
            output = [f"{prefix}.{i}.{find_projection(b, 'attention', ATTENTION_OUTPUT, flag)}.weight" for i, b in enumerate(blocks)]
            head_dim = _head_dim(model, weights[output[0]])
            pools["output"] = (output, weights[output[0]].shape[1] // head_dim, head_dim)
        ratio = params.ratio
        if params.lora_rank is not None:
            selectable = sum(len(names) * units * width * weights[names[0]].shape[0] for names, units, width in pools.values())
            ratio = lora_parameter_count(model, params.lora_rank) / selectable
            if ratio > 1:
                raise InputError(f"--set lora_rank: rank {params.lora_rank} needs more parameters than all selectable channels hold ({ratio:.2f} x); use a smaller rank")
        elif ratio is None:
            ratio = DEFAULT_RATIO
        seed = ctx.seed if params.seed is None else params.seed
        trainable = {}
        for names, units, width in pools.values():  # each pool draws from a fresh generator, as the reference
            for layer, chosen in sample_units(random.Random(seed), len(names), units, ratio).items():
                columns = torch.zeros(units * width, dtype=torch.bool)
                for unit in chosen:
                    columns[unit * width:(unit + 1) * width] = True
                trainable[names[layer]] = UpdateMask("column", columns)
        if params.train_embeddings_and_head:
            ends = embedding_parameter_ids(model)
            trainable.update({name: None for name, param in model.named_parameters() if id(param) in ends})
        plan = TrainingPlan(model, trainable, compact_linear_grads=params.fast_backward, masked_dtype="float32")
        plan.summary = f"S2FT ({params.variant}, ratio {ratio:.4f})"
        return plan


SPEC = method_spec(StructuredSparseFineTuning)
