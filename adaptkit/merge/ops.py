"""Tensor operations shared by the merge methods (float32 in, float32 out).

Functions ending in `_` work in place on their first argument, as methods may do with
the input tensors the executor hands them (fresh copies owned by the call), which keeps
peak memory near the inputs' size.
"""

from __future__ import annotations

import math

import torch

from adaptkit.errors import InputError


def weighted_sum_(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """sum_i w_i * t_i, accumulated in place into the first tensor (which is returned)."""
    result = tensors[0].mul_(weights[0])
    for tensor, weight in zip(tensors[1:], weights[1:]):
        result.add_(tensor, alpha=weight)
    return result


def task_vectors_(tensors: list[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    """theta_i - theta_base for every input, computed in place."""
    return [tensor.sub_(base) for tensor in tensors]


def apply_task_vectors_(deltas: list[torch.Tensor], base: torch.Tensor, weights: list[float], scale: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """base + scale * sum_i w_i delta_i (divided by sum_i w_i with `normalize`), in the deltas' memory."""
    mixed = weighted_sum_(deltas, weights)
    if normalize:
        total = sum(weights)
        mixed.div_(total if abs(total) >= 1e-8 else 1.0)
    return mixed.mul_(scale).add_(base)


def instruct_plus_language_(adapted: torch.Tensor, instruct: torch.Tensor, base: torch.Tensor, scale: float) -> torch.Tensor:
    """theta_instruct + scale * (theta_adapted - theta_base), in the memory of `adapted`."""
    return adapted.sub_(base).mul_(scale).add_(instruct)


CHUNK = 1 << 20  # elements per chunk of elementwise work: bounds temporaries to a few MB


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def _kth_largest(magnitudes: torch.Tensor, k: int) -> tuple[float, int]:
    """(the k-th largest value, how many values are strictly larger), by a selection.

    numpy's partition (SIMD-accelerated in numpy 2) runs in place on `magnitudes`, a
    scratch tensor the caller gives up: after it, the k-1 entries right of position n-k
    are the larger ones.
    """
    array = magnitudes.reshape(-1).numpy()
    n = array.size
    array.partition(n - k)
    threshold = array[n - k]
    return float(threshold), int((array[n - k + 1:] > threshold).sum())


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of exactly `k` entries with the largest `values` (ties broken by position)."""
    flat = values.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    threshold, above = _kth_largest(flat.clone(), k)
    mask = flat > threshold
    if k > above:
        ties = torch.nonzero(flat == threshold).squeeze(1)[: k - above]
        mask[ties] = True
    return mask.reshape(values.shape)


def magnitude_trim_(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming in place: keep the max(1, int(density * n)) entries of largest |delta|.

    Exactly k entries survive (ties at the threshold are kept in index order). The only
    full-size temporary is |delta| for the selection; the masking runs in chunks.
    """
    n = delta.numel()
    k = max(1, int(density * n))
    if density >= 1.0 or k >= n:
        return delta
    flat = delta.view(-1)
    threshold, above = _kth_largest(flat.abs(), k)
    missing = k - above  # entries with |delta| == threshold still to keep, first ones first
    for part in _chunks(n):
        chunk = flat[part]
        magnitude = chunk.abs()
        keep = magnitude > threshold
        if missing > 0:
            ties = torch.nonzero(magnitude == threshold).squeeze(1)[:missing]
            keep[ties] = True
            missing -= ties.numel()
        chunk.mul_(keep)
    return delta


def dare_drop_(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True) -> torch.Tensor:
    """DARE in place: keep each entry with probability `density`, divide survivors by `density`.

    Yu et al. 2024 (arXiv 2311.03099) rescale by 1/(1-p) with p the drop rate. mergekit
    instead rescales to the original L1 norm; we follow the paper. Random numbers are
    drawn chunk by chunk from `generator`, in order, so the drop is reproducible.
    """
    if density >= 1.0:
        return delta
    flat = delta.view(-1)
    for part in _chunks(flat.numel()):
        chunk = flat[part]
        chunk.mul_(torch.rand(chunk.shape, generator=generator) < density)
    return delta.div_(density) if rescale else delta


def sign_consensus(deltas: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """TIES elect + disjoint merge of (already trimmed or dropped) task vectors.

    With D_i = w_i * delta_i, the elected sign s is sign(sum_i D_i) (0 counts as +); the
    entries of D_i with sign s are summed, and with `normalize` divided by the sum of the
    weights of those entries (Yadav et al. 2023, arXiv 2306.01708). Computed as
    s * sum_i max(s * D_i, 0), which is exact (s is +-1), chunk by chunk, into `deltas[0]`
    (the deltas are consumed).
    """
    flats = [delta.view(-1) for delta in deltas]
    for part in _chunks(flats[0].numel()):
        weighted = [flat[part].mul_(weight) for flat, weight in zip(flats, weights)]
        total = weighted[0].clone()
        for chunk in weighted[1:]:
            total.add_(chunk)
        sign = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
        del total
        divisor = torch.zeros_like(sign) if normalize else None
        for chunk, weight in zip(weighted, weights):
            chunk.mul_(sign)
            if divisor is not None:
                divisor.add_(chunk > 0, alpha=weight)
            chunk.clamp_(min=0)
        merged = weighted[0]
        for chunk in weighted[1:]:
            merged.add_(chunk)
        merged.mul_(sign)
        if divisor is not None:
            divisor[divisor == 0] = 1.0
            merged.div_(divisor)
    return deltas[0]


SLERP_BLOCK = 1 << 20  # elements per block of SLERP's passes (8 MiB in float64): its temporaries are blocks


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8,
          in_place: bool = False) -> torch.Tensor:
    """Spherical interpolation of two tensors seen as flat vectors (t=0 gives a, t=1 gives b).

    The angle is that of the normalized vectors; nearly collinear pairs (|cos| above `dot_threshold`)
    fall back to linear interpolation (Shoemake 1985, as in mergekit). The cosine comes from
    `slerp_statistics` (sums in float64; mergekit takes the float32 dot of the normalized vectors).
    `in_place`: the result is written into `a` (the same floats; a merge's inputs are its own), and
    every temporary is a block of SLERP_BLOCK elements: the merge holds its two inputs and two blocks.
    """
    return slerp_from_statistics(a, b, t, slerp_statistics(a, b), dot_threshold, eps, in_place)


def slerp_statistics(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[sum of a^2, sum of b^2, sum of a*b] over a and b as flat vectors, in float64, block by block:
    the statistics of any split of the rows add up to those of the whole."""
    total = torch.zeros(3, dtype=torch.float64)
    for block_a, block_b in _blocks(a, b):
        x, y = block_a.double(), block_b.double()
        total += torch.stack([torch.dot(x, x), torch.dot(y, y), torch.dot(x, y)])
    return total


def slerp_from_statistics(a: torch.Tensor, b: torch.Tensor, t: float, statistics: torch.Tensor, dot_threshold: float = 0.9995,
                          eps: float = 1e-8, in_place: bool = False) -> torch.Tensor:
    """SLERP of a and b (or of rows of them) with the angle of the whole tensors, from their `slerp_statistics`."""
    squares_a, squares_b, dot = statistics.tolist()
    cos = min(1.0, max(-1.0, dot / (max(math.sqrt(squares_a), eps) * max(math.sqrt(squares_b), eps))))
    if abs(cos) > dot_threshold:
        return _blockwise(a, b, lambda x, y: x.lerp_(y, t)) if in_place else torch.lerp(a, b, t)
    theta = math.acos(cos)
    coef_a, coef_b = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    if not in_place:
        return a * coef_a + b * coef_b
    return _blockwise(a, b, lambda x, y: x.mul_(coef_a).add_(y * coef_b))  # the floats of a * coef_a + b * coef_b


def _blocks(a: torch.Tensor, b: torch.Tensor):
    """Matching blocks of SLERP_BLOCK elements of a and b seen as flat vectors (views of contiguous tensors)."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, flat_a.numel(), SLERP_BLOCK):
        yield flat_a[start:start + SLERP_BLOCK], flat_b[start:start + SLERP_BLOCK]


def _blockwise(a: torch.Tensor, b: torch.Tensor, update) -> torch.Tensor:
    """`update(block of a, block of b)` in place, block by block; returns a."""
    if not a.is_contiguous():
        a.copy_(update(a.contiguous(), b.contiguous()))
        return a
    for block_a, block_b in _blocks(a, b.contiguous()):
        update(block_a, block_b)
    return a


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
