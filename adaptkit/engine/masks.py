"""Compact update masks and mask sets.

A mask says which entries of one parameter may change (True = trainable):
- "column": a bool vector of length `in` for an (out, in) weight (SSU's default),
- "row":    a bool vector of length `out`,
- "element": a bool tensor of the parameter's shape (1-D parameters, element ablations).

A mask set (`masks.safetensors`) stores one uint8 tensor per parameter name (1 =
trainable, 0 = frozen) with metadata: granularity, freeze ratio, scorer, model
fingerprint. Parameters absent from a mask set are trained in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

GRANULARITIES = ("column", "row", "element")
MASKS_FILE = "masks.safetensors"


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
        import torch

        from adaptkit.io.tensors import save_tensors

        path = Path(directory) / MASKS_FILE
        tensors = {name: mask.trainable.to(torch.uint8) for name, mask in self.masks.items()}
        granularities = {m.granularity for m in self.masks.values()}
        meta = dict(self.metadata)
        meta["granularity"] = granularities.pop() if len(granularities) == 1 else "mixed"
        meta["granularity_by_param"] = ";".join(f"{n}={m.granularity}" for n, m in self.masks.items())
        save_tensors(tensors, path, meta)
        return path

    def check_fits(self, model: "torch.nn.Module", flag: str = "--mask") -> None:
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            if name not in params:
                raise InputError(f"{flag}: mask for '{name}', which the model does not have (masks from another model?)")
            mask.check_fits(name, tuple(params[name].shape), flag)


def load_mask_set(path: Path, flag: str = "--mask") -> MaskSet:
    """Load a mask set from a directory holding masks.safetensors (or the file itself)."""
    from adaptkit.io.tensors import load_tensors, read_metadata

    path = Path(path)
    file = path / MASKS_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{flag}: '{path}' holds no {MASKS_FILE} (make one with `adaptkit mask`)")
    metadata = read_metadata(file, flag)
    tensors = load_tensors(file, flag)
    per_param = dict(
        item.split("=", 1) for item in metadata.get("granularity_by_param", "").split(";") if "=" in item
    )
    default = metadata.get("granularity", "column")
    masks = {name: UpdateMask(per_param.get(name, default), t) for name, t in tensors.items()}
    return MaskSet(masks, metadata)
