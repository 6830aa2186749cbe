"""From scores to masks: freeze the most important units of every scored parameter (SSU step 2).

For each scored parameter, the units of the chosen granularity are ranked by score:
columns of a 2-D weight (the SSU default; input features), rows (output features) or
single elements (the paper's ablations); 1-D parameters are always ranked element-wise.

Rounding rule (exact k per parameter): with n units and freeze ratio r in [0, 1],
k = floor(r * n + 0.5) units are frozen (round half up), so r = 0 freezes nothing and
r = 1 freezes every scored unit. The frozen units are the k with the highest scores;
equal scores are broken by the lower index first (a stable descending sort), so masks
are deterministic. Masks are saved in the engine's format (adaptkit.engine.masks:
uint8, 1 = trainable).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator

from adaptkit.engine.masks import GRANULARITIES, MaskSet, UpdateMask
from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from adaptkit.scoring import ScoreSet

ROUNDING_RULE = "k = floor(ratio * n + 0.5) units frozen per parameter; highest scores first; ties: lower index first"


def _unit_interval(ratio: Any) -> float:
    """The one freeze-ratio check: a number in [0, 1] (ValueError otherwise)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio) or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"must be between 0 and 1 (got {ratio}); the SSU paper uses 0.125 to 0.875, default 0.5")
    return float(ratio)


FreezeRatio = Annotated[float, AfterValidator(_unit_interval)]
"""The type of every `freeze_ratio` parameter: a fraction in [0, 1]."""


def check_ratio(ratio: float, flag: str = "--freeze-ratio") -> float:
    try:
        return _unit_interval(ratio)
    except ValueError as exc:
        raise InputError(f"{flag}: {exc}") from None


def check_granularity(granularity: str, flag: str = "--granularity") -> str:
    if granularity not in GRANULARITIES:
        raise InputError(f"{flag}: unknown granularity '{granularity}' (choose from {', '.join(GRANULARITIES)})")
    return granularity


def frozen_count(ratio: float, n: int) -> int:
    """How many of n units a freeze ratio freezes (round half up, within [0, n])."""
    return min(n, max(0, math.floor(ratio * n + 0.5)))


def freeze_top(scores: "torch.Tensor", ratio: float) -> "torch.Tensor":
    """A bool tensor like `scores`: False (frozen) for the top-k scores, True (trainable) elsewhere."""
    import torch

    flat = scores.reshape(-1)
    k = frozen_count(ratio, flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices
    trainable = torch.ones(flat.numel(), dtype=torch.bool)
    trainable[order[:k]] = False
    return trainable.reshape(scores.shape)


def build_mask_set(score_set: "ScoreSet", ratio: float, granularity: str = "column", flag: str = "--scores") -> MaskSet:
    """Masks freezing the top `ratio` of units of every scored parameter, with provenance metadata."""
    import torch

    ratio = check_ratio(ratio)
    granularity = check_granularity(granularity)
    shapes = score_set.shapes
    masks: dict[str, UpdateMask] = {}
    for name, shape in shapes.items():
        unit = granularity if len(shape) == 2 else "element"
        scores = score_set.scores.get(name, {}).get(unit)
        if scores is None:
            hint = " (run `adaptkit score` with --element-scores)" if unit == "element" else ""
            raise InputError(f"{flag}: no {unit} scores for '{name}'{hint}")
        if not bool(torch.isfinite(scores).all()):
            raise InputError(f"{flag}: the {unit} scores of '{name}' contain NaN or inf")
        masks[name] = UpdateMask(unit, freeze_top(scores, ratio))
    metadata = {
        key: score_set.metadata[key]
        for key in ("scorer", "model_fingerprint", "calibration_hash", "model_parameters")
        if key in score_set.metadata
    }
    metadata.update({"freeze_ratio": repr(ratio), "mask_granularity": granularity, "rounding": ROUNDING_RULE, "shapes": json.dumps(shapes)})
    return MaskSet(masks, metadata)


def frozen_table(mask_set: MaskSet) -> tuple[list[list[Any]], list[Any]]:
    """Rows [module type, parameters, frozen entries, entries, frozen fraction] and the total row."""
    from adaptkit.scoring import module_group

    shapes = json.loads(mask_set.metadata.get("shapes", "{}"))
    groups: dict[str, list[int]] = {}
    for name, mask in mask_set.masks.items():
        shape = tuple(shapes.get(name) or mask.trainable.shape)
        entries = math.prod(shape)
        frozen = entries - mask.trainable_count(shape)
        row = groups.setdefault(module_group(name), [0, 0, 0])
        row[0] += 1
        row[1] += frozen
        row[2] += entries
    rows = [[group, n, frozen, entries, frozen / max(entries, 1)] for group, (n, frozen, entries) in groups.items()]
    total_frozen = sum(r[2] for r in rows)
    total_entries = sum(r[3] for r in rows)
    total = ["total", sum(r[1] for r in rows), total_frozen, total_entries, total_frozen / max(total_entries, 1)]
    return rows, total
