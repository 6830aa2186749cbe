"""Data slices: a run that trains on the I-th of N equal consecutive parts of its data (`data.slice: I/N`).

Each source's blocks (after the validation hold-out) are cut into N consecutive parts, part i holding
rows [floor(i n / N), floor((i + 1) n / N)); a mixture keeps its weights, since every source is cut
alike. Blocks hold documents in corpus order, so a slice is a consecutive run of documents (cut at block
boundaries). Used by Branch-and-Merge (adaptkit/branch_merge.py), where each branch trains on its own slice.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from adaptkit.engine.evaluation import BlockSubset
from adaptkit.errors import InputError


def slice_rows(n: int, index: int, count: int) -> torch.Tensor:
    """The rows of part `index` of `count` of n rows."""
    return torch.arange(index * n // count, (index + 1) * n // count)


def check_slices(sources: dict[str, Any], count: int, flag: str, seq_len: int) -> None:
    """Every source has at least `count` blocks (each slice gets one or more)."""
    for name, blocks in sources.items():
        n = int(blocks.shape[0])
        if n < count:
            raise InputError(f"{flag}: {count} data slices, but source '{name}' has only {n} block(s) of {seq_len} tokens "
                             "(its documents, packed); give more data, fewer slices or a shorter --seq-len")


def slice_sources(sources: dict[str, Any], blocks: Any, spec: Optional[str], seq_len: int) -> tuple[dict[str, Any], Any]:
    """(the sources' slices, their blocks together) for `data.slice` I/N; unchanged without one."""
    if spec is None:
        return sources, blocks
    index, count = map(int, spec.split("/"))
    check_slices(sources, count, f"--set data.slice={spec}", seq_len)
    kept, rows, offset = {}, [], 0
    for name, source_blocks in sources.items():
        part = slice_rows(int(source_blocks.shape[0]), index, count)
        kept[name] = BlockSubset(source_blocks, part)
        rows.append(part + offset)
        offset += int(source_blocks.shape[0])
    return kept, BlockSubset(blocks, torch.cat(rows))
