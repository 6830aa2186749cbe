"""Layer-aware post-hoc reversion: set chosen weights of an adapted model back to the base.

After full fine-tuning on a new language, reverting part of the update restores source
abilities. Post-hoc weight reversion is one of the layer-aware alignment strategies of
"Parameter Alignment Mitigates Catastrophic Forgetting in Multilingual Expert Language Models" (arXiv 2606.00284);
what the paper's abstract states is only that (layer-aware, post-hoc, strongest for translation).
Which tensors, the fraction and its selection by change, scores or an SSU mask are adaptkit's
choices, not the paper's recipe. What is reverted:

- which tensors: those of `layers` (e.g. `0-3,22-23`; `embed` and `head` name the
  embeddings and the final norm + LM head) whose names contain one of `modules`
  (e.g. `mlp`, `self_attn.o_proj`); all tensors when neither is given;
- within a chosen tensor, everything by default, or
  - `fraction` of its entries with the smallest (`select smallest`, default) or largest
    absolute change |theta - theta_base|;
  - with `scores` (a scores file from `adaptkit score`, higher = more important to the
    source): the `fraction` of units (columns, rows or entries, as in the file) with the
    highest scores, i.e. the ones Source-Shielded Updates would have frozen;
  - with `mask` (a masks file from `adaptkit mask`, 1 = trainable, 0 = frozen): the
    frozen (0) units, i.e. the update is kept only where SSU would have trained.
  Tensors without an entry in the scores or masks file are kept as adapted (SSU trains
  them in full). A fraction selects k = floor(fraction * n + 1/2) units of each tensor,
  ties going to the lower index: the rule of `adaptkit mask`, so `--scores S --fraction r`
  reverts exactly what a mask of ratio r made from S freezes. File formats:
  `adaptkit.io.mask_files`.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.merge.base import Fraction, Layers, MergeMethod, merge_spec, select
from adaptkit.specs import Params


class RevertParams(Params):
    layers: Layers = Field(None, description="Layers to revert, e.g. '0-3,22-23' ('embed', 'head' too); default: all.")
    modules: Optional[list[str]] = Field(None, description="Only tensors whose name contains one of these (e.g. mlp, self_attn).")
    fraction: Optional[Fraction] = Field(None, description="Revert only this fraction of entries (or scored units) per tensor.")
    select: Literal["smallest", "largest"] = Field("smallest", description="With --fraction: revert the entries of smallest or largest change.")
    scores: Optional[str] = Field(None, description="Scores dir/file: revert the --fraction of units with the highest scores.")
    mask: Optional[str] = Field(None, description="Masks dir/file: revert the units the mask freezes (0).")


def share(fraction: float, n: int) -> int:
    """How many of n units a fraction selects: round half up, as `adaptkit mask` does."""
    return min(n, math.floor(fraction * n + 0.5))


class Revert(MergeMethod):
    name = "revert"
    summary = "Layer-aware post-hoc reversion of an adapted model toward its base"
    reference = "arXiv 2606.00284 (post-hoc weight reversion); SSU masks and scores"
    Params = RevertParams
    base = "required"
    max_models = 1
    tensor_params = {"mask": "masks.safetensors", "scores": "scores.safetensors"}

    def check(self, params: RevertParams, n_models: int, has_base: bool, num_layers: int) -> None:
        super().check(params, n_models, has_base, num_layers)
        if params.mask and (params.scores or params.fraction is not None):
            raise InputError("--mask: cannot be combined with --scores or --fraction (the mask already says what to revert)")
        if params.scores and params.fraction is None:
            raise InputError("--scores: needs --fraction (the share of highest-scored units to revert)")
        if params.scores and "select" in params.model_fields_set:
            raise InputError("--select: applies to change-based reversion only, not with --scores")

    def merge_tensor(self, tensors, base, params: RevertParams, ctx):
        import torch

        from adaptkit.merge.ops import expand_units, topk_mask

        adapted = tensors[0]
        if not select(ctx.name, ctx.layer, params.layers, params.modules):
            return adapted
        if params.mask or params.scores:
            role = "mask" if params.mask else "scores"
            units = ctx.aux.get(role)
            if units is None:
                return adapted
            if role == "mask":
                chosen = units == 0
            else:
                chosen = topk_mask(units.float(), share(params.fraction, units.numel()))
            where = f"--{role}: tensor '{ctx.name}'"
            chosen = expand_units(chosen, tuple(adapted.shape), ctx.aux_meta.get(role, {}).get("granularity"), where)
            return torch.where(chosen, base, adapted)
        if params.fraction is None:
            return base.clone()
        change = (adapted - base).abs()
        chosen = topk_mask(change if params.select == "largest" else -change, share(params.fraction, change.numel()))
        return torch.where(chosen, base, adapted)


SPEC = merge_spec(Revert)
