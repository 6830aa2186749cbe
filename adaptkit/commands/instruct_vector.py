"""`adaptkit instruct-vector`: extract an instruction residual once, apply it to adapted models.

    adaptkit instruct-vector extract --base B --instruct I -o iv/
    adaptkit instruct-vector apply --model adapted --vector iv/ --alpha 1.0 -o out/
    adaptkit instruct-vector apply --model adapted --base B --instruct I --alpha 1.0 -o out/   # one step

Two steps: theta_model + alpha (theta_instruct - theta_base); one step:
theta_instruct + alpha (theta_adapted - theta_base). See `adaptkit.merge.instruct`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console, OutputOpt, PrivateOpt, PushOpt, RevisionOpt, shared
from adaptkit.commands.merge import ShardOpt, TokenizerSourceOpt, VocabInitOpt, push_hub
from adaptkit.io.atomic import check_output

app = typer.Typer(
    help="Instruction residuals (chat vectors): extract theta_instruct - theta_base once, apply it with any alpha.",
    no_args_is_help=True,
)

BaseOpt = Annotated[Optional[Path], typer.Option("--base", help="The base model the instruct model was tuned from.")]
DTYPE_HELP = "Output dtype of floating tensors: float32, bfloat16 or float16."
InstructOpt = Annotated[Optional[Path], typer.Option("--instruct", help="The instruct model (same architecture as the base).")]


def _options(overwrite: bool, dtype: Optional[str], shard_size: str, console: Console, command: str):
    from adaptkit.merge.executor import MergeOptions
    from adaptkit.merge.stream import parse_size

    return MergeOptions(overwrite=overwrite, dtype=dtype, shard_size=parse_size(shard_size), command=command, progress=console.show_progress)


@app.command("extract")
def extract(
    ctx: typer.Context,
    base: BaseOpt = None,
    instruct: InstructOpt = None,
    output: OutputOpt = ...,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help=DTYPE_HELP, show_default="as --instruct")] = None,
    shard_size: ShardOpt = "5GB",
) -> None:
    """Write theta_instruct - theta_base as an instruction-vector directory (safetensors)."""
    from adaptkit.errors import InputError
    from adaptkit.merge import instruct as residual

    if base is None or instruct is None:
        raise InputError(f"{'--base' if base is None else '--instruct'}: required (extract computes theta_instruct - theta_base)")
    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_output(output, overwrite)
    summary = residual.extract(base, instruct, output, _options(overwrite, dtype, shard_size, console, "adaptkit instruct-vector extract"))
    console.result(summary, f"[green]instruction vector[/green] of {summary['tensors']} tensors -> {output}")


@app.command("apply")
def apply(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="The (adapted) model to give instruction following.")] = None,
    vector: Annotated[Optional[Path], typer.Option("--vector", help="An instruction vector from `extract` (two-step form).")] = None,
    base: BaseOpt = None,
    instruct: InstructOpt = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Scale in [-10, 10]: of the vector (two steps) or of the language vector (one step).")] = 1.0,
    output: OutputOpt = ...,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help=DTYPE_HELP, show_default="as --model")] = None,
    shard_size: ShardOpt = "5GB",
    tokenizer_source: TokenizerSourceOpt = None,
    vocab_init: VocabInitOpt = None,
    push_to_hub: PushOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
) -> None:
    """theta_model + alpha * vector (--vector), or theta_instruct + alpha (theta_model - theta_base) (--base, --instruct)."""
    from adaptkit.errors import InputError
    from adaptkit.io.hub import check_target
    from adaptkit.merge import instruct as residual

    if model is None:
        raise InputError("--model: required (the model to apply the instruction residual to)")
    if vector is not None and (base is not None or instruct is not None):
        raise InputError("--vector: give either --vector or --base with --instruct (one-step form), not both")
    if vector is None and (base is None or instruct is None):
        raise InputError(f"{'--base' if base is None else '--instruct'}: required without --vector (one-step form needs --base and --instruct)")
    target = check_target(push_to_hub, private, revision)
    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_output(output, overwrite)
    options = _options(overwrite, dtype, shard_size, console, "adaptkit instruct-vector apply")
    options.tokenizer_source, options.vocab_init = tokenizer_source, vocab_init
    if vector is not None:
        summary = residual.apply_vector(model, vector, alpha, output, options)
    else:
        summary = residual.apply_one_step(model, base, instruct, alpha, output, options)
    push_hub(target, output, summary, console, options.command)
    console.result(summary, f"[green]applied[/green] the instruction residual (alpha={alpha}) -> {output}")
