"""A study's evaluation and report: every final model and the base on the same held-out sets
(`adaptkit evaluate`'s runner, each model loaded once), then

    STUDY/eval/                 the evaluate report (results.json, results.md, tasks.png, details/)
    STUDY/report/results.json   one row per model: settings, perplexity and bits per byte per set,
                                source / target gain vs the base (bits per byte saved), Pareto membership
    STUDY/report/results.md     the same as a Markdown table
    STUDY/report/frontier.png   forgetting (x: source gain) vs learning (y: target gain), the Pareto front drawn
    STUDY/report/curves.png     training loss and every eval set's perplexity over the steps, all runs

The Pareto front: the models that no other model beats on both gains (>= on both, > on one);
gains are those of adaptkit.evals.report (mean over the role's sets, positive = better).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from adaptkit.study.spec import CALIB_DIR, Study
from adaptkit.study.state import result_record


def evaluate_study(study: Study, output: Path, say: Any = None) -> dict[str, dict[str, Any]]:
    """Perplexity of the base and every run's final model on the study's eval sets (STUDY/eval)."""
    from adaptkit.engine.evaluation import parse_eval_data
    from adaptkit.evals.quick import perplexity_report

    sets = parse_eval_data(study.evaluate)
    models = {study.base: Path(study.model), **run_models(study, output)}
    block_size = study.train.get("eval", {}).get("block_size")
    return perplexity_report(
        models, {s.name: Path(s.spec) for s in sets},
        source_task=[s.name for s in sets if s.role == "source"], target_task=[s.name for s in sets if s.role == "target"],
        baseline=study.base, block_size=block_size, output=output / "eval", console=say,
    )


def run_models(study: Study, output: Path) -> dict[str, Path]:
    """Each run's final model and, as RUN-ema / RUN-lawa, the averaged models it wrote beside it (final-ema/, final-lawa/)."""
    models = {}
    for run in study.runs:
        models[run.name] = output / "runs" / run.name / "final"
        models.update({f"{run.name}-{kind}": path for kind, path in averaged_models(output, run.name)})
    return models


def averaged_models(output: Path, run_name: str) -> list[tuple[str, Path]]:
    """(kind, directory) of the averaged models a run wrote beside final/: ('ema', RUN/final-ema), ..."""
    run_dir = output / "runs" / run_name
    return [(p.name.removeprefix("final-"), p) for p in sorted(run_dir.glob("final-*")) if p.is_dir()]


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names whose (x, y) no other point dominates (>= in both, > in one), sorted by x."""
    front = [
        name for name, (x, y) in points.items()
        if not any(ox >= x and oy >= y and (ox > x or oy > y) for other, (ox, oy) in points.items() if other != name)
    ]
    return sorted(front, key=lambda name: points[name])


def study_rows(study: Study, output: Path, evaluation: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's rows of a study: each run's method, seed, parameters, mixture, trainable share and time."""
    info = {}
    for run in study.runs:
        record = result_record(output, run) or {}
        info[run.name] = {"method": run.method, "seed": run.seed, "params": {k: v for k, v in run.params.items() if v != CALIB_DIR},
                          "mixture": run.mixture, "trainable_fraction": record.get("trainable_fraction"), "train_seconds": record.get("seconds")}
        for kind, _ in averaged_models(output, run.name):  # an average of this run's weights: the run's facts
            info[f"{run.name}-{kind}"] = {**info[run.name], "method": f"{run.method} ({kind})"}
    return model_rows(evaluation, [s.split("=", 1)[0] for s in study.evaluate], info)


def model_rows(evaluation: dict[str, dict[str, Any]], sets: list[str], info: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluated model (perplexity_report's summary), in its order: `info` about it, its
    perplexity and bits per byte per set, its source / target gains, and whether it is on the Pareto front."""
    rows = []
    for name, scores in evaluation.items():
        row: dict[str, Any] = {"model": name, "method": None, "seed": None, "params": {}, "mixture": {}}
        row.update({task: {"ppl": scores[task]["ppl"], "bits_per_byte": scores[task]["bits_per_byte"]} for task in sets})
        row["source_gain_bpb"] = scores.get("source_gain_bpb", 0.0)
        row["target_gain_bpb"] = scores.get("target_gain_bpb", 0.0)
        row.update({"trainable_fraction": None, "train_seconds": None, **info.get(name, {})})
        rows.append(row)
    front = set(pareto_front({r["model"]: (r["source_gain_bpb"], r["target_gain_bpb"]) for r in rows}))
    for row in rows:
        row["pareto"] = row["model"] in front
    return rows


def write_report(directory: Path, rows: list[dict[str, Any]], sets: list[str], metrics: dict[str, Path], facts: dict[str, Any]) -> dict[str, Any]:
    """results.json (`facts` and the rows), results.md, frontier.png and curves.png (from each run's metrics.jsonl) in `directory`."""
    from adaptkit.io.atomic import write_text_atomic

    directory.mkdir(exist_ok=True)
    report = {**facts, "models": rows}
    write_text_atomic(directory / "results.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(directory / "results.md", markdown(rows, sets))
    plot_frontier(rows, directory / "frontier.png")
    plot_all_curves(metrics, directory / "curves.png")
    return report


def write_study_report(study: Study, output: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's report in STUDY/report."""
    metrics = {run.name: output / "runs" / run.name / "metrics.jsonl" for run in study.runs}
    facts = {"study": str(study.path), "baseline": study.base, "eval_sets": study.evaluate}
    return write_report(output / "report", rows, [s.split("=", 1)[0] for s in study.evaluate], metrics, facts)


def table(rows: list[dict[str, Any]], sets: list[str]) -> tuple[list[str], list[list[str]]]:
    """Columns and cells of the results table (stdout and results.md)."""
    columns = ["model", "method", "seed", *[f"{s} ppl" for s in sets], "source gain (bits/byte)", "target gain (bits/byte)",
               "trainable", "train s", "Pareto"]
    cells = []
    for r in rows:
        fraction, seconds = r["trainable_fraction"], r["train_seconds"]
        cells.append([r["model"], r["method"] or "-", "-" if r["seed"] is None else str(r["seed"]), *[f"{r[s]['ppl']:.2f}" for s in sets],
                      f"{r['source_gain_bpb']:+.4f}", f"{r['target_gain_bpb']:+.4f}",
                      "-" if fraction is None else f"{100 * fraction:.1f}%", "-" if seconds is None else f"{seconds:.0f}",
                      "yes" if r["pareto"] else ""])
    return columns, cells


def markdown(rows: list[dict[str, Any]], sets: list[str]) -> str:
    columns, cells = table(rows, sets)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "Held-out perplexity; gain = bits per byte saved vs the base model (source: forgetting, target: learning), positive = better.\n\n" + "\n".join(lines) + "\n"


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> None:
    """Forgetting vs learning, one point per model (a star for models without a method: the base), the Pareto front as a dashed staircase."""
    import matplotlib.pyplot as plt

    from adaptkit.io.atomic import atomic_file

    fig = frontier_figure(rows)
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def frontier_figure(rows: list[dict[str, Any]]) -> Any:
    """The frontier plot's figure; labels of nearby points are moved apart so that none covers another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {r["model"]: (r["source_gain_bpb"], r["target_gain_bpb"]) for r in rows}
    row_of = {r["model"]: r for r in rows}
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 5.2))
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    xs, ys = zip(*(points[name] for name in front))
    ax.step(xs, ys, where="post", color="tab:red", ls="--", lw=1.2, label="Pareto front", zorder=2)
    colours = matplotlib.colormaps["tab10"]
    for i, (name, (x, y)) in enumerate(points.items()):
        ax.scatter([x], [y], s=110 if name in front else 60, marker="o" if row_of[name]["method"] else "*", color=colours(i % 10),
                   edgecolors="black", linewidths=1.2 if name in front else 0.4, zorder=3)
    ax.set_xlabel("source gain, bits per byte saved  (← forgetting)")
    ax.set_ylabel("target gain, bits per byte saved  (learning →)")
    ax.set_title("Forgetting vs learning vs the base model (Pareto front dashed)", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _place_labels(fig, ax, points)
    return fig


def _place_labels(fig: Any, ax: Any, points: dict[str, tuple[float, float]], fontsize: float = 8) -> None:
    """Annotate each point with its name at the first of a few offsets (right, above, below, left...) whose
    text box overlaps no label placed before it (boxes measured once drawn)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    offsets = [(5, 4), (5, -12), (5, 14), (5, -22), (5, 24), (5, -32), (5, 34), (5, -42)]
    for name, (x, y) in sorted(points.items(), key=lambda item: (-item[1][1], item[1][0])):
        for dx, dy in offsets:
            label = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == offsets[-1]:
                placed.append(box)
                break
            label.remove()


def plot_all_curves(runs: dict[str, Path], path: Path) -> None:
    """One figure: training loss of every run, then one panel per eval set (perplexity over the steps)."""
    import matplotlib.pyplot as plt

    from adaptkit.io.atomic import atomic_file

    fig = curves_figure(runs)
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def curves_figure(runs: dict[str, Path]) -> Any:
    """The curves plot's figure; a run with few loss rows gets markers, and a loss panel with none says why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptkit.engine.metrics import read_metrics

    metrics = {name: read_metrics(p) for name, p in runs.items() if p.is_file()}
    sets = list(dict.fromkeys((r["eval"], r.get("role")) for _, evals in metrics.values() for r in evals))
    fig, axes = plt.subplots(1, 1 + len(sets), figsize=(4.4 * (1 + len(sets)), 3.8), squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    for i, (name, (train, evals)) in enumerate(metrics.items()):
        few = len(train) < 3  # a run shorter than a few log_steps: markers, or its one point would not show
        axes[0][0].plot([r["step"] for r in train], [r["loss"] for r in train], color=colours(i % 10), lw=1.2, label=name,
                        marker="o" if few else None, markersize=4)
        for ax, (set_name, _) in zip(axes[0][1:], sets):
            points = [(r["step"], r["ppl"]) for r in evals if r["eval"] == set_name]
            if points:
                ax.plot(*zip(*points), color=colours(i % 10), marker="o", markersize=3, lw=1.2, label=name)
    axes[0][0].set(xlabel="step", ylabel="training loss", title="training loss")
    if not any(train for train, _ in metrics.values()):
        axes[0][0].text(0.5, 0.5, "no training loss logged:\nevery run is shorter\nthan its log_steps", ha="center", va="center",
                        transform=axes[0][0].transAxes, fontsize=9, color="grey")
    for ax, (set_name, role) in zip(axes[0][1:], sets):
        what = {"source": "forgetting", "target": "learning"}.get(role, "")
        ax.set(xlabel="step", ylabel="perplexity", title=f"{set_name} ({role or 'no role'}{': ' + what if what else ''})")
        ax.set_yscale("log")
    if any(train for train, _ in metrics.values()):
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def report_summary(report: dict[str, Any]) -> Optional[str]:
    front = [r["model"] for r in report["models"] if r["pareto"]]
    return f"Pareto front: {', '.join(front)}" if front else None
