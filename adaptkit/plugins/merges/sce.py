"""SCE: select the entries where models disagree most, weight models by their task vectors' energy, TIES.

Wan et al. 2024, "FuseChat: Knowledge Fusion of Chat Models" (arXiv 2408.07990), as mergekit's
`sce`. Select: with select_topk < 1, keep the int(select_topk * k) entries with the largest
variance across the models' task vectors (k: the entries whose variance is not 0), in every task
vector. Calculate: model i's weight is the mean of its squared (selected) task vector, divided
by the sum over the models (equal weights when that sum is below 1e-6). Erase: TIES's sign
election; the agreeing entries are averaged with those weights and added to the base.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from adaptkit.merge.base import MergeMethod, merge_spec
from adaptkit.specs import Params


class SceParams(Params):
    select_topk: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = Field(1.0, description="Fraction of entries kept by their variance across models, in (0, 1].")


class Sce(MergeMethod):
    name = "sce"
    summary = "SCE: select high-variance entries, weight models by task-vector energy, TIES-erase, onto a base"
    reference = "Wan et al. 2024, FuseChat, arXiv 2408.07990"
    Params = SceParams
    base = "required"

    def merge_tensor(self, tensors, base, params: SceParams, ctx):
        import torch

        vectors = torch.stack([t - base for t in tensors], dim=0)
        if params.select_topk < 1:
            variance = torch.var(vectors, dim=0, unbiased=False)
            k = int(torch.count_nonzero(variance) * params.select_topk)
            mask = torch.zeros_like(variance)
            if k > 0:
                mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = 1
            vectors = vectors * mask.unsqueeze(0)
        sign = vectors.sign()
        elected = (vectors.sum(dim=0) >= 0).to(vectors.dtype) * 2 - 1
        energy = vectors.square().reshape(vectors.shape[0], -1).mean(dim=1)
        total = torch.sum(energy).item()
        weights = torch.ones_like(energy) / energy.shape[0] if abs(total) < 1e-6 else energy / total
        weights = weights.view((-1,) + (1,) * (vectors.dim() - 1))
        erased = weights * (sign == elected)
        return base + (vectors * erased).sum(dim=0) / torch.sum(erased, dim=0).clamp(min=1e-6)


SPEC = merge_spec(Sce)
