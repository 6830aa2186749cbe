"""`adaptkit calibrate`: build a calibration set (source-side token blocks) for scoring."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console, OutputOpt, shared


def command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose tokenizer (and chat template) renders the data: directory, .gguf or Hub id.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Chat / Alpaca JSONL, plain text, a saved dataset directory or a Hub dataset id.")],
    output: OutputOpt,
    fmt: Annotated[str, typer.Option("--format", help="auto, chat (`messages`), alpaca (`instruction`/`input`/`output`) or text.")] = "auto",
    template: Annotated[Optional[str], typer.Option("--template", help="Chat template: model (the tokenizer's own), chatml, plain, or a .jinja file.", show_default="model")] = None,
    pool: Annotated[int, typer.Option("--pool", help="Raw examples to sample (paper: 2000).")] = 2000,
    num_samples: Annotated[int, typer.Option("--num-samples", help="Blocks to keep (paper: 500; 128 is its cheaper setting).")] = 500,
    block_size: Annotated[Optional[int], typer.Option("--block-size", help="Tokens per block (paper: 2048; default 2048, or the model's context length when that is shorter).")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Field of plain-text JSONL records.")] = "text",
    split: Annotated[str, typer.Option("--split", help="Split of a dataset directory or Hub dataset.")] = "train",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the example and block sampling.")] = 42,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow tokenizer code from the Hub.")] = False,
    recipe: Annotated[str, typer.Option("--recipe", help="adaptkit, or reference: the SSU reference's (each example truncated to a block, packed 1,000 examples at a time, blocks chosen by stride, Hub shuffle buffer 20,000).")] = "adaptkit",
) -> None:
    """Sample source-side examples, render them with the chat template and pack them into token blocks."""
    from adaptkit.calibration import build_calibration
    from adaptkit.io.atomic import atomic_dir, check_output

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_output(output, overwrite)
    from adaptkit.commands.progress import notes

    calibration = build_calibration(model, data, fmt, pool, num_samples, block_size, seed, template, text_field, split, trust_remote_code,
                                    progress=notes(console, "calibrate"), recipe=recipe)
    with atomic_dir(output, overwrite) as tmp:
        calibration.save(tmp)
    m = calibration.manifest
    if m["num_samples"] < m["num_samples_requested"]:
        console.print(f"[yellow]warning[/yellow]: only {m['num_samples']} blocks of {m['block_size']} tokens could be made (asked for {num_samples}); {more_blocks_hint(m)}")
    kinds = ", ".join(f"{n} {k}" for k, n in m["examples_by_format"].items() if n)
    console.result(
        {"output": str(output), **m},
        f"[green]done[/green]: {m['num_samples']} blocks x {m['block_size']} tokens ({m['tokens']:,} tokens) from {m['examples_used']} examples ({kinds}); "
        f"template {m['template'] or 'none'}; written to {output}",
    )


def more_blocks_hint(manifest: dict) -> str:
    """How to get more blocks: a larger --pool while the pool left data unread, else the data is the limit."""
    if manifest["pool_sampled"] < manifest["examples_seen"]:
        return f"raise --pool (sampled {manifest['pool_sampled']:,} of {manifest['examples_seen']:,} examples) for more"
    return (f"all {manifest['examples_seen']:,} examples of the data were used (a larger --pool cannot help); "
            "give more data or a smaller --block-size for more")
