"""`adaptkit quickstart`: training methods side by side on the embedded demo (tiny model, UDHR text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console, DebugOpt, JsonOpt, OverwriteOpt, QuietOpt, SeedOpt


def command(
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for data, models, runs and results.")] = Path("runs/quickstart"),
    methods: Annotated[str, typer.Option("--methods", help="Comma list of training methods, or 'all' (every method that needs no mask or calibration set).")] = "all",
    arch: Annotated[str, typer.Option("--arch", help="Tiny model architecture: llama, olmo2 or qwen2.")] = "llama",
    source_lang: Annotated[str, typer.Option("--source-lang", help="Language the base model is trained on first.")] = "en",
    target_lang: Annotated[str, typer.Option("--target-lang", help="Language to adapt to.")] = "ha",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Adaptation steps per method.")] = 40,
    pretrain_steps: Annotated[int, typer.Option("--pretrain-steps", min=1, help="Source-language steps that make the base model.")] = 150,
    seq_len: Annotated[int, typer.Option("--seq-len", min=2, help="Tokens per block.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (tiny models like it high).")] = 3e-3,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="A method parameter: --set lora.r=16 (repeatable).")] = None,
    seed: SeedOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare training methods side by side: adapt a tiny source-language model to a target language
    with each method, then score target (adaptation) and source (forgetting) held-out loss."""
    import shutil

    from adaptkit.config import parse_set_overrides
    from adaptkit.errors import InputError
    from adaptkit.io.atomic import check_output
    from adaptkit.quickstart import QuickstartOptions, resolve_methods, run_quickstart, table_rows

    if not lr > 0:
        raise InputError(f"--lr: must be positive, got {lr}")
    options = QuickstartOptions(arch=arch, source_lang=source_lang, target_lang=target_lang, steps=steps, pretrain_steps=pretrain_steps,
                                seq_len=seq_len, batch_size=batch_size, lr=lr, seed=42 if seed is None else seed)
    overrides: dict[str, dict] = {}
    for path, value in parse_set_overrides(set_):
        if len(path) != 2:
            raise InputError(f"--set: expected METHOD.KEY=VALUE (e.g. lora.r=16), got '{'.'.join(path)}'")
        overrides.setdefault(path[0], {})[path[1]] = value
    chosen = resolve_methods(methods, overrides, options.layers)
    from adaptkit import demo

    demo.tiny_config(arch, 8)  # unknown architecture: one-line error before anything is written
    for lang, flag in ((source_lang, "--source-lang"), (target_lang, "--target-lang")):
        try:
            demo.udhr_paragraphs(lang)
        except InputError as exc:
            raise InputError(str(exc).replace("--target-lang", flag, 1)) from None
    check_output(output, overwrite)
    console = Console(json_out, quiet)
    created = not output.exists()
    if output.exists() and overwrite:
        shutil.rmtree(output)
    try:
        results = run_quickstart(output, chosen, options, log=lambda m: console.print(m))
    except BaseException:
        if created:
            shutil.rmtree(output, ignore_errors=True)
        raise
    console.table(f"{source_lang} -> {target_lang}: held-out loss after {steps} steps (lower is better)", *table_rows(results))
    console.result(results, f"[green]done[/green]: {len(chosen)} methods compared; table in {output / 'results.md'}")
