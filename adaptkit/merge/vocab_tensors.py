"""The vocabulary tensors of a merge across vocabularies, read onto the output vocabulary.

For a method that sees whole tensors, each input's tensor is rebuilt with one row per output id
straight from its file, a chunk of its rows at a time (its original is never held whole, unless
an initializer needs it), and the rows a model input lacks are then filled (`VocabMap.fill`).
For a method whose class declares `row_separable`, the merged tensor is produced a block of
output rows at a time from the inputs' original tensors (`VocabMap.block`), and the executor
writes each block as it comes: neither the rebuilt inputs nor the whole output exist at once.
A method that declares `row_statistics` gets a first pass over the same blocks (its statistics).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from adaptkit.merge.stream import DTYPES, TensorSource, raw_bytes
from adaptkit.merge.vocab import VocabMap

CHUNK = 4096  # rows: a multiple of 64, so elementwise work on a block of rows vectorizes as on the whole tensor
READ_CHUNK = 1024  # rows read at a time into a rebuilt tensor (a few MB, kept by the heap from chunk to chunk)


class VocabTensors:
    """Reads the vocabulary tensors of the members of `vocab` (`sources`, in member order), hashing
    every input's bytes as they are read (`hashers`: per member, `begin(dtype, shape)` gives a digest
    to update with the bytes, `end(name, digest)` records it)."""

    def __init__(self, vocab: VocabMap, sources: list[TensorSource], hashers: list[Any], seed: int):
        self.vocab = vocab
        self.sources = sources
        self.hashers = hashers
        self.seed = seed

    def covers(self, name: str) -> bool:
        """Whether `name` is a floating vocabulary tensor (2-D, a row per id) in every input."""
        infos = [source.tensors[name] for source in self.sources]
        return all(len(info.shape) == 2 and info.shape[0] == member.rows > 0 and DTYPES[info.dtype].is_floating_point
                   for info, member in zip(infos, self.vocab.members))

    def whole(self, name: str, dtype: torch.dtype) -> list[torch.Tensor]:
        """Every input's tensor on the output vocabulary in `dtype`, the rows it lacks filled."""
        tensors = [self._rebuilt(i, name, dtype) for i in range(len(self.sources))]
        if self.vocab.init is None:
            self.vocab.fill(tensors)
        return tensors

    def _rebuilt(self, member: int, name: str, dtype: torch.dtype) -> torch.Tensor:
        rows = self.sources[member].tensors[name].shape
        if self.vocab.init is not None and self.vocab.members[member].kind == "model":  # the initializer reads its whole matrix
            original = self._original(member, name)
            out = self.vocab.rebuild(member, [(0, original)], rows[1], dtype)
            self.vocab.initialize(member, out, original, self.seed)
            return out
        return self.vocab.rebuild(member, self._read(member, name, READ_CHUNK), rows[1], dtype)

    def _read(self, member: int, name: str, step: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) of a member's tensor, `step` rows at a time, hashed as they are read."""
        source = self.sources[member]
        info = source.tensors[name]
        digest = self.hashers[member].begin(DTYPES[info.dtype], info.shape)
        for start in range(0, info.shape[0], step):
            rows = source.read_rows(name, start, min(start + step, info.shape[0]))
            digest.update(raw_bytes(rows))
            yield start, rows
        self.hashers[member].end(name, digest)

    def _original(self, member: int, name: str) -> torch.Tensor:
        """A member's tensor as stored (hashed), whole."""
        [(_, original)] = list(self._read(member, name, self.sources[member].tensors[name].shape[0]))
        return original

    def blocks(self, name: str, dtype: torch.dtype, merge: Callable[[list[torch.Tensor]], torch.Tensor],
               first_pass: Callable[[list[torch.Tensor]], None] | None = None) -> Iterator[torch.Tensor]:
        """merge(rows) for consecutive blocks of output rows (every input's rows, filled, in `dtype`);
        the inputs are read when the first block is asked for, and `first_pass(rows)` (if given) sees
        every block before the first is merged. The rows live in buffers reused for the next block:
        each merged block must be consumed (written) before the next is asked for."""
        originals = [self._original(i, name) for i in range(len(self.sources))]
        buffers = [torch.empty(min(CHUNK, self.vocab.size), original.shape[1], dtype=dtype) for original in originals]
        starts = range(0, self.vocab.size, CHUNK)

        def rows(start: int) -> list[torch.Tensor]:
            return self.vocab.block(originals, start, min(start + CHUNK, self.vocab.size), buffers)

        if first_pass is not None:
            for start in starts:
                first_pass(rows(start))
        for start in starts:
            yield merge(rows(start))
