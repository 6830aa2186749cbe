"""AdaLoRA: LoRA in SVD form whose rank budget is reallocated during training by importance (via peft).

Zhang et al., "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023
(arXiv 2303.10512), through peft's AdaLoraModel. The rank allocator really runs: the engine calls
`update_and_allocate(step)` after every optimizer step (gradients still present), which updates
the sensitivity estimates and masks the least important singular values on the schedule below
(a known peer setup never calls it, so its ranks never change). Its state is checkpointed, so
a resumed run allocates exactly as an uninterrupted one.

Schedule (fractions of the run's steps): no pruning during the first `tinit` fraction, the budget
falls cubically from init_r to target_r per matrix until the last `tfinal` fraction, during which
the final allocation is fixed. Defaults follow the SSU repository's AdaLoRA baseline: init_r 12,
target_r 8, alpha 32, dropout 0.05, tinit 1000 / tfinal 8546 of 12208 steps, deltaT 20,
beta1 = beta2 = 0.85, orthogonality regularization 0.5 (added to the loss by peft), and the token
embeddings and LM head trained in full (`modules_to_save`; `train_embeddings_and_head=false` leaves them frozen).
Saved like `lora`; the adapter in final/adapter/ carries the allocated ranks (`rank_pattern`).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingCallback, TrainingMethod, TrainingPlan
from adaptkit.errors import InputError
from adaptkit.plugins.methods.peft_adapters import ALL_LINEAR, MergeAndSaveAdapter, TargetModules, adapter_plan, embedding_module_names, import_peft, resolve_targets, wrap
from adaptkit.specs import Params, method_spec


class AdaLoRAParams(Params):
    init_r: int = Field(12, gt=0, description="Initial rank of every adapted matrix.")
    target_r: int = Field(8, gt=0, description="Average rank per matrix after allocation.")
    alpha: float = Field(32, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(ALL_LINEAR, description="'all-linear' or module names such as 'q_proj,v_proj'.")
    tinit: float = Field(1000 / 12208, ge=0, lt=1, description="Fraction of steps before rank pruning starts.")
    tfinal: float = Field(8546 / 12208, ge=0, lt=1, description="Fraction of steps at the end with the final, fixed allocation.")
    delta_t: int = Field(20, gt=0, description="Steps between two budget allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA coefficient of the sensitivity.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA coefficient of the uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regularizer of P and Q.")
    train_embeddings_and_head: bool = Field(True, description="Also train the token embeddings and LM head in full (peft modules_to_save), as the SSU repository's AdaLoRA run does.")


class RankAllocation(TrainingCallback):
    """Runs peft's AdaLoRA rank allocator after every optimizer step and checkpoints its state."""

    FIELDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def __init__(self, model, log):
        self.model = model  # the peft model
        self.log = log

    def on_step_end(self, model, step: int) -> None:
        self.model.base_model.update_and_allocate(step)

    def ranks(self) -> dict[str, int]:
        """Allocated rank of every adapted matrix (empty until the first allocation)."""
        pattern = self.model.peft_config["default"].rank_pattern or {}
        return {name: int(sum(keep)) for name, keep in pattern.items()}

    def export(self, model):
        ranks = self.ranks()
        if ranks:
            self.log(f"adalora: allocated ranks {min(ranks.values())}-{max(ranks.values())} (total {sum(ranks.values())} over {len(ranks)} matrices)")
        return model

    def state_dict(self):
        import torch

        allocator = self.model.base_model.rankallocator
        state = {f"{field}.{name}": t for field in self.FIELDS for name, t in getattr(allocator, field).items()}
        for name, keep in (self.model.peft_config["default"].rank_pattern or {}).items():
            state[f"rank_pattern.{name}"] = torch.tensor(keep, dtype=torch.bool)
        return state

    def load_state_dict(self, state) -> None:
        allocator = self.model.base_model.rankallocator
        pattern = {}
        for key, tensor in state.items():
            field, name = key.split(".", 1)
            if field == "rank_pattern":
                pattern[name] = tensor.tolist()
            else:
                getattr(allocator, field)[name] = tensor.to(self.model.device)
        if pattern:
            self.model.peft_config["default"].rank_pattern = pattern


class AdaLoRA(TrainingMethod):
    name = "adalora"
    summary = "AdaLoRA (peft) with its rank allocator run every step; saved merged and as a PEFT adapter"
    reference = "Zhang et al., AdaLoRA, arXiv 2303.10512"
    Params = AdaLoRAParams
    extras = ("peft",)

    def plan(self, model, ctx: MethodContext) -> TrainingPlan:
        peft = import_peft("adalora")
        p = self.params
        total = ctx.total_steps
        tinit, tfinal = int(p.tinit * total), int(p.tfinal * total)
        if tinit >= total - tfinal:
            raise InputError(f"--set tinit/tfinal: with {total} steps, tinit {tinit} and tfinal {tfinal} leave no steps for rank allocation; lower them or train longer")
        if p.target_r > p.init_r:
            raise InputError(f"--set target_r: {p.target_r} is above init_r {p.init_r}; AdaLoRA only lowers ranks")
        extra = {}
        if p.train_embeddings_and_head:
            extra = dict(modules_to_save=embedding_module_names(model))
            if getattr(model.config, "tie_word_embeddings", False):
                extra["ensure_weight_tying"] = True  # the trained copies stay tied (peft >= 0.18)
        config = peft.AdaLoraConfig(
            task_type="CAUSAL_LM", init_r=p.init_r, target_r=p.target_r, lora_alpha=p.alpha, lora_dropout=p.dropout,
            target_modules=resolve_targets(model, p.target_modules), tinit=tinit, tfinal=tfinal, deltaT=p.delta_t, beta1=p.beta1, beta2=p.beta2,
            orth_reg_weight=p.orth_reg_weight, total_step=total, **extra,
        )
        wrapped = wrap(model, config, "adalora")
        callbacks = [RankAllocation(wrapped, ctx.log), MergeAndSaveAdapter(ctx.config.model)]
        return adapter_plan(wrapped, f"adalora (r {p.init_r} -> {p.target_r}, allocation at steps {tinit}-{total - tfinal})", callbacks)


SPEC = method_spec(AdaLoRA)
