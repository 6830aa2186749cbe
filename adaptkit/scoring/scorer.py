"""The base class of scorer plugins, and how they are declared (`scorer_spec`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Optional

from adaptkit.errors import InputError
from adaptkit.io.mask_files import GRANULARITIES
from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.statistics import InputStatistics, collect_input_statistics
from adaptkit.specs import NoParams, Params, ScorerSpec, class_spec

if TYPE_CHECKING:
    import torch

    from adaptkit.calibration import CalibrationSet


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

    A scorer declares its name, summary, reference, parameter model (`Params`) and whether it
    reads calibration data as class attributes; `scorer_spec(Class)` turns them into its
    registry spec.

    A scorer that needs only activation statistics of each module's inputs declares them in
    `input_statistics` ("features": sum of x_j^2 per input feature; "gram": also X^T X) and
    leaves `prepare` alone: adaptkit then collects them, over the whole model or one decoder
    layer at a time (`adaptkit score --layer-by-layer`), and hands them to `use_statistics`
    before asking for that layer's `element_scores`. A scorer that overrides `prepare` (e.g.
    fisher, which needs gradients through the whole model) scores whole models only.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = NoParams
    needs_calibration: ClassVar[bool] = True
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

    def unit_scores(self, sp: ScoredParam, granularity: str) -> Optional["torch.Tensor"]:
        """Scores of the columns, rows or elements of a 2-D parameter when they are not the sums of its
        element scores (a reference implementation's own rule per granularity); None: the sums."""
        return None

    def leaves_unscored(self, sp: ScoredParam, granularities: tuple[str, ...]) -> bool:
        """True for a parameter this scorer never ranks (it then trains in full); by default none."""
        return False


def reduce_scores(element: "torch.Tensor", granularities: Iterable[str], units: Optional[Callable[[str], Optional["torch.Tensor"]]] = None) -> dict[str, "torch.Tensor"]:
    """Column (sum over rows), row (sum over columns) and/or element scores of a 2-D parameter; element only otherwise.
    `units(granularity)`, when it returns a tensor, replaces the sums for that granularity."""
    if element.ndim != 2:
        return {"element": element.detach().float().cpu().contiguous()}
    out = {}
    for granularity in granularities:
        own = units(granularity) if units is not None and granularity in GRANULARITIES else None
        if own is not None:
            out[granularity] = own
        elif granularity == "column":
            out["column"] = element.sum(0)
        elif granularity == "row":
            out["row"] = element.sum(1)
        elif granularity == "element":
            out["element"] = element
        else:
            raise InputError(f"--granularity: unknown granularity '{granularity}' (choose from {', '.join(GRANULARITIES)})")
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def scorer_spec(scorer: type[Scorer], extras: tuple[str, ...] = ()) -> ScorerSpec:
    """The registry spec of a scorer class (its factory is the class itself, imported lazily)."""
    return class_spec(ScorerSpec, scorer, extras=extras, needs_calibration=scorer.needs_calibration)
