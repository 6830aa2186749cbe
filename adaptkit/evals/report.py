"""The evaluation report: results.json, results.md and PNG plots.

Changes against a baseline model are reported in the unit that suits the metric:

- perplexity tasks (those with a `bits_per_byte` metric): the change in bits per byte
  (`bpb_change = value - baseline`, lower is better) and `gain = -bpb_change` in bits/byte.
  A percent change of perplexity is not symmetric (doubling is +100%, halving -50%, and a
  model that forgets can show -353% next to +97% learning); bits per byte is the log of
  perplexity per byte, so equal steps mean equal factors and tokenizers compare.
- bounded metrics (accuracy, chrF, ...): the absolute change (`value - baseline`) and the
  relative change in percent (`100 * (value - baseline) / |baseline|`), the way the SSU paper
  reports them; `gain` is that relative change signed so that positive means better.

Every change row says its `gain_unit` ("bits/byte" or "%"). The summary averages the gains of
the source tasks and of the target tasks per unit (`source_gain_bpb`, `source_gain_pct`, ...).
The forgetting-vs-learning scatter plots, for each model, the mean source gain (x: negative =
forgetting) against the mean target gain (y: positive = learning).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from adaptkit.errors import InputError
from adaptkit.evals.runner import EvalRun

VERSIONED_PACKAGES = ("adaptkit", "torch", "transformers", "lm_eval", "lighteval", "sacrebleu", "py3langid", "pycld2")


def package_versions(names: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
    if "adaptkit" not in versions:
        from adaptkit import __version__

        versions["adaptkit"] = __version__
    return versions


def check_roles(run: EvalRun, baseline: str | None, source_tasks: list[str], target_tasks: list[str]) -> None:
    """Baseline must be one of the models; tagged tasks must exist and not be both."""
    names = [m["name"] for m in run.models]
    if baseline is not None and baseline not in names:
        raise InputError(f"--baseline: '{baseline}' is not one of the evaluated models ({', '.join(names)})")
    task_names = [t.name for t in run.tasks]
    check_task_roles(task_names, source_tasks, target_tasks)


def check_task_roles(task_names: list[str], source_tasks: list[str], target_tasks: list[str]) -> None:
    from adaptkit.errors import did_you_mean

    for flag, tagged in (("--source-task", source_tasks), ("--target-task", target_tasks)):
        for name in tagged:
            if name not in task_names:
                raise InputError(f"{flag}: no task called '{name}'{did_you_mean(name, task_names)} (tasks: {', '.join(task_names)})")
    both = set(source_tasks) & set(target_tasks)
    if both:
        raise InputError(f"--source-task/--target-task: '{sorted(both)[0]}' is tagged as both source and target")


BPB, PCT = "bits/byte", "%"
UNIT_KEYS = {BPB: "bpb", PCT: "pct"}


def is_perplexity_task(run: EvalRun, task: str) -> bool:
    """A task whose changes are reported in bits per byte: its metrics include `bits_per_byte`."""
    return all("bits_per_byte" in run.results[m["name"]][task] for m in run.models)


def compute_changes(run: EvalRun, baseline: str) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> task -> the change vs the baseline: bits per byte for perplexity tasks, % for bounded metrics."""
    changes: dict[str, dict[str, dict[str, Any]]] = {}
    for model in (m["name"] for m in run.models if m["name"] != baseline):
        changes[model] = {}
        for task in run.tasks:
            value, base = run.primary(model, task.name), run.primary(baseline, task.name)
            rel = 100.0 * (value - base) / abs(base) if base else float("nan")
            row = {"metric": task.primary, "value": value, "baseline": base, "abs_change": value - base, "rel_change_pct": rel}
            if is_perplexity_task(run, task.name):
                change = run.results[model][task.name]["bits_per_byte"] - run.results[baseline][task.name]["bits_per_byte"]
                row.update(bpb_change=change, gain=-change, gain_unit=BPB)
            else:
                row.update(gain=rel if task.higher_is_better else -rel, gain_unit=PCT)
            changes[model][task.name] = row
    return changes


def summarize(changes: dict[str, dict[str, dict[str, Any]]], source_tasks: list[str], target_tasks: list[str]) -> dict[str, dict[str, float]]:
    """Per model: the mean gain over the source tasks and over the target tasks, per unit
    (`source_gain_bpb` over perplexity tasks, `source_gain_pct` over bounded metrics, and the same for target)."""
    summary = {}
    for model, per_task in changes.items():
        row = {}
        for role, tagged in (("source", source_tasks), ("target", target_tasks)):
            for unit, suffix in UNIT_KEYS.items():
                values = [per_task[t]["gain"] for t in tagged if per_task[t]["gain_unit"] == unit and not math.isnan(per_task[t]["gain"])]
                if values:
                    row[f"{role}_gain_{suffix}"] = sum(values) / len(values)
        summary[model] = row
    return summary


def role_gain(summary_row: dict[str, float], role: str) -> tuple[float, str] | None:
    """(mean gain, unit) of a role for a plot axis or a table column: bits/byte when the role has
    perplexity tasks, else %."""
    for unit, suffix in UNIT_KEYS.items():
        if f"{role}_gain_{suffix}" in summary_row:
            return summary_row[f"{role}_gain_{suffix}"], unit
    return None


def build_results(
    run: EvalRun,
    baseline: str | None = None,
    source_tasks: list[str] | None = None,
    target_tasks: list[str] | None = None,
    model_info: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    source_tasks, target_tasks = list(source_tasks or []), list(target_tasks or [])
    check_roles(run, baseline, source_tasks, target_tasks)
    roles = {**{t: "source" for t in source_tasks}, **{t: "target" for t in target_tasks}}
    result: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "config": run.config,
        "models": [{**m, **({"info": model_info[m["name"]]} if model_info and m["name"] in model_info else {})} for m in run.models],
        "tasks": [
            {
                "name": t.name,
                "backend": t.backend,
                "spec": t.spec,
                "primary_metric": t.primary,
                "higher_is_better": t.higher_is_better,
                "role": roles.get(t.name),
                **({"info": t.info} if t.info else {}),
            }
            for t in run.tasks
        ],
        "results": run.results,
        "seconds": run.seconds,
        "baseline": baseline,
    }
    if baseline is not None:
        changes = compute_changes(run, baseline)
        result["changes"] = changes
        result["summary"] = summarize(changes, source_tasks, target_tasks)
    return result


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _signed(value: float, suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.3g}{suffix}"


def markdown(results: dict[str, Any]) -> str:
    """The Markdown report: primary metrics, changes vs the baseline, every metric."""
    tasks = results["tasks"]
    models = [m["name"] for m in results["models"]]
    lines = ["# Evaluation results", ""]
    header = "| model | " + " | ".join(
        f"{t['name']} ({t['primary_metric']} {'↑' if t['higher_is_better'] else '↓'})" + (f" [{t['role']}]" if t["role"] else "")
        for t in tasks
    ) + " |"
    lines += [header, "|" + "---|" * (len(tasks) + 1)]
    for model in models:
        cells = [_fmt(results["results"][model][t["name"]][t["primary_metric"]]) for t in tasks]
        label = f"{model} (baseline)" if model == results.get("baseline") else model
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if results.get("changes"):
        lines += _change_table(results, tasks)
    infos = {m["name"]: m["info"] for m in results["models"] if m.get("info")}
    if infos:
        keys = sorted({k for info in infos.values() for k in info})
        lines += ["", "## Models", "", "| model | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for name, info in infos.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(info[k]) if isinstance(info.get(k), float) else str(info.get(k, "")) for k in keys) + " |")
    if results.get("suite"):
        lines += _suite_section(results["suite"])
    lines += ["", "## All metrics", ""]
    for t in tasks:
        metric_names = [k for k, v in results["results"][models[0]][t["name"]].items() if isinstance(v, (int, float))]
        lines += [f"### {t['name']} ({t['backend']}: `{t['spec']}`)", "",
                  "| model | " + " | ".join(metric_names) + " |", "|" + "---|" * (len(metric_names) + 1)]
        for model in models:
            row = results["results"][model][t["name"]]
            lines.append(f"| {model} | " + " | ".join(_fmt(float(row[m])) for m in metric_names) + " |")
        lines.append("")
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    lines += [f"Versions: {versions}.", ""]
    return "\n".join(lines)


def _suite_section(suite: dict[str, Any]) -> list[str]:
    lines = ["", f"## Suite `{suite['name']}`", "", f"Ran: {', '.join(e['name'] for e in suite['run'])}."]
    if suite["not_run"]:
        lines += ["", "Not run (data or tools absent here):", "", "| task | role | why / how to get it |", "|---|---|---|"]
        lines += [f"| {e['name']} | {e['role']} | {e['reason'].replace('|', '/')} |" for e in suite["not_run"]]
    return lines


def _change_cell(change: dict[str, Any]) -> str:
    if change["gain_unit"] == BPB:
        return f"{_signed(change['bpb_change'])} bits/byte ({change['metric']} {_signed(change['abs_change'])})"
    return f"{_signed(change['abs_change'])} ({_signed(change['rel_change_pct'], '%')}, gain {_signed(change['gain'], '%')})"


def _change_table(results: dict[str, Any], tasks: list[dict[str, Any]]) -> list[str]:
    """The changes vs the baseline, each in its unit, and the mean gains per role and unit."""
    columns = [(f"{role} gain ({unit})", f"{role}_gain_{suffix}", unit) for role in ("source", "target") for unit, suffix in UNIT_KEYS.items()
               if any(f"{role}_gain_{suffix}" in row for row in results["summary"].values())]
    lines = ["", f"## Change vs baseline `{results['baseline']}`", "",
             "Perplexity tasks: change in bits per byte (lower is better; a percent change of perplexity is not symmetric). "
             "Other metrics: absolute change, relative change in %, and gain (positive = better, whatever the metric's direction). "
             "Gain columns: the mean gain over the tasks of that role, positive = better (source: negative = forgetting).", ""]
    lines += ["| model | " + " | ".join(t["name"] for t in tasks) + "".join(f" | {title}" for title, _, _ in columns) + " |",
              "|" + "---|" * (len(tasks) + 1 + len(columns))]
    for model, per_task in results["changes"].items():
        summary = results["summary"].get(model, {})
        cells = [_change_cell(per_task[t["name"]]) for t in tasks]
        cells += [_signed(summary.get(key, float("nan")), "%" if unit == PCT else "") for _, key, unit in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def plot_tasks(results: dict[str, Any], path: Path) -> None:
    """One bar panel per task: the primary metric of each model (baseline hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    models = [m["name"] for m in results["models"]]
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for i, task in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        values = [results["results"][m][task["name"]][task["primary_metric"]] for m in models]
        bars = ax.bar(range(len(models)), values, color=[colors[j % len(colors)] for j in range(len(models))])
        for j, model in enumerate(models):
            if model == results.get("baseline"):
                bars[j].set_hatch("//")
                bars[j].set_edgecolor("black")
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8, padding=2)
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
        arrow = "higher is better" if task["higher_is_better"] else "lower is better"
        role = f" [{task['role']}]" if task["role"] else ""
        ax.set_title(f"{task['name']}{role}\n{task['primary_metric']} ({arrow})", fontsize=9)
        ax.margins(y=0.15)
    for k in range(len(tasks), rows * cols):
        axes[k // cols][k % cols].axis("off")
    if results.get("baseline"):
        from matplotlib.patches import Patch

        key = Patch(facecolor="white", edgecolor="black", hatch="//", label=f"hatched: the baseline ({results['baseline']}), changes are measured against it")
        fig.legend(handles=[key], loc="lower center", fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_forgetting_learning(results: dict[str, Any], path: Path) -> bool:
    """Scatter: mean source gain (x) vs mean target gain (y) per model, in bits/byte for perplexity
    tasks (else %), one marker and legend entry per model; False if not drawable."""
    summary = results.get("summary") or {}
    points = {m: (role_gain(s, "source"), role_gain(s, "target")) for m, s in summary.items()}
    points = {m: (x, y) for m, (x, y) in points.items() if x is not None and y is not None}
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (_, x_unit), (_, y_unit) = next(iter(points.values()))
    points = {m: (x[0], y[0]) for m, (x, y) in points.items() if x[1] == x_unit and y[1] == y_unit}
    fig, ax = plt.subplots(figsize=(6.6, 5.2))
    span_x = max([abs(x) for x, _ in points.values()] + [1e-3 if x_unit == BPB else 1.0]) * 1.3
    span_y = max([abs(y) for _, y in points.values()] + [1e-3 if y_unit == BPB else 1.0]) * 1.3
    ax.set_xlim(-span_x, span_x)
    ax.set_ylim(-span_y, span_y)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.fill_between([0, span_x], 0, span_y, color="tab:green", alpha=0.07)
    ax.text(span_x * 0.97, span_y * 0.95, "learns, keeps source", ha="right", va="top", fontsize=8, color="darkgreen")
    ax.text(-span_x * 0.97, span_y * 0.95, "learns, forgets source", ha="left", va="top", fontsize=8, color="darkred")
    ax.scatter([0], [0], marker="*", s=180, color="black", zorder=4, label=f"{results['baseline']} (baseline)")
    number = (lambda v, unit: f"{v:+.3f}" if unit == BPB else f"{v:+.1f}%")  # noqa: E731
    colors, markers = plt.get_cmap("tab10").colors, "osD^vP<>Xh"
    for i, (model, (x, y)) in enumerate(points.items()):
        ax.scatter([x], [y], s=70, color=colors[(i + 1) % len(colors)], marker=markers[i % len(markers)], zorder=3,
                   edgecolors="black", linewidths=0.5, label=f"{model} ({number(x, x_unit)}, {number(y, y_unit)})")
    ax.legend(loc="lower right", fontsize=8, title="model (source, target gain)", title_fontsize=8)
    roles = {"source": [], "target": []}
    for t in results["tasks"]:
        if t["role"]:
            roles[t["role"]].append(t["name"])
    ax.set_xlabel(f"source gain, {_unit_words(x_unit)} ({', '.join(roles['source'])})  ← forgetting")
    ax.set_ylabel(f"target gain, {_unit_words(y_unit)} ({', '.join(roles['target'])})  learning →")
    ax.set_title("Forgetting vs learning (relative to the baseline; positive = better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _unit_words(unit: str) -> str:
    return "bits per byte saved" if unit == BPB else "mean change in %"


def write_report(
    run: EvalRun,
    directory: Path,
    baseline: str | None = None,
    source_tasks: list[str] | None = None,
    target_tasks: list[str] | None = None,
    plots: bool = True,
    model_info: dict[str, dict[str, Any]] | None = None,
    suite: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write results.json, results.md, tasks.png (and forgetting_learning.png) into `directory`.

    `model_info` adds facts about each model (method, training seconds, trainable share...)
    to results.json and to a table in results.md; `suite` (adaptkit.evals.suites.Suite.report)
    says which suite ran and lists the tasks it could not run, with why.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    results = build_results(run, baseline, source_tasks, target_tasks, model_info)
    if suite is not None:
        results["suite"] = suite
    files = ["results.json", "results.md"]
    if plots:
        plot_tasks(results, directory / "tasks.png")
        files.append("tasks.png")
        if plot_forgetting_learning(results, directory / "forgetting_learning.png"):
            files.append("forgetting_learning.png")
    for model, per_task in run.records.items():
        for task, records in per_task.items():
            details = directory / "details" / _safe(model)
            details.mkdir(parents=True, exist_ok=True)
            path = details / f"{_safe(task)}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            files.append(str(path.relative_to(directory)))
    results["files"] = files
    (directory / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    (directory / "results.md").write_text(markdown(results), encoding="utf-8")
    return results


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
