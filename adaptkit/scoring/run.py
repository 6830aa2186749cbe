"""Scoring a model: `compute_scores` over the whole model, or one decoder layer at a time.

The scorer is looked up in the registry and its parameters validated; the whole-model path
lets the scorer `prepare` (by default: collect its declared input statistics in one hooked
forward pass) and then scores every parameter; the layer-by-layer path
(`adaptkit score --layer-by-layer`) collects each layer's statistics while only that layer
is loaded and scores it before it is released.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from adaptkit.errors import AdaptkitError, InputError
from adaptkit.io.mask_files import GRANULARITIES
from adaptkit.scoring.parameters import ScoredParam, scored_parameters
from adaptkit.scoring.score_set import ScoreSet
from adaptkit.scoring.scorer import Scorer, ScoringRun, reduce_scores
from adaptkit.scoring.statistics import InputStatistics, calibration_batches, scores_through_head

if TYPE_CHECKING:
    import torch

    from adaptkit.calibration import CalibrationSet
    from adaptkit.streamed_model import LayerwiseModel
    from adaptkit.specs import Params


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
        scores = reduce_scores(element, self.granularities, lambda granularity: self.implementation.unit_scores(sp, granularity))
        if not all(bool(torch.isfinite(t).all()) for t in (element, *scores.values())):
            raise AdaptkitError(f"scorer {self.scorer}: non-finite scores for '{sp.name}' (the model or calibration data gives NaN/inf activations)")
        return scores

    def ranked(self, scored: list[ScoredParam]) -> list[ScoredParam]:
        """The parameters the scorer ranks (the others train in full)."""
        return [sp for sp in scored if not self.implementation.leaves_unscored(sp, self.granularities)]

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
        if granularity not in GRANULARITIES:
            raise InputError(f"--granularity: unknown granularity '{granularity}' (choose from {', '.join(GRANULARITIES)})")
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

    `model` may be an `adaptkit.streamed_model.LayerwiseModel`: it is then scored one decoder
    layer at a time, with the same scores (up to float rounding): each layer's input
    statistics are collected while only that layer is loaded, on the hidden states the
    layers before it produced, and its parameters are scored before it is released.
    `progress` is called with the number of calibration blocks just processed, or, layer by
    layer, with 1 per finished stage (each layer, then the parts outside the layers).
    """
    from adaptkit.streamed_model import LayerwiseModel

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
        scored = request.ranked(scored)
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
    scored = scored_parameters(model, include_embeddings)  # names and shapes (weights not loaded yet)
    names_by_stage: dict[str, set[str]] = {}
    for sp in scored:
        names_by_stage.setdefault(stream.stage_of(sp.name), set()).add(sp.name)
    loaded: dict[str, list[ScoredParam]] = {}  # per stage, found once when it is loaded (parameter objects change per stage)
    collectors: dict[str, InputStatistics] = {}
    scores: dict[str, dict[str, "torch.Tensor"]] = {}

    def stage_params(stage: str) -> list[ScoredParam]:
        if stage not in loaded:
            wanted = names_by_stage.get(stage, set())
            loaded[stage] = scored_parameters(model, include_embeddings, only=wanted) if wanted else []
        return loaded[stage]

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
        for sp in request.ranked(stage_params(stage)):
            scores[sp.name] = request.score(sp)
        del loaded[stage]
        if progress:
            progress(1)

    if request.implementation.input_statistics is None:
        stream.visit(after)
    else:
        blocks = calibration_batches(request.run.calibration.blocks, request.run.batch_size)
        stream.run(blocks, through_head=scores_through_head(scored), watch=watch, after=after)
    return request.score_set(model, [sp for sp in scored if sp.name in scores], scores, layer_by_layer="true")
