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
        """Replace every member's tensor (None: not read) by one with a row per output id, in place.

        First each input's own rows move to their output ids (its original dropped right after),
        then the rows a model input lacks are filled from the other inputs' moved rows, a chunk of
        rows at a time: the peak is about the originals' size plus the new tensors', never a
        full-size temporary.
        """
        from adaptkit.streamed_model import return_freed_memory

        dim = next(t.shape[1] for t in tensors if t is not None)
        dtype = next(t.dtype for t in tensors if t is not None)
        for i, tensor in enumerate(tensors):
            if tensor is None:
                continue
            index = self.index[i]
            filled_later = self.init is None and self.members[i].kind == "model"  # every row it lacks gets a fill row
            out = torch.empty(self.size, dim, dtype=dtype) if filled_later else torch.zeros(self.size, dim, dtype=dtype)
            have = torch.nonzero(index >= 0).squeeze(1)
            _copy_rows(out, have, tensor, index[have])
            if self.init is not None and self.members[i].kind == "model":
                out[index < 0] = self._initialized(i, tensor, seed)
            tensors[i] = out
            del tensor
            return_freed_memory()
        if self.init is None:
            self._fill(tensors)

    def _fill(self, tensors: list[torch.Tensor | None], chunk: int = 4096) -> None:
        """mergekit's rows for a token a model input lacks, from the inputs that have it: the only
        holder's row, else the base's, else the holders' mean; zero when no input has it."""
        models = [i for i, t in enumerate(tensors) if t is not None and self.members[i].kind == "model"]
        lacking = torch.zeros(self.size, dtype=torch.bool)
        for i in models:
            lacking |= self.index[i] < 0
        rows = torch.nonzero(lacking).squeeze(1)
        base = next((i for i in models if self.members[i].is_base), None)
        for start in range(0, rows.numel(), chunk):
            part = rows[start:start + chunk]
            held = {i: self.index[i][part] >= 0 for i in models}
            total = torch.zeros(part.numel(), tensors[models[0]].shape[1], dtype=tensors[models[0]].dtype)
            count = torch.zeros(part.numel(), dtype=total.dtype)
            for i in models:
                total[held[i]] += tensors[i][part[held[i]]]
                count += held[i]
            total /= count.clamp(min=1).unsqueeze(1)
            if base is not None:
                total[held[base]] = tensors[base][part[held[base]]]
            for i in models:
                tensors[i][part[~held[i]]] = total[~held[i]]

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
    import gc

    from adaptkit.io.vocabulary import read_vocabulary
    from adaptkit.streamed_model import return_freed_memory

    from adaptkit.vocab.union import read_spec, spec_vocabulary

    specs = [read_spec(m.path, m.flag) for m in members] if source == "union" else None  # parsed once for the union too
    vocabs = []
    for i, member in enumerate(members):
        vocab = spec_vocabulary(specs[i]) if specs else read_vocabulary(member.path, member.flag)
        if vocab is None:
            raise InputError(f"{member.flag}: '{member.path}' has no tokenizer; merging across vocabularies needs every input's tokenizer")
        vocabs.append(vocab)
    scratch = tempfile.TemporaryDirectory(prefix="adaptkit-union-")
    try:
        files, vocab, description = _output_tokenizer(members, vocabs, specs, source, flag, Path(scratch.name))
        size = max(vocab.values()) + 1
        tokens = [None] * size
        for token, out_id in vocab.items():
            tokens[out_id] = token
        index = [_index(tokens, theirs, member.rows) for member, theirs in zip(members, vocabs)]
        mapped = VocabMap(size, vocab, index, members, files, description, scratch=scratch)
        if init is not None:
            _with_initializer(mapped, init, vocab)
        del vocabs, tokens, specs
        gc.collect()
        return_freed_memory()  # the tokenizer files' parsed JSON: give it back before tensors are read
        return mapped
    except BaseException:
        scratch.cleanup()
        raise


def _copy_rows(out: torch.Tensor, rows: torch.Tensor, source: torch.Tensor, source_rows: torch.Tensor, chunk: int = 4096) -> None:
    """out[rows] = source[source_rows], a chunk of rows at a time."""
    for start in range(0, rows.numel(), chunk):
        out[rows[start:start + chunk]] = source[source_rows[start:start + chunk]]


def _index(tokens: list[str | None], theirs: dict[str, int], rows: int) -> torch.Tensor:
    """Per output id: the input's row of the same token string, -1 where it has none (or only a row past its matrix)."""
    index = torch.tensor([theirs.get(token, -1) if token is not None else -1 for token in tokens], dtype=torch.long)
    index[index >= rows] = -1
    return index


def _output_tokenizer(members: list[Member], vocabs: list[dict[str, int]], specs: list[dict] | None, source: str, flag: str, scratch: Path) -> tuple[Path, dict[str, int], str]:
    """(a directory with the output's tokenizer files, its vocabulary, a description for the card)."""
    models = [i for i, m in enumerate(members) if m.kind == "model"]
    if source == "union":
        from adaptkit.vocab.union import union_tokenizer

        ordered = sorted(models, key=lambda i: not members[i].is_base)
        first = members[ordered[0]]
        vocab = union_tokenizer((first.flag, first.path, specs[ordered[0]]), [(members[i].flag, members[i].path, specs[i]) for i in ordered[1:]], scratch)
        return scratch, vocab, f"the union of the inputs' tokenizers (first: {first.flag} '{first.path}')"
    if source == "base":
        named = next((i for i in models if members[i].is_base), None)
        if named is None:
            raise InputError(f"{flag}: 'base' names the base model's tokenizer, but there is no --base")
    else:
        named = next((i for i in models if Path(members[i].path).resolve() == Path(source).resolve()), None)
        if named is None:
            raise InputError(f"{flag}: '{source}' is not among the inputs; give base, union or the path of a --model or --base")
    member = members[named]
    return member.path, vocabs[named], f"the tokenizer of {member.flag} '{member.path}'"


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
