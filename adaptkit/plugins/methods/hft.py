"""Half Fine-Tuning (HFT): in every transformer layer, half of the matrices are frozen.

Hui et al., "HFT: Half Fine-Tuning for Large Language Models", ACL 2025 (arXiv 2404.18466),
in the variant of the SSU repository (github.com/gucci-j/ssu, `hft_based` freezing), which
is what SSU compares against:

- attention: 2 of the 4 projections (q, k, v, o) of each layer, chosen at random;
- MLP: 2 of the 3 projections (gate, up, down) in a random half of the layers, 1 of 3 in
  the other layers (1.5 of 3 on average); in general half of a layer's attention
  projections, and ceil/floor of half its MLP projections in alternate halves of the layers;
- block norms: 1 of the 2 norms of each layer (`freeze_norms`, on by default as in the SSU
  repository; Llama: input/post-attention norm, OLMo-2: post-attention/post-feedforward norm);
- embeddings, the final norm and the LM head are trained, except the rows of the special and
  chat-template tokens (the run setting `freeze_special_tokens`, on by default for hft as in the
  SSU repository's HFT runs; engine/special_tokens.py).

A frozen projection freezes its weight and bias. The choice is made with `random.Random(seed)`
(default: the run's --seed), so the same seed gives the same selection on any machine.
Deviation: the SSU code finds norms by name and so sees only one norm per OLMo-2 layer; here the
block norms are found by class, giving OLMo-2 the same 1-of-2 rule as Llama.
"""

from __future__ import annotations

import random
from typing import Optional

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.layers import block_linears, find_layers
from adaptkit.specs import Params, method_spec


class HalfFineTuningParams(Params):
    freeze_norms: bool = Field(True, description="Also freeze one of the two block norms per layer (SSU repository).")
    seed: Optional[int] = Field(None, description="Seed of the random selection (default: the run's --seed).")


def block_norms(block) -> list[str]:
    """Names of the norm modules that are direct children of a transformer block."""
    return [name for name, child in block.named_children() if "norm" in type(child).__name__.lower()]


def hft_selection(model, seed: int, freeze_norms: bool = True) -> dict[int, list[str]]:
    """Layer index -> names (inside the block) of the modules HFT freezes in that layer."""
    _, blocks = find_layers(model)
    rng = random.Random(seed)
    order = list(range(len(blocks)))
    rng.shuffle(order)
    upper_half = set(order[: len(blocks) // 2])  # these layers freeze ceil(n/2) MLP projections
    selection: dict[int, list[str]] = {}
    for index, block in enumerate(blocks):
        linears = block_linears(block)
        attention, mlp = linears["attention"], linears["mlp"]
        n_mlp = (len(mlp) + 1) // 2 if index in upper_half else len(mlp) // 2
        frozen = rng.sample(attention, len(attention) // 2) + rng.sample(mlp, n_mlp)
        if freeze_norms:
            norms = block_norms(block)
            frozen += rng.sample(norms, len(norms) // 2)
        selection[index] = sorted(frozen)
    return selection


class HalfFineTuning(TrainingMethod):
    name = "hft"
    summary = "Half Fine-Tuning: freeze half of each layer's attention and MLP matrices, chosen at random (seeded)"
    reference = "Hui et al., HFT, arXiv 2404.18466; SSU repository variant (github.com/gucci-j/ssu)"
    Params = HalfFineTuningParams
    freeze_special_tokens = True  # as the SSU repository's HFT runs (--freeze_chat_template_tokens)

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        seed = ctx.seed if self.params.seed is None else self.params.seed
        prefix, _ = find_layers(model)
        selection = hft_selection(model, seed, self.params.freeze_norms)
        frozen_modules = tuple(f"{prefix}.{i}.{name}." for i, names in selection.items() for name in names)
        count = sum(len(v) for v in selection.values())
        ctx.log(f"hft (seed {seed}): freezing " + "; ".join(f"layer {i}: {', '.join(v)}" for i, v in selection.items()))
        return TrainingPlan.only(
            model,
            lambda name, _: not name.startswith(frozen_modules),
            summary=f"half fine-tuning: {count} modules frozen across {len(selection)} layers (seed {seed})",
        )


SPEC = method_spec(HalfFineTuning)
