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

from adaptkit.data.sources import file_format, resolve
from adaptkit.data.sources import file_hash as _file_hash
from adaptkit.data.store import StoreBlocks, cache_dir, encode, open_sources, parse_max_tokens, tokenizer_fingerprint
from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["cache_dir", "tokenizer_fingerprint", "file_hash", "iter_records", "iter_documents", "tokenize_documents",
           "token_stream", "pack_blocks", "load_blocks", "detect_format"]


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
    return _file_hash(path) if Path(path).exists() else resolve(str(path)).content_hash()


def tokenize_documents(documents: list[str], tokenizer, batch: int = 1000) -> list[int]:
    """Token ids of the documents, each followed by EOS (when the tokenizer has one)."""
    import numpy as np

    return encode(tokenizer, documents, np.int64, batch)[0].tolist()


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
    sources = [resolve(name, flag, fmt) for name in names]
    caps, total = parse_max_tokens(max_tokens, names)
    opened = open_sources(sources, tokenizer, per_source(text_field, len(sources), "--text-field"), caps, total, use_cache, num_proc, flag, log)
    segments = []
    for entries, cap in zip(opened, caps):
        for store, index in entries:
            limits = [c for c in (store.index["sources"][index]["tokens"], cap, total) if c is not None]
            limit = min(limits)
            if limit <= 0:
                break
            segments.append((store, index, limit))
            cap = None if cap is None else cap - limit
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
    for store, index, limit in segments:
        if limit < seq_len:
            spec = store.index["sources"][index]["spec"]
            raise InputError(
                f"{flag}: '{spec}' gives {limit} tokens, fewer than one block of {seq_len} "
                "(--seq-len); give more text or a smaller --seq-len"
            )
    return StoreBlocks(segments, seq_len)
