"""Text sources: the one reader of documents for training, calibration and evaluation.

A source spec is one of:
- a file: `.txt` (a document per non-empty line), `.jsonl` / `.json` (a JSON record per line,
  text in `text_field`), `.parquet` (column `text_field`), each optionally compressed as
  `.gz` or `.zst` (`.txt.gz`, `.jsonl.zst`, ...);
- a directory of such files (read recursively, in name order), a directory saved with
  `datasets.save_to_disk`, or a token store written by `adaptkit data prepare`;
- a glob of files (`'hausa/*.jsonl.gz'`);
- `hub:ID[:CONFIG][@SPLIT]`: a Hugging Face Hub dataset read with `datasets` streaming. With
  HF_HUB_OFFLINE=1 it is read from the Hub cache (HF_HOME/hub) and never from the network.

Other formats are refused with the list of supported ones.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from adaptkit.errors import InputError, first_line, require

TEXT_SUFFIXES = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSED = (".gz", ".zst")
SUPPORTED = ".txt, .jsonl, .json, .parquet (each also as .gz or .zst), a directory of them, a glob, a saved HF dataset directory, a token store, or hub:ID[:CONFIG][@SPLIT]"
STORE_INDEX = "index.json"
GLOB_CHARS = set("*?[")


@dataclass
class Source:
    """One resolved source: its spec, its kind and what to read."""

    spec: str
    kind: str  # "files", "hf", "hub", "store"
    files: list[tuple[Path, str]] = field(default_factory=list)  # (path, format) for kind "files"
    path: Path | None = None  # the directory of kind "hf" / "store", a local repository of kind "hub"
    hub: tuple[str, str | None, str] | None = None  # (id, config, split)
    flag: str = "--data"
    _hash: str | None = field(default=None, repr=False)

    def records(self, split: str = "train") -> Iterator[tuple[str, int, Any]]:
        """(location, line or row number, record): a str per text line, the JSON value of a JSONL
        line, a dict per row of a parquet file, saved dataset or Hub dataset."""
        if self.kind == "files":
            for path, fmt in self.files:
                yield from ((str(path), n, r) for n, r in _file_records(path, fmt, self.flag))
        elif self.kind == "hf":
            yield from ((str(self.path), n, r) for n, r in enumerate(_load_saved(self.path, self.flag, split)))
        elif self.kind == "hub":
            yield from ((self.spec, n, r) for n, r in enumerate(hub_dataset(self)))
        else:
            raise InputError(f"{self.flag}: '{self.spec}' is a token store; it holds token ids, not text")

    def documents(self, text_field: str = "text") -> Iterator[str]:
        """The non-empty documents, in order; malformed input names the file and line."""
        if self.kind == "files":
            for path, fmt in self.files:
                if fmt == "parquet":
                    yield from _parquet_documents(path, text_field, self.flag)
                else:
                    yield from _record_documents(_file_records(path, fmt, self.flag), path, fmt, text_field, self.flag)
        elif self.kind == "hf":
            yield from _saved_documents(self.path, text_field, self.flag)
        elif self.kind == "hub":
            yield from _hub_documents(self, text_field)
        else:
            raise InputError(f"{self.flag}: '{self.spec}' is a token store; it holds token ids, not text")

    def content_hash(self) -> str:
        """sha256 of what the source reads: the files' names and bytes, or the Hub id and the
        cached snapshot's revision."""
        if self._hash is None:
            self._hash = self._content_hash()
        return self._hash

    def _content_hash(self) -> str:
        if self.kind == "files":
            digest = hashlib.sha256()
            for path, _ in self.files:
                digest.update(bytes_hash(path).encode())
            return digest.hexdigest()
        if self.kind in ("hf", "store"):
            return bytes_hash(self.path)
        ident, config, split = self.hub
        local = bytes_hash(self.path) if self.path is not None else ""
        return hashlib.sha256(f"hub|{ident}|{config}|{split}|{local}".encode()).hexdigest()


def resolve(spec: str, flag: str = "--data", fmt: str = "auto") -> Source:
    """The source a spec names; a spec that names nothing readable is bad input."""
    spec = str(spec)
    if spec.startswith("hub:"):
        return _resolve_hub(spec, flag)
    path = Path(spec).expanduser()
    if GLOB_CHARS & set(spec) and not path.exists():
        matches = sorted(Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file())
        if not matches:
            raise InputError(f"{flag}: '{spec}' matches no files")
        return Source(spec, "files", [(m, file_format(m, fmt, flag)) for m in matches], flag=flag)
    if not path.exists():
        raise InputError(f"{flag}: '{spec}' does not exist (expected {SUPPORTED})")
    if path.is_dir():
        return _resolve_dir(spec, path, fmt, flag)
    return Source(spec, "files", [(path, file_format(path, fmt, flag))], flag=flag)


def file_format(path: Path, fmt: str = "auto", flag: str = "--data") -> str:
    """text, jsonl or parquet, from `fmt` or the file name (compression suffixes aside)."""
    if fmt in ("text", "jsonl", "parquet"):
        return fmt
    name = path.name[: -len(path.suffix)] if path.suffix in COMPRESSED else path.name
    suffix = Path(name).suffix
    if suffix in TEXT_SUFFIXES:
        return TEXT_SUFFIXES[suffix]
    if not suffix and path.suffix not in COMPRESSED:
        return "text"  # a plain file without an extension reads as text
    raise InputError(f"{flag}: '{path}' has an unsupported format '{path.name[len(Path(name).stem):] or path.suffix}' (supported: {SUPPORTED})")


def _resolve_dir(spec: str, path: Path, fmt: str, flag: str) -> Source:
    if (path / STORE_INDEX).is_file():
        return Source(spec, "store", path=path, flag=flag)
    if fmt == "hf" or any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return Source(spec, "hf", path=path, flag=flag)
    files = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        try:
            files.append((file, file_format(file, fmt, flag)))
        except InputError:
            continue  # other files in a directory of text are left alone
    if not files:
        raise InputError(f"{flag}: directory '{spec}' holds no files of a supported format (supported: {SUPPORTED})")
    return Source(spec, "files", files, flag=flag)


def bytes_hash(path: Path) -> str:
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


# --- files ------------------------------------------------------------------------------

def _open_text(path: Path, flag: str) -> io.TextIOBase:
    """A UTF-8 text stream of a plain, gzip or zstd file."""
    try:
        if path.suffix == ".gz":
            import gzip

            return gzip.open(path, "rt", encoding="utf-8")
        if path.suffix == ".zst":
            zstandard = require("zstandard", "zstd", f"{flag} with .zst files")
            raw = open(path, "rb")
            return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), encoding="utf-8")
        return open(path, encoding="utf-8")
    except PermissionError:
        raise InputError(f"{flag}: cannot read '{path}' (permission denied)") from None


def _first_bad_line(path: Path, flag: str) -> str:
    """' line N (byte 0xXX at column C)' of the first line that is not UTF-8 (the text stream decodes in chunks
    and cannot say); read again as bytes, only once decoding has failed."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    with _open_text(path, flag) as handle:
        raw = handle.buffer if hasattr(handle, "buffer") else None
        for number, line in enumerate(raw or [], start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as exc:
                return f" line {number} (byte 0x{line[exc.start]:02x} at column {exc.start + 1})" if exc.start < len(line) else f" line {number}"
    return ""


def _decode_errors() -> tuple[type[BaseException], ...]:
    import zlib

    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def _file_records(path: Path, fmt: str, flag: str) -> Iterator[tuple[int, Any]]:
    """(line number, record) of a text or JSONL file: the line, or its parsed JSON value."""
    if fmt == "parquet":
        yield from enumerate(_parquet_rows(path, flag))
        return
    with _open_text(path, flag) as handle:
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
            raise InputError(f"{flag}: '{path}'{_first_bad_line(path, flag)} is not UTF-8 text; expected UTF-8") from None
        except _decode_errors() as exc:
            kind = {".gz": "gzip", ".zst": "zstd"}.get(path.suffix, "text")
            raise InputError(f"{flag}: '{path}' is not a readable {kind} file ({first_line(exc)})") from None


def _record_documents(records: Iterator[tuple[int, Any]], path: Path, fmt: str, text_field: str, flag: str) -> Iterator[str]:
    for number, record in records:
        if fmt == "text":
            yield record
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise InputError(f"{flag}: '{path}' line {number} has no string field '{text_field}' (set --text-field)")
        if record[text_field].strip():
            yield record[text_field]


def _parquet_file(path: Path, flag: str):
    pq = require("pyarrow.parquet", "datasets", f"{flag} with .parquet files")
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise InputError(f"{flag}: '{path}' is not a readable parquet file ({first_line(exc)})") from None


def _parquet_rows(path: Path, flag: str) -> Iterator[dict]:
    for batch in _parquet_file(path, flag).iter_batches(batch_size=1000):
        yield from batch.to_pylist()


def _parquet_documents(path: Path, text_field: str, flag: str) -> Iterator[str]:
    parquet = _parquet_file(path, flag)
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise InputError(f"{flag}: '{path}' has no column '{text_field}' (columns: {', '.join(names)}; set --text-field)")
    for batch in parquet.iter_batches(batch_size=1000, columns=[text_field]):
        yield from (text for text in batch.column(0).to_pylist() if isinstance(text, str) and text.strip())


# --- saved and Hub datasets ----------------------------------------------------------------

def _load_saved(path: Path, flag: str, split: str = "train"):
    """A dataset saved with save_to_disk; of a DatasetDict the split `split`, else the first."""
    datasets = require("datasets", "datasets", f"{flag} with a Hugging Face dataset directory")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{flag}: '{path}' is not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split if split in dataset else next(iter(dataset))]
    return dataset


def _saved_documents(path: Path, text_field: str, flag: str) -> Iterator[str]:
    dataset = _load_saved(path, flag)
    if text_field not in dataset.column_names:
        raise InputError(f"{flag}: dataset '{path}' has no column '{text_field}' (columns: {', '.join(dataset.column_names)})")
    for batch in dataset.select_columns([text_field]).iter(batch_size=1000):
        yield from (text for text in batch[text_field] if isinstance(text, str) and text.strip())


def parse_hub(spec: str, flag: str = "--data") -> tuple[str, str | None, str]:
    """(id, config, split) of `hub:ID[:CONFIG][@SPLIT]`; the split defaults to train."""
    body = spec[len("hub:"):]
    body, _, split = body.partition("@")
    ident, _, config = body.partition(":")
    if not ident or body.endswith(":") or spec.endswith("@"):
        raise InputError(f"{flag}: '{spec}' is not of the form hub:ID[:CONFIG][@SPLIT]")
    return ident, config or None, split or "train"


def _resolve_hub(spec: str, flag: str) -> Source:
    ident, config, split = parse_hub(spec, flag)
    local = Path(ident).expanduser()
    if local.is_dir():  # a dataset repository laid out on disk
        return Source(spec, "hub", path=local, hub=(str(local), config, split), flag=flag)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        hub = require("huggingface_hub", "datasets", f"{flag} {spec}")
        try:
            snapshot = hub.snapshot_download(ident, repo_type="dataset", local_files_only=True)
        except Exception:  # LocalEntryNotFoundError or an invalid id
            raise InputError(
                f"{flag}: Hub dataset '{ident}' is not in the Hub cache and HF_HUB_OFFLINE is set; fetch it once online "
                f"with `hf download {ident} --repo-type dataset` (or unset HF_HUB_OFFLINE)"
            ) from None
        return Source(spec, "hub", path=Path(snapshot), hub=(ident, config, split), flag=flag)
    return Source(spec, "hub", hub=(ident, config, split), flag=flag)


def hub_dataset(source: Source):
    """The streaming dataset of a Hub source (from its local repository or cached snapshot when known)."""
    datasets = require("datasets", "datasets", f"{source.flag} {source.spec}")
    ident, config, split = source.hub
    try:
        return datasets.load_dataset(str(source.path or ident), config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many kinds (missing config/split, unreachable Hub)
        raise InputError(f"{source.flag}: cannot read Hub dataset '{source.spec}' ({first_line(exc)})") from None


def _hub_documents(source: Source, text_field: str) -> Iterator[str]:
    dataset = hub_dataset(source)
    for number, row in enumerate(dataset):
        if text_field not in row:
            raise InputError(f"{source.flag}: '{source.spec}' row {number} has no field '{text_field}' (fields: {', '.join(row)}; set --text-field)")
        text = row[text_field]
        if isinstance(text, str) and text.strip():
            yield text
