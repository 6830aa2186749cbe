"""LoRA: low-rank adapters on the linear projections (via peft), merged into dense weights at the end.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022 (arXiv 2106.09685),
through Hugging Face peft (optional extra `peft`). Defaults follow the LoRA CPT baseline and adapter
settings of the LayRA paper ("Continually Adding New Languages to Multilingual Language Models", §3.2-3.3,
after Biderman et al. 2024): rank 8, alpha 16, dropout 0.05, all seven linear projections of every block.
The SSU paper has no LoRA baseline; its reference code's `--peft_method lora` (used by no script) would
default to rank 8, alpha 16, dropout 0.0 with the embeddings and LM head trained.
`train_embeddings_and_head` adds the token embeddings and the LM head as fully trained modules
(peft `modules_to_save`), as the SSU repository's PEFT runs do; they train in place in the base model
(the same weights as peft's trained copies, and they shard under FSDP) and are saved in the adapter as
peft saves modules_to_save.

Outputs: `final/` is the adapter merged into a plain dense model; `final/adapter/` is a standard
PEFT adapter (`PeftModel.from_pretrained(base, "final/adapter")`).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan
from adaptkit.plugins.methods.peft_adapters import ALL_LINEAR, MergeAndSaveAdapter, TargetModules, adapter_plan, import_peft, resolve_targets, train_ends_in_place, wrap
from adaptkit.specs import Params, method_spec


class LoRAParams(Params):
    r: int = Field(8, gt=0, description="Rank of the adapters.")
    alpha: float = Field(16, gt=0, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(ALL_LINEAR, description="'all-linear' or module names such as 'q_proj,v_proj'.")
    train_embeddings_and_head: bool = Field(False, description="Also train the token embeddings and LM head in full (peft modules_to_save).")


class LoRA(TrainingMethod):
    name = "lora"
    summary = "LoRA adapters (peft); saved merged into dense weights and as a PEFT adapter"
    reference = "Hu et al., LoRA, arXiv 2106.09685"
    Params = LoRAParams
    extras = ("peft",)

    def lora_settings(self, model, ctx: MethodContext) -> dict:
        """Keyword arguments of peft's LoraConfig for this run."""
        p = self.params
        return dict(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=resolve_targets(model, p.target_modules))

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        peft = import_peft(self.name)
        config = peft.LoraConfig(task_type="CAUSAL_LM", **self.lora_settings(model, ctx))
        wrapped = wrap(model, config, self.name)
        saved = train_ends_in_place(wrapped, model) if self.params.train_embeddings_and_head else {}
        return adapter_plan(wrapped, f"{self.name} (r {self.params.r}, alpha {self.params.alpha:g})", [MergeAndSaveAdapter(ctx.config.model, saved)])


SPEC = method_spec(LoRA)
