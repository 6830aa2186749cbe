"""`subword-mean` (FVT, Gee et al. 2022): a new token's row is the mean of the rows of the old
tokens its string splits into under the old tokenizer, for input embeddings and LM head
separately. A padding row without a token gets the mean of all old rows."""

from __future__ import annotations

from typing import Any, Sequence

from adaptkit.vocab.initializers import Initializer, initializer_spec


class SubwordMean(Initializer):
    name = "subword-mean"
    summary = "mean of the old rows of the subwords a new token splits into (FVT)"
    reference = "Gee et al. 2022, Fast Vocabulary Transfer for Language Model Compression"

    def rows(self, weight, pieces: Sequence[Sequence[int] | None], config: Any):
        import torch

        overall = weight.mean(dim=0)
        rows = [weight[list(ids)].mean(dim=0) if ids else overall for ids in pieces]
        return torch.stack(rows) if rows else weight.new_zeros((0, weight.shape[1]))


SPEC = initializer_spec(SubwordMean)
