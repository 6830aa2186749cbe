"""Mixtures of named sources with weights (source-data replay): `--data NAME=SPEC[:WEIGHT]`.

The sampler has the engine's batch interface (`accumulation`, `get(step, micro)`). The sample
order is a pure function of (seed, step, micro-step, rank): global sample i falls in period
c = i // P (P = `period` samples); each period holds a fixed number of samples of each source
(the weights apportioned to P by largest remainder, at least one per source) in an order
shuffled with a generator seeded by (seed, c). The m-th sample of a source is block
perm_e[m mod N] of that source, epoch e = m // N, perm_e a permutation seeded by (seed, e,
source): a source that runs out is re-shuffled, epoch after epoch. With one source this is
exactly the engine's one-source order (perm seeded seed * 1_000_003 + epoch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from adaptkit.errors import InputError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_NUMBER = re.compile(r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)$", re.IGNORECASE)
_SOURCE_STRIDE = 1_000_000_007  # seeds of sources after the first
_PERIOD_SEED = 1 << 40  # seeds of the periods' source orders


@dataclass(frozen=True)
class MixtureSource:
    name: str
    spec: str
    weight: float = 1.0


def parse_source(value: str, flag: str = "--data", default_name: str = "data") -> MixtureSource:
    """NAME=SPEC[:WEIGHT]; a trailing :NUMBER is the weight (default 1), NAME= may be left out."""
    name, sep, spec = value.partition("=")
    if not sep or not _NAME.match(name):
        name, spec = default_name, value
    weight = 1.0
    head, colon, tail = spec.rpartition(":")
    if colon and _NUMBER.match(tail.strip()):
        weight, spec = float(tail), head
        if not (math.isfinite(weight) and weight > 0):
            raise InputError(f"{flag}: the weight of source '{name}' must be a positive number, got '{tail}'")
    if not spec:
        raise InputError(f"{flag}: source '{name}' names no data (expected NAME=SPEC[:WEIGHT])")
    return MixtureSource(name, spec, weight)


def parse_mixture(values: Sequence[str], flag: str = "--data") -> list[MixtureSource]:
    """The sources of repeated --data values; names are needed (and unique) when there are several."""
    sources = [parse_source(v, flag) for v in values]
    if len(sources) > 1:
        for value, source in zip(values, sources):
            if not value.startswith(f"{source.name}="):
                raise InputError(f"{flag}: '{value}' needs a name when several sources are mixed (NAME=SPEC[:WEIGHT])")
    names = [s.name for s in sources]
    duplicate = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if duplicate is not None:
        raise InputError(f"{flag}: duplicate source name '{duplicate}'")
    return sources


def apportion(weights: Sequence[float], total: int) -> np.ndarray:
    """Integer shares of `total` proportional to `weights` (largest remainder, at least 1 each)."""
    if total < len(weights):
        raise InputError(f"mixture: a period of {total} samples cannot hold {len(weights)} sources")
    share = np.asarray(weights, dtype=np.float64) / float(sum(weights)) * total
    counts = np.maximum(1, np.floor(share).astype(np.int64))
    deficit = total - int(counts.sum())
    for k in np.argsort(-(share - np.floor(share)), kind="stable")[:max(0, deficit)]:
        counts[k] += 1
    while counts.sum() > total:  # sources raised to one sample take from the largest
        counts[int(np.argmax(counts))] -= 1
    return counts


class Mixture:
    """Batches drawn from several block sources by weight (see the module docstring)."""

    def __init__(self, sources: dict[str, Any], weights: dict[str, float], batch_size: int, micro_batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1, period: int = 10_000):
        self.names = list(sources)
        if set(weights) != set(self.names):
            unknown = sorted(set(weights) ^ set(self.names))
            raise InputError(f"--data: unknown source name '{unknown[0]}' (sources: {', '.join(self.names)})")
        self.blocks = [sources[n] for n in self.names]
        lengths = {b.shape[1] for b in self.blocks}
        if len(lengths) != 1:
            raise InputError(f"--data: mixed sources have different block lengths {sorted(lengths)}")
        self.seq_len = lengths.pop()
        self.batch_size, self.micro_batch_size, self.seed = batch_size, micro_batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.period = period if len(self.names) > 1 else 1
        self.quota = apportion([weights[n] for n in self.names], self.period)
        self._periods: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    def _period(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each position, index of the sample within its source's period share)."""
        if c not in self._periods:
            assign = np.repeat(np.arange(len(self.names)), self.quota)
            if len(self.names) > 1:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + _PERIOD_SEED + c)
                assign = assign[torch.randperm(self.period, generator=generator).numpy()]
            within = np.zeros(self.period, dtype=np.int64)
            for k in range(len(self.names)):
                where = assign == k
                within[where] = np.arange(int(where.sum()))
            for old in [k for k in self._periods if abs(k - c) > 1]:
                del self._periods[old]  # a micro-batch spans at most two neighbouring periods
            self._periods[c] = (assign, within)
        return self._periods[c]

    def _order(self, source: int, epoch: int) -> torch.Tensor:
        key = (source, epoch)
        if key not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + source * _SOURCE_STRIDE)
            self._orders[key] = torch.randperm(self.blocks[source].shape[0], generator=generator)
            for old in [k for k in self._orders if k[0] == source and k[1] < epoch - 1]:
                del self._orders[old]  # a batch spans at most two epochs of a source
        return self._orders[key]

    def locate(self, sample: int) -> tuple[int, int]:
        """(source, block) of global sample `sample`."""
        c, r = divmod(sample, self.period)
        assign, within = self._period(c)
        source = int(assign[r])
        m = c * int(self.quota[source]) + int(within[r])
        n = self.blocks[source].shape[0]
        return source, int(self._order(source, m // n)[m % n])

    def get(self, step: int, micro: int) -> torch.Tensor:
        start = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro_batch_size
        picks = [self.locate(i) for i in range(start, start + self.micro_batch_size)]
        out = torch.empty((len(picks), self.seq_len), dtype=torch.long)
        for source in {s for s, _ in picks}:
            slots = [i for i, (s, _) in enumerate(picks) if s == source]
            out[slots] = self.blocks[source][torch.tensor([picks[i][1] for i in slots])]
        return out

    def starved(self, samples: int) -> list[str]:
        """Warnings, one per source that none of the first `samples` global samples draws from (a small replay share
        over few samples: 5% of 16 is 0.8 of a sample), naming the source and its expected share."""
        total = float(self.quota.sum())
        return [f"data source '{name}' gets no sample in the run's {samples:,} samples (its share {quota / total:.1%} "
                f"expects {samples * quota / total:.2f}); raise its weight, --max-steps or --batch-size"
                for name, quota in zip(self.names, self.quota) if self.seen(samples)[name]["samples"] == 0]

    def seen(self, samples: int) -> dict[str, dict[str, float]]:
        """Samples, tokens and epochs of each source in the first `samples` global samples."""
        full, part = divmod(samples, self.period)
        counts = full * self.quota + np.bincount(self._period(full)[0][:part], minlength=len(self.names))
        return {name: {"samples": int(n), "tokens": int(n) * self.seq_len, "epochs": int(n) / blocks.shape[0]}
                for name, n, blocks in zip(self.names, counts, self.blocks)}
