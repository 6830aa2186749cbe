"""Importance scoring: which parameters are scored, the shared calibration hooks, and score sets.

A scorer (plugin kind "scorer", see adaptkit/plugins/scorers/) gives every entry of a
scored parameter an importance s_ij >= 0. Scores are stored compactly, per unit of the
mask granularity the SSU paper uses: for a 2-D weight (out, in) the column score
S_j = sum_i s_ij (length `in`) and the row score R_i = sum_j s_ij (length `out`), and
element scores only on request; 1-D parameters (norm weights, biases) are always
scored element-wise.

Which parameters are scored is found structurally, not from a list of names: every
parameter of the model except those of embedding modules (`nn.Embedding`) and of the
output embedding (`model.get_output_embeddings()`, the LM head), which the SSU paper
always trains; `include_embeddings=True` scores them too. For Llama, OLMo-2, Qwen2 and
other transformers decoders this is every attention and MLP projection of the blocks
(2-D), their norms and biases (1-D), and the final norm.

How a parameter relates to calibration inputs (for activation-based scorers) is read
from the module it belongs to, during one no-grad forward pass with hooks:
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

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Optional

from adaptkit.errors import AdaptkitError, InputError

if TYPE_CHECKING:
    import torch

    from adaptkit.calibration import CalibrationSet
    from adaptkit.layerwise import LayerwiseModel
    from adaptkit.specs import Params

SCORES_FILE = "scores.safetensors"
SCORE_GRANULARITIES = ("column", "row", "element")
KEY_SEPARATOR = "@"  # tensor key in scores.safetensors: "<parameter name>@<granularity>"


# --- Which parameters ------------------------------------------------------------------------


@dataclass
class ScoredParam:
    """One scored parameter and the module it belongs to."""

    name: str
    param: "torch.nn.Parameter"
    module_name: str
    module: "torch.nn.Module"
    embedding: bool = False

    @property
    def is_matrix(self) -> bool:
        return self.param.ndim == 2

    @property
    def group(self) -> str:
        return module_group(self.name)


def module_group(name: str) -> str:
    """The module type of a parameter, from its attribute names: 'q_proj', 'q_proj.bias', 'input_layernorm', 'lm_head'."""
    parts = name.split(".")
    if len(parts) == 1:
        return parts[0]
    return parts[-2] if parts[-1] == "weight" else f"{parts[-2]}.{parts[-1]}"


def scored_parameters(model: "torch.nn.Module", include_embeddings: bool = False) -> list[ScoredParam]:
    """The parameters a scorer scores (see the module docstring), in model order."""
    import torch

    modules = dict(model.named_modules())
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    scored = []
    for name, param in model.named_parameters():
        module_name = name.rpartition(".")[0]
        module = modules[module_name]
        embedding = isinstance(module, torch.nn.Embedding) or (output is not None and module is output)
        if embedding and not include_embeddings:
            continue
        scored.append(ScoredParam(name, param, module_name, module, embedding))
    if not scored:
        raise InputError("--model: the model has no parameters to score besides embeddings (pass --include-embeddings)")
    return scored


# --- Calibration forward pass with hooks ---------------------------------------------------------


@dataclass
class ModuleInputs:
    """float32 statistics of one module's inputs over the whole calibration set."""

    tokens: int = 0
    sumsq: Optional["torch.Tensor"] = None  # (features,) sum over tokens of x_j^2
    gram: Optional["torch.Tensor"] = None  # (features, features) sum over tokens of x x^T
    counts: Optional["torch.Tensor"] = None  # (vocab,) token counts of an embedding's integer input


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
        stats.tokens += flat.shape[0]
        if self._needs_gram(name):
            gram = flat.T @ flat
            stats.gram = gram if stats.gram is None else stats.gram + gram


def forward_target(model: "torch.nn.Module", through_head: bool) -> "torch.nn.Module":
    """The module to run for statistics: the decoder without the LM head unless the head is scored."""
    from adaptkit.layerwise import decoder_of

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
            return "elements" if shape[0] == features else "constant"
    elif stats.tokens == 0 and sp.param.ndim == 1:
        return "constant"
    raise AdaptkitError(
        f"scorer {scorer}: cannot relate parameter '{sp.name}' of shape {shape} to the inputs of its module "
        f"({type(sp.module).__name__}); this scorer supports linear, embedding, norm and bias parameters"
    )


# --- Scorers -------------------------------------------------------------------------------------


@dataclass
class ScoringRun:
    """What a scorer gets besides the model: the calibration blocks and run settings."""

    calibration: Optional["CalibrationSet"]
    batch_size: int = 1
    seed: int = 42
    device: Any = "cpu"
    progress: Optional[Callable[[int], None]] = None  # called with the number of blocks just processed


class Scorer(ABC):
    """Base class of scorers: `prepare` consumes the calibration data, `element_scores` scores one parameter.

    A scorer that needs only activation statistics of each module's inputs declares them in
    `input_statistics` ("features": sum of x_j^2 per input feature; "gram": also X^T X) and
    leaves `prepare` alone: adaptkit then collects them, over the whole model or one decoder
    layer at a time (`adaptkit score --layer-by-layer`), and hands them to `use_statistics`
    before asking for that layer's `element_scores`. A scorer that overrides `prepare` (e.g.
    fisher, which needs gradients through the whole model) scores whole models only.
    """

    input_statistics: ClassVar[Optional[str]] = None

    def __init__(self, params: "Params"):
        self.params = params
        self.run: Optional[ScoringRun] = None  # set by adaptkit before `prepare`
        self.stats: Optional[InputStatistics] = None

    def prepare(self, model: "torch.nn.Module", scored: list[ScoredParam], run: ScoringRun) -> None:
        """Collect what the scores need over the whole model: by default the declared input statistics."""
        if self.input_statistics is not None:
            stats = collect_input_statistics(model, scored, run.calibration.blocks, run.batch_size, run.device, gram=self.input_statistics == "gram", progress=run.progress)
            self.use_statistics(stats)

    def use_statistics(self, stats: InputStatistics) -> None:
        """Statistics of the modules about to be scored (the whole model, or one layer)."""
        self.stats = stats

    @classmethod
    def scores_layer_by_layer(cls) -> bool:
        return cls.prepare is Scorer.prepare

    @abstractmethod
    def element_scores(self, sp: ScoredParam) -> "torch.Tensor":
        """float32 importance of every entry of sp.param (same shape), larger = more important to the source."""


def reduce_scores(element: "torch.Tensor", granularities: Iterable[str]) -> dict[str, "torch.Tensor"]:
    """Column (sum over rows), row (sum over columns) and/or element scores of a 2-D parameter; element only otherwise."""
    if element.ndim != 2:
        return {"element": element.detach().float().cpu().contiguous()}
    out = {}
    for granularity in granularities:
        if granularity == "column":
            out["column"] = element.sum(0)
        elif granularity == "row":
            out["row"] = element.sum(1)
        elif granularity == "element":
            out["element"] = element
        else:
            raise InputError(f"--granularity: unknown granularity '{granularity}' (choose from {', '.join(SCORE_GRANULARITIES)})")
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


@dataclass
class ScoreSet:
    """Per-parameter scores by granularity, with metadata (scorer, model fingerprint, calibration hash, shapes)."""

    scores: dict[str, dict[str, "torch.Tensor"]]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, list[int]]:
        return json.loads(self.metadata.get("shapes", "{}"))

    def save(self, directory: Path) -> Path:
        from adaptkit.io.tensors import save_tensors

        path = Path(directory) / SCORES_FILE
        tensors = {f"{name}{KEY_SEPARATOR}{g}": t for name, by_g in self.scores.items() for g, t in by_g.items()}
        save_tensors(tensors, path, self.metadata)
        return path


def load_scores(path: Path, flag: str = "--scores") -> ScoreSet:
    """Load scores.safetensors from a directory (or the file itself)."""
    from adaptkit.io.tensors import load_tensors, read_metadata

    path = Path(path)
    file = path / SCORES_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{flag}: '{path}' holds no {SCORES_FILE} (make one with `adaptkit score`)")
    metadata = read_metadata(file, flag)
    if "scorer" not in metadata or "shapes" not in metadata:
        raise InputError(f"{flag}: '{file}' is not a score file of `adaptkit score` (no scorer/shapes metadata)")
    scores: dict[str, dict[str, Any]] = {}
    for key, tensor in load_tensors(file, flag).items():
        name, _, granularity = key.rpartition(KEY_SEPARATOR)
        if not name or granularity not in SCORE_GRANULARITIES:
            raise InputError(f"{flag}: '{file}' has an unexpected tensor '{key}'")
        scores.setdefault(name, {})[granularity] = tensor
    return ScoreSet(scores, metadata)


def check_fingerprint(metadata: dict[str, str], model: "torch.nn.Module", flag: str) -> None:
    """Scores and masks only fit the architecture (parameter names and shapes) they were made for."""
    from adaptkit.io.models import model_fingerprint

    theirs = metadata.get("model_fingerprint")
    ours = model_fingerprint(model)
    if theirs and theirs != ours:
        raise InputError(f"{flag}: made for a different model (fingerprint {theirs}, this model {ours}); score this model with `adaptkit score`")


@dataclass
class _ScoreRequest:
    """A validated scoring request (shared by the whole-model and the layer-by-layer paths)."""

    scorer: str
    implementation: Scorer
    params: "Params"
    include_embeddings: bool
    granularities: tuple[str, ...]
    run: ScoringRun

    def score(self, sp: ScoredParam) -> dict[str, "torch.Tensor"]:
        import torch

        element = self.implementation.element_scores(sp)
        if not bool(torch.isfinite(element).all()):
            raise AdaptkitError(f"scorer {self.scorer}: non-finite scores for '{sp.name}' (the model or calibration data gives NaN/inf activations)")
        return reduce_scores(element, self.granularities)

    def score_set(self, model: "torch.nn.Module", scored: list[ScoredParam], scores: dict[str, dict[str, "torch.Tensor"]], **extra: str) -> ScoreSet:
        from adaptkit.io.models import model_fingerprint

        calibration = self.run.calibration  # None when the scorer uses no calibration data
        metadata = {
            "scorer": self.scorer,
            "scorer_params": json.dumps(self.params.model_dump(), sort_keys=True),
            "model_fingerprint": model_fingerprint(model),
            "calibration_hash": calibration.hash if calibration is not None else "none",
            "calibration_tokens": str(calibration.num_tokens) if calibration is not None else "0",
            "include_embeddings": str(self.include_embeddings).lower(),
            "granularities": ",".join(self.granularities),
            "batch_size": str(self.run.batch_size),
            "seed": str(self.run.seed),
            "shapes": json.dumps({sp.name: list(sp.param.shape) for sp in scored}),
            "model_parameters": str(sum(p.numel() for p in model.parameters())),
            **extra,
        }
        return ScoreSet({sp.name: scores[sp.name] for sp in scored}, metadata)


def _request(model, scorer, calibration, scorer_params, include_embeddings, granularities, batch_size, seed, device, tokenizer, progress) -> _ScoreRequest:
    import torch

    from adaptkit.calibration import check_calibration_fits
    from adaptkit.registry import get_spec

    spec = get_spec("scorer", scorer, "--scorer")
    params = spec.validate_params(scorer_params, "--set")
    granularities = tuple(dict.fromkeys(granularities))
    for granularity in granularities:
        if granularity not in SCORE_GRANULARITIES:
            raise InputError(f"--granularity: unknown granularity '{granularity}' (choose from {', '.join(SCORE_GRANULARITIES)})")
    if batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1 (got {batch_size})")
    if spec.needs_calibration:
        if calibration is None:
            raise InputError(f"--calib: scorer '{scorer}' scores on calibration data; give --calib DIR (from `adaptkit calibrate`)")
        check_calibration_fits(calibration, model, tokenizer)
    used = calibration if spec.needs_calibration else None
    run = ScoringRun(used, batch_size, seed, torch.device(device), progress)
    implementation = spec.load()(params)
    implementation.run = run
    return _ScoreRequest(scorer, implementation, params, include_embeddings, granularities, run)


def compute_scores(
    model: "torch.nn.Module | LayerwiseModel",
    scorer: str,
    calibration: Optional["CalibrationSet"] = None,
    scorer_params: Optional[dict[str, Any]] = None,
    include_embeddings: bool = False,
    granularities: Iterable[str] = ("column", "row"),
    batch_size: int = 1,
    seed: int = 42,
    device: Any = None,
    tokenizer: Any = None,
    progress: Optional[Callable[[int], None]] = None,
) -> ScoreSet:
    """Score `model` with the registered scorer `scorer` (see `adaptkit plugins --kind scorer`).

    `model` may be an `adaptkit.layerwise.LayerwiseModel`: it is then scored one decoder
    layer at a time, with the same scores (up to float rounding): each layer's input
    statistics are collected while only that layer is loaded, on the hidden states the
    layers before it produced, and its parameters are scored before it is released.
    `progress` is called with the number of calibration blocks just processed, or, layer by
    layer, with 1 per finished stage (each layer, then the parts outside the layers).
    """
    from adaptkit.layerwise import LayerwiseModel

    if isinstance(model, LayerwiseModel):
        require_layer_by_layer(scorer)
        request = _request(model.model, scorer, calibration, scorer_params, include_embeddings, granularities, batch_size, seed, model.device, tokenizer, None)
        return _scores_layer_by_layer(model, request, progress)
    device = device if device is not None else next(model.parameters()).device
    request = _request(model, scorer, calibration, scorer_params, include_embeddings, granularities, batch_size, seed, device, tokenizer, progress)
    scored = scored_parameters(model, include_embeddings)
    was_training = model.training
    model.eval()
    try:
        request.implementation.prepare(model, scored, request.run)
        scores = {sp.name: request.score(sp) for sp in scored}
    finally:
        model.train(was_training)
    return request.score_set(model, scored, scores)


def require_layer_by_layer(scorer: str) -> None:
    """Refuse scorers that need the whole model at once (they override `Scorer.prepare`, e.g. fisher's gradients)."""
    from adaptkit.registry import get_spec

    if not get_spec("scorer", scorer, "--scorer").load().scores_layer_by_layer():
        raise InputError(f"--layer-by-layer: scorer '{scorer}' needs the whole model at once (e.g. gradients); score without --layer-by-layer")


def _scores_layer_by_layer(stream: "LayerwiseModel", request: _ScoreRequest, progress: Optional[Callable[[int], None]]) -> ScoreSet:
    """Each stage (decoder layer, then the outside parts) is scored while its weights are loaded."""
    model = stream.model
    include_embeddings = request.include_embeddings
    names_by_stage: dict[str, list[str]] = {}
    for sp in scored_parameters(model, include_embeddings):
        names_by_stage.setdefault(stream.stage_of(sp.name), []).append(sp.name)
    scores: dict[str, dict[str, "torch.Tensor"]] = {}

    def stage_params(stage: str) -> list[ScoredParam]:
        """The stage's scored parameters as loaded now (parameter objects change when a stage is read)."""
        wanted = set(names_by_stage.get(stage, ()))
        return [sp for sp in scored_parameters(model, include_embeddings) if sp.name in wanted]

    collectors: dict[str, InputStatistics] = {}

    def watch(stage: str) -> Optional[InputStatistics]:
        params = stage_params(stage)
        if not params:
            return None
        collectors[stage] = InputStatistics(params, gram=request.implementation.input_statistics == "gram")
        return collectors[stage]

    def after(stage: str) -> None:
        collector = collectors.pop(stage, None)
        if collector is not None:
            request.implementation.use_statistics(collector)
        for sp in stage_params(stage):
            scores[sp.name] = request.score(sp)
        if progress:
            progress(1)

    if request.implementation.input_statistics is None:
        stream.visit(after)
    else:
        blocks = calibration_batches(request.run.calibration.blocks, request.run.batch_size)
        through_head = scores_through_head(scored_parameters(model, include_embeddings))
        stream.run(blocks, through_head=through_head, watch=watch, after=after)
    scored = scored_parameters(model, include_embeddings)
    return request.score_set(model, scored, scores, layer_by_layer="true")
