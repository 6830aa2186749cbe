"""Append rows to a model's input embeddings and LM head; old rows stay bit-identical.

Rows are laid out as: old rows [0, old_rows), then possibly ids the tokenizer already used but
the matrix lacked, the new tokens [start, start + n), and padding up to a multiple. Every row
after the old ones gets its values from the initializer (rows without a token get `None` pieces).
Tied embeddings get one set of rows; untied ones get rows for the input embeddings and the LM
head computed separately, from each matrix's own old rows. `vocab_size` in the config follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from adaptkit.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from adaptkit.vocab.initializers import Initializer


@dataclass(frozen=True)
class Growth:
    """Where the new rows are: the ids of the new tokens, and of rows no token uses."""

    old_rows: int
    new_rows: int
    token_ids: list[int]
    filler_ids: list[int]
    tied: bool


def _layout(old_rows: int, start: int, count: int, pad_to: int | None) -> tuple[int, int]:
    """(first new token id, total rows)."""
    start = max(start, old_rows)
    total = start + count
    if pad_to:
        total = -(-total // pad_to) * pad_to
    return start, total


def _is_tied(model: "PreTrainedModel") -> bool:
    head = model.get_output_embeddings()
    return head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def grow_embeddings(
    model: "PreTrainedModel",
    pieces: Sequence[Sequence[int]],
    start: int,
    initializer: "Initializer",
    seed: int,
    pad_to: int | None = None,
) -> Growth:
    """Give the new tokens (ids from `start`, old-tokenizer `pieces` each) rows in `model`, in place."""
    import torch

    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "bias", None) is not None:
        raise InputError("--model: an LM head with a bias is not supported for vocabulary extension")
    old_rows = embeddings.weight.shape[0]
    start, total = _layout(old_rows, start, len(pieces), pad_to)
    row_pieces = [None] * (start - old_rows) + list(pieces) + [None] * (total - start - len(pieces))
    tied = _is_tied(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rows_in = initializer.rows(embeddings.weight.detach().float(), row_pieces, model.config)
        rows_out = None if tied else initializer.rows(head.weight.detach().float(), row_pieces, model.config)
    model.resize_token_embeddings(total, mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[old_rows:] = rows_in.to(weight.dtype)
        if rows_out is not None:
            weight = model.get_output_embeddings().weight
            weight[old_rows:] = rows_out.to(weight.dtype)
    token_ids = list(range(start, start + len(pieces)))
    fillers = [i for i in range(old_rows, total) if not start <= i < start + len(pieces)]
    return Growth(old_rows, total, token_ids, fillers, tied)
