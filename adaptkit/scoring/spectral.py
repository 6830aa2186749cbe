"""Spectrum's signal-to-noise ratio of a weight matrix (Hartford et al., arXiv 2406.06623).

As the reference code (github.com/cognitivecomputations/spectrum, spectrum.py): the singular values S of
the matrix (float32), the noise scale sigma = IQR(S) / 1.349, the Marchenko-Pastur bulk edge
sigma * (1 + sqrt(beta)) with beta = min(n, m) / max(n, m); the singular values above it are signal,
the rest noise, and the score is (sum of signal / sum of noise) / S_max (inf when no value is noise).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch


def matrix_snr(weight: "torch.Tensor") -> float:
    """The SNR of one weight matrix (a 1-D weight counts as a 1 x n matrix, as in the reference)."""
    import torch

    matrix = weight.detach().float()
    if matrix.ndim < 2:
        matrix = matrix.unsqueeze(0)
    values = torch.linalg.svdvals(matrix)
    q75, q25 = torch.quantile(values, torch.tensor([0.75, 0.25], dtype=values.dtype, device=values.device))
    sigma = float(q75 - q25) / 1.349
    n, m = matrix.shape[-2:]
    beta = min(n, m) / max(n, m)
    edge = sigma * (1 + math.sqrt(beta))
    signal, noise = float(values[values > edge].sum()), float(values[values <= edge].sum())
    return (signal / noise if noise != 0 else math.inf) / float(values[0])


def module_type(module_name: str) -> Optional[str]:
    """The type of a module inside a transformer block: its name after the block index
    (`model.layers.3.self_attn.q_proj` -> `self_attn.q_proj`); None outside the blocks."""
    parts = module_name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return ".".join(parts[index + 1:]) if index is not None and index + 1 < len(parts) else None


def block_matrix_snrs(model: "torch.nn.Module", measure: bool = True) -> dict[str, tuple[str, float]]:
    """Module name -> (module type, SNR) of every 2-D weight inside the transformer blocks. `measure`
    false (a dry run on the meta device): every SNR is 0.0, so the first modules of each type are
    chosen; the modules of one type share a shape, so the counts are those of the run."""
    from adaptkit.layers import find_layers

    prefix, _ = find_layers(model)
    found = {}
    for name, param in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        kind = module_type(module_name)
        if leaf == "weight" and param.ndim == 2 and name.startswith(prefix + ".") and kind is not None:
            found[module_name] = (kind, matrix_snr(param) if measure else 0.0)
    return found


def top_modules_by_type(snrs: dict[str, tuple[str, float]], fraction: float) -> dict[str, list[str]]:
    """Module type -> the int(count * fraction) modules of that type with the highest SNR (the reference's
    rounding: down; ties keep model order)."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for name, (kind, snr) in snrs.items():
        by_type.setdefault(kind, []).append((name, snr))
    return {kind: [name for name, _ in sorted(rows, key=lambda row: row[1], reverse=True)[:int(len(rows) * fraction)]]
            for kind, rows in by_type.items()}
