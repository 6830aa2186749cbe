"""The contract of a language-identification (LID) backend plugin.

A backend is built with its validated parameters, reports the languages it knows as
canonical codes (`adaptkit.evals.langcodes`), and ranks a text: `rank(text, candidates)`
returns (code, probability) pairs, best first, with probabilities normalized over
`candidates` (every language of the backend when None). Restricting before normalizing
is what the SSU paper does with GlotLID (softmax over English + the target language).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from typing import Any, Iterable, Sequence


class LIDBackend(ABC):
    name = "lid"

    def __init__(self, params: Any):
        self.params = params

    @abstractmethod

    def languages(self) -> list[str]:
        """Implemented by each backend."""

    @abstractmethod

    def rank(self, text: str, candidates: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Implemented by each backend."""

    def describe(self) -> str:
        """The identifier as a report names it (e.g. its model file); default: the backend name."""
        return self.name


def normalize(pairs: Iterable[tuple[str, float]], candidates: Sequence[str] | None) -> list[tuple[str, float]]:
    """Sum (code, score) pairs per code, keep `candidates` (all when None), rescale to sum 1, best first."""
    scores: dict[str, float] = {}
    for code, score in pairs:
        scores[code] = scores.get(code, 0.0) + float(score)
    if candidates is not None:
        scores = {c: scores.get(c, 0.0) for c in candidates}
    total = sum(scores.values())
    if total > 0:
        scores = {k: v / total for k, v in scores.items()}
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)


def load_lid(name: str, params: dict[str, Any] | None = None, flag: str = "--lid") -> LIDBackend:
    """The LID backend registered as `name`, built with validated `params`."""
    from adaptkit.registry import get_spec

    spec = get_spec("lid backend", name, flag)
    return spec.load()(spec.validate_params(params, where=f"{flag} {name}"))
