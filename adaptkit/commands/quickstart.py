"""`adaptkit quickstart`: the forgetting/learning trade-off, end to end, offline, on a CPU.

With no `--model`, it builds the embedded default: a byte-level BPE tokenizer and a tiny
Llama pre-trained on the English UDHR (the "source" model, which knows an English-like
source language). It then runs a small study with `adaptkit study`'s runner: one run per
method in `--methods` (default: FFT and SSU-Wanda), each continuing the source model on the
target language's UDHR, evaluated while it trains and at the end on held-out source and target
paragraphs (and, for an instruct model, the source paragraphs in its chat format), and it reports
source and target perplexity before and after, in bits per byte saved. With `--model` (a Hub id,
a local directory or a GGUF file) the same comparison runs on a real model.

The demo directory (every path it records relative to it, but a --model directory, so it can be moved):

    DEMO/data/               LANG-train.txt and LANG-test.txt per language (LANG-chat-test.jsonl: instruct models)
    DEMO/init/, runs/source/ the embedded source model: its tokenizer and initial weights, its pre-training run,
                             whose final/ is the source model (a --model Hub id or .gguf is saved as DEMO/source/)
    DEMO/plan.json           the study (adaptkit/study/state.py's layout): its plan; tokens/LANG/ the target text's
    DEMO/tokens/, calib/     token store and calib/ the calibration set (source text), shared by the runs;
    DEMO/configs/, results/  configs/METHOD.yaml each run's `adaptkit train --config`, results/METHOD.json its result
    DEMO/runs/METHOD/        each run: metrics.jsonl (with the held-out sets), curves.png, final/
    DEMO/eval/               the source model and every final model on the held-out sets (results.json, results.md,
                             tasks.png, forgetting_learning.png)
    DEMO/report/             the study report: results.json, results.md (the table, Pareto front marked),
                             frontier.png (forgetting vs learning) and curves.png (every run's curves)
    DEMO/curves.png          the held-out sets' perplexity over the steps, all methods side by side
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from adaptkit.commands.common import Console, shared

if TYPE_CHECKING:
    from adaptkit.study.spec import Study

SOURCE = "source"  # the source model's name in the study's evaluation and report


@dataclass(frozen=True)
class Settings:
    """What the quickstart adapts with: its options."""

    source_lang: str
    target_lang: str
    steps: int
    seq_len: int
    batch_size: int
    lr: float
    calib_samples: int
    seed: int


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
    from adaptkit.io.atomic import atomic_dir

    console = Console.of(ctx)
    params = _method_params(methods, set_, freeze_ratio)
    texts = _texts(source_lang, target_lang)
    model = _model_location(model)
    settings = Settings(source_lang, target_lang, steps, seq_len, batch_size, lr if lr is not None else (5e-5 if model else 1e-3), calib_samples, seed)
    started = time.perf_counter()
    with atomic_dir(output, shared(ctx).overwrite) as work, _inside(work):
        files = _write_data(texts, settings)
        source_dir = _source_model(model, files, texts, source_steps, settings, console)
        chat_file = _chat_rendered(source_dir, texts[source_lang][1], Path("data") / f"{source_lang}-chat-test.jsonl")
        files.update({"chat-test": chat_file} if chat_file is not None else {})
        study = build_study(source_dir, files, params, settings)
        models = _summary(study, _run_study(study, console, shared(ctx).run_command))
    _print_table(models, settings, console)
    front = [name for name, row in models.items() if row["pareto"]]
    summary = {"output": str(output), "models": models, "pareto_front": front, "seconds": round(time.perf_counter() - started, 1)}
    console.result(summary, f"[green]done[/green] in {summary['seconds']} s: report in {output}/eval/ and {output}/report/ (Pareto front: {', '.join(front)})")


def _texts(source_lang: str, target_lang: str) -> dict[str, tuple[list[str], list[str]]]:
    """The UDHR paragraphs of both languages, split into training and held-out ones."""
    from adaptkit import demo
    from adaptkit.errors import InputError

    texts = {lang: demo.split_corpus(lang) for lang in (source_lang, target_lang)}
    if source_lang == target_lang:
        raise InputError("--target-lang: must differ from --source-lang")
    return texts


def _model_location(model: Optional[str]) -> Optional[str]:
    """--model checked, and made absolute, before anything is written or the directory changes."""
    if not model:
        return None
    from adaptkit.io.models import resolve_model_source

    source = resolve_model_source(model, "--model")
    return source.location if source.kind == "hub" else str(Path(source.location).resolve())


def _write_data(texts: dict[str, tuple[list[str], list[str]]], settings: Settings) -> dict[str, Path]:
    """data/LANG-train.txt and data/LANG-test.txt, by role: source, source-test, target, target-test."""
    from adaptkit import demo

    data = Path("data")
    data.mkdir()
    files = {}
    for role, lang in (("source", settings.source_lang), ("target", settings.target_lang)):
        train, test = texts[lang]
        files[role] = demo.write_lines(train, data / f"{lang}-train.txt")
        files[f"{role}-test"] = demo.write_lines(test, data / f"{lang}-test.txt")
    return files


def build_study(source_dir: Path, files: dict[str, Path], params: dict[str, dict[str, Any]], settings: Settings) -> "Study":
    """The quickstart as a study: one grid entry per method, each continuing the source model (the study's
    base) on the target text, the held-out sets evaluated while it trains (about six points per run, with the
    final evaluation's windows) and at the end, calibrated on the source text where the method needs it."""
    from adaptkit.study.spec import Study, expand_grid

    s = settings
    evals = [f"{s.source_lang}={files['source-test']}:source", f"{s.target_lang}={files['target-test']}:target"]
    evals += [f"{s.source_lang}-chat={files['chat-test']}:source"] if "chat-test" in files else []
    train = {
        "data": {"seq_len": s.seq_len}, "max_steps": s.steps, "batch_size": s.batch_size,
        "optimizer": {"lr": s.lr, "weight_decay": 0.01}, "schedule": {"name": "cosine", "warmup_ratio": 0.05},
        "log_steps": min(25, max(1, s.steps // 20)),  # about 20 points of the training-loss curve
        "eval": {"data": evals, "steps": max(1, s.steps // 5), "block_size": s.seq_len},
        "save_steps": 0,  # the quickstart never resumes: no checkpoints to write
    }
    calibration = {"data": str(files["source"]), "format": "text", "pool": 10_000, "num_samples": s.calib_samples, "block_size": s.seq_len, "seed": s.seed}
    study = Study(Path("quickstart"), str(source_dir), {s.target_lang: {"spec": str(files["target"])}}, train, calibration, evals, base=SOURCE)
    study.runs = expand_grid([{"method": name, "params": dict(p)} for name, p in params.items()], study, {s.target_lang: 1.0}, [s.seed], [])
    return study


def _run_study(study: "Study", console: Console, run_command: Any) -> list[dict[str, Any]]:
    """The study in the working directory, as `adaptkit study` runs one (its steps in this process): shared data,
    each run (`adaptkit train`), one evaluation and the report; then all methods' curves side by side. The report's rows."""
    from adaptkit.engine.evaluation import plot_methods
    from adaptkit.study import report, state

    here = Path(".")
    state.write_plan(study, here)
    state.write_configs(study, here, root=here)
    state.execute(study, here, lambda message: console.print(message), call=steps_in_process(run_command), progress=not console.silent)
    rows = report.study_rows(study, here, report.evaluate_study(study, here, console))
    report.write_study_report(study, here, rows)
    plot_methods({run.name: Path("runs") / run.name / "metrics.jsonl" for run in study.runs}, Path("curves.png"))
    return rows


def steps_in_process(run_command: Any) -> Any:
    """A study step runner (`adaptkit train ...`) through this process's CLI (`run_command`: argv -> (exit code,
    stdout), Shared.run_command): the same commands and results as the study's subprocesses, without the
    6-9 s of imports a fresh interpreter pays for each step."""
    from adaptkit.study.state import cli, step_failed

    def call(command: list[str], what: str) -> str:
        code, stdout = run_command(command[len(cli()):])
        if code:
            raise step_failed(command, what, code)
        return stdout

    return call


def _summary(study: "Study", rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, what the quickstart reports: perplexity and bits per byte per held-out set (keyed
    'en (source)'), the source and target gains, the trainable share, the training seconds, Pareto membership."""
    from adaptkit.engine.evaluation import parse_eval_data

    labels = {s.name: f"{s.name} ({s.role})" for s in parse_eval_data(study.evaluate)}
    return {
        row["model"]: {**{label: row[name] for name, label in labels.items()}, "source_gain_bpb": row["source_gain_bpb"],
                       "target_gain_bpb": row["target_gain_bpb"], "trainable_fraction": row["trainable_fraction"],
                       "seconds": row["train_seconds"], "pareto": row["pareto"]}
        for row in rows
    }


def _print_table(models: dict[str, dict[str, Any]], settings: Settings, console: Console) -> None:
    """The forgetting/learning trade-off at a glance: gains in bits per byte (perplexity tasks)."""
    sets = [key for key, value in next(iter(models.values())).items() if isinstance(value, dict)]
    rows = []
    for name, row in models.items():
        gain = lambda key: "-" if name == SOURCE else f"{row[key]:+.3f}"  # noqa: E731
        fraction, seconds = row["trainable_fraction"], row["seconds"]
        rows.append([name, *[f"{row[s]['ppl']:.1f}" for s in sets], gain("source_gain_bpb"), gain("target_gain_bpb"),
                     "-" if fraction is None else f"{100 * fraction:.0f}%", "-" if seconds is None else f"{seconds:.1f}"])
    console.table(
        f"held-out perplexity; gain = bits per byte saved vs the source model ({settings.source_lang}: forgetting, {settings.target_lang}: learning), positive = better",
        ["model", *[f"{s} ppl" for s in sets], "source gain (bits/byte)", "target gain (bits/byte)", "trainable", "train s"],
        rows,
    )


def _source_model(model: Optional[str], files: dict[str, Path], texts, source_steps: int, settings: Settings, console: Console) -> Path:
    """The model that knows the source language: given with --model, or built and pre-trained here."""
    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model_source, save_model

    if not model:
        return _pretrained_source(files["source"], texts, source_steps, settings, console)
    source = resolve_model_source(model, "--model")
    if source.kind == "dir":
        return Path(source.location).resolve()
    console.print(f"loading {model}")
    target = Path("source")
    save_model(load_causal_lm(source), load_tokenizer(source), target)
    return target


def _pretrained_source(source_text: Path, texts, source_steps: int, settings: Settings, console: Console) -> Path:
    """The embedded source model: a byte-level BPE on both languages' training text, a tiny Llama pre-trained on the source text."""
    from adaptkit import demo
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.io.models import save_model
    from adaptkit.registry import get_spec

    console.print("building the embedded source model (tiny Llama pre-trained on the English UDHR)")
    tokenizer = demo.train_tokenizer([p for train_text, _ in texts.values() for p in train_text], vocab_size=512)
    init = Path("init")
    save_model(demo.tiny_model("llama", len(tokenizer), seed=settings.seed, hidden=128, layers=4), tokenizer, init)
    config = TrainConfig.model_validate({
        "model": str(init), "data": {"paths": [str(source_text)], "seq_len": settings.seq_len}, "max_steps": source_steps,
        "batch_size": settings.batch_size, "optimizer": {"lr": 3e-3, "weight_decay": 0.01}, "schedule": {"name": "cosine", "warmup_ratio": 0.05},
        "seed": settings.seed, "log_steps": 50, "save_steps": 0,
    })
    run = train(config, get_spec("method", config.method).build(config.method_params, f"--set {config.method}.*"), Path("runs/source"), log=lambda m: console.print(m))
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


def _method_params(methods: str, overrides: Optional[list[str]], freeze_ratio: float) -> dict[str, dict[str, Any]]:
    """Each method of --methods with its parameters: --freeze-ratio where it applies, then `--set METHOD.KEY=VALUE`
    (one method) or `--set KEY=VALUE` (every method in --methods that has KEY), as `train` accepts them; validated
    before anything is written (the calibration set, for methods that need one, is the study's)."""
    from adaptkit.settings import parse_set_overrides
    from adaptkit.errors import InputError, did_you_mean
    from adaptkit.registry import get_spec
    from adaptkit.scoring.freeze import check_ratio

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise InputError("--methods: give at least one method name")
    specs = {name: get_spec("method", name, "--methods") for name in names}
    check_ratio(freeze_ratio)  # checked before any training runs, also when no method has the parameter
    params = {name: ({"freeze_ratio": freeze_ratio} if "freeze_ratio" in spec.params.model_fields else {}) for name, spec in specs.items()}
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
        spec.check_extras("--methods")
        spec.validate_params(params[name], f"--set {name}.*")
    return params
