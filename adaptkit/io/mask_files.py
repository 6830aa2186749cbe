"""The mask and score file formats: the one reader and writer of `masks.safetensors` and `scores.safetensors`.

- `masks.safetensors` (`adaptkit mask`): one uint8 tensor per parameter name (1 = trainable,
  0 = frozen). Metadata `granularity` says the unit of every mask ("column", "row",
  "element", or "mixed"), and `granularity_by_param` the unit of each, as
  `name=column;name2=element`.
- `scores.safetensors` (`adaptkit score`): float32 tensors keyed `<parameter name>@<granularity>`
  (several granularities of one parameter may be present), metadata with at least `scorer`
  and `shapes`.

Merge inputs (`UnitFile`) read both, and also a plain safetensors file keyed by parameter
names (granularity from the metadata, or unknown and then inferred from the shape by the
merge method). When a parameter has several granularities, column is used first, then row,
then element (SSU scores and freezes columns). Light at import (no torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

GRANULARITIES = ("column", "row", "element")  # also the preference order of `UnitFile`
MASKS_FILE = "masks.safetensors"
SCORES_FILE = "scores.safetensors"
KEY_SEPARATOR = "@"  # tensor key in scores.safetensors: "<parameter name>@<granularity>"


# --- Keys and metadata --------------------------------------------------------------------------


def score_key(name: str, granularity: str) -> str:
    """The tensor key of one granularity of a parameter's scores: 'name@column'."""
    return f"{name}{KEY_SEPARATOR}{granularity}"


def split_score_key(key: str) -> tuple[str, str] | None:
    """(parameter name, granularity) of a 'name@granularity' key, or None for any other key."""
    name, separator, granularity = key.rpartition(KEY_SEPARATOR)
    if not separator or not name or granularity not in GRANULARITIES:
        return None
    return name, granularity


def granularity_metadata(granularities: dict[str, str]) -> dict[str, str]:
    """The `granularity` and `granularity_by_param` metadata of masks with these units."""
    kinds = set(granularities.values())
    return {
        "granularity": kinds.pop() if len(kinds) == 1 else "mixed",
        "granularity_by_param": ";".join(f"{name}={g}" for name, g in granularities.items()),
    }


def granularities_by_param(metadata: dict[str, str]) -> dict[str, str]:
    """The per-parameter units recorded in `granularity_by_param` (empty when absent)."""
    items = metadata.get("granularity_by_param", "").split(";")
    return dict(item.split("=", 1) for item in items if "=" in item)


def file_in(path: Path, filename: str, flag: str, made_by: str) -> Path:
    """`path` itself, or the `filename` inside the directory `path`; refused when absent."""
    path = Path(path)
    file = path / filename if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{flag}: '{path}' holds no {filename} (make one with `{made_by}`)")
    return file


# --- Masks --------------------------------------------------------------------------------------


def save_mask_file(directory: Path, masks: dict[str, tuple[str, "torch.Tensor"]], metadata: dict[str, str]) -> Path:
    """Write {name: (granularity, bool trainable)} as masks.safetensors in `directory`."""
    import torch

    from adaptkit.io.tensors import save_tensors

    path = Path(directory) / MASKS_FILE
    tensors = {name: trainable.to(torch.uint8) for name, (_, trainable) in masks.items()}
    meta = {**metadata, **granularity_metadata({name: g for name, (g, _) in masks.items()})}
    save_tensors(tensors, path, meta)
    return path


def load_mask_file(path: Path, flag: str = "--mask") -> tuple[dict[str, tuple[str, "torch.Tensor"]], dict[str, str]]:
    """({name: (granularity, uint8 tensor)}, metadata) of masks.safetensors in a directory (or the file itself)."""
    from adaptkit.io.tensors import load_tensors, read_metadata

    file = file_in(path, MASKS_FILE, flag, "adaptkit mask")
    metadata = read_metadata(file, flag)
    per_param = granularities_by_param(metadata)
    default = metadata.get("granularity", "column")
    masks = {name: (per_param.get(name, default), tensor) for name, tensor in load_tensors(file, flag).items()}
    return masks, metadata


# --- Scores -------------------------------------------------------------------------------------


def save_score_file(directory: Path, scores: dict[str, dict[str, "torch.Tensor"]], metadata: dict[str, str]) -> Path:
    """Write {name: {granularity: float32 scores}} as scores.safetensors in `directory`."""
    from adaptkit.io.tensors import save_tensors

    path = Path(directory) / SCORES_FILE
    tensors = {score_key(name, g): t for name, by_g in scores.items() for g, t in by_g.items()}
    save_tensors(tensors, path, metadata)
    return path


def load_score_file(path: Path, flag: str = "--scores") -> tuple[dict[str, dict[str, "torch.Tensor"]], dict[str, str]]:
    """({name: {granularity: scores}}, metadata) of scores.safetensors in a directory (or the file itself)."""
    from adaptkit.io.tensors import load_tensors, read_metadata

    file = file_in(path, SCORES_FILE, flag, "adaptkit score")
    metadata = read_metadata(file, flag)
    if "scorer" not in metadata or "shapes" not in metadata:
        raise InputError(f"{flag}: '{file}' is not a score file of `adaptkit score` (no scorer/shapes metadata)")
    scores: dict[str, dict[str, Any]] = {}
    for key, tensor in load_tensors(file, flag).items():
        split = split_score_key(key)
        if split is None:
            raise InputError(f"{flag}: '{file}' has an unexpected tensor '{key}'")
        scores.setdefault(split[0], {})[split[1]] = tensor
    return scores, metadata


def check_fingerprint(metadata: dict[str, str], model: "torch.nn.Module", flag: str) -> None:
    """Scores and masks only fit the architecture (parameter names and shapes) they were made for."""
    from adaptkit.io.models import model_fingerprint

    theirs = metadata.get("model_fingerprint")
    ours = model_fingerprint(model)
    if theirs and theirs != ours:
        raise InputError(f"{flag}: made for a different model (fingerprint {theirs}, this model {ours}); score this model with `adaptkit score`")


# --- Either file, read per tensor (merge inputs) ------------------------------------------------


class TensorFile(Protocol):
    """What `UnitFile` reads from: tensor names, file metadata and one tensor at a time."""

    tensors: dict[str, Any]
    metadata: dict[str, str]

    def read(self, name: str) -> "torch.Tensor": ...


class UnitFile:
    """The entries of a mask or score file (or a plain per-parameter file) by parameter name, with their granularity."""

    def __init__(self, source: TensorFile):
        self.source = source
        per_param = granularities_by_param(source.metadata)
        default = source.metadata.get("granularity") if source.metadata.get("granularity") in GRANULARITIES else ""
        self.entries: dict[str, dict[str, str]] = {}  # parameter -> {granularity ("" = unknown): key}
        for key in source.tensors:
            name, granularity = split_score_key(key) or (key, per_param.get(key, default))
            self.entries.setdefault(name, {})[granularity] = key

    def key(self, name: str) -> tuple[str, str | None] | None:
        """(stored key, granularity or None if unknown) of a parameter's entry, or None."""
        options = self.entries.get(name) or {}
        for granularity in GRANULARITIES + ("",):
            if granularity in options:
                return options[granularity], granularity or None
        return None

    def read(self, name: str) -> tuple["torch.Tensor", str | None] | None:
        found = self.key(name)
        return (self.source.read(found[0]), found[1]) if found else None
