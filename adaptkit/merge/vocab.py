"""Merging across vocabularies: embedding and LM-head rows mapped to one output vocabulary by token string.

`tokenizer_source` as mergekit defines it: `base` (the base model's tokenizer), the path of
one of the inputs (its tokenizer), or `union` (the base's, or else the first --model's,
tokenizer extended by every other input's tokens: `adaptkit.vocab.union`). Every input's
vocabulary tensors (2-D, one row per id of its `vocab_size`) are rebuilt with one row per
output id, taken from the row of the same token string in that input. A row an input lacks is
filled as mergekit fills it, from the other inputs' rows for that token, never from another id:
the row of the only input that has the token; else the base's row when the base has it; else the
mean of the rows of the inputs that have it; zero when none has it (an output id without a token
string, or a token no input knows). With `init` naming an initializer (`vocab extend`'s:
subword-mean, mean, random), an input lacking a token gets a row computed from its own matrix
instead (subword-mean: the mean of its rows for the pieces its own tokenizer splits the token into).
Instruction-vector inputs (differences of weights) get zero rows for tokens they lack.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import InputError

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


@dataclass
class Member:
    """One input as the vocabulary map sees it."""

    flag: str
    path: Path
    kind: str  # 'model' or 'vector'
    rows: int  # its vocabulary tensors' rows (config vocab_size)
    is_base: bool = False


@dataclass
class VocabMap:
    """The output vocabulary and, per input, the input row of every output id (-1: the input lacks it)."""

    size: int
    vocab: dict[str, int]
    index: list[torch.Tensor]  # per member: (size,) long
    members: list[Member]
    files: Path  # a directory holding the output's tokenizer files
    description: str
    pieces: list[list[list[int]] | None] = field(default_factory=list)  # per member, per output id it lacks: its own pieces (init)
    init: Any = None
    configs: list[Any] = field(default_factory=list)  # per member: its transformers config (init)
    scratch: Any = None

    @property
    def identity(self) -> bool:
        """Every input already has the output's ids and rows: nothing to move (rows kept by id)."""
        return self.init is None and all(
            member.rows == self.size and torch.equal(index, torch.arange(self.size)) for member, index in zip(self.members, self.index)
        )

    def align(self, tensors: list[torch.Tensor | None], seed: int) -> None:
        """Replace every member's tensor (None: not read) by one with a row per output id, in place,
        each original dropped as soon as its replacement is built (peak: the originals, the filled
        rows and one new tensor)."""
        dim = next(t.shape[1] for t in tensors if t is not None)
        dtype = next(t.dtype for t in tensors if t is not None)
        need, fill = self._fill(tensors, dim, dtype)
        for i, tensor in enumerate(tensors):
            if tensor is None:
                continue
            index = self.index[i]
            have = index >= 0
            out = torch.zeros(self.size, dim, dtype=dtype)
            if self.members[i].kind == "model":
                out[need] = fill
                if self.init is not None:
                    out[~have] = self._initialized(i, tensor, seed)
            out[have] = tensor[index[have]]
            tensors[i] = out
            del tensor

    def _fill(self, tensors: list[torch.Tensor | None], dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(the output ids some model input lacks, their rows by mergekit's rule): the only holder's
        row, else the base's, else the holders' mean; zero when no input has the token."""
        models = [i for i, t in enumerate(tensors) if t is not None and self.members[i].kind == "model"]
        need = torch.zeros(self.size, dtype=torch.bool)
        for i in models:
            need |= self.index[i] < 0
        rows = torch.nonzero(need).squeeze(1)
        fill = torch.zeros(rows.numel(), dim, dtype=dtype)
        count = torch.zeros(rows.numel(), dtype=dtype)
        for i in models:
            source = self.index[i][rows]
            have = source >= 0
            fill[have] += tensors[i][source[have]]
            count += have
        fill /= count.clamp(min=1).unsqueeze(1)
        for i in models:
            if self.members[i].is_base:
                source = self.index[i][rows]
                have = source >= 0
                fill[have] = tensors[i][source[have]]
        return need, fill

    def _initialized(self, member: int, tensor: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.init.rows(tensor.float(), self.pieces[member], self.configs[member]).to(tensor.dtype)

    def config(self, reference_config: dict[str, Any], reference_vocab: dict[str, int], flag: str) -> dict[str, Any]:
        """The output config: vocab_size, and special-token ids moved to their tokens' output ids
        (a special token the output vocabulary lacks is an InputError naming it)."""
        config = dict(reference_config)
        config["vocab_size"] = self.size
        by_id = {i: t for t, i in reference_vocab.items()}
        for key in SPECIAL_IDS:
            value = config.get(key)
            if isinstance(value, int) and value in by_id:
                if by_id[value] not in self.vocab:
                    raise InputError(f"--tokenizer-source: {self.description} has no token {by_id[value]!r}, the {key} of {flag}; choose a tokenizer that has it (or union)")
                config[key] = self.vocab[by_id[value]]
        return config

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()


def plan_vocabulary(members: list[Member], source: str, flag: str, init: str | None = None) -> VocabMap:
    """Resolve `source` (base, union or an input's path) and map every member's rows to its vocabulary."""
    from adaptkit.io.vocabulary import read_vocabulary

    vocabs = []
    for member in members:
        vocab = read_vocabulary(member.path, member.flag)
        if vocab is None:
            raise InputError(f"{member.flag}: '{member.path}' has no tokenizer; merging across vocabularies needs every input's tokenizer")
        vocabs.append(vocab)
    scratch = tempfile.TemporaryDirectory(prefix="adaptkit-union-")
    try:
        files, description = _output_tokenizer(members, source, flag, Path(scratch.name))
        from adaptkit.io.vocabulary import read_vocabulary as read

        vocab = read(files, flag) or {}
        size = max(vocab.values()) + 1
        index = [_index(vocab, theirs, member.rows, size) for member, theirs in zip(members, vocabs)]
        mapped = VocabMap(size, vocab, index, members, files, description, scratch=scratch)
        if init is not None:
            _with_initializer(mapped, init, vocab)
        return mapped
    except BaseException:
        scratch.cleanup()
        raise


def _index(vocab: dict[str, int], theirs: dict[str, int], rows: int, size: int) -> torch.Tensor:
    index = torch.full((size,), -1, dtype=torch.long)
    for token, out_id in vocab.items():
        their_id = theirs.get(token)
        if their_id is not None and their_id < rows:
            index[out_id] = their_id
    return index


def _output_tokenizer(members: list[Member], source: str, flag: str, scratch: Path) -> tuple[Path, str]:
    """(a directory with the output's tokenizer files, a description for the card)."""
    models = [m for m in members if m.kind == "model"]
    if source == "base":
        base = next((m for m in models if m.is_base), None)
        if base is None:
            raise InputError(f"{flag}: 'base' names the base model's tokenizer, but there is no --base")
        return base.path, f"the tokenizer of {base.flag} '{base.path}'"
    if source == "union":
        from adaptkit.vocab.union import union_tokenizer

        ordered = sorted(models, key=lambda m: not m.is_base)
        union_tokenizer((ordered[0].flag, ordered[0].path), [(m.flag, m.path) for m in ordered[1:]], scratch)
        return scratch, f"the union of the inputs' tokenizers (first: {ordered[0].flag} '{ordered[0].path}')"
    named = next((m for m in models if Path(m.path).resolve() == Path(source).resolve()), None)
    if named is None:
        raise InputError(f"{flag}: '{source}' is not among the inputs; give base, union or the path of a --model or --base")
    return named.path, f"the tokenizer of {named.flag} '{named.path}'"


def _with_initializer(mapped: VocabMap, init: str, vocab: dict[str, int]) -> None:
    """Per model input: the pieces its own tokenizer splits every token it lacks into (for the initializer)."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig

    from adaptkit.vocab.initializers import load_initializer
    from adaptkit.vocab.tokenizer import old_pieces

    mapped.init = load_initializer(init, {}, flag="--vocab-init")
    by_id = {i: t for t, i in vocab.items()}
    for member, index in zip(mapped.members, mapped.index):
        if member.kind != "model":
            mapped.pieces.append(None)
            mapped.configs.append(None)
            continue
        mapped.configs.append(AutoConfig.from_pretrained(member.path))
        backend = Tokenizer.from_file(str(Path(member.path) / "tokenizer.json"))
        missing = [by_id.get(i) for i in torch.nonzero(index < 0).squeeze(1).tolist()]
        pieces = old_pieces(backend, [t for t in missing if t is not None])
        it = iter(pieces)
        mapped.pieces.append([next(it) if t is not None else None for t in missing])
