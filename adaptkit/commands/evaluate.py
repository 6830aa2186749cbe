"""`adaptkit evaluate`: several models x several tasks -> results.json, results.md, plots.

Tasks are `BACKEND:SPEC` (ppl, lm-eval, lighteval, mt, sum, or a plugin's backend). Data is
read and checked once before any model loads; each model is loaded once for all tasks.
Tag tasks with --source-task / --target-task to get the forgetting-vs-learning scatter
(x: mean source change, y: mean target change vs --baseline, one point per model).
`--suite ssu-paper` adds a paper's tagged tasks (adaptkit.evals.suites) from the data given
with `--set suite.*`; each task it cannot run is one warning line and a row of the report.
With --generation-server URL, the text of mt, sum, judge tasks and --generate comes from that
OpenAI-compatible server (serving the one --model); the model is still loaded for
log-likelihood tasks (ppl, lm-eval) and a judge-pairwise reference model generates in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import (ComputeDtypeOpt, DeviceMapOpt, DeviceOpt, GenerationServerModelOpt, GenerationServerOpt, MaxMemoryOpt,
                                     OutputOpt, SeedOpt)


def backend_params(config: Optional[Path], overrides: Optional[list[str]]) -> dict[str, dict]:
    """Per-backend settings: a YAML mapping {backend: {key: value}} then `--set backend.key=value`."""
    from adaptkit.settings import parse_set_overrides, read_yaml_mapping
    from adaptkit.errors import InputError

    params: dict[str, dict] = {}
    if config is not None:
        for backend, values in read_yaml_mapping(config).items():
            if not isinstance(values, dict):
                raise InputError(f"--config: '{backend}' must map setting names to values (e.g. ppl: {{block_size: 512}})")
            params[str(backend)] = dict(values)
    for path, value in parse_set_overrides(overrides):
        if len(path) != 2:
            raise InputError(f"--set: expected BACKEND.KEY=VALUE (e.g. ppl.block_size=512), got '{'.'.join(path)}'")
        params.setdefault(path[0], {})[path[1]] = value
    return params


def resolve_baseline(baseline: Optional[str], refs) -> Optional[str]:
    from adaptkit.errors import InputError

    if baseline is None:
        return None
    for ref in refs:
        if baseline == ref.name or Path(baseline).expanduser().resolve() == Path(ref.location).expanduser().resolve():
            return ref.name
    raise InputError(f"--baseline: '{baseline}' is not one of the --model values ({', '.join(r.name for r in refs)})")


def suite_tasks(suite: Optional[str], tasks: list[str], params: dict[str, dict], source: list[str], target: list[str]):
    """(tasks, params, source tasks, target tasks, suite report) with `--suite`'s runnable tasks added and tagged;
    each task the suite cannot run is one warning line on stderr; a suite with nothing to run is bad input."""
    from adaptkit.errors import InputError
    from adaptkit.registry import warn

    settings = params.pop("suite", None)
    if suite is None:
        if settings is not None:
            raise InputError("--set suite.*: applies only with --suite NAME (e.g. --suite ssu-paper)")
        return tasks, params, source, target, None
    from adaptkit.evals.suites import expand_suite

    expanded = expand_suite(suite, settings or {})
    for entry in expanded.entries:
        if entry.task is None:
            warn(f"--suite {suite}: not run: {entry.name} ({entry.role}): {entry.missing}")
    if not expanded.runnable:
        raise InputError(f"--suite {suite}: no task of the suite has its data here ({len(expanded.entries)} listed above); "
                         "give --set suite.flores=DIR, --set suite.xlsum=DIR, --set suite.lm_eval_data=DIR or --set suite.hub=true")
    source += [e.name for e in expanded.runnable if e.role == "source" and e.name not in source]
    target += [e.name for e in expanded.runnable if e.role == "target" and e.name not in target]
    return tasks + [e.task for e in expanded.runnable], expanded.params(params), source, target, expanded.report()


def command(
    ctx: typer.Context,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model directory, .gguf or Hub id; NAME=PATH to name it (repeatable).")],
    output: OutputOpt,
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="BACKEND:SPEC, e.g. ppl:eng=en.txt, lm-eval:xnli_sw, lm-eval:./tasks, mt:flores200_dataset:ha-en, mt:pairs.jsonl, sum:xlsum:ha (repeatable).")] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", help="A paper's task suite, tagged source/target: ssu-paper (--set suite.lang=ha --set suite.flores=DIR --set suite.xlsum=DIR [--set suite.hub=true]).")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="The model (name or path) that changes are measured against.")] = None,
    source_task: Annotated[Optional[list[str]], typer.Option("--source-task", help="Task name measuring source ability (forgetting axis; repeatable).")] = None,
    target_task: Annotated[Optional[list[str]], typer.Option("--target-task", help="Task name measuring target ability (learning axis; repeatable).")] = None,
    generate: Annotated[Optional[Path], typer.Option("--generate", help="Also generate responses to these prompts (JSONL with 'prompt') with every model, for `adaptkit codemix`.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Budget for --generate responses.")] = 256,
    decoding: Annotated[str, typer.Option("--decoding", help="Decoding of --generate responses: greedy, paper (SSU MT/SUM sampling) or ae2 (the SSU reference's AlpacaEval sampling, 512 tokens unless --max-new-tokens; see `adaptkit generate --help`).")] = "greedy",
    device: DeviceOpt = "auto",
    dtype: ComputeDtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
    layer_by_layer: Annotated[bool, typer.Option("--layer-by-layer", help="Read and run one decoder layer at a time (models larger than memory; ppl and lm-eval log-likelihood tasks).")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML mapping of backend settings, e.g. ppl: {block_size: 512} (--set overrides it).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="A backend setting: --set ppl.block_size=512, --set mt.max_new_tokens=64 (repeatable).")] = None,
    generation_server: GenerationServerOpt = None,
    generation_server_model: GenerationServerModelOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Evaluate models on perplexity, lm-eval/lighteval tasks and MT/summarization (chrF++), with changes vs a baseline."""
    from adaptkit.commands.common import Console, generation_server as server_of, offload_folder, shared
    from adaptkit.commands.progress import notes
    from adaptkit.evals.report import check_task_roles
    from adaptkit.evals.runner import check_model_config, model_names, prepare_tasks, run_evaluation
    from adaptkit.io.atomic import check_output

    console = Console.of(ctx)
    check_output(output, shared(ctx).overwrite)
    placement, device = _placement_and_device(ctx, device, dtype, device_map, max_memory, layer_by_layer)
    refs = model_names(model)
    for ref in refs:
        check_model_config(ref.location)
    baseline_name = resolve_baseline(baseline, refs)
    prompts, max_new_tokens = _prompts(ctx, generate, decoding, max_new_tokens)
    tasks, params, source_task, target_task, suite_info = suite_tasks(suite, list(task or []), backend_params(config, set_),
                                                                      list(source_task or []), list(target_task or []))
    prepared = prepare_tasks(tasks, params)
    check_task_roles([t.name for t in prepared.tasks], source_task, target_task)
    if layer_by_layer:
        from adaptkit.evals.runner import check_layer_by_layer

        check_layer_by_layer(prepared, generating=prompts is not None)
    server = server_of(generation_server, generation_server_model, refs)
    note = notes(console, "evaluate")
    generations: list[dict] = []
    on_model = _generating(prompts, generations, note, (max_new_tokens, decoding), seed or 0, server)
    with offload_folder(placement) as placement:
        run = run_evaluation(refs, prepared, device=device, dtype=dtype, seed=seed or 0, progress=note,
                             on_model=on_model, layer_by_layer=layer_by_layer, placement=placement, generator=server)
    results = _write_results(output, shared(ctx).overwrite, run, baseline_name, source_task, target_task, plots, suite_info,
                             generations if prompts is not None else None)
    _print_results(console, [r.name for r in refs], results, output, plots)


def _placement_and_device(ctx: typer.Context, device: str, dtype: str, device_map, max_memory, layer_by_layer: bool):
    """(placement over devices or None, the checked device) from --device, --dtype, --device-map and --max-memory."""
    from adaptkit.commands.common import check_compute_dtype, check_device_or_map
    from adaptkit.errors import InputError
    from adaptkit.io.models import Placement

    check_compute_dtype(dtype)
    placement = Placement.from_options(device_map, max_memory)
    device = check_device_or_map(ctx, device, placement)
    if placement is not None and layer_by_layer:
        raise InputError("--device-map: choose either --device-map (spread over devices) or --layer-by-layer (one layer at a time)")
    return placement, device


def _prompts(ctx: typer.Context, generate: Optional[Path], decoding: str, max_new_tokens: int):
    """(the --generate prompts or None, their token budget); --max-new-tokens or --decoding alone is bad input."""
    from adaptkit.errors import InputError
    from adaptkit.evals.generation import DECODING_MAX_NEW_TOKENS, DECODINGS

    if generate is None:
        for flag in ("max_new_tokens", "decoding"):
            if ctx.get_parameter_source(flag).name != "DEFAULT":
                raise InputError(f"--{flag.replace('_', '-')}: applies only with --generate PROMPTS.jsonl (task backends have their own settings: --set mt.max_new_tokens=...)")
        return None, max_new_tokens
    if decoding not in DECODINGS:
        raise InputError(f"--decoding: expected {', '.join(DECODINGS)}, got '{decoding}'")
    if ctx.get_parameter_source("max_new_tokens").name == "DEFAULT":
        max_new_tokens = DECODING_MAX_NEW_TOKENS.get(decoding, max_new_tokens)
    from adaptkit.evals.generation import read_prompts

    return read_prompts(generate, "--generate"), max_new_tokens


def _generating(prompts, generations: list[dict], note, budget: tuple[int, str], seed: int, server):
    """The runner's per-model hook: each model's responses to the --generate prompts, appended to `generations`."""
    max_new_tokens, decoding = budget

    def on_model(name, loaded, tokenizer):
        if prompts is not None:
            from adaptkit.evals.generation import generate_records

            note(f"{name}: generating {len(prompts)} responses")
            generations.extend(generate_records(loaded, tokenizer, prompts, name, max_new_tokens, decoding, seed=seed, generator=server))

    return on_model


def _write_results(output: Path, overwrite: bool, run, baseline, source_task, target_task, plots: bool, suite_info, generations):
    """results.json, results.md, plots (and generations.jsonl) written whole into `output`."""
    import json

    from adaptkit.evals.report import write_report
    from adaptkit.io.atomic import atomic_dir

    with atomic_dir(output, overwrite) as tmp:
        results = write_report(run, tmp, baseline, source_task, target_task, plots=plots, suite=suite_info)
        if generations is not None:
            (tmp / "generations.jsonl").write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations), encoding="utf-8")
            results["files"].append("generations.jsonl")
    return results


def _print_results(console, names: list[str], results: dict, output: Path, plots: bool) -> None:
    """The results table on stdout (or the --json record)."""
    rows = [[name] + [results["results"][name][t["name"]][t["primary_metric"]] for t in results["tasks"]] for name in names]
    console.table("adaptkit evaluate", ["model"] + [f"{t['name']} ({t['primary_metric']})" for t in results["tasks"]], rows)
    console.result(
        {"output": str(output), "files": results["files"], "results": results["results"], "summary": results.get("summary")},
        f"[green]wrote[/green] {output}/results.json, results.md" + (", plots" if plots else ""),
    )
