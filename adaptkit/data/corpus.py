"""Training corpora: documents -> token store (cached) -> fixed-length blocks.

Sources are read by `adaptkit.data.sources` (text, JSONL, parquet, compressed, directories,
globs, saved HF datasets, token stores, Hub datasets). Each document is tokenized without
special tokens and followed by the EOS token; the stream of each source is cut into blocks of
`seq_len` tokens (the remainder dropped), as in the SSU paper's 512-token blocks, and the
sources' blocks follow each other.

The tokens live in a token store (`adaptkit.data.store`) cached under $ADAPTKIT_CACHE (default
~/.cache/adaptkit) keyed by the sources' content and the tokenizer, so a second run does not
tokenize again, and blocks are cut from it when read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from adaptkit.data.sources import bytes_hash, file_format, resolve
from adaptkit.data.store import StoreBlocks, cache_dir, open_sources, parse_max_tokens, tokenizer_fingerprint
from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["cache_dir", "tokenizer_fingerprint", "file_hash", "iter_records", "iter_documents",
           "token_stream", "pack_blocks", "load_blocks", "load_mixture", "detect_format"]


def detect_format(path: Path, fmt: str = "auto") -> str:
    """hf for a directory, else the file's format (text, jsonl or parquet)."""
    if fmt != "auto":
        return fmt
    return "hf" if Path(path).is_dir() else file_format(Path(path))


def iter_records(path: Path, fmt: str = "auto", flag: str = "--data", split: str = "train") -> Iterator[tuple[int, Any]]:
    """(line number or row index, record) of one source: a str per non-empty line of a text file,
    the parsed JSON value of each JSONL line, a dict per parquet or dataset row."""
    for _, number, record in resolve(str(path), flag, fmt).records(split):
        yield number, record


def iter_documents(path: Path, text_field: str = "text", fmt: str = "auto", flag: str = "--data") -> Iterator[str]:
    """Yield the documents of one source; malformed input names the file and line."""
    yield from resolve(str(path), flag, fmt).documents(text_field)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes or a directory's files; of what a glob or hub: spec reads otherwise."""
    return bytes_hash(path) if Path(path).exists() else resolve(str(path)).content_hash()


def pack_blocks(stream: "torch.Tensor", seq_len: int) -> "torch.Tensor":
    """Cut a token stream into (N, seq_len) blocks, dropping the remainder."""
    count = stream.numel() // seq_len
    return stream[: count * seq_len].reshape(count, seq_len).long()


def per_source(value: str | Sequence[str], count: int, flag: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise InputError(f"{flag}: give one value for all sources or one per --data source ({count}), got {len(values)}")
    return values


def open_store_sources(paths: Sequence[str], tokenizer, text_field: str | Sequence[str] = "text", fmt: str = "auto",
                       use_cache: bool = True, flag: str = "--data", num_proc: int | None = None, max_tokens: Any = None,
                       log=lambda m: None) -> list[tuple[Any, int, int]]:
    """(store, source index, token limit) of every source that contributes tokens, in order."""
    if not paths:
        raise InputError(f"{flag}: no training data given")
    names = [str(p) for p in paths]
    caps, total = parse_max_tokens(max_tokens, names)
    groups = open_groups([[n] for n in names], tokenizer, per_source(text_field, len(names), "--text-field"), caps, total,
                         fmt, use_cache, flag, num_proc, log)
    return [segment for group in groups for segment in group]


def open_groups(groups: Sequence[Sequence[str]], tokenizer, text_fields: Sequence[str], caps: Sequence[int | None],
                total: int | None, fmt: str = "auto", use_cache: bool = True, flag: str = "--data",
                num_proc: int | None = None, log=lambda m: None) -> list[list[tuple[Any, int, int]]]:
    """The (store, source index, token limit) segments of each group of specs (a mixture source):
    `caps[k]` limits group k, `total` all groups together, both taken in order."""
    specs = [str(spec) for group in groups for spec in group]
    owner = [k for k, group in enumerate(groups) for _ in group]
    sources = [resolve(spec, flag, fmt) for spec in specs]
    fields = [text_fields[k] for k in owner]
    opened = open_sources(sources, tokenizer, fields, [caps[k] for k in owner], total, use_cache, num_proc, flag, log)
    left = list(caps)
    segments: list[list[tuple[Any, int, int]]] = [[] for _ in groups]
    for entries, k in zip(opened, owner):
        for store, index in entries:
            limit = min(c for c in (store.index["sources"][index]["tokens"], left[k], total) if c is not None)
            if limit <= 0:
                break
            segments[k].append((store, index, limit))
            left[k] = None if left[k] is None else left[k] - limit
            total = None if total is None else total - limit
    return segments


def token_stream(path: Path, tokenizer, text_field: str = "text", fmt: str = "auto", use_cache: bool = True, flag: str = "--data") -> "torch.Tensor":
    """The int32 token stream of one source, from the token store cache when possible."""
    import numpy as np
    import torch

    (store, index, limit), = open_store_sources([str(path)], tokenizer, text_field, fmt, use_cache, flag)
    return torch.from_numpy(store.read(index, 0, limit).astype(np.int32))


def load_blocks(paths: list[str], tokenizer, seq_len: int, text_field: str | Sequence[str] = "text", fmt: str = "auto",
                use_cache: bool = True, flag: str = "--data", *, num_proc: int | None = None, max_tokens: Any = None,
                log=lambda m: None) -> StoreBlocks:
    """Packed training blocks of every source (each source packed on its own, then one after the
    other), read from a token store: `.shape` (N, seq_len), `len()`, `[rows] -> int64 tensor`.
    `max_tokens`: a count ('200M') for all sources together or NAME=COUNT per source."""
    segments = open_store_sources(paths, tokenizer, text_field, fmt, use_cache, flag, num_proc, max_tokens, log)
    return blocks_of(segments, seq_len, flag)


def load_mixture(groups: Sequence[Sequence[str]], tokenizer, seq_len: int, text_fields: Sequence[str],
                 caps: Sequence[int | None], total: int | None = None, fmt: str = "auto", use_cache: bool = True,
                 flag: str = "--data", num_proc: int | None = None, log=lambda m: None) -> list[StoreBlocks]:
    """The blocks of each mixture source (a group of specs), from one token store of all raw sources."""
    grouped = open_groups(groups, tokenizer, text_fields, caps, total, fmt, use_cache, flag, num_proc, log)
    for group, segments in zip(groups, grouped):
        if not segments:
            raise InputError(f"{flag}: '{group[0]}' gives no tokens within --max-tokens; raise the token limit or drop the source")
    return [blocks_of(segments, seq_len, flag) for segments in grouped]


def blocks_of(segments: Sequence[tuple[Any, int, int]], seq_len: int, flag: str = "--data") -> StoreBlocks:
    """Blocks of seq_len tokens cut from the segments; each must hold at least one block."""
    for store, index, limit in segments:
        if limit < seq_len:
            spec = store.index["sources"][index]["spec"]
            raise InputError(
                f"{flag}: '{spec}' gives {limit} tokens, fewer than one block of {seq_len} "
                "(--seq-len); give more text or a smaller --seq-len"
            )
    return StoreBlocks(segments, seq_len)
