"""Karcher mean: the weighted Riemannian center of mass of the models' directions on the sphere.

Karcher 1977, "Riemannian center of mass and mollifier smoothing" (Comm. Pure Appl. Math. 30),
as mergekit's `karcher`: each tensor is split into its norm and unit direction; the mean
direction is found by at most `max_iter` gradient steps on the unit sphere (log map of every
direction at the current mean, weighted; exp map of their sum), stopping when the step is
below `tol`, and scaled by the models' mean norm. Equal weights; no base.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from adaptkit.merge.base import MergeMethod, merge_spec
from adaptkit.specs import Params


class KarcherParams(Params):
    max_iter: Annotated[int, Field(ge=1, le=1000)] = Field(10, description="Most iterations of the mean on the sphere.")
    tol: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = Field(1e-5, description="Stop when the step (an angle) is smaller.")


def karcher_mean(tensors, alphas: list[float], max_iter: int, tol: float):
    """The weighted Karcher mean of the directions of `tensors`, times their weighted norm."""
    import torch

    norms = [torch.linalg.vector_norm(t) for t in tensors]
    units = [torch.zeros_like(t) if n.item() == 0.0 else t / n for t, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum(t * 0 for t in tensors)
    total = sum(alphas[i] for i in valid)
    weights, directions = [alphas[i] / total for i in valid], [units[i] for i in valid]
    mean = torch.zeros_like(directions[0])
    for weight, unit in zip(weights, directions):
        mean += weight * unit
    mean_norm = torch.linalg.vector_norm(mean)
    mean = directions[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for weight, unit in zip(weights, directions):
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += weight * (theta / torch.sin(theta)) * (unit - dot * mean)
        step = torch.linalg.vector_norm(tangent)
        if step.item() < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        length = torch.linalg.vector_norm(mean)
        if length.item() > tol:
            mean = mean / length
    return sum(alpha * norm for alpha, norm in zip(alphas, norms)) * mean


class Karcher(MergeMethod):
    name = "karcher"
    summary = "Karcher mean: Riemannian center of mass of the models' directions, times their mean norm"
    reference = "Karcher 1977, Riemannian center of mass and mollifier smoothing; mergekit karcher"
    Params = KarcherParams
    base = "none"

    def merge_tensor(self, tensors, base, params: KarcherParams, ctx):
        if len(tensors) == 1:
            return tensors[0]
        return karcher_mean(tensors, [1.0 / len(tensors)] * len(tensors), params.max_iter, params.tol)


SPEC = merge_spec(Karcher)
