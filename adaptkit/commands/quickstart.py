"""`adaptkit quickstart`: the forgetting/learning trade-off, end to end, offline, on a CPU.

With no `--model`, it builds the embedded default: a byte-level BPE tokenizer and a tiny
Llama pre-trained on the English UDHR (the "source" model, which knows an English-like
source language). It then continues pre-training that model on the target language's
UDHR with each method in `--methods` (default: FFT and SSU-Wanda), and reports source
and target perplexity on held-out paragraphs before and after. While each method trains,
the held-out source and target sets are evaluated (`train --eval-data`) and drawn over the
steps: each run's `runs/NAME/curves.png`, and all methods side by side in `curves.png`. As a small
study (`adaptkit study`), it also writes the study report in `report/`: the results table with the
Pareto front, `frontier.png` (forgetting vs learning, the front drawn) and every run's curves in `curves.png`.
With `--model` (a Hub id, a local directory or a GGUF file) the same comparison runs on a
real model.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adaptkit.commands.common import Console, shared


@contextlib.contextmanager
def _inside(directory: Path):
    """Run with `directory` as working directory, so every path the runs record is relative to it."""
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def command(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("-o", "--output", help="Demo directory (data, models, runs, eval report).")] = Path("demo"),
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A real model instead of the embedded default: Hub id, local dir or .gguf file.")] = None,
    target_lang: Annotated[str, typer.Option("--target-lang", help="Target language of the UDHR text (e.g. ha, ig, am, ky, ne, sw, yo).")] = "ha",
    source_lang: Annotated[str, typer.Option("--source-lang", help="Source language the model already knows.")] = "en",
    methods: Annotated[str, typer.Option("--methods", help="Comma list of training methods to compare (see `adaptkit plugins --kind method`).")] = "fft,ssu-wanda",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Adaptation steps per method.")] = 100,
    source_steps: Annotated[int, typer.Option("--source-steps", min=1, help="Pre-training steps of the embedded source model.")] = 150,
    seq_len: Annotated[int, typer.Option("--seq-len", min=8, help="Tokens per block.")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per step.")] = 8,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adaptation learning rate.", show_default="1e-3 for the embedded model, 5e-5 with --model (the SSU paper's)")] = None,
    freeze_ratio: Annotated[float, typer.Option("--freeze-ratio", help="Fraction frozen by methods that have this parameter (ssu-*).")] = 0.5,
    calib_samples: Annotated[int, typer.Option("--calib-samples", min=1, help="Calibration blocks for methods that need them.")] = 32,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="A method parameter: --set lora.r=16, --set layer-freeze.layers=0-1 (repeatable).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Run the whole pipeline on the embedded default (or --model): adapt with several methods, compare forgetting and learning."""
    from adaptkit import demo
    from adaptkit.engine.evaluation import plot_methods
    from adaptkit.errors import InputError
    from adaptkit.io.atomic import atomic_dir
    from adaptkit.scoring.freeze import check_ratio
    from adaptkit.registry import get_spec

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    method_names = [m.strip() for m in methods.split(",") if m.strip()]
    if not method_names:
        raise InputError("--methods: give at least one method name")
    specs = {name: get_spec("method", name, "--methods") for name in method_names}
    check_ratio(freeze_ratio)  # checked before any training runs, also when no method has the parameter
    method_params = _method_params(specs, set_, freeze_ratio)
    texts = {lang: demo.split_corpus(lang) for lang in (source_lang, target_lang)}
    if source_lang == target_lang:
        raise InputError("--target-lang: must differ from --source-lang")
    if model:  # checked, and made absolute, before anything is written or the directory changes
        from adaptkit.io.models import resolve_model_source

        source = resolve_model_source(model, "--model")
        model = source.location if source.kind == "hub" else str(Path(source.location).resolve())
    started = time.perf_counter()
    with atomic_dir(output, overwrite) as work, _inside(work):
        data = Path("data")
        data.mkdir()
        files = {}
        for role, lang in (("source", source_lang), ("target", target_lang)):
            train, test = texts[lang]
            files[role] = demo.write_lines(train, data / f"{lang}-train.txt")
            files[f"{role}-test"] = demo.write_lines(test, data / f"{lang}-test.txt")
        source_dir = _source_model(model, files, texts, source_steps, seq_len, batch_size, seed, console)
        chat_file = _chat_rendered(source_dir, texts[source_lang][1], data / f"{source_lang}-chat-test.jsonl")
        if chat_file is not None:
            files["chat-test"] = chat_file
        _calibration(specs, source_dir, files["source"], seq_len, calib_samples, seed, console)
        rows: dict[str, Any] = {"source": {"dir": str(source_dir), "seconds": 0.0}}
        evals = _eval_sets(files, source_lang, target_lang, steps, seq_len)
        for name, spec in specs.items():
            console.print(f"[bold]adapting[/bold] with {name} ({steps} steps on {target_lang})")
            run = _adapt(name, spec, source_dir, files["target"], steps, seq_len, batch_size,
                         lr if lr is not None else (5e-5 if model else 1e-3), method_params[name], seed, console, evals)
            rows[name] = {"dir": str(run.final_dir), "seconds": run.seconds, "trainable_fraction": run.trainable / max(1, run.total)}
        plot_methods({name: Path("runs") / name / "metrics.jsonl" for name in specs}, Path("curves.png"))
        report = _evaluate(rows, files, source_lang, target_lang, seq_len, console)
        front = _study_report(report, specs, method_params, seed)
    _print_table(report, source_lang, target_lang, console)
    summary = {"output": str(output), "models": report, "pareto_front": front, "seconds": round(time.perf_counter() - started, 1)}
    console.result(summary, f"[green]done[/green] in {summary['seconds']} s: report in {output}/eval/ and {output}/report/ (Pareto front: {', '.join(front)})")


def _tasks(report: dict[str, Any]) -> list[str]:
    """The held-out sets of the report, in order."""
    return [t for t in next(iter(report.values())) if isinstance(t, str) and t.endswith(("(source)", "(target)"))]


def _study_report(report: dict[str, Any], specs, method_params, seed: int) -> list[str]:
    """The quickstart as a small study: the study report (results table, Pareto frontier, all curves) in report/."""
    from adaptkit.study.report import model_rows, write_report

    tasks = _tasks(report)
    info = {name: {"method": name, "seed": seed, "params": {k: v for k, v in method_params[name].items() if v != CALIB_DIR},
                   "trainable_fraction": report[name].get("trainable_fraction"), "train_seconds": report[name].get("seconds")} for name in specs}
    rows = model_rows(report, tasks, info)
    write_report(Path("report"), rows, tasks, {name: Path("runs") / name / "metrics.jsonl" for name in specs}, {"baseline": "source"})
    return [row["model"] for row in rows if row["pareto"]]


def _print_table(report: dict[str, Any], source_lang: str, target_lang: str, console: Console) -> None:
    """The forgetting/learning trade-off at a glance: gains in bits per byte (perplexity tasks)."""
    tasks = _tasks(report)
    rows = []
    for name, row in report.items():
        gain = lambda key: f"{row[key]:+.3f}" if key in row else "-"  # noqa: E731
        fraction = row.get("trainable_fraction")
        rows.append([
            name, *[f"{row[task]['ppl']:.1f}" for task in tasks], gain("source_gain_bpb"), gain("target_gain_bpb"),
            f"{100 * fraction:.0f}%" if fraction is not None else "-", f"{row.get('seconds', 0):.1f}",
        ])
    console.table(
        f"held-out perplexity; gain = bits per byte saved vs the source model ({source_lang}: forgetting, {target_lang}: learning), positive = better",
        ["model", *[f"{task} ppl" for task in tasks], "source gain (bits/byte)", "target gain (bits/byte)", "trainable", "train s"],
        rows,
    )


def _train(config_values: dict[str, Any], run_dir: Path, console: Console):
    """One engine run; its method parameters were validated up front (_method_params)."""
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.registry import get_spec

    config = TrainConfig.model_validate(config_values)
    method = get_spec("method", config.method).build(config.method_params, f"--set {config.method}.*")
    return train(config, method, run_dir, log=lambda m: console.print(m))


def _source_model(model, files, texts, source_steps, seq_len, batch_size, seed, console) -> Path:
    """The model that knows the source language: given with --model, or built and pre-trained here."""
    from adaptkit import demo
    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model_source, save_model

    if model:
        source = resolve_model_source(model, "--model")
        if source.kind == "dir":
            return Path(source.location).resolve()
        console.print(f"loading {model}")
        target = Path("source")
        save_model(load_causal_lm(source), load_tokenizer(source), target)
        return target
    console.print("building the embedded source model (tiny Llama pre-trained on the English UDHR)")
    all_text = [p for train, test in texts.values() for p in train]
    tokenizer = demo.train_tokenizer(all_text, vocab_size=512)
    init = Path("init")
    save_model(demo.tiny_model("llama", len(tokenizer), seed=seed, hidden=128, layers=4), tokenizer, init)
    run = _train(
        {
            "model": str(init),
            "data": {"paths": [str(files["source"])], "seq_len": seq_len},
            "max_steps": source_steps,
            "batch_size": batch_size,
            "optimizer": {"lr": 3e-3, "weight_decay": 0.01},
            "schedule": {"name": "cosine", "warmup_ratio": 0.05},
            "seed": seed,
            "log_steps": 50,
            "save_steps": 0,
        },
        Path("runs/source"),
        console,
    )
    return run.final_dir


def _chat_rendered(model_dir: Path, paragraphs: list[str], path: Path) -> Optional[Path]:
    """Held-out source paragraphs as assistant turns in the model's chat template (instruct models only).

    Perplexity on this text measures whether adaptation damaged the chat format as well as the
    source language.
    """
    import json

    from adaptkit.io.models import load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(str(model_dir)))
    if not getattr(tokenizer, "chat_template", None):
        return None
    question = "Quote a passage of the Universal Declaration of Human Rights."
    rows = [
        tokenizer.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": p}], tokenize=False)
        for p in paragraphs
    ]
    path.write_text("".join(json.dumps({"text": row}, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _calibration(specs, source_dir, source_text, seq_len, samples, seed, console) -> Optional[Path]:
    """A calibration set (in CALIB_DIR) from source-side text, for methods that need one."""
    if not any(_needs_calibration(spec) for spec in specs.values()):
        return None
    from adaptkit.calibration import build_calibration
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    console.print(f"building a calibration set ({samples} blocks of {seq_len} source tokens)")
    tokenizer = load_tokenizer(resolve_model_source(str(source_dir)))
    calibration = build_calibration(
        tokenizer, [str(source_text)], fmt="text", pool=10_000, num_samples=samples, block_size=seq_len, seed=seed
    )
    path = Path(CALIB_DIR)
    calibration.save(path)
    return path


CALIB_DIR = "calib"  # in the demo directory


def _needs_calibration(spec) -> bool:
    return bool(spec.needs & {"mask", "calibration"})


def _method_params(specs, overrides: Optional[list[str]], freeze_ratio: float) -> dict[str, dict[str, Any]]:
    """Each method's parameters: --freeze-ratio where it applies, the demo's calibration set for methods
    that need one, then `--set METHOD.KEY=VALUE` (one method) or `--set KEY=VALUE` (every method in --methods
    that has KEY), as `train` accepts them; validated (needs included) before anything is written."""
    from adaptkit.config import parse_set_overrides
    from adaptkit.errors import InputError
    from adaptkit.errors import did_you_mean

    params = {name: ({"freeze_ratio": freeze_ratio} if "freeze_ratio" in spec.params.model_fields else {}) for name, spec in specs.items()}
    for name, spec in specs.items():
        if _needs_calibration(spec):
            params[name]["calib"] = CALIB_DIR
    for path, value in parse_set_overrides(overrides):
        having = [name for name, spec in specs.items() if len(path) == 1 and path[0] in spec.params.model_fields]
        if having:
            for name in having:
                params[name][path[0]] = value
        elif len(path) != 2 or path[0] not in specs:
            raise InputError(f"--set: expected METHOD.KEY=VALUE for a method in --methods ({', '.join(specs)}) or KEY=VALUE for a parameter "
                             f"one of them has, got '{'.'.join(path)}'{did_you_mean(path[0], specs)}")
        else:
            params[path[0]][path[1]] = value
    for name, spec in specs.items():
        spec.check_needs(spec.validate_params(params[name], f"--set {name}.*"))
    return params


def _eval_sets(files: dict[str, Path], source_lang: str, target_lang: str, steps: int, seq_len: int) -> dict[str, Any]:
    """The held-out sets evaluated while each method trains (about six points per run), with the
    final evaluation's windows, so each curve ends at the perplexity the table reports."""
    data = [f"{source_lang}={files['source-test']}:source", f"{target_lang}={files['target-test']}:target"]
    if "chat-test" in files:
        data.append(f"{source_lang}-chat={files['chat-test']}:source")
    return {"data": data, "steps": max(1, steps // 5), "block_size": seq_len}


def _adapt(name, spec, source_dir, target_text, steps, seq_len, batch_size, lr, params, seed, console, evals=None):
    values = {
        "model": str(source_dir),
        "data": {"paths": [str(target_text)], "seq_len": seq_len},
        "method": name,
        "method_params": params,
        "max_steps": steps,
        "batch_size": batch_size,
        "optimizer": {"lr": lr, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_ratio": 0.05},
        "seed": seed,
        "log_steps": min(25, max(1, steps // 20)),  # about 20 points of the training-loss curve
        "eval": evals or {},
        "save_steps": 0,  # the quickstart never resumes: no checkpoints to write
    }
    return _train(values, Path("runs") / name, console)


def _evaluate(rows, files, source_lang, target_lang, seq_len, console) -> dict[str, Any]:
    """Source and target perplexity of every model on held-out text, and the report files."""
    from adaptkit.evals.quick import perplexity_report

    tasks = {f"{source_lang} (source)": files["source-test"], f"{target_lang} (target)": files["target-test"]}
    if "chat-test" in files:
        tasks[f"{source_lang} chat (source)"] = files["chat-test"]
    return perplexity_report(
        {name: Path(row["dir"]) for name, row in rows.items()},
        tasks,
        source_task=[task for task in tasks if task.endswith("(source)")],
        target_task=f"{target_lang} (target)",
        baseline="source",
        block_size=seq_len,
        output=Path("eval"),
        extra={name: {k: v for k, v in row.items() if k != "dir"} for name, row in rows.items()},
        console=console,
    )
