"""Spectrum: train the modules with the highest signal-to-noise ratio (Hartford et al., arXiv 2406.06623).

As the reference (github.com/cognitivecomputations/spectrum): the SNR of every weight matrix of the
transformer blocks (adaptkit/scoring/spectral.py), grouped by module type (`self_attn.q_proj`,
`mlp.down_proj`, ...); in each type the int(count * fraction) modules of highest SNR train in full (their
weight and bias), and, as in the reference's unfrozen-parameter list, the input embeddings and LM head.
Everything else (the other modules, the norms) stays frozen, bit for bit.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.specs import Params, method_spec


class SpectrumMethodParams(Params):
    fraction: float = Field(0.25, gt=0, le=1, description="Share of the modules of each type to train, by SNR (the paper: 0.25 or 0.5).")
    train_embeddings: bool = Field(True, description="Also train the input embeddings and LM head (as the reference's unfrozen list).")


class Spectrum(TrainingMethod):
    name = "spectrum"
    summary = "Train the top fraction of modules of each type by SNR (Marchenko-Pastur), embeddings and head; freeze the rest"
    reference = "Spectrum, Hartford et al., arXiv 2406.06623 (github.com/cognitivecomputations/spectrum)"
    Params = SpectrumMethodParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        from adaptkit.layers import embedding_parameter_ids
        from adaptkit.scoring.spectral import block_matrix_snrs, top_modules_by_type

        chosen = top_modules_by_type(block_matrix_snrs(model, measure=not ctx.dry_run), self.params.fraction)
        modules = {name for names in chosen.values() for name in names}
        embeddings = embedding_parameter_ids(model) if self.params.train_embeddings else set()
        plan = TrainingPlan.only(model, lambda name, param: name.rpartition(".")[0] in modules or id(param) in embeddings)
        per_type = ", ".join(f"{kind} {len(names)}" for kind, names in sorted(chosen.items()))
        plan.summary = (f"spectrum: top {self.params.fraction:g} of each module type by SNR ({per_type})"
                        + ("; embeddings and head" if embeddings else ""))
        return plan


SPEC = method_spec(Spectrum)
