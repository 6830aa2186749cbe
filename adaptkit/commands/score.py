"""`adaptkit score`: per-parameter importance scores of a model (scorer plugins: wanda, magnitude, ...)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional

import typer

from adaptkit.commands.common import Console, DeviceOpt, OutputOpt, shared

if TYPE_CHECKING:
    import torch


def command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to score: directory, .gguf or Hub id.")],
    output: OutputOpt,
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration directory from `adaptkit calibrate` (needed by wanda, sparsegpt, fisher).")] = None,
    scorer: Annotated[str, typer.Option("--scorer", help="wanda (SSU default), magnitude, random, sparsegpt, fisher, spectrum (see `adaptkit plugins --kind scorer`).")] = "wanda",
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

    import torch

    from adaptkit.io.atomic import atomic_dir, check_output
    from adaptkit.io.devices import resolve_device
    from adaptkit.io.models import load_tokenizer, resolve_model_source
    from adaptkit.scoring.run import require_layer_by_layer

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_output(output, overwrite)
    spec, params, torch_dtype = _scorer_settings(scorer, set_, dtype)
    target = torch.device(resolve_device(device))
    calibration = _calibration(calib, spec, scorer)
    source = resolve_model_source(model, "--model")
    tokenizer = load_tokenizer(source, trust_remote_code)
    if layer_by_layer:
        require_layer_by_layer(scorer)
    granularities = ("column", "row", "element") if element_scores else ("column", "row")
    started = time.perf_counter()
    settings = dict(scorer=scorer, calibration=calibration, scorer_params=params, include_embeddings=include_embeddings,
                    granularities=granularities, batch_size=batch_size, seed=seed, tokenizer=tokenizer)
    if layer_by_layer:
        scores, peak = _score_layer_by_layer(source, torch_dtype, target, trust_remote_code, console, settings)
    else:
        scores, peak = _score_loaded(source, torch_dtype, target, trust_remote_code, console, spec.needs_calibration, settings), None
    seconds = time.perf_counter() - started
    with atomic_dir(output, overwrite) as tmp:
        scores.save(tmp)
    _report(console, output, scorer, scores, seconds, calibration is not None and spec.needs_calibration, peak)


def _scorer_settings(scorer: str, set_: Optional[list[str]], dtype: str) -> tuple[Any, dict[str, Any], "torch.dtype"]:
    """The scorer's spec, its validated `--set` parameters and the model dtype."""
    import torch

    from adaptkit.settings import parse_set_overrides
    from adaptkit.errors import InputError
    from adaptkit.registry import get_spec

    spec = get_spec("scorer", scorer, "--scorer")
    params = {".".join(path): value for path, value in parse_set_overrides(set_)}
    spec.validate_params(params, "--set")
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise InputError(f"--dtype: unknown dtype '{dtype}' (choose from float32, bfloat16)")
    return spec, params, dtypes[dtype]


def _calibration(calib: Optional[Path], spec: Any, scorer: str) -> Any:
    from adaptkit.calibration import load_calibration
    from adaptkit.errors import InputError

    calibration = load_calibration(calib, "--calib") if calib is not None else None
    if spec.needs_calibration and calibration is None:
        raise InputError(f"--calib: scorer '{scorer}' scores on calibration data; give --calib DIR (from `adaptkit calibrate`)")
    return calibration


@contextmanager
def _progress(console: Console, label: str, total: int) -> Iterator[Optional[Callable[[int], None]]]:
    """An `advance(n)` of a Rich progress bar over `total` steps (None without one: no TTY, --quiet or nothing to count)."""
    if not (console.show_progress and total):
        yield None
        return
    from rich.progress import Progress

    with Progress(console=console.rich, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _score_loaded(source: Any, dtype: "torch.dtype", target: "torch.device", trust_remote_code: bool, console: Console, counted: bool, settings: dict[str, Any]) -> Any:
    """Scores of the whole loaded model; the bar counts calibration blocks."""
    from adaptkit.io.models import load_causal_lm
    from adaptkit.scoring.run import compute_scores

    loaded = load_causal_lm(source, dtype, trust_remote_code).to(target)
    calibration = settings["calibration"]
    total = calibration.blocks.shape[0] if calibration is not None and counted else 0
    with _progress(console, f"scoring ({settings['scorer']})", total) as advance:
        return compute_scores(loaded, device=target, progress=advance, **settings)


def _score_layer_by_layer(source: Any, dtype: "torch.dtype", target: "torch.device", trust_remote_code: bool, console: Console, settings: dict[str, Any]) -> tuple[Any, int]:
    """(scores, peak resident weight bytes) reading one decoder layer at a time; the bar counts stages."""
    from adaptkit.scoring.run import compute_scores
    from adaptkit.streamed_model import LayerwiseModel

    stream = LayerwiseModel.open(source, dtype, target, trust_remote_code)
    with _progress(console, f"scoring ({settings['scorer']}, layer by layer)", len(stream.stages) + 1) as advance:
        try:
            scores = compute_scores(stream, device=None, progress=advance, **settings)
        finally:
            stream.close()
    return scores, stream.peak_bytes


def _report(console: Console, output: Path, scorer: str, scores: Any, seconds: float, on_calibration: bool, peak: Optional[int]) -> None:
    meta = scores.metadata
    console.result(
        {"output": str(output), "scorer": scorer, "parameters": len(scores.scores), "seconds": round(seconds, 3),
         "model_fingerprint": meta["model_fingerprint"], "calibration_hash": meta["calibration_hash"], "calibration_tokens": int(meta["calibration_tokens"]),
         **({"peak_weight_bytes": peak} if peak is not None else {})},
        f"[green]done[/green]: {scorer} scores of {len(scores.scores)} parameters in {seconds:.1f} s"
        + (f" over {int(meta['calibration_tokens']):,} calibration tokens" if on_calibration else "")
        + (" (layer by layer)" if peak is not None else "")
        + f"; written to {output}",
    )
