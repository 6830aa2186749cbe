"""NuSLERP: SLERP of two models (or of their task vectors) with weights, per row or whole tensor.

mergekit's `nuslerp` (Goddard, Arcee AI; no paper): t = w_2 / (w_1 + w_2) (0.5 when the weights
sum to 0), and SLERP (Shoemake 1985) between the two flattened tensors (`nuslerp_flatten`, the
default), or vector by vector along dim 0 (`nuslerp_row_wise`) or along the last dim. With a base, the task vectors are interpolated and added to the
base. Collinear pairs (1 - cos^2 <= 1e-16) are interpolated linearly.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.merge.base import MergeMethod, Weights, merge_spec, per_model
from adaptkit.specs import Params


class NuSlerpParams(Params):
    weight: Weights = Field(None, description="One weight per --model; t = w2 / (w1 + w2) (default: 0.5).")
    nuslerp_flatten: bool = Field(True, description="Interpolate each tensor as one flat vector.")
    nuslerp_row_wise: bool = Field(False, description="Without flattening: interpolate vectors along dim 0 (else along the last dim).")


def nuslerp(t: float, v0, v1, dim: int, flatten: bool, eps: float = 1e-8):
    """SLERP of v0 and v1 along `dim` (or flattened), linear where they are collinear."""
    import torch

    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    unit0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    unit1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(unit0 * unit1, dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(collinear, 0, cos))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(collinear, (1 - t) * v0 + t * v1, result)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


class NuSlerp(MergeMethod):
    name = "nuslerp"
    summary = "SLERP of two models or of their task vectors, weighted, per tensor or per row"
    reference = "mergekit nuslerp (Goddard, Arcee AI); Shoemake 1985"
    Params = NuSlerpParams
    base = "optional"
    min_models = 2
    max_models = 2

    def merge_tensor(self, tensors, base, params: NuSlerpParams, ctx):
        weights = per_model(params.weight, 2, "--weight", 1.0)
        total = sum(weights)
        t = 0.5 if abs(total) < 1e-6 else weights[1] / total
        dim = 0 if params.nuslerp_row_wise else -1
        if base is None:
            return nuslerp(t, tensors[0], tensors[1], dim, params.nuslerp_flatten)
        return base + nuslerp(t, tensors[0] - base, tensors[1] - base, dim, params.nuslerp_flatten)


SPEC = merge_spec(NuSlerp)
