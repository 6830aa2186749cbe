"""`adaptkit bam`: Branch-and-Merge training (arXiv 2407.08699): rounds of branches, each trained by the
engine on its own slice of the data from the current model, merged by the merge toolbox into the next
round's model (adaptkit/branch_merge.py). Rerun the same command after a kill to continue. Under torchrun or
accelerate launch every process trains each branch (`--distributed ddp|fsdp`) and the main process merges."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import ConfigOpt, Console, SeedOpt, shared


def command(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The model the first round starts from.")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Training data, as for `adaptkit train` (repeatable, NAME=SPEC[:WEIGHT]); cut into rounds x branches slices.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Training method of every branch.", show_default="fft")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds (iterations): branch, train, merge.")] = 2,
    branches: Annotated[int, typer.Option("--branches", help="Branches per round, each on its own data slice.")] = 2,
    merge: Annotated[str, typer.Option("--merge", help="Merge method of a round's branches (see `adaptkit merge --help`): slerp (two branches) or linear, ties, ...")] = "slerp",
    merge_set: Annotated[Optional[list[str]], typer.Option("--merge-set", help="A merge parameter, e.g. --merge-set t=0.5 (repeatable).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps of each branch.", show_default="one epoch of its slice")] = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per block.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per optimizer step.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate of each branch.")] = None,
    distributed: Annotated[Optional[str], typer.Option("--distributed", help="Under torchrun / accelerate launch: ddp or fsdp for every branch (the main process merges while the others wait).", show_default="ddp")] = None,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Eval sets NAME=SPEC[:ROLE] scored during each branch's training (curves across rounds).")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="BaM directory (rounds, branches, merges, final/, curves); rerun with the same one to continue.")] = Path("bam"),
    config: ConfigOpt = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="A training setting of every branch, as `adaptkit train` takes it: --set schedule.name=wsd, or a method parameter (repeatable).")] = None,
    seed: SeedOpt = None,
) -> None:
    """Branch-and-Merge: rounds x branches trainings on data slices, merged each round (resumable)."""
    from adaptkit.bam_plan import BamPlan
    from adaptkit.branch_merge import run_bam
    from adaptkit.train_settings import build_config
    from adaptkit.settings import parse_set_overrides

    console = Console.of(ctx)
    flags = {"model": model, "method": method, "max_steps": max_steps, "seq_len": seq_len, "batch_size": batch_size,
             "lr": lr, "seed": seed, "eval_data": eval_data, "data": data, "distributed": distributed}
    train_config = build_config(config, flags, set_)
    merge_params = {".".join(path): value for path, value in parse_set_overrides(merge_set)}
    plan = BamPlan(rounds, branches, merge, merge_params)
    result = run_bam(train_config, plan, output, shared(ctx).overwrite, log=lambda message: console.print(message))
    if result is None:  # another process of a launched run: the main one reports
        return
    console.result(result, f"[green]done[/green]: {rounds} round(s) x {branches} branch(es), merged with {merge}; model in {result['final']}")
