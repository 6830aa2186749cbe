"""Lottery Ticket Adaptation (LoTA): calibrate a sparse mask with a short fine-tune, then train
only the masked entries starting again from the source weights.

Panda et al., "Lottery Ticket Adaptation: Mitigating Destructive Interference in LLMs",
arXiv 2406.16797 (github.com/kiddyboots216/lottery-ticket-adaptation):

1. mask calibration: fine-tune the model on the target data for T steps (default 100) with
   the run's own optimizer settings (the engine's pilot fine-tune);
2. mask extraction: the task vector delta = theta_T - theta_0; the top (1 - sparsity) fraction
   of |delta| entries, ranked globally over every parameter considered, become trainable
   (default sparsity 0.9: 10% trainable; 0.5 is the other setting the paper studies);
3. sparse adaptation: reset every weight to theta_0 (bit for bit) and train only the mask's
   entries. The engine trains them through compact copies, so frozen entries get no update,
   no optimizer state and no weight decay (the peer implementations mask gradients with hooks,
   which lets weight decay move frozen entries).

The mask is saved as `<run>/lota/masks.safetensors` (the format of `adaptkit mask`, usable with
`--mask`); a `--resume` reuses it instead of redoing the calibration fine-tune.
As in the SSU repository's LoTA baseline (`--lota_skip_embeddings_and_head`), the token embeddings and
the LM head stay outside the ranking and train in full (`skip_embeddings_and_head=false` ranks them with
the rest). Ties at the threshold are all kept, so the trainable count can exceed the target by the number
of entries equal to the threshold (none in practice for float weights).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.layers import embedding_parameter_ids
from adaptkit.specs import Params, method_spec

MASK_DIR = "lota"


class LotteryTicketParams(Params):
    sparsity: float = Field(0.9, gt=0, lt=1, description="Fraction of entries frozen (0.9: the top 10% of |delta| train; paper also uses 0.5).")
    calibration_steps: int = Field(100, gt=0, description="Steps of the calibration fine-tune on the target data.")
    skip_embeddings_and_head: bool = Field(True, description="Train embeddings and LM head in full, outside the sparse mask, as the SSU repository's LoTA run does (false: rank them with the rest).")


def lota_masks(model, base: dict, sparsity: float, skip: set[int]) -> dict:
    """Element masks keeping the top (1 - sparsity) fraction of |theta - base| over the considered parameters."""
    import torch

    from adaptkit.engine.masks import UpdateMask
    from adaptkit.engine.select import kth_largest

    considered = {name: param for name, param in model.named_parameters() if id(param) not in skip}
    with torch.no_grad():
        deltas = {name: (param.detach().float() - base[name].to(param.device).float()).abs_() for name, param in considered.items()}
        total = sum(d.numel() for d in deltas.values())
        k = max(1, int((1.0 - sparsity) * total))
        threshold = kth_largest(list(deltas.values()), k)
        if threshold == 0.0:  # fewer than k entries moved: train exactly the ones that did
            threshold = torch.finfo(torch.float32).tiny
        return {name: UpdateMask("element", (delta >= threshold).cpu()) for name, delta in deltas.items()}


def ratio_masks(model, sparsity: float, skip: set[int]) -> dict:
    """A dry run's masks: as many entries as lota_masks keeps (the top (1 - sparsity) of the considered
    entries), spread over the parameters in proportion to their sizes, chosen without a calibration run."""
    import torch

    from adaptkit.engine.masks import UpdateMask

    considered = {name: param for name, param in model.named_parameters() if id(param) not in skip}
    total = sum(p.numel() for p in considered.values())
    k = max(1, int((1.0 - sparsity) * total))
    shares = {name: k * p.numel() // total for name, p in considered.items()}
    by_remainder = sorted(considered, key=lambda n: -(k * considered[n].numel() % total))
    for name in by_remainder[:k - sum(shares.values())]:
        shares[name] += 1
    masks = {}
    for name, param in considered.items():
        trainable = torch.zeros(param.numel(), dtype=torch.bool)
        trainable[:shares[name]] = True
        masks[name] = UpdateMask("element", trainable.reshape(tuple(param.shape)))
    return masks


class LotteryTicketAdaptation(TrainingMethod):
    name = "lota"
    summary = "Lottery Ticket Adaptation: calibration fine-tune, keep the top |delta| entries, reset, train only them"
    reference = "Panda et al., LoTA, arXiv 2406.16797"
    Params = LotteryTicketParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        import torch

        from adaptkit.engine.masks import MASKS_FILE, MaskSet, load_mask_set

        params = self.params
        skip = embedding_parameter_ids(model) if params.skip_embeddings_and_head else set()
        mask_dir = ctx.output_dir / MASK_DIR
        if ctx.dry_run:
            masks = MaskSet({**ratio_masks(model, params.sparsity, skip), **_whole(model, skip)})
        elif (mask_dir / MASKS_FILE).is_file():
            masks = load_mask_set(mask_dir, "--resume")
            masks.check_fits(model, "--resume")
            ctx.log(f"lota: reusing the calibrated mask in {mask_dir}")
        else:
            base = {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters()}
            ctx.log(f"lota: calibration fine-tune, {params.calibration_steps} steps")
            from adaptkit.engine.pilot import pilot_finetune

            pilot_finetune(model, ctx, params.calibration_steps)
            element = lota_masks(model, base, params.sparsity, skip)
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(base[name])
            del base
            masks = MaskSet({**element, **_whole(model, skip)}, {"method": "lota", "sparsity": str(params.sparsity), "calibration_steps": str(params.calibration_steps), "seed": str(ctx.seed)})
            if ctx.is_main_process:  # every process computed the same mask; one writes it
                from adaptkit.io.atomic import atomic_dir

                with atomic_dir(mask_dir, overwrite=True, flag="-o/--output") as tmp:
                    masks.save(tmp)
        plan = TrainingPlan.from_masks(model, masks)
        plan.summary = f"lottery ticket adaptation (sparsity {params.sparsity}), mask in {MASK_DIR}/"
        return plan


def _whole(model, skip: set[int]) -> dict:
    """Masks training the skipped parameters (embeddings, head) in full."""
    import torch

    from adaptkit.engine.masks import UpdateMask

    return {name: UpdateMask("element", torch.ones(tuple(p.shape), dtype=torch.bool)) for name, p in model.named_parameters() if id(p) in skip}


SPEC = method_spec(LotteryTicketAdaptation)
