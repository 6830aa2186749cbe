"""The calibration forward pass with hooks, and the float32 input statistics scorers use.

How a parameter relates to calibration inputs (for activation-based scorers) is read from
the module it belongs to, during one no-grad forward pass with hooks:
- a 2-D weight of a module whose input has `in` features (nn.Linear and alike): input
  feature j meets column j;
- an embedding weight (V, d): its input is one-hot over the vocabulary, so feature v is
  the token v and meets row v (its statistic is the token count);
- a 1-D weight whose length equals the module's input features (RMSNorm / LayerNorm
  scales): element i meets input feature i;
- any other 1-D parameter (a bias) multiplies the constant input 1.
Statistics are accumulated in float32 whatever the model dtype; modules that receive
the very same input tensor (q/k/v, gate/up) share one accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from adaptkit.errors import AdaptkitError
from adaptkit.scoring.parameters import ScoredParam

if TYPE_CHECKING:
    import torch


@dataclass
class ModuleInputs:
    """float32 statistics of one module's inputs over the whole calibration set."""

    tokens: int = 0
    sumsq: Optional["torch.Tensor"] = None  # (features,) sum over tokens of x_j^2
    gram: Optional["torch.Tensor"] = None  # (features, features) sum over tokens of x x^T
    counts: Optional["torch.Tensor"] = None  # (vocab,) token counts of an embedding's integer input
    running: Optional["torch.Tensor"] = None  # (features,) the SSU reference's sgpt "mean": (previous + this forward's mean x_j^2) / 2


class InputStatistics:
    """Forward hooks that accumulate input statistics of the modules owning scored parameters."""

    def __init__(self, scored: list[ScoredParam], gram: bool = False):
        self.gram = gram
        self.modules = {sp.module_name: sp.module for sp in scored}
        self.stats: dict[str, ModuleInputs] = {name: ModuleInputs() for name in self.modules}
        self.alias: dict[str, str] = {}  # module -> module that received the same input tensor first
        self._last: tuple[Any, str] | None = None  # (input tensor, module that accumulated it)
        self._first_batch = True
        self._handles: list[Any] = []

    def __enter__(self) -> "InputStatistics":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._last = None

    def end_batch(self) -> None:
        self._first_batch = False
        self._last = None

    def get(self, module_name: str) -> ModuleInputs:
        return self.stats[self.alias.get(module_name, module_name)]

    def _hook(self, name: str):
        import torch

        def hook(module, args, kwargs, output):
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            if x is None:
                return
            if self._last is not None and x is self._last[0]:
                first = self._last[1]
                if self._first_batch and self._needs_gram(name) <= self._needs_gram(first):
                    self.alias[name] = first
                    return
                if name in self.alias:
                    return
            elif name in self.alias:
                raise AdaptkitError(f"scoring: module '{name}' no longer shares its input with '{self.alias[name]}'")
            self._accumulate(name, module, x.detach())
            self._last = (x, name)

        return hook

    def _needs_gram(self, name: str) -> bool:
        weight = getattr(self.modules[name], "weight", None)
        return self.gram and weight is not None and weight.ndim == 2

    def _accumulate(self, name: str, module: Any, x: "torch.Tensor") -> None:
        import torch

        stats = self.stats[name]
        if not x.is_floating_point():
            vocab = module.weight.shape[0] if hasattr(module, "weight") else int(x.max()) + 1
            counts = torch.bincount(x.reshape(-1), minlength=vocab).float()
            stats.counts = counts if stats.counts is None else stats.counts + counts
            stats.tokens += x.numel()
            return
        flat = x.reshape(-1, x.shape[-1]).float()
        sumsq = flat.square().sum(0)
        stats.sumsq = sumsq if stats.sumsq is None else stats.sumsq + sumsq
        mean = sumsq / max(flat.shape[0], 1)
        stats.running = mean if stats.running is None else (stats.running + mean) / 2
        stats.tokens += flat.shape[0]
        if self._needs_gram(name):
            gram = flat.T @ flat
            stats.gram = gram if stats.gram is None else stats.gram + gram


def forward_target(model: "torch.nn.Module", through_head: bool) -> "torch.nn.Module":
    """The module to run for statistics: the decoder without the LM head unless the head is scored."""
    from adaptkit.layers import decoder_of

    return model if through_head else decoder_of(model)


def scores_through_head(scored: list[ScoredParam]) -> bool:
    """Whether the LM head is scored (then statistics need a forward through it)."""
    import torch

    return any(sp.embedding and not isinstance(sp.module, torch.nn.Embedding) for sp in scored)


def calibration_batches(blocks: "torch.Tensor", batch_size: int) -> list["torch.Tensor"]:
    return list(blocks.split(batch_size))


def collect_input_statistics(
    model: "torch.nn.Module",
    scored: list[ScoredParam],
    blocks: "torch.Tensor",
    batch_size: int,
    device: "torch.device",
    gram: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> InputStatistics:
    """One no-grad forward pass over every calibration block, with hooks on the scored modules."""
    import torch

    target = forward_target(model, scores_through_head(scored))
    collector = InputStatistics(scored, gram)
    with torch.no_grad(), collector:
        for batch in calibration_batches(blocks, batch_size):
            target(input_ids=batch.to(device), use_cache=False)
            collector.end_batch()
            if progress:
                progress(batch.shape[0])
    return collector


def input_relation(sp: ScoredParam, stats: ModuleInputs, scorer: str) -> str:
    """How a parameter meets its module's input: 'columns', 'rows' (embedding), 'elements' or 'constant'."""
    shape = tuple(sp.param.shape)
    if stats.counts is not None:
        if sp.is_matrix and shape[0] == stats.counts.numel():
            return "rows"
    elif stats.sumsq is not None:
        features = stats.sumsq.numel()
        if sp.is_matrix and shape[1] == features:
            return "columns"
        if sp.param.ndim == 1:
            is_bias = sp.param is getattr(sp.module, "bias", None)
            return "elements" if shape[0] == features and not is_bias else "constant"
    elif stats.tokens == 0 and sp.param.ndim == 1:
        return "constant"
    raise AdaptkitError(
        f"scorer {scorer}: cannot relate parameter '{sp.name}' of shape {shape} to the inputs of its module "
        f"({type(sp.module).__name__}); this scorer supports linear, embedding, norm and bias parameters"
    )
