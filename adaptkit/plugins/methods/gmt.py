"""Gradient-Mask Tuning (GMT): drop the smallest-magnitude entries of each accumulated gradient.

Li et al., "Gradient-Mask Tuning Elevates the Upper Limits of LLM Performance", AAAI 2025
(arXiv 2406.15330). GMT accumulates the gradient over an interval of N mini-batches,
Gamma = 1/N sum_n grad L(theta, B_n), zeroes the entries of Gamma whose magnitude is in the
lowest `mask_ratio` fraction of its parameter tensor, and updates with what is left.

Definition used here (once per optimizer step, in this order):
1. the engine accumulates the gradient of the whole optimizer batch (all micro-batches and,
   in multi-process runs, all processes: the all-reduced mean);
2. GMT masks it, per parameter tensor: entries with |g| at or below the k-th smallest |g|,
   k = floor(mask_ratio * numel), are set to zero;
3. the engine clips the masked gradient (the clipping norm is that of what is applied),
   then the optimizer steps.
The accumulation interval of the paper is therefore the engine's gradient accumulation: the
paper's N = 4 micro-batches of 8 is `--batch-size 32` (with `--micro-batch-size 8`, or any
other split: the masked gradient does not depend on how the batch is split). A known peer
implementation masks every micro-batch's gradient separately (so the result depends on the
micro-batch size and is not the masked mean gradient) and steps the optimizer itself,
bypassing clipping; neither happens here.

As in the paper, masking acts on the gradient: with AdamW, an entry masked at a step is not
moved by that step's gradient, but momentum from earlier steps and weight decay still apply.
Default mask ratio 0.5, as in the SSU repository's GMT baseline; the paper reports GMT to be
insensitive to the ratio. As in that baseline (`--gmt_skip_embeddings_and_head`), the gradients of
the token embeddings and the LM head are not masked (they train in full); `skip_embeddings_and_head=false`
masks them like every other tensor.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingCallback, TrainingMethod, TrainingPlan
from adaptkit.layers import embedding_parameter_ids
from adaptkit.specs import Params, method_spec


class GradientMaskParams(Params):
    mask_ratio: float = Field(0.5, gt=0, lt=1, description="Fraction of each tensor's gradient entries (the smallest |g|) set to zero every step.")
    skip_embeddings_and_head: bool = Field(True, description="Leave the gradients of the embeddings and LM head unmasked, as the SSU repository's GMT run does (false: mask them too).")


def mask_smallest(grad, ratio: float) -> None:
    """Zero, in place, the entries of `grad` whose magnitude is at or below its k-th smallest, k = floor(ratio * numel)."""
    from adaptkit.engine.select import kth_smallest

    k = int(grad.numel() * ratio)
    if k:
        magnitude = grad.detach().abs()
        grad.masked_fill_(magnitude <= kth_smallest([magnitude], k), 0)


class GradientMask(TrainingCallback):
    """Masks the accumulated gradients at each optimizer step (before the engine's clipping)."""

    def __init__(self, names: list[str], ratio: float):
        self.names = set(names)
        self.ratio = ratio

    def transform_gradients(self, model, step: int) -> None:
        for name, param in model.named_parameters():
            if name in self.names and param.grad is not None:
                mask_smallest(param.grad, self.ratio)


class GradientMaskTuning(TrainingMethod):
    name = "gmt"
    summary = "Gradient-Mask Tuning: zero the smallest-magnitude accumulated gradient entries before each update"
    reference = "Li et al., GMT, AAAI 2025, arXiv 2406.15330"
    Params = GradientMaskParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        skip = embedding_parameter_ids(model) if self.params.skip_embeddings_and_head else set()
        names = [name for name, param in model.named_parameters() if id(param) not in skip]
        plan = TrainingPlan.full(model, summary=f"gradient-mask tuning: the smallest {self.params.mask_ratio:.0%} of each gradient tensor masked every step")
        plan.callbacks.append(GradientMask(names, self.params.mask_ratio))
        return plan


SPEC = method_spec(GradientMaskTuning)
