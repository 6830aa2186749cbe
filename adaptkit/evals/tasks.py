"""Evaluation tasks and the contract of an eval backend plugin.

A task is given on the command line as `BACKEND:SPEC` (`ppl:eng=en.txt`,
`lm-eval:xnli_sw`, `mt:flores.jsonl`). The backend registered under BACKEND turns SPEC
into one or more `EvalTask`s in `prepare` (reading and validating its data once, before
any model is loaded), then `run` scores one loaded model on its tasks and returns one
`TaskOutput` per task. Backends are classes built with their validated parameters:
`Backend(params)`. This module is light (standard library only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from adaptkit.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class EvalTask:
    """One named evaluation: its backend, what the user wrote, and the prepared data."""

    name: str
    backend: str
    spec: str
    payload: Any = None
    info: dict[str, Any] = field(default_factory=dict)  # shown in results.json (file, documents, ...)


@dataclass
class TaskOutput:
    """Scores of one model on one task; `records` are per-item details (e.g. generations)."""

    metrics: dict[str, float]
    primary: str
    higher_is_better: bool
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunContext:
    """Where and how a backend runs; `generator`, when set (`--generation-server`), generates the
    evaluated model's text instead of the loaded model: a `ServerGenerator`
    (adaptkit.evals.server_generation), called like `adaptkit.evals.generation.generate` without
    model and tokenizer, whose `has_chat_template` mirrors the evaluated model's tokenizer."""

    device: str = "cpu"
    seed: int = 0
    model_name: str = "model"
    generator: "Callable[..., list[str]] | None" = None


class EvalBackend(ABC):
    """Base class of eval backends: `prepare` once, `run` per model.

    A backend that only needs logits of whole token batches (e.g. perplexity) may set
    `layer_by_layer = True`: with `evaluate --layer-by-layer` its `run` then receives an
    `adaptkit.streamed_model.LayerwiseModel`, to be used through `for_each_logits`.
    """

    name = "backend"
    layer_by_layer = False

    def __init__(self, params: Any):
        self.params = params

    @abstractmethod

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        """Implemented by each backend."""

    @abstractmethod

    def run(
        self,
        model: "PreTrainedModel",
        tokenizer: "PreTrainedTokenizerBase",
        tasks: list[EvalTask],
        ctx: RunContext,
    ) -> dict[str, TaskOutput]:
        """Implemented by each backend."""

    def check_model(self, config: Any) -> None:
        """Refuse settings a model cannot take, from its transformers config, before its weights load (default: none)."""


def split_task_arg(text: str, flag: str = "--task") -> tuple[str, str]:
    """'BACKEND:SPEC' -> (backend, spec)."""
    backend, sep, spec = text.partition(":")
    if not sep or not backend.strip() or not spec.strip():
        raise InputError(f"{flag}: expected BACKEND:SPEC (e.g. ppl:eng=en.txt, lm-eval:xnli_sw, mt:flores.jsonl), got '{text}'")
    return backend.strip(), spec.strip()


def named_file(spec: str) -> tuple[str | None, str]:
    """'NAME=FILE' -> (NAME, FILE); 'FILE' -> (None, FILE)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name.strip(), path.strip()
    return None, spec
