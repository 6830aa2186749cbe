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
(default: the run's --seed) drawing in the SSU code's order (its global `random` seeded the same way;
attention q, k, v, o; MLP up, down, gate), so on Llama-style blocks the same seed freezes the same
modules as the reference.

`freeze_ratio` (Figure 2's sweep; default 0.5 = the rule above) follows the SSU code's
`_freeze_hft_parameters` for any other value: per layer, with target T = round(ratio * the layer's
parameters), each group (attention, MLP, norms) starts with round(ratio * its size) modules, the
smallest first for ratio <= 0.5 (the largest first above), the remaining modules are added smallest
(largest) first while each brings the total closer to T, and if the total then exceeds T the one
module whose removal brings it closest is dropped. Those counts decide how many modules of each group
are frozen; which ones is drawn at random as above (no shuffled layer halves outside 0.5).
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


REFERENCE_ORDER = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("up_proj", "down_proj", "gate_proj")}


class HalfFineTuningParams(Params):
    freeze_ratio: float = Field(0.5, gt=0, lt=1, description="Fraction of each layer to freeze: 0.5 is HFT; other values follow the SSU code's size-guided rule (Figure 2).")
    freeze_norms: bool = Field(True, description="Also freeze one of the two block norms per layer (SSU repository).")
    seed: Optional[int] = Field(None, description="Seed of the random selection (default: the run's --seed).")


def block_norms(block) -> list[str]:
    """Names of the norm modules that are direct children of a transformer block."""
    return [name for name, child in block.named_children() if "norm" in type(child).__name__.lower()]


def _in_reference_order(names: list[str], role: str) -> list[str]:
    """Projections in the order the SSU code finds them (unknown names after, in module order)."""
    order = REFERENCE_ORDER.get(role, ())
    rank = {leaf: i for i, leaf in enumerate(order)}
    return sorted(names, key=lambda name: rank.get(name.rsplit(".", 1)[-1], len(order)))


def size_guided_counts(sizes: dict[str, list[int]], layer_total: int, ratio: float) -> dict[str, int]:
    """How many modules of each group (parameter counts in `sizes`) the SSU code freezes at `ratio` != 0.5."""
    target = round(ratio * layer_total)
    descending = ratio > 0.5
    ranked = {group: sorted(s, reverse=descending) for group, s in sizes.items()}
    counts = {group: min(len(s), round(ratio * len(s))) for group, s in ranked.items()}
    chosen = [(group, size) for group, s in ranked.items() for size in s[:counts[group]]]
    rest = sorted(((group, size) for group, s in ranked.items() for size in s[counts[group]:]), key=lambda t: t[1], reverse=descending)
    total = sum(size for _, size in chosen)
    for group, size in rest:
        if total >= target:
            break
        if abs(target - total - size) <= abs(target - total):
            chosen.append((group, size))
            total += size
    if total > target and chosen:
        gaps = [abs(total - size - target) for _, size in chosen]
        best = min(range(len(chosen)), key=gaps.__getitem__)
        if gaps[best] < abs(total - target):
            chosen.pop(best)
    return {group: sum(1 for g, _ in chosen if g == group) for group in sizes}


def _block_groups(block, freeze_norms: bool) -> dict[str, list[str]]:
    linears = block_linears(block)
    groups = {role: _in_reference_order(linears[role], role) for role in ("attention", "mlp")}
    groups["norms"] = block_norms(block) if freeze_norms else []
    return groups


def hft_selection(model, seed: int, freeze_norms: bool = True, freeze_ratio: float = 0.5) -> dict[int, list[str]]:
    """Layer index -> names (inside the block) of the modules HFT freezes in that layer."""
    _, blocks = find_layers(model)
    rng = random.Random(seed)
    half = abs(freeze_ratio - 0.5) < 1e-8
    upper_half: set[int] = set()
    if half:
        order = list(range(len(blocks)))
        rng.shuffle(order)
        upper_half = set(order[: len(blocks) // 2])  # these layers freeze ceil(n/2) MLP projections
    selection: dict[int, list[str]] = {}
    for index, block in enumerate(blocks):
        groups = _block_groups(block, freeze_norms)
        if half:
            mlp = len(groups["mlp"])
            counts = {"attention": len(groups["attention"]) // 2, "mlp": (mlp + 1) // 2 if index in upper_half else mlp // 2, "norms": len(groups["norms"]) // 2}
        else:
            modules = dict(block.named_modules())
            sizes = {g: [sum(p.numel() for p in modules[n].parameters(recurse=False)) for n in names] for g, names in groups.items()}
            counts = size_guided_counts(sizes, sum(p.numel() for p in block.parameters()), freeze_ratio)
        selection[index] = sorted(name for group, names in groups.items() for name in rng.sample(names, counts[group]))
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
        selection = hft_selection(model, seed, self.params.freeze_norms, self.params.freeze_ratio)
        frozen_modules = tuple(f"{prefix}.{i}.{name}." for i, names in selection.items() for name in names)
        count = sum(len(v) for v in selection.values())
        ctx.log(f"hft (seed {seed}): freezing " + "; ".join(f"layer {i}: {', '.join(v)}" for i, v in selection.items()))
        return TrainingPlan.only(
            model,
            lambda name, _: not name.startswith(frozen_modules),
            summary=f"half fine-tuning: {count} modules frozen across {len(selection)} layers (seed {seed})",
        )


SPEC = method_spec(HalfFineTuning)
