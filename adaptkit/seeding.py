"""Seeding of the random number generators a run uses (Python's `random` and torch), in one place."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    """Seed Python's `random` and torch (CPU and every GPU) with `seed`."""
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
