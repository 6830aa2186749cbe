"""`random`: the model's own init distribution for embeddings, normal(0, initializer_range)
(transformers' `_init_weights`); `std` overrides the config's `initializer_range`."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from pydantic import Field

from adaptkit.specs import Params
from adaptkit.vocab.initializers import Initializer, initializer_spec


class RandomParams(Params):
    std: Optional[float] = Field(None, gt=0, description="Standard deviation (default: the config's initializer_range).")


class RandomInit(Initializer):
    name = "random"
    summary = "normal(0, initializer_range): the model's own embedding init"
    reference = "transformers PreTrainedModel._init_weights"
    Params = RandomParams

    def rows(self, weight, pieces: Sequence[Sequence[int] | None], config: Any):
        import torch

        std = self.params.std or float(getattr(config.get_text_config(), "initializer_range", 0.02))
        return torch.normal(0.0, std, size=(len(pieces), weight.shape[1]))


SPEC = initializer_spec(RandomInit)
