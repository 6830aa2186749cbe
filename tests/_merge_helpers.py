"""Helpers for the merge tests: read model directories back, compute expectations independently."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import run_ok, weights  # noqa: F401  (the one reader and runner; the merge tests import them from here)


def close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        diff = (actual[name].double() - expected[name].double()).abs().max().item()
        assert diff <= atol, (name, diff)


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming by a full sort (independent of the selection used by adaptkit)."""
    k = max(1, int(density * delta.numel()))
    order = delta.abs().flatten().argsort(descending=True)[:k]
    keep = torch.zeros(delta.numel())
    keep[order] = 1
    return delta * keep.reshape(delta.shape)


def disjoint_merge(deltas: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """TIES elect + disjoint mean (or sum, without `normalize`), written elementwise."""
    weighted = [d * w for d, w in zip(deltas, weights)]
    total = sum(weighted)
    sign = torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))
    numerator = torch.zeros_like(total)
    denominator = torch.zeros_like(total)
    for d, w in zip(weighted, weights):
        agree = (torch.sign(d) == sign).float()
        numerator += d * agree
        denominator += w * agree
    denominator[denominator == 0] = 1
    return numerator / denominator if normalize else numerator


def no_partial_outputs(parent: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in Path(parent).iterdir())
