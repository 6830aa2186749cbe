"""Soft regularization toward the source weights: L2-SP or EWC, optionally on a layer range only.

- L2-SP (Li et al., "Explicit Inductive Bias for Transfer Learning with Convolutional Networks",
  ICML 2018, arXiv 1802.01483): loss + strength * ||theta - theta_source||^2.
- EWC (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017,
  arXiv 1612.00796): loss + strength * sum_i F_i (theta_i - theta_source_i)^2, with F the diagonal
  empirical Fisher of the source model: the mean, over the calibration set's token blocks
  (`--calib DIR` from `adaptkit calibrate`: source-side blocks, as SSU's scorers use), of the squared gradient of the LM loss of each batch of
  `fisher_batch_size` blocks (1 by default: per-block gradients). By default F is scaled to mean
  1 (`fisher_normalize`), so that `strength` has the same meaning for EWC and L2-SP (the raw
  Fisher of a mean token loss is tiny); the scaling only rescales strength.

Every parameter trains (as in full fine-tuning); the penalty covers all parameters, or with
`layers` (e.g. '0-11') only the parameters of those transformer blocks. Soft regularization is one
of the layer-aware alignment strategies of "Parameter Alignment Mitigates Catastrophic Forgetting in Multilingual Expert Language Models" (arXiv 2606.00284);
its abstract states the strategy, not its form: L2-SP or EWC, the default strength 0.01, the Fisher
normalization and the layers are adaptkit's choices. The penalty's exact gradient,
2 * strength * F * (theta - theta_source), is added to the accumulated gradient once per
optimizer step, before clipping: the same update as adding the penalty to the loss, without an
autograd graph over every weight. The logged loss is the language-modelling loss.

Memory: a float32 copy of the regularized source weights (and, for EWC, the Fisher: as much
again) stays on the training device; the run log and run card state how much. Under FSDP each
process keeps only its shard's rows of them after the first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingCallback, TrainingMethod, TrainingPlan
from adaptkit.errors import InputError
from adaptkit.layers import LayerSpec, format_layers, num_layers, parameter_layers, parse_layers
from adaptkit.specs import Params, method_spec

class SoftRegParams(Params):
    penalty: Literal["l2sp", "ewc"] = Field("l2sp", description="'l2sp': squared distance to the source; 'ewc': Fisher-weighted (needs --calib).")
    strength: float = Field(0.01, gt=0, description="Penalty weight lambda.")
    layers: Optional[LayerSpec] = Field(None, description="Regularize only these transformer layers, e.g. '0-11' (default: every parameter).")
    fisher_blocks: Optional[int] = Field(None, gt=0, description="EWC: use at most this many calibration blocks (default: all).")
    fisher_batch_size: int = Field(1, gt=0, description="EWC: blocks per gradient in the Fisher estimate (1: per-block gradients).")
    fisher_normalize: bool = Field(True, description="EWC: scale the Fisher to mean 1.")
    calib: Optional[str] = Field(None, description="EWC: calibration directory from `adaptkit calibrate` (--calib) for the Fisher.")


def diagonal_fisher(model, names: set[str], blocks, batch_size: int, device) -> dict:
    """Mean over batches of blocks of the squared LM-loss gradient of each named parameter (float32)."""
    import torch

    params = dict(model.named_parameters())
    saved = {n: p.requires_grad for n, p in params.items()}
    for name, param in params.items():
        param.requires_grad_(name in names)
    fisher = {name: torch.zeros_like(params[name], dtype=torch.float32) for name in names}
    was_training = model.training
    model.eval()
    batches = 0
    for start in range(0, blocks.shape[0], batch_size):
        input_ids = blocks[start:start + batch_size].to(device)
        model.zero_grad(set_to_none=True)
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        for name in names:
            grad = params[name].grad
            if grad is not None:
                fisher[name].addcmul_(grad.float(), grad.float())
        batches += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for name, param in params.items():
        param.requires_grad_(saved[name])
    for value in fisher.values():
        value.div_(batches)
    return fisher


class SourcePull(TrainingCallback):
    """Adds 2 * strength * F * (theta - theta_source) to the accumulated gradients (F = 1 for L2-SP).

    The pull of an entry depends on that entry alone, so under FSDP each process adds it to its own
    shard of the (already reduced) gradient: no communication. The first step keeps only this
    process's rows of the source copy and Fisher, so their memory is sharded too.
    """

    shard_aware = True

    def __init__(self, terms: dict, strength: float):
        self.terms = terms  # parameter name -> (source copy, Fisher or None), whole tensors until first used
        self.strength = strength
        self.cut: set[str] = set()  # names whose terms were cut to this process's rows

    def _local_terms(self, name: str, offset: int, rows: int) -> tuple:
        """The source copy and Fisher rows of this process's shard (cut on first use, then kept)."""
        if name not in self.cut:
            source, fisher = self.terms[name]
            if (offset, rows) != (0, source.shape[0]):
                self.terms[name] = (source[offset:offset + rows].clone(), None if fisher is None else fisher[offset:offset + rows].clone())
            self.cut.add(name)
        return self.terms[name]

    def transform_gradients(self, model, step: int) -> None:
        import torch

        from adaptkit.engine.shards import local_grad, local_shard

        with torch.no_grad():
            for name, param in model.named_parameters():
                if name not in self.terms:
                    continue
                local, offset = local_shard(param)
                source, fisher = self._local_terms(name, offset, local.shape[0])
                pull = local.float() - source.to(local.device)
                if fisher is not None:
                    pull.mul_(fisher.to(local.device))
                pull.mul_(2 * self.strength)
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                grad = local_grad(param)
                grad.add_(pull.to(grad.dtype))


class SoftRegularization(TrainingMethod):
    name = "soft-reg"
    summary = "Soft regularization toward the source weights: L2-SP or EWC (Fisher from --calib), optionally per layer range"
    reference = "L2-SP arXiv 1802.01483; EWC arXiv 1612.00796; layer-aware strategies arXiv 2606.00284"
    Params = SoftRegParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        import torch

        p = self.params
        if p.penalty == "ewc" and not p.calib:
            raise InputError("--method soft-reg --set penalty=ewc: needs --calib DIR (token blocks from `adaptkit calibrate`) for the Fisher")
        names = set(dict(model.named_parameters()))
        where = "all parameters"
        if p.layers is not None:
            chosen = set(parse_layers(p.layers, num_layers(model), "--set layers"))
            names = {n for n, layer in parameter_layers(model).items() if layer in chosen}
            where = f"layers {format_layers(sorted(chosen))}"
        fisher = None
        if p.penalty == "ewc":
            from adaptkit.calibration import load_calibration

            blocks = load_calibration(Path(p.calib), "--calib").blocks
            if p.fisher_blocks:
                blocks = blocks[: p.fisher_blocks]
            ctx.log(f"soft-reg: Fisher from {blocks.shape[0]} calibration blocks")
            fisher = diagonal_fisher(model, names, blocks, p.fisher_batch_size, ctx.device)
            if p.fisher_normalize:
                mean = sum(float(f.sum()) for f in fisher.values()) / sum(f.numel() for f in fisher.values())
                for value in fisher.values():
                    value.div_(mean if mean > 0 else 1.0)
        with torch.no_grad():
            terms = {name: (param.detach().float().clone(), None if fisher is None else fisher[name])
                     for name, param in model.named_parameters() if name in names}
        entries = sum(source.numel() for source, _ in terms.values())
        mib = entries * 4 * (2 if fisher is not None else 1) / 2**20
        ctx.log(f"soft-reg: {p.penalty} on {where}; source copy{' + Fisher' if fisher is not None else ''}: {mib:.1f} MiB on {ctx.device}")
        plan = TrainingPlan.full(model, summary=f"soft regularization ({p.penalty}, strength {p.strength:g}) on {where}; {mib:.1f} MiB of source weights{' and Fisher' if fisher is not None else ''} kept")
        plan.callbacks.append(SourcePull(terms, p.strength))
        return plan


SPEC = method_spec(SoftRegularization)
