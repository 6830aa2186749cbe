"""Compact update masks and mask sets.

A mask says which entries of one parameter may change (True = trainable):
- "column": a bool vector of length `in` for an (out, in) weight (SSU's default),
- "row":    a bool vector of length `out`,
- "element": a bool tensor of the parameter's shape (1-D parameters, element ablations).

A mask set is saved as `masks.safetensors` (format and reader: `adaptkit.io.mask_files`)
with metadata: granularity, freeze ratio, scorer, model fingerprint. Parameters absent
from a mask set are trained in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adaptkit.errors import InputError
from adaptkit.io.mask_files import GRANULARITIES, MASKS_FILE, load_mask_file, save_mask_file

if TYPE_CHECKING:
    import torch

__all__ = ["GRANULARITIES", "MASKS_FILE", "MaskSet", "UpdateMask", "load_mask_set"]


@dataclass
class UpdateMask:
    granularity: str
    trainable: "torch.Tensor"  # bool

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise InputError(f"unknown mask granularity '{self.granularity}' (choose from {', '.join(GRANULARITIES)})")
        self.trainable = self.trainable.bool()

    def check_fits(self, name: str, shape: tuple[int, ...], flag: str = "--mask") -> None:
        expected = {
            "column": (shape[-1],) if len(shape) >= 2 else None,
            "row": (shape[0],) if len(shape) >= 2 else None,
            "element": tuple(shape),
        }[self.granularity]
        if expected is None or tuple(self.trainable.shape) != expected:
            raise InputError(
                f"{flag}: {self.granularity} mask of '{name}' has shape {tuple(self.trainable.shape)}, "
                f"which does not fit the parameter of shape {tuple(shape)}"
            )

    def expand(self, shape: tuple[int, ...]) -> "torch.Tensor":
        """A bool tensor of the parameter's shape (True = trainable)."""
        if self.granularity == "column":
            return self.trainable.reshape(1, -1).expand(shape)
        if self.granularity == "row":
            return self.trainable.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
        return self.trainable

    def restrict_rows(self, rows: "torch.Tensor", shape: tuple[int, ...]) -> "UpdateMask":
        """This mask with only the rows `rows` (bool over dim 0, True = may train) left trainable:
        a row mask stays a row mask, a column or element mask becomes an element mask."""
        if self.granularity == "row":
            return UpdateMask("row", self.trainable & rows)
        return UpdateMask("element", self.expand(shape) & rows.reshape(-1, *([1] * (len(shape) - 1))))

    def trainable_count(self, shape: tuple[int, ...]) -> int:
        other = 1
        if self.granularity == "column":
            other = shape[0]
        elif self.granularity == "row":
            for size in shape[1:]:
                other *= size
        return int(self.trainable.sum()) * other

    @property
    def all_trainable(self) -> bool:
        return bool(self.trainable.all())

    @property
    def all_frozen(self) -> bool:
        return not bool(self.trainable.any())


@dataclass
class MaskSet:
    masks: dict[str, UpdateMask]
    metadata: dict[str, str] = field(default_factory=dict)

    def save(self, directory: Path) -> Path:
        return save_mask_file(directory, {name: (m.granularity, m.trainable) for name, m in self.masks.items()}, self.metadata)

    def check_fits(self, model: "torch.nn.Module", flag: str = "--mask") -> None:
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            if name not in params:
                raise InputError(f"{flag}: mask for '{name}', which the model does not have (masks from another model?)")
            mask.check_fits(name, tuple(params[name].shape), flag)


def load_mask_set(path: Path, flag: str = "--mask") -> MaskSet:
    """Load a mask set from a directory holding masks.safetensors (or the file itself)."""
    masks, metadata = load_mask_file(path, flag)
    return MaskSet({name: UpdateMask(granularity, t) for name, (granularity, t) in masks.items()}, metadata)
