"""safetensors helpers: validation, metadata, whole-file reads and writes (streaming reads: adaptkit.merge.stream)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch


def check_safetensors(path: Path, flag: str) -> dict:
    """Validate a safetensors header and size without loading tensors; returns the header."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ValueError("file too short")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len <= 0 or header_len > size - 8:
                raise ValueError("bad header length")
            header = json.loads(handle.read(header_len))
    except PermissionError:
        raise InputError(f"{flag}: cannot read '{path}' (permission denied)") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag}: '{path}' is not a valid safetensors file ({exc})") from None
    end = 8 + header_len
    data_len = max((info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"), default=0)
    if end + data_len > size:
        raise InputError(f"{flag}: '{path}' is truncated ({size} bytes, header promises {end + data_len})")
    return header


def read_metadata(path: Path, flag: str) -> dict[str, str]:
    return dict(check_safetensors(path, flag).get("__metadata__", {}) or {})


def load_tensors(path: Path, flag: str) -> dict[str, "torch.Tensor"]:
    """Load every tensor of a safetensors file after validating it."""
    from safetensors.torch import load_file

    check_safetensors(path, flag)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{flag}: '{path}' could not be read as safetensors ({exc})") from None


def save_tensors(tensors: dict[str, "torch.Tensor"], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file with the mode a plain open() gives (safetensors itself writes 0600)."""
    from safetensors.torch import save_file

    from adaptkit.io.atomic import plain_mode

    if not tensors:  # safetensors 0.8 writes an invalid header for an empty dict
        header = json.dumps({"__metadata__": metadata or {}}).encode()
        header += b" " * (-len(header) % 8)
        Path(path).write_bytes(struct.pack("<Q", len(header)) + header)
        return
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or {})
    os.chmod(path, plain_mode(is_dir=False))
