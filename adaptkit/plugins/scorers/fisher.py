"""Diagonal empirical Fisher importance (SSU-Fisher): the mean squared gradient of the LM loss.

The calibration blocks are split into batches of --batch-size blocks (default 1, one
block per gradient, the per-sample empirical Fisher); for each batch b the gradient
g_b of its mean next-token loss is taken, and F_ij = (1/B) sum_b (g_b)_ij^2 in float32.
The column score is S_j = sum_i F_ij. Dropout is off (eval mode); only scored
parameters get gradients, and the model's requires_grad flags and gradients are
restored afterwards.
"""

from __future__ import annotations

from adaptkit.scoring.parameters import ScoredParam
from adaptkit.scoring.scorer import Scorer, ScoringRun, scorer_spec
from adaptkit.scoring.statistics import calibration_batches
from adaptkit.specs import Params


class FisherParams(Params):
    """Fisher takes the batch size of the score run (--batch-size)."""


class FisherScorer(Scorer):
    name = "fisher"
    summary = "Mean squared gradient of the LM loss on the calibration data (diagonal Fisher; SSU-Fisher)"
    reference = "Kirkpatrick et al. 2017 (EWC) diagonal Fisher; SSU paper ablation (github.com/gucci-j/ssu)"
    Params = FisherParams

    def prepare(self, model, scored: list[ScoredParam], run: ScoringRun) -> None:
        import torch

        wanted = {id(sp.param) for sp in scored}
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        self.fisher = {sp.name: torch.zeros(sp.param.shape, dtype=torch.float32, device=sp.param.device) for sp in scored}
        batches = calibration_batches(run.calibration.blocks, run.batch_size)
        try:
            for _, param in model.named_parameters():
                param.requires_grad_(id(param) in wanted)
                param.grad = None
            with torch.enable_grad():
                for batch in batches:
                    batch = batch.to(run.device)
                    model(input_ids=batch, labels=batch, use_cache=False).loss.float().backward()
                    for sp in scored:
                        if sp.param.grad is not None:
                            self.fisher[sp.name].add_(sp.param.grad.float().square())
                            sp.param.grad = None
                    if run.progress:
                        run.progress(batch.shape[0])
        finally:
            for name, param in model.named_parameters():
                param.grad = None
                param.requires_grad_(flags[name])
        for tensor in self.fisher.values():
            tensor.div_(len(batches))

    def element_scores(self, sp: ScoredParam):
        return self.fisher.pop(sp.name)


SPEC = scorer_spec(FisherScorer)
