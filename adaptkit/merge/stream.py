"""Out-of-core safetensors: read one tensor at a time, write shards tensor by tensor.

Reading parses the headers once (validating sizes and offsets, so corrupt or truncated
files fail before anything is written) and then reads each tensor with positional reads
into a fresh buffer: no memory map, so pages of tensors already merged do not stay in
the process's resident set. Writing plans the shards up front (names, dtypes and shapes
are known before merging), writes each shard's header first and appends tensors as they
are produced; peak memory is the tensors of one parameter name, not the model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from adaptkit.errors import InputError
from adaptkit.io.tensors import check_safetensors

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype name, shape and absolute byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _tensor_infos(path: Path, flag: str) -> tuple[list[TensorInfo], dict[str, str]]:
    header = check_safetensors(path, flag)
    with open(path, "rb") as handle:
        data_start = 8 + int.from_bytes(handle.read(8), "little")
    infos = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{flag}: '{path}' has a malformed header entry for '{name}'") from None
        if dtype not in DTYPES:
            raise InputError(f"{flag}: '{path}': tensor '{name}' has unsupported dtype {dtype}")
        expected = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        if end - begin != expected or begin < 0:
            raise InputError(f"{flag}: '{path}' is corrupt: tensor '{name}' spans {end - begin} bytes, its shape needs {expected}")
        infos.append(TensorInfo(name, path, dtype, shape, data_start + begin, data_start + end))
    return sorted(infos, key=lambda info: info.begin), dict(header.get("__metadata__") or {})


class TensorSource:
    """The tensors of one safetensors file or of a (sharded) directory, read one at a time."""

    def __init__(self, path: Path, flag: str, prefix: str = "model"):
        self.path = Path(path)
        self.flag = flag
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self._fds: dict[Path, int] = {}
        for file in self._files(prefix):
            infos, metadata = _tensor_infos(file, flag)
            self.metadata = self.metadata or metadata
            for info in infos:
                if info.name in self.tensors:
                    raise InputError(f"{flag}: tensor '{info.name}' appears in two files of '{self.path}'")
                self.tensors[info.name] = info

    def _files(self, prefix: str) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        index = self.path / f"{prefix}.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{self.flag}: '{index}' is not a valid safetensors index (no weight_map)") from None
            files = [self.path / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise InputError(f"{self.flag}: '{index}' lists '{missing[0]}', which is missing")
            return files
        files = sorted(self.path.glob(f"{prefix}*.safetensors"))
        if not files:
            raise InputError(f"{self.flag}: '{self.path}' holds no {prefix}*.safetensors files")
        return files

    def read(self, name: str) -> torch.Tensor:
        """A fresh tensor (positional reads into a new buffer; no memory map)."""
        info = self.tensors[name]
        return self._read_bytes(info, info.begin, info.nbytes).view(DTYPES[info.dtype]).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of a tensor (along its first dimension) as a fresh tensor."""
        info = self.tensors[name]
        row_bytes = info.nbytes // info.shape[0]
        rows = self._read_bytes(info, info.begin + start * row_bytes, (stop - start) * row_bytes)
        return rows.view(DTYPES[info.dtype]).reshape(stop - start, *info.shape[1:])

    def _read_bytes(self, info: TensorInfo, offset: int, size: int) -> torch.Tensor:
        buffer = torch.empty(size, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        fd = self._fd(info.file)
        done = 0
        while done < size:
            count = os.preadv(fd, [view[done:]], offset + done)
            if count <= 0:
                raise InputError(f"{self.flag}: '{info.file}' is truncated (tensor '{info.name}')")
            done += count
        return buffer

    def _fd(self, file: Path) -> int:
        if file not in self._fds:
            self._fds[file] = os.open(file, os.O_RDONLY)
        return self._fds[file]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a tensor as stored in safetensors (little-endian, C order)."""
    flat = tensor.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


@dataclass(frozen=True)
class RowBlocks:
    """A tensor handed to the writer as consecutive blocks of rows (along its first dimension),
    produced while it is written: the whole tensor never exists in memory. Each block is written
    before the next is asked for (a producer may reuse its buffers)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    blocks: Iterable[torch.Tensor]


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=DTYPES[self.dtype]).element_size()


class ShardedWriter:
    """Writes planned tensors, in plan order, into shards of at most `max_shard_bytes` (+ index).

    One shard is written as `<prefix>.safetensors`; several as
    `<prefix>-00001-of-0000N.safetensors` with `<prefix>.safetensors.index.json`, the
    layout transformers writes and reads.
    """

    def __init__(self, directory: Path, plan: Iterable[PlannedTensor], max_shard_bytes: int, prefix: str = "model", metadata: dict[str, str] | None = None):
        self.directory = Path(directory)
        self.prefix = prefix
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for item in plan:
            if shards[-1] and size + item.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(item)
            size += item.nbytes
        self.shards = [shard for shard in shards if shard]
        count = len(self.shards)
        self.files = [f"{prefix}.safetensors"] if count == 1 else [f"{prefix}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._order = [(shard_index, item) for shard_index, shard in enumerate(self.shards) for item in shard]
        self._next = 0
        self._handle = None

    def write(self, name: str, tensor: torch.Tensor | RowBlocks) -> None:
        """Append the next planned tensor (a RowBlocks: each block as it is produced)."""
        shard_index, item = self._order[self._next]
        if name != item.name:
            raise RuntimeError(f"tensor '{name}' written out of order (expected '{item.name}')")
        if DTYPE_NAMES.get(tensor.dtype) != item.dtype or tuple(tensor.shape) != item.shape:
            raise RuntimeError(f"tensor '{name}' is {tensor.dtype} {tuple(tensor.shape)}, planned {item.dtype} {item.shape}")
        if self._handle is None:
            self._open(shard_index)
        if isinstance(tensor, RowBlocks):
            self._write_blocks(name, tensor)
        else:
            self._handle.write(raw_bytes(tensor))
        self._next += 1
        if self._next == len(self._order) or self._order[self._next][0] != shard_index:
            self._handle.close()
            self._handle = None

    def _write_blocks(self, name: str, tensor: RowBlocks) -> None:
        rows = 0
        for block in tensor.blocks:
            if block.dtype != tensor.dtype or tuple(block.shape[1:]) != tuple(tensor.shape[1:]) or rows + block.shape[0] > tensor.shape[0]:
                raise RuntimeError(f"tensor '{name}': a block of rows is {block.dtype} {tuple(block.shape)} after {rows} rows, planned {tensor.dtype} {tensor.shape}")
            self._handle.write(raw_bytes(block))
            rows += block.shape[0]
        if rows != tensor.shape[0]:
            raise RuntimeError(f"tensor '{name}': {rows} rows written, planned {tensor.shape[0]}")

    def _open(self, shard_index: int) -> None:
        header: dict = {"__metadata__": self.metadata}
        offset = 0
        for item in self.shards[shard_index]:
            header[item.name] = {"dtype": item.dtype, "shape": list(item.shape), "data_offsets": [offset, offset + item.nbytes]}
            offset += item.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._handle = open(self.directory / self.files[shard_index], "wb")
        self._handle.write(len(encoded).to_bytes(8, "little"))
        self._handle.write(encoded)

    def finish(self) -> list[str]:
        """Check that everything was written; write the index of a sharded output."""
        if self._next != len(self._order):
            raise RuntimeError(f"{len(self._order) - self._next} planned tensors were not written")
        if len(self.files) > 1:
            weight_map = {item.name: self.files[i] for i, item in self._order}
            total = sum(item.nbytes for _, item in self._order)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.directory / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return list(self.files)

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def parse_size(text: str | int, flag: str = "--shard-size") -> int:
    """'5GB', '500MB', '50MiB' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    raw = str(text).strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not math.isfinite(value) or value <= 0:
        raise InputError(f"{flag}: '{text}' is not a size; expected e.g. 5GB, 500MB or a number of bytes")
    return int(value * units[unit])
