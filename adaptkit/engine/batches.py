"""Deterministic training batches: which token blocks each (step, micro-step, process) trains on.

A sampler has `accumulation` (micro-batches per optimizer step on each process) and
`get(step, micro) -> LongTensor (micro_batch_size, seq_len)`; the loop needs nothing else, so
another sampler with the same interface (e.g. a data mixture) can replace `Batches`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batches:
    """Deterministic batches: sample i of the run is block perm_epoch[i mod N], epoch = i // N.

    The batch of (step, micro-step, process) depends on nothing else, so a resumed run and
    a run with another number of processes see exactly the same global batches. `blocks` is
    an (N, seq_len) tensor or any reader with `.shape[0]` that returns rows for an index tensor.
    """

    blocks: Any
    batch_size: int
    micro_batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    _orders: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders[epoch] = torch.randperm(self.blocks.shape[0], generator=generator)
            for old in sorted(self._orders)[:-2]:  # a batch spans at most two epochs
                del self._orders[old]
        return self._orders[epoch]

    def get(self, step: int, micro: int) -> torch.Tensor:
        n = self.blocks.shape[0]
        start = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro_batch_size
        rows = [self._order(i // n)[i % n] for i in range(start, start + self.micro_batch_size)]
        return self.blocks[torch.stack(rows)]
