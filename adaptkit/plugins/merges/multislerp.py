"""Multi-SLERP: a weighted barycentre of several models (or task vectors) on the hypersphere.

mergekit's `multislerp` (Goddard 2025, "multislerp", goddard.blog): the flattened tensors (task
vectors with a base) are normalized, their weighted mean direction is normalized, every direction
is projected onto the tangent space there, the weighted tangent sum is mapped back to the sphere
(exp map) and scaled by the weighted mean norm; with a base, added to it. Weights are normalized
to sum 1 unless `--no-normalize-weights`. Two opposite inputs with balancing weights fall back
to a linear interpolation; with more than two the merge is refused (exit 2), as mergekit refuses it.
One difference: a tensor that no input changes from the base (all task vectors 0) is the base's,
where mergekit refuses the merge.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from adaptkit.merge.base import MergeMethod, Weights, merge_spec, per_model
from adaptkit.specs import Params


class MultiSlerpParams(Params):
    weight: Weights = Field(None, description="One weight per --model (default 1 each).")
    normalize_weights: bool = Field(True, description="Divide the weights by their sum.")
    eps: Annotated[float, Field(gt=0.0, le=1e-2, allow_inf_nan=False)] = Field(1e-8, description="Guard against division by zero.")


class MultiSlerp(MergeMethod):
    name = "multislerp"
    summary = "Weighted barycentre of several models or task vectors on the hypersphere"
    reference = "Goddard 2025, multislerp (goddard.blog); mergekit multislerp"
    Params = MultiSlerpParams
    base = "optional"

    def merge_tensor(self, tensors, base, params: MultiSlerpParams, ctx):
        import torch

        from adaptkit.errors import InputError

        if len(tensors) == 1:
            return tensors[0]
        eps = params.eps
        stacked = torch.stack(tensors, dim=0)
        if base is not None:
            stacked -= base
        flat = stacked.view(stacked.shape[0], -1)
        weights = torch.tensor(per_model(params.weight, len(tensors), "--weight", 1.0), dtype=stacked.dtype)
        if params.normalize_weights:
            weights = weights / weights.sum()
        norms = torch.norm(flat, dim=-1, keepdim=True)
        units = flat / (norms + eps)
        mean = (units * weights.view(-1, 1)).sum(0)
        mean_norm = torch.norm(mean)
        if bool((norms < eps).all()):  # no input moved this tensor (a base's norms, say): mergekit refuses it
            return tensors[0] if base is None else base.clone()
        if mean_norm < eps:
            if stacked.shape[0] != 2:
                raise InputError(f"--weight: the weighted directions of '{ctx.name}' cancel out (opposite inputs); choose other weights")
            result = (stacked[0] * weights[0] + stacked[1] * weights[1]).view(stacked.shape[1:])
            return result + base if base is not None else result
        mean = mean / mean_norm
        tangents = units - (units * mean).sum(-1, keepdim=True) * mean
        tangent = (tangents * weights.view(-1, 1)).sum(0)
        length = torch.norm(tangent) + eps
        result = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
        result = (result * (norms.squeeze(-1) * weights).sum()).view(stacked.shape[1:])
        return result + base if base is not None else result


SPEC = merge_spec(MultiSlerp)
