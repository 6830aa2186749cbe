"""`adaptkit score`: per-parameter importance scores of a model (scorer plugins: wanda, magnitude, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console, DeviceOpt, OutputOpt, shared


def command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to score: directory, .gguf or Hub id.")],
    output: OutputOpt,
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration directory from `adaptkit calibrate` (needed by wanda, sparsegpt, fisher).")] = None,
    scorer: Annotated[str, typer.Option("--scorer", help="wanda (SSU default), magnitude, random, sparsegpt, fisher (see `adaptkit plugins --kind scorer`).")] = "wanda",
    include_embeddings: Annotated[bool, typer.Option("--include-embeddings", help="Also score the embeddings and LM head (trained in full by default).")] = False,
    element_scores: Annotated[bool, typer.Option("--element-scores", help="Also store per-element scores of matrices (for `adaptkit mask --granularity element`; as large as the model in float32).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Calibration blocks per forward pass (fisher: per gradient).")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="Model dtype while scoring: float32 or bfloat16 (statistics are float32 either way).")] = "float32",
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed (random scorer).")] = 42,
    layer_by_layer: Annotated[bool, typer.Option("--layer-by-layer", help="Read and run one decoder layer at a time (models larger than memory; needs a safetensors model directory; not fisher).")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the Hub.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Scorer parameter: --set damp=0.02 (repeatable).")] = None,
) -> None:
    """Score every parameter's columns (and rows) by importance to the source model."""
    import time
    from contextlib import nullcontext

    import torch
    from rich.progress import Progress

    from adaptkit.calibration import load_calibration
    from adaptkit.config import parse_set_overrides
    from adaptkit.errors import InputError
    from adaptkit.io.atomic import atomic_dir, check_output
    from adaptkit.io.devices import resolve_device
    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model_source
    from adaptkit.streamed_model import LayerwiseModel
    from adaptkit.registry import get_spec
    from adaptkit.scoring.run import compute_scores, require_layer_by_layer

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_output(output, overwrite)
    spec = get_spec("scorer", scorer, "--scorer")
    params = {".".join(path): value for path, value in parse_set_overrides(set_)}
    spec.validate_params(params, "--set")
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise InputError(f"--dtype: unknown dtype '{dtype}' (choose from float32, bfloat16)")
    target = torch.device(resolve_device(device))
    calibration = load_calibration(calib, "--calib") if calib is not None else None
    if spec.needs_calibration and calibration is None:
        raise InputError(f"--calib: scorer '{scorer}' scores on calibration data; give --calib DIR (from `adaptkit calibrate`)")
    source = resolve_model_source(model, "--model")
    tokenizer = load_tokenizer(source, trust_remote_code)
    if layer_by_layer:
        require_layer_by_layer(scorer)
    granularities = ("column", "row", "element") if element_scores else ("column", "row")
    started = time.perf_counter()
    if layer_by_layer:
        stream = LayerwiseModel.open(source, dtypes[dtype], target, trust_remote_code)
        total = len(stream.stages) + 1
    else:
        loaded = load_causal_lm(source, dtypes[dtype], trust_remote_code).to(target)
        total = calibration.blocks.shape[0] if calibration is not None and spec.needs_calibration else 0
    with (Progress(console=console.rich, transient=True) if console.show_progress and total else nullcontext()) as bar:
        advance = None
        if bar is not None:
            task = bar.add_task(f"scoring ({scorer}{', layer by layer' if layer_by_layer else ''})", total=total)
            advance = lambda n: bar.advance(task, n)  # noqa: E731
        if layer_by_layer:
            try:
                scores = compute_scores(stream, scorer, calibration, params, include_embeddings, granularities, batch_size, seed, None, tokenizer, advance)
            finally:
                stream.close()
        else:
            scores = compute_scores(loaded, scorer, calibration, params, include_embeddings, granularities, batch_size, seed, target, tokenizer, advance)
    seconds = time.perf_counter() - started
    with atomic_dir(output, overwrite) as tmp:
        scores.save(tmp)
    meta = scores.metadata
    console.result(
        {"output": str(output), "scorer": scorer, "parameters": len(scores.scores), "seconds": round(seconds, 3),
         "model_fingerprint": meta["model_fingerprint"], "calibration_hash": meta["calibration_hash"], "calibration_tokens": int(meta["calibration_tokens"]),
         **({"peak_weight_bytes": stream.peak_bytes} if layer_by_layer else {})},
        f"[green]done[/green]: {scorer} scores of {len(scores.scores)} parameters in {seconds:.1f} s"
        + (f" over {int(meta['calibration_tokens']):,} calibration tokens" if calibration is not None and spec.needs_calibration else "")
        + (" (layer by layer)" if layer_by_layer else "")
        + f"; written to {output}",
    )
