"""Tensor operations shared by the merge methods (float32 in, float32 out)."""

from __future__ import annotations

import torch

from adaptkit.errors import InputError


def weighted_sum(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """sum_i w_i * t_i, accumulated in place."""
    result = tensors[0] * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        result.add_(tensor, alpha=weight)
    return result


def task_vectors(tensors: list[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    """theta_i - theta_base for every input."""
    return [tensor - base for tensor in tensors]


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of exactly `k` entries with the largest `values` (ties broken by position).

    Uses a selection (kthvalue) rather than a full sort: linear time in the tensor size.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    threshold = torch.kthvalue(flat, n - k + 1).values
    mask = flat > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        ties = torch.nonzero(flat == threshold).squeeze(1)[:missing]
        mask[ties] = True
    return mask.reshape(values.shape)


def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming: keep the max(1, int(density * n)) entries of largest |delta|, zero the rest."""
    if density >= 1.0:
        return delta
    k = max(1, int(density * delta.numel()))
    return delta * topk_mask(delta.abs(), k)


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True) -> torch.Tensor:
    """DARE: keep each entry with probability `density` and divide survivors by `density`.

    Yu et al. 2024 (arXiv 2311.03099) rescale by 1/(1-p) with p the drop rate. mergekit
    instead rescales to the original L1 norm; we follow the paper.
    """
    if density >= 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator) < density
    dropped = delta * keep
    return dropped.div_(density) if rescale else dropped


def sign_consensus(deltas: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """TIES elect + disjoint merge of (already trimmed or dropped) task vectors.

    With D_i = w_i * delta_i, the elected sign is sign(sum_i D_i) (0 counts as +); entries
    of D_i with that sign are summed, and with `normalize` divided by the sum of the
    weights of the agreeing, nonzero entries (Yadav et al. 2023, arXiv 2306.01708).
    """
    weighted = torch.stack([delta * weight for delta, weight in zip(deltas, weights)])
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)
    agree = weighted.sign() == elected
    mixed = (weighted * agree).sum(dim=0)
    if normalize:
        shape = (-1,) + (1,) * (weighted.dim() - 1)
        divisor = (torch.tensor(weights, dtype=weighted.dtype).reshape(shape) * agree).sum(dim=0)
        divisor[divisor == 0] = 1.0
        mixed.div_(divisor)
    return mixed


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two tensors seen as flat vectors (t=0 gives a, t=1 gives b).

    The angle comes from the normalized vectors; nearly collinear pairs (|cos| above
    `dot_threshold`) fall back to linear interpolation (Shoemake 1985, as in mergekit).
    """
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    unit_a = flat_a / flat_a.norm().clamp_min(eps)
    unit_b = flat_b / flat_b.norm().clamp_min(eps)
    dot = float(torch.dot(unit_a, unit_b).clamp(-1.0, 1.0))
    if abs(dot) > dot_threshold:
        return torch.lerp(a, b, t)
    theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    coef_a = float(torch.sin((1 - t) * theta) / sin_theta)
    coef_b = float(torch.sin(t * theta) / sin_theta)
    return a * coef_a + b * coef_b


def expand_units(units: torch.Tensor, shape: tuple[int, ...], granularity: str | None, where: str) -> torch.Tensor:
    """Broadcast a compact per-unit tensor (mask or scores) to a parameter's shape.

    Same shape: per element. Otherwise a (in,) vector of an (out, in) matrix is per
    column and an (out,) vector per row; a square matrix uses the file's `granularity`
    metadata, "column" when it has none (the SSU default).
    """
    shape = tuple(shape)
    if tuple(units.shape) == shape:
        return units
    if units.dim() == 1 and len(shape) >= 2:
        columns, rows = shape[-1], shape[0]
        kind = granularity if granularity in ("column", "row") else None
        if kind is None:
            kind = "column" if units.numel() == columns else "row" if units.numel() == rows else None
        if kind == "column" and units.numel() == columns:
            return units.reshape((1,) * (len(shape) - 1) + (columns,))
        if kind == "row" and units.numel() == rows:
            return units.reshape((rows,) + (1,) * (len(shape) - 1))
    raise InputError(f"{where}: shape {tuple(units.shape)} fits neither the columns, the rows nor the entries of a {shape} parameter")
