"""AdaLoRA: LoRA in SVD form whose rank budget is reallocated during training by importance (via peft).

Zhang et al., "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023
(arXiv 2303.10512), through peft's AdaLoraModel. With `allocate=true` (the default, the paper's method)
the rank allocator runs: the engine calls `update_and_allocate(step)` after every optimizer step
(gradients still present), which updates the sensitivity estimates and masks the least important
singular values on the schedule below. Its state is checkpointed, so a resumed run allocates
exactly as an uninterrupted one.

`allocate=false` reproduces the SSU repository's AdaLoRA baseline (github.com/gucci-j/ssu,
training/src/main.py): it trains the peft AdaLoRA model with the plain HF Trainer, which never calls
`update_and_allocate`, so every adapted matrix keeps all init_r singular values for the whole run (the
target_r/tinit/tfinal/delta_t/beta settings have no effect; the orthogonality penalty still applies).
The `ssu-paper/adalora` preset sets it.

Schedule (fractions of the run's steps): no pruning during the first `tinit` fraction, the budget
falls cubically from init_r to target_r per matrix until the last `tfinal` fraction, during which
the final allocation is fixed. Defaults follow the SSU repository's AdaLoRA baseline: init_r 12,
target_r 8, alpha 32, dropout 0.05, tinit 1000 / tfinal 8546 of 12208 steps, deltaT 20,
beta1 = beta2 = 0.85, orthogonality regularization 0.5, and the token embeddings and LM head trained
in full (`modules_to_save`, trained in place as in `lora`; `train_embeddings_and_head=false` leaves them
frozen). Saved like `lora`; the adapter in final/adapter/ carries the allocated ranks (`rank_pattern`).

Under FSDP: peft's allocator ranks the singular values of whole matrices, so it runs on all-gathered
adapter tensors and gradients (the same numbers on every process, exactly the one-process ones), and
each process writes its rows of the masked singular values back. The orthogonality penalty, which
peft adds inside its forward, is the engine's loss term instead, in every layout (OrthogonalityPenalty, the same formula
and summation order), computed on whole matrices all-gathered with autograd.
"""

from __future__ import annotations

from types import SimpleNamespace

from pydantic import Field

from adaptkit.engine.plan import MethodContext, TrainingCallback, TrainingMethod, TrainingPlan
from adaptkit.errors import InputError
from adaptkit.plugins.methods.peft_adapters import ALL_LINEAR, MergeAndSaveAdapter, TargetModules, adapter_plan, import_peft, resolve_targets, train_ends_in_place, wrap
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
    allocate: bool = Field(True, description="Run the rank allocator (the paper); false keeps every matrix at init_r, as the SSU repository's run (which never calls update_and_allocate).")


class RankAllocation(TrainingCallback):
    """Runs peft's AdaLoRA rank allocator after every optimizer step and checkpoints its state."""

    FIELDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")
    shard_aware = True  # sharded: the allocator sees whole tensors (WholeAdapters)

    def __init__(self, model, log):
        self.model = model  # the peft model
        self.log = log

    def on_step_end(self, model, step: int) -> None:
        adalora = self.model.base_model
        whole = WholeAdapters(adalora.model)
        if whole.sharded:  # peft's own update_and_allocate, on the whole tensors
            type(adalora).update_and_allocate(SimpleNamespace(peft_config=adalora.peft_config, rankallocator=adalora.rankallocator,
                                                              trainable_adapter_name=adalora.trainable_adapter_name, model=whole), step)
            whole.write_back_singular_values()
        else:
            adalora.update_and_allocate(step)

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


class WholeAdapters:
    """The adapter tensors of a (possibly FSDP-sharded) model as whole tensors with whole gradients,
    named as in the model: what peft's rank allocator reads (named_parameters) and masks in place.
    Building it is a collective under FSDP (every process all-gathers the same tensors in the same order)."""

    def __init__(self, model):
        import torch

        from adaptkit.engine.shards import full_tensor, is_sharded

        self.params = {n: p for n, p in model.named_parameters() if "lora_" in n}
        self.sharded = any(is_sharded(p) for p in self.params.values())
        self.whole: dict[str, torch.Tensor] = {}
        if self.sharded:
            with torch.no_grad():
                for name, param in self.params.items():
                    tensor = full_tensor(param.detach()).clone()
                    tensor.grad = None if param.grad is None else full_tensor(param.grad)
                    self.whole[name] = tensor

    def named_parameters(self):
        return iter(self.whole.items())

    def write_back_singular_values(self) -> None:
        """Copy this process's rows of the (masked) singular values into its shards."""
        import torch

        from adaptkit.engine.shards import local_shard

        with torch.no_grad():
            for name, param in self.params.items():
                if "lora_E" in name:
                    local, offset = local_shard(param)
                    local.copy_(self.whole[name][offset:offset + local.shape[0]])


class OrthogonalityPenalty(TrainingCallback):
    """AdaLoRA's regularizer, weight * mean over adapted matrices of ||P P^T - I||_F (lora_A) and ||Q^T Q - I||_F
    (lora_B), as peft's AdaLoraModel.forward adds it (same order of terms); on whole matrices, all-gathered
    with autograd under FSDP, so every process adds the same value and gets its shard's gradient."""

    shard_aware = True

    def __init__(self, weight: float, adapter: str = "default"):
        self.weight = weight
        self.adapter = adapter

    def extra_loss(self, model):
        import torch

        from adaptkit.engine.shards import full_tensor

        total, count = 0, 0
        for name, param in model.base_model.model.named_parameters():
            if ("lora_A" in name or "lora_B" in name) and self.adapter in name:
                whole = full_tensor(param)
                cov = whole @ whole.T if "lora_A" in name else whole.T @ whole
                total += torch.norm(cov - torch.eye(*cov.size(), dtype=cov.dtype, device=cov.device), p="fro")
                count += 1
        return self.weight * (total / count) if count and self.weight else None


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
        config = peft.AdaLoraConfig(
            task_type="CAUSAL_LM", init_r=p.init_r, target_r=p.target_r, lora_alpha=p.alpha, lora_dropout=p.dropout,
            target_modules=resolve_targets(model, p.target_modules), tinit=tinit, tfinal=tfinal, deltaT=p.delta_t, beta1=p.beta1, beta2=p.beta2,
            orth_reg_weight=p.orth_reg_weight, total_step=total,
        )
        wrapped = wrap(model, config, "adalora")
        # peft's AdaLoraModel.forward adds the penalty (on sharded tensors under FSDP): OrthogonalityPenalty adds it instead
        wrapped.base_model.forward = wrapped.base_model.model.forward
        saved = train_ends_in_place(wrapped, model) if p.train_embeddings_and_head else {}
        allocation = [RankAllocation(wrapped, ctx.log)] if p.allocate else []
        callbacks = [OrthogonalityPenalty(p.orth_reg_weight), *allocation, MergeAndSaveAdapter(ctx.config.model, saved)]
        schedule = f"r {p.init_r} -> {p.target_r}, allocation at steps {tinit}-{total - tfinal}" if p.allocate else f"r {p.init_r}, no rank allocation"
        return adapter_plan(wrapped, f"adalora ({schedule})", callbacks)


SPEC = method_spec(AdaLoRA)
