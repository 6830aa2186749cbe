"""An adaptkit plugin in one file: `--method embed-tune` trains only token embeddings and the LM head.

Embedding-only adaptation is a classic cheap baseline for new languages: the transformer
blocks (and so most of what the model knows) stay frozen while the input and output
embeddings learn the new language's tokens (Artetxe et al., 2020, "On the Cross-lingual
Transferability of Monolingual Representations", arXiv 1910.11856).
"""

from __future__ import annotations

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.hookspecs import hookimpl
from adaptkit.specs import Params, method_spec


class EmbedTuneParams(Params):
    train_output_embeddings: bool = True


class EmbedTune(TrainingMethod):
    name = "embed-tune"
    summary = "Train only the token embeddings and LM head"
    reference = "arXiv 1910.11856"
    Params = EmbedTuneParams

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        keep = {id(model.get_input_embeddings().weight)}
        output = model.get_output_embeddings()
        if self.params.train_output_embeddings and output is not None:
            keep.add(id(output.weight))
        return TrainingPlan.only(model, lambda name, param: id(param) in keep, summary="token embeddings and LM head only")


@hookimpl
def register_methods(register):
    register(method_spec(EmbedTune))
