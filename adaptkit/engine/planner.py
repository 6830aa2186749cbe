"""The one plan builder: what a run trains, as the run and `train --dry-run` both see it.

    build_plan = the method's plan
               + the run's special-token freezing (engine/special_tokens.py)
               + the run's train_embeddings restriction (engine/embedding_rows.py)
               + one counted line: trainable entries of all entries, and the AdamW state they need

Anything a run adds to the plan later belongs here, so that the dry run's counts are the run's
counts by construction. The distributed sharding and the trainable set come after, in the loop.
A dry run plans on a model without weights (the meta device; `MethodContext.dry_run`): a method
that chooses entries from weights or scores (the ssu-* methods with --calib, LoTA) then chooses as
many entries from its ratio alone, which gives the same counts and memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from adaptkit.engine.plan import MethodContext, TrainingMethod, TrainingPlan

if TYPE_CHECKING:
    import torch

ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq in float32, per trained entry


def build_plan(method: TrainingMethod, model: "torch.nn.Module", ctx: MethodContext, new_vocab_rows: Optional[list[int]]) -> TrainingPlan:
    """The plan of a run (see the module doc); logs its one line."""
    from adaptkit.engine.embedding_rows import restrict_embedding_rows

    config = ctx.config
    plan = method.plan(model, ctx)
    freeze_special_tokens(plan, method, config.freeze_special_tokens, ctx.tokenizer, ctx.log)
    restrict_embedding_rows(plan, config.train_embeddings, new_vocab_rows, ctx.log)
    plan.summary = f"{plan.summary}; {counted(plan)}" if plan.summary else counted(plan)
    ctx.log(f"plan: {plan.summary}")
    return plan


def freeze_special_tokens(plan: TrainingPlan, method: TrainingMethod, wanted: Optional[bool], tokenizer: object,
                          log: Callable[[str], None]) -> None:
    """The run's freeze_special_tokens setting (default: the method's): special-token rows of the
    embeddings and LM head leave the plan (engine/special_tokens.py)."""
    from adaptkit.engine.special_tokens import freeze_special_token_rows

    if method.freeze_special_tokens if wanted is None else wanted:
        tokens = freeze_special_token_rows(plan, tokenizer, log)
        plan.summary = f"{plan.summary}; embedding/head rows of {len(tokens)} special tokens frozen"


def counted(plan: TrainingPlan) -> str:
    """The plan's one count: trainable of all entries, and the AdamW state against full fine-tuning's."""
    trained, total = plan.counts()
    mib = lambda entries: ADAMW_STATE_BYTES * entries / 2**20  # noqa: E731
    return (f"{trained:,} of {total:,} parameters train ({trained / max(1, total):.2%}); AdamW state {mib(trained):.1f} MiB "
            f"instead of {mib(total):.1f} MiB for full fine-tuning (saves {mib(total - trained):.1f} MiB)")
