"""One call for the quickstart: source/target perplexity of several models and the full report.

    perplexity_report({"source": Path("models/source"), "ssu": Path("runs/ssu/final")},
                      {"en (source)": Path("data/en-test.txt"), "ha (target)": Path("data/ha-test.txt")},
                      source_task="en (source)", target_task="ha (target)", baseline="source",
                      block_size=128, output=Path("eval"))

Writes results.json, results.md, tasks.png and forgetting_learning.png into `output` and
returns, per model, the perplexity and bits per byte of each task, its mean source and
target gains vs the baseline (`source_gain_bpb`, `target_gain_bpb`: bits per byte saved,
positive = better) and the `extra` facts given for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def perplexity_report(
    models: dict[str, Path],
    files: dict[str, Path],
    source_task: str | list[str],
    target_task: str | list[str],
    baseline: str,
    block_size: int | None = None,
    output: Path = Path("eval"),
    extra: dict[str, dict[str, Any]] | None = None,
    console: Any = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    from adaptkit.evals.report import write_report
    from adaptkit.evals.runner import ModelRef, prepare_tasks, run_evaluation

    settings = {"batch_size": batch_size, **({"block_size": block_size} if block_size else {})}
    prepared = prepare_tasks([f"ppl:{name}={path}" for name, path in files.items()], {"ppl": settings})
    say = (lambda message: console.print(f"[dim]{message}[/dim]")) if console is not None else None
    run = run_evaluation([ModelRef(name, str(path)) for name, path in models.items()], prepared, device=device, progress=say)
    as_list = lambda task: [task] if isinstance(task, str) else list(task)  # noqa: E731
    results = write_report(run, Path(output), baseline, as_list(source_task), as_list(target_task), model_info=extra)
    summary: dict[str, dict[str, Any]] = {}
    for name in models:
        row: dict[str, Any] = {task: {k: results["results"][name][task][k] for k in ("ppl", "bits_per_byte")} for task in files}
        row.update(results.get("summary", {}).get(name, {}))
        row.update((extra or {}).get(name, {}))
        summary[name] = row
    return summary
