"""Per-parameter mask and score files (from `adaptkit mask` / `adaptkit score`), read per tensor.

Formats: `masks.safetensors` holds one uint8 tensor per parameter name (1 = trainable,
0 = frozen), its granularity in the metadata (`granularity`, or `granularity_by_param` as
`name=column;name2=element` when mixed). `scores.safetensors` holds float32 tensors keyed
`<parameter name>@<granularity>` (several granularities may be present). A plain
safetensors file keyed by parameter names also works (granularity from the metadata, or
inferred from the shape). When a parameter has several granularities, column is used
first, then row, then element (SSU scores and freezes columns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adaptkit.merge.stream import TensorSource

if TYPE_CHECKING:
    import torch

GRANULARITIES = ("column", "row", "element")  # preference order
SEPARATOR = "@"


class UnitFile:
    """The entries of a mask or score file by parameter name, with their granularity."""

    def __init__(self, source: TensorSource):
        self.source = source
        metadata = source.metadata
        per_param = dict(item.split("=", 1) for item in metadata.get("granularity_by_param", "").split(";") if "=" in item)
        default = metadata.get("granularity") if metadata.get("granularity") in GRANULARITIES else ""
        self.entries: dict[str, dict[str, str]] = {}  # parameter -> {granularity ("" = unknown): key}
        for key in source.tensors:
            name, separator, granularity = key.rpartition(SEPARATOR)
            if not separator or granularity not in GRANULARITIES:
                name, granularity = key, per_param.get(key, default)
            self.entries.setdefault(name, {})[granularity] = key

    def key(self, name: str) -> tuple[str, str | None] | None:
        """(stored key, granularity or None if unknown) of a parameter's entry, or None."""
        options = self.entries.get(name)
        if not options:
            return None
        for granularity in GRANULARITIES + ("",):
            if granularity in options:
                return options[granularity], granularity or None
        return None

    def read(self, name: str) -> tuple["torch.Tensor", str | None] | None:
        found = self.key(name)
        return (self.source.read(found[0]), found[1]) if found else None
