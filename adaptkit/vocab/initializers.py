"""The contract of an embedding-initializer plugin (kind 'initializer', used by `vocab extend`).

An initializer is built with its validated parameters and returns the rows appended to one
matrix: `rows(weight, pieces, config)` gets the old (rows, dim) matrix in float32 (input
embeddings, or the LM head when it is not tied) and, per appended row, the old token ids that
the new token's string splits into under the OLD tokenizer (None for a padding row that no
token uses). Random draws use torch's global generator; the caller seeds it once and asks for
the input embeddings' rows first, then the LM head's (as transformers' resize does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from adaptkit.specs import InitializerSpec, NoParams, Params, class_spec

if TYPE_CHECKING:
    import torch


class Initializer(ABC):
    """Subclasses declare name, summary, reference and Params, and are registered with `initializer_spec`."""

    name: ClassVar[str] = "initializer"
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = NoParams

    def __init__(self, params: Any):
        self.params = params

    @abstractmethod
    def rows(self, weight: "torch.Tensor", pieces: Sequence[Sequence[int] | None], config: Any) -> "torch.Tensor":
        """The (len(pieces), dim) float32 rows appended to `weight`."""


def initializer_spec(initializer: type[Initializer]) -> InitializerSpec:
    """The registry spec of an initializer class (its factory is the class itself, imported lazily)."""
    return class_spec(InitializerSpec, initializer)


def load_initializer(name: str, params: dict[str, Any] | None = None, flag: str = "--init") -> Initializer:
    """The initializer registered as `name`, built with validated `params`."""
    from adaptkit.registry import get_spec

    spec = get_spec("initializer", name, flag)
    return spec.load()(spec.validate_params(params, where=f"{flag} {name}"))
