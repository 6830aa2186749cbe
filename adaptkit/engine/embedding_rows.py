"""The run-level `train_embeddings` setting: which input-embedding and LM-head rows a plan trains.

After `adaptkit vocab extend` the usual recipe (Tejaswi et al. 2024, "Exploring Design Choices for
Building Language-Specific LLMs"; also FVT, FOCUS) first trains only the new token rows, or keeps the
embeddings fixed. For every method whose plan trains the input embeddings or the LM head:
- `all` (default): the plan as the method made it;
- `new-only`: only the rows recorded as new in `adaptkit_vocab.json` (`vocab extend`: the rows from
  old_vocab_size on; `vocab transplant`: the ids of tokens the old vocabulary lacked), through the
  engine's row masks, so the old rows get no update, no weight decay and no optimizer state
  (one mask when the two are tied);
- `none`: the embeddings and head leave the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from adaptkit.engine.masks import MaskSet
    from adaptkit.engine.plan import TrainingPlan
    from adaptkit.io.models import ModelSource


def extension_rows(location: str) -> Optional[list[int]]:
    """The rows recorded as new in a model directory's `adaptkit_vocab.json` (vocab extend / transplant), else None."""
    from adaptkit.io.vocab_record import new_rows, read_record

    record = read_record(Path(location)) if Path(location).is_dir() else None
    return None if record is None else new_rows(record)


def recorded_new_rows(setting: str, source: "ModelSource") -> Optional[list[int]]:
    """The model's recorded new rows when `setting` is new-only (checked before any weights load)."""
    from adaptkit.io.vocab_record import VOCAB_RECORD

    if setting != "new-only":
        return None
    rows = extension_rows(source.location) if source.kind == "dir" else None
    if rows is None:
        raise InputError(f"--set train_embeddings=new-only: '{source.location}' has no {VOCAB_RECORD} (no new rows recorded); "
                         "extend the model with `adaptkit vocab extend` first, or use train_embeddings=all or none")
    return rows


def release_new_rows(model: "torch.nn.Module", masks: "MaskSet", new_rows: Optional[list[int]]) -> None:
    """Make the `new_rows` of the masked input embeddings and LM head wholly trainable
    (new tokens have no source-language role to shield)."""
    import torch

    from adaptkit.engine.special_tokens import token_row_tensors

    if new_rows is None:
        return
    params = dict(model.named_parameters())
    for name in token_row_tensors(model):
        if name in masks.masks:
            rows = torch.zeros(params[name].shape[0], dtype=torch.bool)
            rows[new_rows] = True
            masks.masks[name] = masks.masks[name].release_rows(rows, tuple(params[name].shape))


def restrict_embedding_rows(plan: "TrainingPlan", setting: str, new_rows: Optional[list[int]], log: Callable[[str], None]) -> list[str]:
    """Apply `setting` to the plan's trainable embedding/head tensors; returns their names."""
    import torch

    from adaptkit.engine.special_tokens import token_row_parameters

    names = token_row_parameters(plan)
    if setting == "all" or not names:
        return names
    params = dict(plan.model.named_parameters())
    for name in names:
        if setting == "none":
            del plan.trainable[name]
            continue
        rows = torch.zeros(params[name].shape[0], dtype=torch.bool)
        rows[new_rows] = True
        plan.restrict_rows(name, rows)
    note = f"train_embeddings={setting}: {', '.join(names)}" + (f" train the {len(new_rows)} new rows only" if setting == "new-only" else " frozen")
    plan.summary = f"{plan.summary}; {note}"
    log(note)
    return names
