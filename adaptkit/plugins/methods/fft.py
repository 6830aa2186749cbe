"""Full fine-tuning (FFT): every parameter trains. The reference baseline of every comparison."""

from __future__ import annotations

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.specs import Params, method_spec


class FullFineTuningParams(Params):
    """Full fine-tuning has no parameters of its own (optimizer settings are the engine's)."""


class FullFineTuning(TrainingMethod):
    name = "fft"
    summary = "Full fine-tuning: every parameter trains"
    reference = "Continual pre-training baseline of the SSU paper, arXiv 2512.04844 (github.com/gucci-j/ssu)"
    Params = FullFineTuningParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        return TrainingPlan.full(model, summary="full fine-tuning: all parameters")


SPEC = method_spec(FullFineTuning)
