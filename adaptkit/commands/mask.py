"""`adaptkit mask`: freeze the top fraction of columns (rows, elements) of each matrix by score."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console, OutputOpt, shared


def command(
    ctx: typer.Context,
    scores: Annotated[Path, typer.Option("--scores", help="Score directory from `adaptkit score`.")],
    output: OutputOpt,
    freeze_ratio: Annotated[float, typer.Option("--freeze-ratio", help="Fraction of each matrix's units to freeze, 0 to 1 (paper: 0.5; ablations 0.125 to 0.875).")] = 0.5,
    granularity: Annotated[str, typer.Option("--granularity", help="column (SSU), row or element; 1-D parameters are always element-wise.")] = "column",
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Optionally check that the scores fit this model (directory).")] = None,
) -> None:
    """Turn scores into masks (k = round-half-up(ratio x units) frozen per matrix) and print the frozen fraction per module type."""
    from adaptkit.io.atomic import atomic_dir, check_output
    from adaptkit.scoring.freeze import build_mask_set, check_granularity, check_ratio, frozen_table
    from adaptkit.scoring.score_set import load_scores

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_ratio(freeze_ratio)
    check_granularity(granularity)
    check_output(output, overwrite)
    score_set = load_scores(scores, "--scores")
    masks = build_mask_set(score_set, freeze_ratio, granularity)
    if model:
        _check_model(model, masks)
    with atomic_dir(output, overwrite) as tmp:
        masks.save(tmp)
    rows, total = frozen_table(masks)
    console.table(f"Frozen by {masks.metadata.get('scorer', '?')} scores (ratio {freeze_ratio}, {granularity})",
                  ["module", "params", "frozen", "entries", "frozen fraction"], [*rows, total])
    model_params = int(masks.metadata.get("model_parameters", 0)) or None
    console.result(
        {"output": str(output), "freeze_ratio": freeze_ratio, "granularity": granularity,
         "modules": {r[0]: {"params": r[1], "frozen": r[2], "entries": r[3], "frozen_fraction": r[4]} for r in rows},
         "frozen": total[2], "scored_entries": total[3], "frozen_fraction": total[4],
         "frozen_fraction_of_model": total[2] / model_params if model_params else None},
        f"[green]done[/green]: {total[2]:,} of {total[3]:,} scored entries frozen ({100 * total[4]:.1f}%"
        + (f"; {100 * total[2] / model_params:.1f}% of the whole model" if model_params else "") + f"); masks in {output}",
    )


def _check_model(model: str, masks) -> None:
    """Compare fingerprints and shapes against a model's config without loading its weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from adaptkit.io.models import resolve_model_source
    from adaptkit.io.mask_files import check_fingerprint

    name, kwargs = resolve_model_source(model, "--model").load_args
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(name, trust_remote_code=False, **kwargs))
    check_fingerprint(masks.metadata, skeleton, "--scores")
    masks.check_fits(skeleton, "--scores")
