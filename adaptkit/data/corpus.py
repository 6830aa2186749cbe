"""Training corpora: documents -> token stream (cached) -> fixed-length blocks.

Formats: plain text (one document per non-empty line), JSONL (one document per record,
text in `text_field`), and Hugging Face dataset directories saved with
`save_to_disk` (column `text_field`). Each document is tokenized without special
tokens and followed by the EOS token; the concatenated stream is cut into blocks of
`seq_len` tokens (the remainder is dropped), as in the SSU paper's 512-token blocks.

The token stream of each file is cached under $ADAPTKIT_CACHE (default
~/.cache/adaptkit) keyed by the file's content hash and the tokenizer, so a second run
does not tokenize again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPTKIT_CACHE", Path.home() / ".cache" / "adaptkit"))


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    return "text"


def iter_records(path: Path, fmt: str = "auto", flag: str = "--data", split: str = "train") -> Iterator[tuple[int, Any]]:
    """(line number or row index, record) of one file or dataset directory: a str per non-empty
    line of a text file, the parsed JSON value of each JSONL line, a dict per dataset row."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag}: '{path}' does not exist")
    fmt = detect_format(path, fmt)
    if fmt == "hf":
        yield from enumerate(_load_hf_dataset(path, flag, split))
        return
    if path.is_dir():
        raise InputError(f"{flag}: '{path}' is a directory; expected a text/JSONL file or a saved HF dataset")
    try:
        handle = open(path, encoding="utf-8")
    except PermissionError:
        raise InputError(f"{flag}: cannot read '{path}' (permission denied)") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if fmt == "text":
                    yield number, line.rstrip("\n")
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{flag}: '{path}' line {number} is not valid JSON ({exc.msg})") from None
                yield number, record
        except UnicodeDecodeError:
            raise InputError(f"{flag}: '{path}' is not UTF-8 text") from None


def iter_documents(path: Path, text_field: str = "text", fmt: str = "auto", flag: str = "--data") -> Iterator[str]:
    """Yield the documents of one file or dataset directory; malformed input names the line."""
    path = Path(path)
    kind = detect_format(path, fmt)
    if kind == "hf" and path.exists():
        dataset = _load_hf_dataset(path, flag)
        if text_field not in dataset.column_names:
            raise InputError(f"{flag}: dataset '{path}' has no column '{text_field}' (columns: {', '.join(dataset.column_names)})")
        yield from (text for text in dataset[text_field] if isinstance(text, str) and text.strip())
        return
    for number, record in iter_records(path, kind, flag):
        if kind == "text":
            yield record
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise InputError(f"{flag}: '{path}' line {number} has no string field '{text_field}' (set --text-field)")
        if record[text_field].strip():
            yield record[text_field]


def _load_hf_dataset(path: Path, flag: str, split: str = "train"):
    """A dataset saved with save_to_disk; of a DatasetDict the split `split`, else the first."""
    from adaptkit.errors import require

    datasets = require("datasets", "datasets", f"{flag} with a Hugging Face dataset directory")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{flag}: '{path}' is not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split if split in dataset else next(iter(dataset))]
    return dataset


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a directory's files (names and bytes)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(str(tokenizer.eos_token_id).encode())
    return digest.hexdigest()[:16]


def tokenize_documents(documents: list[str], tokenizer, batch: int = 1000) -> list[int]:
    """Token ids of the documents, each followed by EOS (when the tokenizer has one)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(documents), batch):
        encoded = tokenizer(documents[start : start + batch], add_special_tokens=False)["input_ids"]
        for ids in encoded:
            stream.extend(ids)
            if eos is not None:
                stream.append(eos)
    return stream


def token_stream(path: Path, tokenizer, text_field: str = "text", fmt: str = "auto", use_cache: bool = True, flag: str = "--data") -> "torch.Tensor":
    """The int32 token stream of one file, from the cache when possible."""
    import torch

    from adaptkit.io.tensors import load_tensors, save_tensors

    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag}: '{path}' does not exist")
    key = hashlib.sha256(
        f"{file_hash(path)}|{tokenizer_fingerprint(tokenizer)}|{text_field}|{detect_format(path, fmt)}".encode()
    ).hexdigest()[:32]
    cached = cache_dir() / "tokens" / f"{key}.safetensors"
    if use_cache and cached.is_file():
        try:
            return load_tensors(cached, "cache")["ids"]
        except InputError:
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
    documents = list(iter_documents(path, text_field, fmt, flag))
    if not documents:
        raise InputError(f"{flag}: '{path}' contains no text")
    ids = torch.tensor(tokenize_documents(documents, tokenizer), dtype=torch.int32)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
        save_tensors({"ids": ids}, tmp, {"source": str(path)})
        os.replace(tmp, cached)
    return ids


def pack_blocks(stream: "torch.Tensor", seq_len: int) -> "torch.Tensor":
    """Cut a token stream into (N, seq_len) blocks, dropping the remainder."""
    count = stream.numel() // seq_len
    return stream[: count * seq_len].reshape(count, seq_len).long()


def load_blocks(paths: list[str], tokenizer, seq_len: int, text_field: str = "text", fmt: str = "auto", use_cache: bool = True, flag: str = "--data") -> "torch.Tensor":
    """Packed training blocks from every path (each file packed on its own, then stacked)."""
    import torch

    if not paths:
        raise InputError(f"{flag}: no training data given")
    blocks = []
    for path in paths:
        stream = token_stream(Path(path), tokenizer, text_field, fmt, use_cache, flag)
        packed = pack_blocks(stream, seq_len)
        if packed.shape[0] == 0:
            raise InputError(
                f"{flag}: '{path}' gives {stream.numel()} tokens, fewer than one block of {seq_len} "
                "(--seq-len); give more text or a smaller --seq-len"
            )
        blocks.append(packed)
    return torch.cat(blocks)
