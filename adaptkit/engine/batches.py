"""Deterministic training batches: which token blocks each (step, micro-step, process) trains on,
and the model inputs made from them (the packing).

A sampler has `accumulation` (micro-batches per optimizer step on each process) and
`get(step, micro) -> LongTensor (micro_batch_size, seq_len)`. The one implementation is the
mixture sampler (`adaptkit.data.mixture.Mixture`); `Batches` is its one-source case: sample i
of the run is block perm_epoch[i mod N], epoch = i // N, the permutation seeded by
seed * 1_000_003 + epoch.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptkit.data.mixture import Mixture


def Batches(blocks: Any, batch_size: int, micro_batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Mixture:
    """The batches of one block source (an (N, seq_len) tensor or a store reader)."""
    return Mixture({"data": blocks}, {"data": 1.0}, batch_size, micro_batch_size, seed, rank, world_size)


def model_inputs(input_ids: torch.Tensor, packing: str, eos_token_id: int | None, attn_implementation: str | None) -> dict[str, torch.Tensor]:
    """The forward pass's keyword arguments for packed blocks.

    concat: the blocks as they are, labels = inputs (documents attend across their EOS).
    doc-mask: each document starts after an EOS; its position ids restart at 0, it attends only
    to itself (a block-diagonal causal mask: boolean for SDPA, additive otherwise; none for
    flash-attention, which splits sequences at restarting position ids itself), and the label that
    would predict the next document from an EOS is ignored, so every document's loss is the loss
    it has alone.
    """
    if packing != "doc-mask":
        return {"input_ids": input_ids, "labels": input_ids}
    documents = document_ids(input_ids, eos_token_id)
    length = input_ids.shape[1]
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    first = torch.cummax(torch.where(starts, torch.arange(length, device=input_ids.device), 0), dim=1).values
    position_ids = torch.arange(length, device=input_ids.device) - first
    labels = input_ids.clone()
    labels[starts] = -100  # a document's first token is not predicted from the EOS of the one before
    labels[:, 0] = input_ids[:, 0]  # (the block's first token is never a target)
    inputs = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if attn_implementation and attn_implementation.startswith("flash"):
        return inputs
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    allowed = (documents[:, :, None] == documents[:, None, :]) & causal
    if attn_implementation == "sdpa":
        inputs["attention_mask"] = allowed[:, None]
    else:
        inputs["attention_mask"] = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    return inputs


def document_ids(input_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """The index of the document each token belongs to within its block (a document ends with EOS)."""
    if eos_token_id is None:
        return torch.zeros_like(input_ids)
    ends = (input_ids == eos_token_id).long()
    return torch.cumsum(ends, dim=1) - ends
