"""Gradient-Mask Tuning (GMT): keep only the largest-magnitude entries of each accumulated gradient.

Li et al., "Gradient-Mask Tuning Elevates the Upper Limits of LLM Performance", AAAI 2025
(arXiv 2406.15330). GMT accumulates the gradient over an interval of N mini-batches,
Gamma = 1/N sum_n grad L(theta, B_n), zeroes the entries of Gamma with small magnitude
within each parameter tensor, and updates with what is left.

The ratio has one meaning: `keep_ratio` is the fraction of each tensor's gradient entries that
is KEPT (the largest |g|): k = floor(keep_ratio * numel), and every entry with |g| at or above the
k-th largest |g| survives (ties at the threshold survive too). This is the SSU repository's
`--gmt_mask_ratio` (github.com/gucci-j/ssu, training/src/utils/gmt_trainer.py: "ratio of gradients
to keep"), so a reference sweep value is passed unchanged. (`mask_ratio` is refused: adaptkit once
used it for the fraction dropped.)

Once per optimizer step (`every_micro_batch=false`, the default, the paper's definition):
1. the engine accumulates the gradient of the whole optimizer batch (all micro-batches and,
   in multi-process runs, all processes: the all-reduced mean);
2. GMT masks it, per parameter tensor (under FSDP: the threshold of the whole tensor, not of a shard);
3. the engine clips the masked gradient (the clipping norm is that of what is applied), then
   the optimizer steps. The masked gradient does not depend on how the batch is split.

`every_micro_batch=true` reproduces the SSU repository's GMTTrainer: after every micro-batch's
backward the running accumulated gradient (the sum so far) is masked in place, so an entry dropped
after micro-batch 1 can come back with micro-batch 2's gradient, and the last mask acts on the
whole batch's sum; the result depends on the micro-batch size (the reference: 4 of 8). The
reference then steps the optimizer inside its training step, before the HF Trainer's clipping, so
its updates are never clipped: the `ssu-paper/gmt` preset sets both (`max_grad_norm: null`). It is
single-process only (the reference runs one process; with several, the running sum before the last
micro-batch is each process's own, or not in the gradients at all under FSDP): a multi-process run refuses it.

As in the paper, masking acts on the gradient: with AdamW, an entry masked at a step is not
moved by that step's gradient, but momentum from earlier steps and weight decay still apply.
Default keep ratio 0.5, as in the SSU repository's GMT baseline. As in that baseline
(`--gmt_skip_embeddings_and_head`), the gradients of the token embeddings and the LM head are not
masked (they train in full); `skip_embeddings_and_head=false` masks them like every other tensor.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from adaptkit.engine.plan import MethodContext, TrainingCallback, TrainingMethod, TrainingPlan
from adaptkit.layers import embedding_parameter_ids
from adaptkit.specs import Params, method_spec


class GradientMaskParams(Params):
    keep_ratio: float = Field(0.5, gt=0, le=1, description="Fraction of each tensor's gradient entries KEPT (the largest |g|) every step; the SSU code's gmt_mask_ratio.")
    every_micro_batch: bool = Field(False, description="Mask the running accumulated gradient after every micro-batch, as the SSU repository's GMTTrainer (false: once per step, the paper).")
    skip_embeddings_and_head: bool = Field(True, description="Leave the gradients of the embeddings and LM head unmasked, as the SSU repository's GMT run does (false: mask them too).")

    @model_validator(mode="before")
    @classmethod
    def _no_mask_ratio(cls, values):
        if isinstance(values, dict) and "mask_ratio" in values:
            raise ValueError("mask_ratio is ambiguous; give keep_ratio, the fraction of each gradient tensor KEPT (the SSU code's gmt_mask_ratio; 1 - the fraction dropped)")
        return values


def keep_largest(grad, ratio: float) -> None:
    """Zero, in place, the entries of `grad` below its k-th largest magnitude, k = floor(ratio * numel) (k = 0: all).

    Under FSDP `grad` is a sharded DTensor: the threshold is the order statistic of the whole
    tensor (its shards all-gathered, one tensor at a time), then each process masks its shard.
    """
    from adaptkit.engine.select import kth_largest
    from adaptkit.engine.shards import full_tensor, local_grad_tensor

    k = int(grad.numel() * ratio)
    local = local_grad_tensor(grad)
    if not k:
        local.zero_()
        return
    threshold = kth_largest([full_tensor(grad.detach()).abs()], k)
    local.masked_fill_(local.detach().abs() < threshold, 0)


class GradientMask(TrainingCallback):
    """Masks the accumulated gradients at each optimizer step (before the engine's clipping), or after every micro-batch."""

    shard_aware = True  # the threshold of a sharded gradient is computed over the whole tensor

    def __init__(self, names: list[str], ratio: float, every_micro_batch: bool = False):
        self.names = set(names)
        self.ratio = ratio
        self.every_micro_batch = every_micro_batch

    def _mask(self, model) -> None:
        for name, param in model.named_parameters():
            if name in self.names and param.grad is not None:
                keep_largest(param.grad, self.ratio)

    def after_backward(self, model, step: int, micro: int) -> None:
        if self.every_micro_batch:
            self._mask(model)

    def transform_gradients(self, model, step: int) -> None:
        if not self.every_micro_batch:
            self._mask(model)


class GradientMaskTuning(TrainingMethod):
    name = "gmt"
    summary = "Gradient-Mask Tuning: keep only the largest-magnitude accumulated gradient entries at each update"
    reference = "Li et al., GMT, AAAI 2025, arXiv 2406.15330"
    Params = GradientMaskParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        import torch

        from adaptkit.errors import InputError

        p = self.params
        if p.every_micro_batch and torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise InputError("--set every_micro_batch=true: single-process runs only (the SSU reference masks one process's running gradient sum)")
        skip = embedding_parameter_ids(model) if p.skip_embeddings_and_head else set()
        names = [name for name, param in model.named_parameters() if id(param) not in skip]
        when = "after every micro-batch" if p.every_micro_batch else "every step"
        plan = TrainingPlan.full(model, summary=f"gradient-mask tuning: the largest {p.keep_ratio:.0%} of each gradient tensor kept {when}")
        plan.callbacks.append(GradientMask(names, p.keep_ratio, p.every_micro_batch))
        return plan


SPEC = method_spec(GradientMaskTuning)
