"""The token store: a corpus tokenized once into memory-mapped shards of fixed-width ids.

Layout of a store directory:
- `s{source}-{chunk}.bin`: raw token ids (uint16 when the vocabulary fits, else uint32), each
  document followed by EOS, the shards of a source in chunk order;
- `index.json`: sources (spec, content hash, text field, documents, tokens, UTF-8 bytes, shards),
  the tokenizer's fingerprint, the dtype, and a sha256 checksum of the index itself.

Nothing in it depends on the block length: blocks are cut when the store is read (see
`StoreBlocks`), so one store serves any --seq-len. A store is built in a temporary directory
and renamed into place; on opening, the index checksum and every file's size are checked, so a
truncated or corrupt store is named and never half-read. Building streams the documents in
chunks through a pool of `num_proc` tokenizer processes (at most num_proc + 1 chunks in flight),
so peak memory does not depend on the corpus size; a tokenizer process that dies (killed, out of
memory) fails the build at once and the partial store is removed (`adaptkit.io.workers`).

Version 2 dropped version 1's `offsets.bin` (document end offsets, never read); version 1 stores
are still read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from adaptkit.errors import AdaptkitError, InputError

FORMAT = "adaptkit-token-store"
VERSION = 2
READABLE = (1, 2)  # version 1 had an offsets.bin that nothing read
INDEX = "index.json"
TASK_TIMEOUT_S = 1800.0  # a chunk a tokenizer process has not answered by then fails the build (stuck, not dead)
CHUNK_CHARS = 4_000_000  # characters of text per tokenizer task and shard
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kKmMbBgGtT]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPTKIT_CACHE", Path.home() / ".cache" / "adaptkit"))


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(str(tokenizer.eos_token_id).encode())
    return digest.hexdigest()[:16]


def parse_count(text: str | int, flag: str = "--max-tokens") -> int:
    """A positive token count: 50000, 50k, 200M, 1.5B."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _COUNT.match(str(text))
        if not match:
            raise InputError(f"{flag}: expected a token count such as 50000, 50k, 200M or 1.5B, got '{text}'")
        value = int(round(float(match.group(1)) * _SCALE[match.group(2).lower()]))
    if value < 1:
        raise InputError(f"{flag}: expected a positive token count, got '{text}'")
    return value


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def id_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16 if max(len(tokenizer), tokenizer.vocab_size) <= 1 << 16 else np.uint32)


def encode(tokenizer, documents: list[str], dtype: Any = np.int64, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, per-document lengths) of documents, each tokenized without special tokens
    and followed by EOS (when the tokenizer has one), in batches of `batch` documents."""
    eos = tokenizer.eos_token_id
    pieces, lengths = [], []
    for start in range(0, len(documents), batch):
        encoded = tokenizer(documents[start:start + batch], add_special_tokens=False)["input_ids"]
        tail = [eos] if eos is not None else []
        sizes = [len(ids) + len(tail) for ids in encoded]
        flat = itertools.chain.from_iterable(itertools.chain(ids, tail) for ids in encoded)
        pieces.append(np.fromiter(flat, dtype=dtype, count=sum(sizes)))
        lengths.extend(sizes)
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    return ids, np.asarray(lengths, dtype=np.int64)


# --- building ------------------------------------------------------------------------------

_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER_TOKENIZER = tokenizer


def _encode_task(task: tuple, tokenizer=None) -> tuple[str, np.ndarray, int]:
    """Tokenize one chunk of documents into its shard file; (file name, lengths, UTF-8 bytes)."""
    directory, name, documents, dtype = task
    ids, lengths = encode(tokenizer or _WORKER_TOKENIZER, documents, dtype)
    ids.tofile(Path(directory) / name)
    return name, lengths, sum(len(d.encode("utf-8")) for d in documents)


def _chunks(documents: Iterator[str], chars: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for document in documents:
        chunk.append(document)
        size += len(document)
        if size >= chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _Encoder:
    """Tokenizes chunks in order: inline for a single chunk or num_proc 1, else in a `WorkerPool` of
    num_proc processes (adaptkit.io.workers: a dead worker fails the build at once, shutdown is
    bounded) with at most num_proc + 1 chunks in flight."""

    def __init__(self, tokenizer, num_proc: int, directory: Path, dtype: np.dtype):
        self.tokenizer, self.num_proc, self.directory, self.dtype = tokenizer, max(1, num_proc), directory, dtype
        self.pool = None

    def map(self, chunks: Iterator[list[str]], prefix: str) -> Iterator[tuple[str, np.ndarray, int]]:
        names: list[str] = []

        def tasks():
            for i, docs in enumerate(chunks):
                names.append(f"{prefix}-{i:06d}.bin")
                yield str(self.directory), names[-1], docs, self.dtype

        source = tasks()
        head = list(itertools.islice(source, 2))
        if self.num_proc == 1 or len(head) < 2:
            for task in itertools.chain(head, source):
                yield _encode_task(task, self.tokenizer)
            return
        if self.pool is None:
            from adaptkit.io.workers import WorkerPool

            self.pool = WorkerPool(_encode_task, self.num_proc, _init_worker, (self.tokenizer,), "tokenizer process",
                                   task_timeout=TASK_TIMEOUT_S)
        results, done = self.pool.imap(itertools.chain(head, source)), 0
        try:
            for done, result in enumerate(results, 1):
                yield result
        finally:  # stopped early (a token cap): the chunks tokenized ahead are dropped
            results.close()  # waits for the running ones
            for name in names[done:]:
                (self.directory / name).unlink(missing_ok=True)

    def close(self, abort: bool = False) -> None:
        """End the worker processes: bounded in time either way; `abort` ends them at once."""
        if self.pool is not None:
            self.pool.abort() if abort else self.pool.close()
            self.pool = None


def _write_source(encoder: _Encoder, index: int, documents: Iterator[str], cap: int | None) -> dict[str, Any]:
    """Tokenize one source into shards (at most `cap` tokens); the source's index entry."""
    entry: dict[str, Any] = {"documents": 0, "tokens": 0, "bytes": 0, "shards": [], "capped": False}
    for name, lengths, nbytes in encoder.map(_chunks(documents, CHUNK_CHARS), f"s{index:04d}"):
        count = int(lengths.sum())
        if cap is not None and entry["tokens"] + count >= cap:
            keep = cap - entry["tokens"]
            ends = np.cumsum(lengths)
            lengths = lengths[: int(np.searchsorted(ends, keep, "left")) + 1].copy()
            lengths[-1] = keep - (int(ends[len(lengths) - 2]) if len(lengths) > 1 else 0)
            os.truncate(encoder.directory / name, keep * encoder.dtype.itemsize)
            count, entry["capped"] = keep, True
        if count:
            entry["shards"].append({"file": name, "tokens": count})
        else:
            (encoder.directory / name).unlink(missing_ok=True)
        entry["documents"] += len(lengths)
        entry["tokens"] += count
        entry["bytes"] += nbytes
        if entry["capped"]:
            break
    return entry


def write_store(directory: Path, sources: Sequence, tokenizer, text_fields: Sequence[str], num_proc: int | None = None,
                caps: Sequence[int | None] | None = None, total: int | None = None, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Tokenize `sources` (resolved `Source`s) into the empty directory `directory`; returns the index.
    `caps` limits each source, `total` all of them together (in order)."""
    directory = Path(directory)
    dtype = id_dtype(tokenizer)
    encoder = _Encoder(tokenizer, num_proc or default_num_proc(), directory, dtype)
    entries, left, caps = [], total, list(caps or [None] * len(sources))
    try:
        for i, (source, field) in enumerate(zip(sources, text_fields)):
            limits = [c for c in (caps[i], left) if c is not None]
            cap = min(limits) if limits else None
            started = time.monotonic()
            entry = _write_source(encoder, i, source.documents(field), cap)
            if entry["documents"] == 0:
                raise InputError(f"{source.flag}: '{source.spec}' contains no text")
            entry.update(spec=source.spec, hash=source.content_hash(), text_field=field, max_tokens=cap)
            entries.append(entry)
            log(f"tokenized {source.spec}: {entry['documents']:,} documents, {entry['tokens']:,} tokens in {time.monotonic() - started:.1f}s")
            if left is not None:
                left -= entry["tokens"]
                if left <= 0:
                    break
    except BaseException:
        encoder.close(abort=True)  # an error, a dead worker or an interrupt: the workers end now
        raise
    encoder.close()
    index = {
        "format": FORMAT, "version": VERSION, "dtype": dtype.name, "eos_token_id": tokenizer.eos_token_id,
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "name": str(getattr(tokenizer, "name_or_path", "")), "vocab_size": len(tokenizer)},
        "sources": entries, "documents": sum(e["documents"] for e in entries), "tokens": sum(e["tokens"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries), "max_tokens": total,
    }
    index["checksum"] = _checksum(index)
    (directory / INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return index


def _checksum(index: dict[str, Any]) -> str:
    body = {k: v for k, v in index.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# --- the cache and processes of one node --------------------------------------------------

def _local_rank() -> tuple[int, int]:
    return int(os.environ.get("LOCAL_RANK", "0") or 0), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)


def _launch_token() -> str:
    """Shared by the processes of one launch (torchrun/accelerate start them from one parent)."""
    return f"{os.getppid()}:{os.environ.get('MASTER_PORT', '')}:{os.environ.get('TORCHELASTIC_RUN_ID', '')}"


def cached_store(key: str, build: Callable[[Path], Any], flag: str = "--data", timeout: float | None = None) -> "TokenStore":
    """The store cached under $ADAPTKIT_CACHE/stores/KEY, built by `build(tmp_dir)` when missing.
    Of several processes on a node, local rank 0 builds; the others wait for it and map the result,
    watching it: a failure it wrote down or its death (its pid in the builder note) ends the wait in
    seconds; otherwise the wait ends after `timeout` (ADAPTKIT_STORE_TIMEOUT, default 7200 s)."""
    root = cache_dir() / "stores"
    final, failed, builder = root / key, root / f".{key}.failed", root / f".{key}.builder"
    rank, local_world = _local_rank()
    if rank > 0 and local_world > 1:
        return _wait_for_store(final, failed, builder, flag, timeout or float(os.environ.get("ADAPTKIT_STORE_TIMEOUT", 7200)))
    if final.is_dir():
        try:
            return TokenStore(final, flag)
        except InputError:
            shutil.rmtree(final, ignore_errors=True)  # a damaged cache entry is rebuilt
    root.mkdir(parents=True, exist_ok=True)
    failed.unlink(missing_ok=True)
    if local_world > 1:
        _write_note(builder, {"launch": _launch_token(), "pid": os.getpid()})
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=root))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # built at the same time by another run: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if local_world > 1:
            _write_note(failed, {"launch": _launch_token(), "message": str(exc), "input": isinstance(exc, InputError)})
        raise
    finally:
        builder.unlink(missing_ok=True)
    return TokenStore(final, flag)


def _write_note(path: Path, note: dict[str, Any]) -> None:
    """A small JSON note for the other local ranks, renamed into place (never read half-written)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(note))
    os.replace(tmp, tmp.with_name(path.name))


def _read_note(path: Path) -> dict[str, Any] | None:
    """The note of this launch at `path`, or None (absent, unreadable, or another launch's)."""
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and note.get("launch") == _launch_token() else None


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead and not yet reaped by its launcher, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _wait_for_store(final: Path, failed: Path, builder: Path, flag: str, timeout: float) -> "TokenStore":
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (final / INDEX).is_file():
            try:
                return TokenStore(final, flag)
            except InputError:
                pass  # being replaced by local rank 0
        note = _read_note(failed)
        if note is not None:
            raise (InputError if note.get("input") else AdaptkitError)(note.get("message", "local rank 0 failed to build the token store"))
        note = _read_note(builder)
        if note is not None and not _pid_alive(int(note.get("pid", 0))) and not (final / INDEX).is_file():
            raise AdaptkitError(f"{flag}: local rank 0 (pid {note.get('pid')}) died while building the token store '{final}'; "
                                "its launcher's log says why")
        time.sleep(0.2)
    raise AdaptkitError(f"{flag}: timed out after {timeout:.0f}s waiting for local rank 0 to build the token store '{final}' (ADAPTKIT_STORE_TIMEOUT)")


# --- reading -------------------------------------------------------------------------------

class TokenStore:
    """An opened store: the checked index and a memory map of every shard."""

    def __init__(self, path: Path, flag: str = "--data"):
        self.path, self.flag = Path(path), flag
        self.index = self._read_index()
        self.dtype = np.dtype(self.index["dtype"])
        self._streams: dict[int, tuple[list[np.memmap], np.ndarray]] = {}
        for entry in self.index["sources"]:
            for shard in entry["shards"]:
                self._check_size(shard["file"], shard["tokens"] * self.dtype.itemsize)

    def _read_index(self) -> dict[str, Any]:
        where = f"{self.flag}: token store '{self.path}'"
        try:
            index = json.loads((self.path / INDEX).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{where} has no {INDEX} (an unfinished or foreign directory)") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{where}: {INDEX} is unreadable or corrupt ({exc})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise InputError(f"{where}: {INDEX} is not an adaptkit token store index")
        if index.get("version") not in READABLE:
            raise InputError(f"{where} has version {index.get('version')}; this adaptkit reads versions {', '.join(map(str, READABLE))} (prepare it again)")
        if index.get("checksum") != _checksum(index):
            raise InputError(f"{where}: {INDEX} is corrupt (checksum mismatch)")
        return index

    def _check_size(self, name: str, expected: int) -> None:
        file = self.path / name
        size = file.stat().st_size if file.is_file() else None
        if size != expected:
            state = "is missing" if size is None else f"has {size} bytes, the index says {expected}"
            raise InputError(f"{self.flag}: token store '{self.path}' is truncated or corrupt: '{name}' {state}")

    @property
    def fingerprint(self) -> str:
        return self.index["tokenizer"]["fingerprint"]

    def check_tokenizer(self, tokenizer) -> None:
        mine = tokenizer_fingerprint(tokenizer)
        if mine != self.fingerprint:
            raise InputError(
                f"{self.flag}: token store '{self.path}' was made with another tokenizer (fingerprint {self.fingerprint}, "
                f"'{self.index['tokenizer']['name']}') than the model's ({mine}); prepare it again with this model"
            )

    def _stream(self, source: int) -> tuple[list[np.memmap], np.ndarray]:
        if source not in self._streams:
            shards = self.index["sources"][source]["shards"]
            maps = [np.memmap(self.path / s["file"], dtype=self.dtype, mode="r", shape=(s["tokens"],)) for s in shards]
            self._streams[source] = (maps, np.cumsum([0] + [s["tokens"] for s in shards]))
        return self._streams[source]

    def read(self, source: int, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of one source's stream (shards joined)."""
        maps, starts = self._stream(source)
        shard = int(np.searchsorted(starts, start, "right")) - 1
        pieces, end = [], start + length
        while start < end:
            offset = start - int(starts[shard])
            piece = maps[shard][offset:offset + end - start]
            pieces.append(piece)
            start += len(piece)
            shard += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class StoreBlocks:
    """Blocks of `seq_len` tokens cut from store streams at read time: a drop-in for the
    (N, seq_len) int64 block tensor (`.shape`, `len()`, `[int | slice | index tensor]`).

    Each segment (store, source, token limit) is packed on its own, the remainder dropped, and the
    segments' blocks follow each other, exactly as the block tensor of the in-memory packing.
    """

    def __init__(self, segments: Sequence[tuple[TokenStore, int, int]], seq_len: int):
        self.segments, self.seq_len = list(segments), seq_len
        self._starts = np.cumsum([0] + [limit // seq_len for _, _, limit in self.segments])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self._starts[-1]), self.seq_len)

    @property
    def dtype(self):
        import torch

        return torch.long

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return self.shape[0] * self.seq_len

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __iter__(self) -> Iterator:
        for row in range(len(self)):
            yield self[row]

    def __getitem__(self, key: Any):
        import torch

        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            return self._rows(np.asarray([int(key)]))[0]
        if isinstance(key, slice):
            return self._rows(np.arange(len(self))[key])
        return self._rows(np.asarray(key.numpy() if isinstance(key, torch.Tensor) else key, dtype=np.int64).reshape(-1))

    def tensor(self):
        """All blocks as one (N, seq_len) int64 tensor (for small data)."""
        return self[:]

    def _rows(self, rows: np.ndarray):
        import torch

        n = len(self)
        if rows.size and (rows.max() >= n or rows.min() < -n):
            raise IndexError(f"block index out of range for {n} blocks")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((rows.size, self.seq_len), dtype=np.int64)
        for i, row in enumerate(rows.tolist()):
            segment = int(np.searchsorted(self._starts, row, "right")) - 1
            store, source, _ = self.segments[segment]
            out[i] = store.read(source, (row - int(self._starts[segment])) * self.seq_len, self.seq_len)
        return torch.from_numpy(out)


# --- from sources to blocks -------------------------------------------------------------------

def parse_max_tokens(values: Any, names: Sequence[str], flag: str = "--max-tokens") -> tuple[list[int | None], int | None]:
    """(cap per source, total cap) from `--max-tokens` values: N caps all sources together,
    NAME=N the source NAME (a --data spec or a mixture name)."""
    caps: list[int | None] = [None] * len(names)
    total = None
    for value in [] if values is None else [values] if isinstance(values, (str, int)) else list(values):
        name, sep, count = str(value).rpartition("=")
        if not sep:
            total = parse_count(count, flag)
            continue
        if name not in names:
            from adaptkit.registry import did_you_mean

            raise InputError(f"{flag}: unknown source name '{name}'{did_you_mean(name, list(names))} (sources: {', '.join(names)})")
        caps[list(names).index(name)] = parse_count(count, flag)
    return caps, total


def open_sources(sources: Sequence, tokenizer, text_fields: Sequence[str], caps: Sequence[int | None], total: int | None,
                 use_cache: bool = True, num_proc: int | None = None, flag: str = "--data",
                 log: Callable[[str], None] = lambda m: None) -> list[list[tuple[TokenStore, int]]]:
    """The (store, source index) pairs of every source: all sources of a store given as such (its
    tokenizer checked), or the source's own entry in one store of all raw sources, cached by content
    under $ADAPTKIT_CACHE unless `use_cache` is off (empty when the total cap was reached before it)."""
    raw = [i for i, s in enumerate(sources) if s.kind != "store"]
    opened: dict[int, list[tuple[TokenStore, int]]] = {}
    for i, source in enumerate(sources):
        if source.kind == "store":
            store = TokenStore(source.path, flag)
            store.check_tokenizer(tokenizer)
            opened[i] = [(store, j) for j in range(len(store.index["sources"]))]
    if raw:
        chosen = [sources[i] for i in raw]
        fields, limits = [text_fields[i] for i in raw], [caps[i] for i in raw]
        cap_all = total if len(raw) == len(sources) else None
        store = _raw_store(chosen, tokenizer, fields, limits, cap_all, use_cache, num_proc, flag, log)
        for j, i in enumerate(raw):
            opened[i] = [(store, j)] if j < len(store.index["sources"]) else []
    return [opened[i] for i in range(len(sources))]


def _raw_store(sources: Sequence, tokenizer, fields: list[str], caps: list[int | None], total: int | None,
               use_cache: bool, num_proc: int | None, flag: str, log: Callable[[str], None]) -> TokenStore:
    def build(directory: Path) -> None:
        write_store(directory, sources, tokenizer, fields, num_proc, caps, total, log)

    if use_cache:
        key = hashlib.sha256(json.dumps([VERSION, tokenizer_fingerprint(tokenizer), total, [
            [s.content_hash(), s.kind, [f for _, f in s.files], field, cap] for s, field, cap in zip(sources, fields, caps)
        ]]).encode()).hexdigest()[:32]
        return cached_store(key, build, flag)
    (cache_dir() / "stores").mkdir(parents=True, exist_ok=True)  # on disk, not in a RAM /tmp
    directory = Path(tempfile.mkdtemp(prefix=".uncached-", dir=cache_dir() / "stores"))
    try:
        build(directory)
        store = TokenStore(directory, flag)
        for s in range(len(store.index["sources"])):
            store._stream(s)  # mapped before the files are unlinked
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return store
