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
from typing import Any, Callable, Iterable

import torch

from adaptkit.errors import InputError

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
MAX_IDS = 2**31 - 1  # token ids are int32 in tokenizers' outputs and many kernels: a vocabulary past this cannot be addressed


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
    _by_row: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def identity(self) -> bool:
        """Every input already has the output's ids and rows: nothing to move (rows kept by id)."""
        return self.init is None and all(
            member.rows == self.size and torch.equal(index, torch.arange(self.size)) for member, index in zip(self.members, self.index)
        )

    def rebuild(self, member: int, chunks: Iterable[tuple[int, torch.Tensor]], dim: int, dtype: torch.dtype) -> torch.Tensor:
        """One input's tensor with a row per output id, from its own rows given a chunk at a time
        ((first row, rows), so that its original is never needed whole): each of its rows goes to
        the output ids of its token string. The rows it lacks are zero, or, for a model input,
        left to `fill` (or to `initialize`, with an initializer)."""
        index = self.index[member]
        filled_later = self.members[member].kind == "model"
        out = torch.empty(self.size, dim, dtype=dtype) if filled_later else torch.zeros(self.size, dim, dtype=dtype)
        order, sorted_index = self._sorted(member)
        for start, rows in chunks:
            lo, hi = torch.searchsorted(sorted_index, torch.tensor([start, start + rows.shape[0]])).tolist()
            out[order[lo:hi]] = rows.to(dtype)[sorted_index[lo:hi] - start]
        return out

    def _sorted(self, member: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(output ids ordered by the input row they take, those input rows), kept for the next tensor."""
        if member not in self._by_row:
            order = torch.argsort(self.index[member], stable=True)
            self._by_row[member] = (order, self.index[member][order])
        return self._by_row[member]

    def initialize(self, member: int, out: torch.Tensor, original: torch.Tensor, seed: int) -> None:
        """The rows a model input lacks, from the initializer over its own (original) matrix."""
        out[self.index[member] < 0] = self._initialized(member, original, seed)

    def block(self, originals: list[torch.Tensor | None], start: int, stop: int, out: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Rows start..stop of every input's tensor on the output vocabulary (from its original
        tensor; None: not read), filled as `fill` fills the whole tensors (no initializer), in the
        first rows of `out` (a buffer per input, of the compute dtype, reused block after block)."""
        rows: list[torch.Tensor | None] = []
        for i, original in enumerate(originals):
            if original is None:
                rows.append(None)
                continue
            index = self.index[i][start:stop]
            taken = out[i][:stop - start]
            if original.dtype == taken.dtype:
                torch.index_select(original, 0, index.clamp(min=0), out=taken)
            else:
                taken.copy_(original.index_select(0, index.clamp(min=0)))
            if self.members[i].kind != "model":
                taken[index < 0] = 0
            rows.append(taken)
        self.fill(rows, start)
        return rows

    def fill(self, tensors: list[torch.Tensor | None], start: int = 0, chunk: int = 1024) -> None:
        """mergekit's rows for a token a model input lacks, from the inputs that have it: the only
        holder's row, else the base's, else the holders' mean; zero when no input has it. `tensors`:
        the inputs' rows for output ids start, start + 1, ... (whole tensors: start 0), changed in place,
        `chunk` rows at a time (temporaries of a few MB, which the heap keeps from chunk to chunk)."""
        models = [i for i, t in enumerate(tensors) if t is not None and self.members[i].kind == "model"]
        if not models:
            return
        ids = slice(start, start + tensors[models[0]].shape[0])
        lacking = torch.zeros(ids.stop - start, dtype=torch.bool)
        for i in models:
            lacking |= self.index[i][ids] < 0
        rows = torch.nonzero(lacking).squeeze(1)
        base = next((i for i in models if self.members[i].is_base), None)
        for first in range(0, rows.numel(), chunk):
            part = rows[first:first + chunk]
            held = {i: self.index[i][part + start] >= 0 for i in models}
            have = {i: torch.nonzero(held[i]).squeeze(1) for i in models}  # positions in `part` (index ops: no mask scans)
            total = torch.zeros(part.numel(), tensors[models[0]].shape[1], dtype=tensors[models[0]].dtype)
            count = torch.zeros(part.numel(), dtype=total.dtype)
            for i in models:
                total.index_add_(0, have[i], tensors[i].index_select(0, part[have[i]]))
                count += held[i]
            total /= count.clamp(min=1).unsqueeze(1)
            if base is not None:
                total.index_copy_(0, have[base], tensors[base].index_select(0, part[have[base]]))
            for i in models:
                lack = torch.nonzero(~held[i]).squeeze(1)
                tensors[i].index_copy_(0, part[lack], total.index_select(0, lack))

    def _initialized(self, member: int, tensor: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.init.rows(tensor.float(), self.pieces[member], self.configs[member]).to(tensor.dtype)

    def config(self, reference_config: dict[str, Any], reference_vocab: Callable[[], dict[str, int]], flag: str) -> dict[str, Any]:
        """The output config: vocab_size, and special-token ids moved to their tokens' output ids
        (a special token the output vocabulary lacks is an InputError naming it). The first input's
        vocabulary (`reference_vocab()`) is read only for a special id that no output id takes."""
        config = dict(reference_config)
        config["vocab_size"] = self.size
        by_id = None
        for key in SPECIAL_IDS:
            value = config.get(key)
            if not isinstance(value, int):
                continue
            same = torch.nonzero(self.index[0] == value).squeeze(1)  # output ids of the first input's token `value`
            if same.numel() == 1:
                config[key] = int(same[0])
                continue
            by_id = by_id if by_id is not None else {i: t for t, i in reference_vocab().items()}
            if value in by_id:
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

    scratch = tempfile.TemporaryDirectory(prefix="adaptkit-union-")
    enabled = gc.isenabled()
    gc.disable()  # the parsed tokenizers are hundreds of thousands of acyclic objects: collections while they are built cost more than parsing
    try:
        specs = [read_spec(m.path, m.flag) for m in members] if source == "union" else None  # parsed once for the union too
        vocabs = []
        for i, member in enumerate(members):
            vocab = spec_vocabulary(specs[i]) if specs else read_vocabulary(member.path, member.flag)
            if vocab is None:
                raise InputError(f"{member.flag}: '{member.path}' has no tokenizer; merging across vocabularies needs every input's tokenizer")
            vocabs.append(vocab)
        files, vocab, description = _output_tokenizer(members, vocabs, specs, source, flag, Path(scratch.name))
        size = max(vocab.values()) + 1
        if size > MAX_IDS:
            raise InputError(f"{flag}: {description} has {size:,} token ids, more than the {MAX_IDS:,} that int32 token ids "
                             "(tokenizers, embedding lookups) can address; choose base or one input's tokenizer")
        tokens = [None] * size
        for token, out_id in vocab.items():
            tokens[out_id] = token
        index = [_index(tokens, theirs, member.rows) for member, theirs in zip(members, vocabs)]
        mapped = VocabMap(size, vocab, index, members, files, description, scratch=scratch)
        if init is not None:
            _with_initializer(mapped, init, vocab)
        del vocabs, tokens, specs
    except BaseException:
        scratch.cleanup()
        raise
    finally:
        if enabled:
            gc.enable()
    return_freed_memory()  # the tokenizer files' parsed JSON (freed by reference counts): give it back before tensors are read
    return mapped


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
