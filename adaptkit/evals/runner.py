"""Run several models on several tasks: data is prepared once, each model is loaded once.

    from adaptkit.evals.runner import ModelRef, prepare_tasks, run_evaluation
    tasks = prepare_tasks(["ppl:eng=en.txt", "ppl:hau=ha.txt"], params={"ppl": {"block_size": 256}})
    run = run_evaluation([ModelRef("base", "./base"), ModelRef("ssu", "runs/ssu/final")], tasks)

A `ModelRef` may also carry an already-loaded model and tokenizer (the quickstart does
this); otherwise it is loaded from `location` with `adaptkit.io.models`.
"""

from __future__ import annotations

import re

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from adaptkit.errors import InputError, first_line
from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput, split_task_arg
from adaptkit.seeding import seed_everything

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from adaptkit.io.models import Placement


@dataclass
class ModelRef:
    name: str
    location: str = ""
    model: "PreTrainedModel | None" = None
    tokenizer: "PreTrainedTokenizerBase | None" = None


@dataclass
class PreparedTasks:
    tasks: list[EvalTask]
    backends: dict[str, EvalBackend]
    params: dict[str, dict[str, Any]]


@dataclass
class TaskInfo:
    name: str
    backend: str
    spec: str
    primary: str = ""
    higher_is_better: bool = True
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalRun:
    """Scores of every model on every task, plus what is needed to report them."""

    models: list[dict[str, str]]
    tasks: list[TaskInfo]
    results: dict[str, dict[str, dict[str, float]]]  # model -> task -> metric -> value
    records: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def task(self, name: str) -> TaskInfo:
        return next(t for t in self.tasks if t.name == name)

    def primary(self, model: str, task: str) -> float:
        return self.results[model][task][self.task(task).primary]


def model_names(locations: list[str], flag: str = "--model") -> list[ModelRef]:
    """ModelRefs for `NAME=PATH` or `PATH` arguments; a PATH is named by `default_names`."""
    refs = []
    for text in locations:
        name, sep, path = text.partition("=")
        if sep and name and "/" not in name and not Path(text).exists():
            refs.append(ModelRef(name.strip(), path.strip()))
        else:
            refs.append(ModelRef("", text))
    unnamed = [ref for ref in refs if not ref.name]
    for ref, name in zip(unnamed, default_names([ref.location for ref in unnamed])):
        ref.name = name
    seen: set[str] = set()
    for ref in refs:
        if ref.name in seen:
            raise InputError(f"{flag}: two models are called '{ref.name}'; name them with NAME=PATH")
        seen.add(ref.name)
    return refs


def default_names(locations: list[str]) -> list[str]:
    """Names for model paths: a run's model is named after its run directory (`runs/fft/final` ->
    `fft`, `runs/fft/checkpoint-200` -> `fft/checkpoint-200`), any other path after its last part;
    names that clash get more of their path, all of them alike (`a/fft`, `b/fft`)."""
    tails = []
    for location in locations:
        parts = list(Path(location.rstrip("/")).parts) or [location]
        if len(parts) > 1 and parts[-1] == "final":
            parts = parts[:-1]
        tails.append((parts, 2 if len(parts) > 1 and re.fullmatch(r"checkpoint-\d+", parts[-1]) else 1))
    depths = [depth for _, depth in tails]
    while True:
        names = ["/".join(parts[-depth:]) for (parts, _), depth in zip(tails, depths)]
        grow = [i for i, name in enumerate(names) if names.count(name) > 1 and depths[i] < len(tails[i][0])]
        if not grow:
            return names
        for i in grow:
            depths[i] += 1


def prepare_tasks(task_args: list[str], params: dict[str, dict[str, Any]] | None = None, flag: str = "--task") -> PreparedTasks:
    """Validate backends, their parameters and data for every `BACKEND:SPEC` (before any model loads)."""
    from adaptkit.registry import get_spec

    params = dict(params or {})
    if not task_args:
        raise InputError(f"{flag}: give at least one task, e.g. --task ppl:eng=en.txt")
    backends: dict[str, EvalBackend] = {}
    shared: dict[str, set[str]] = {}  # shared section -> parameter names of the backends reading it
    tasks: list[EvalTask] = []
    parsed = [split_task_arg(text, flag) for text in task_args]
    for backend_name, _ in parsed:
        spec = get_spec("eval backend", backend_name, flag)
        if backend_name not in backends:
            where = f"--set {backend_name}.*" + (f" / {spec.shared_params}.*" if spec.shared_params in params else "")
            validated = spec.validate_params(_backend_values(spec, params), where=where)
            backends[backend_name] = spec.load()(validated)
            if spec.shared_params:
                shared.setdefault(spec.shared_params, set()).update(spec.params.model_fields)
    _check_shared(params, shared)
    for backend_name, spec_text in parsed:
        for task in backends[backend_name].prepare(spec_text, flag):
            if any(t.name == task.name for t in tasks):
                raise InputError(f"{flag}: two tasks are called '{task.name}'; name them (e.g. ppl:NAME=FILE)")
            tasks.append(task)
    unknown = set(params) - set(backends) - set(shared)
    if unknown:
        raise InputError(f"--set: settings for '{sorted(unknown)[0]}', which no --task uses (backends used: {', '.join(backends)})")
    used = {name: backends[name].params.model_dump() for name in backends}
    return PreparedTasks(tasks, backends, used)


def _backend_values(spec: Any, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A backend's settings: the keys of its shared section (e.g. judge.*) it has, then its own section."""
    common = params.get(spec.shared_params, {}) if spec.shared_params else {}
    return {**{k: v for k, v in common.items() if k in spec.params.model_fields}, **(params.get(spec.name) or {})}


def _check_shared(params: dict[str, dict[str, Any]], shared: dict[str, set[str]]) -> None:
    for section, known in shared.items():
        for key in params.get(section) or {}:
            if key not in known:
                raise InputError(f"--set {section}.{key}: no --task of this run has a '{key}' setting (known: {', '.join(sorted(known))})")


def check_model_config(location: str, flag: str = "--model") -> Any:
    """Resolve a model location and, for local directories, check that its config loads and a tokenizer is there;
    returns the config (None for GGUF files and Hub ids)."""
    from adaptkit.io.models import check_tokenizer_files, resolve_model_source

    source = resolve_model_source(location, flag)
    if source.kind != "dir":
        return None
    check_tokenizer_files(source)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=False)  # None would prompt on stdin
    except Exception as exc:
        raise InputError(f"{flag}: '{location}' does not load: its config.json is invalid ({first_line(exc)})") from None


def load_model_ref(ref: ModelRef, dtype: str = "float32", device: str = "cpu", layer_by_layer: bool = False, placement: "Placement | None" = None) -> tuple[Any, "PreTrainedTokenizerBase"]:
    """The model (or, layer by layer, its skeleton with weights on disk; or placed over devices) and tokenizer of a ModelRef."""
    import torch

    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model_source
    from adaptkit.streamed_model import LayerwiseModel

    if ref.model is not None and ref.tokenizer is not None:
        return ref.model, ref.tokenizer
    source = resolve_model_source(ref.location, "--model")
    try:
        tokenizer = load_tokenizer(source)
        if layer_by_layer:
            return LayerwiseModel.open(source, getattr(torch, dtype), device), tokenizer
        model = load_causal_lm(source, dtype=getattr(torch, dtype), placement=placement)
    except InputError:
        raise
    except Exception as exc:  # a directory that exists but does not load
        raise InputError(f"--model: '{ref.location}' does not load as a causal LM ({type(exc).__name__}: {exc})") from None
    return (model if placement is not None else model.to(device)), tokenizer


def check_layer_by_layer(prepared: PreparedTasks, generating: bool = False) -> None:
    """Only backends that need nothing but logits of whole batches run layer by layer."""
    for name, backend in prepared.backends.items():
        if not backend.layer_by_layer:
            raise InputError(f"--layer-by-layer: tasks of backend '{name}' generate text, which needs the whole model; only ppl and lm-eval log-likelihood tasks run layer by layer")
    if generating:
        raise InputError("--layer-by-layer: --generate needs the whole model; generate in a run without --layer-by-layer")


def _check_models(models: list[ModelRef], prepared: PreparedTasks) -> None:
    """Fail on a bad path, config or setting (a window too long) before spending time on any model."""
    for ref in models:
        config = check_model_config(ref.location) if ref.model is None else ref.model.config
        for backend in prepared.backends.values():
            if config is not None:
                backend.check_model(config)


def _run_config(prepared: PreparedTasks, device: str, dtype: str, seed: int, layer_by_layer: bool,
                placement: "Placement | None", generator: Any) -> dict[str, Any]:
    """The settings of an evaluation, as results.json records them."""
    config = {"device": device, "dtype": dtype, "seed": seed, "params": prepared.params, "layer_by_layer": layer_by_layer}
    if generator is not None:
        config["generation_server"] = {"base_url": generator.client.base_url, "model": generator.model}
    if placement:
        config.update(device_map=placement.device_map, max_memory={str(k): v for k, v in (placement.max_memory or {}).items()})
    return config


def _record_outputs(run: "EvalRun", name: str, tasks: list[EvalTask], outputs: dict, infos: dict) -> None:
    """One backend's outputs for model `name`: metrics, records, and each task's primary metric."""
    for task in tasks:
        output: TaskOutput = outputs[task.name]
        info = infos[task.name]
        info.primary, info.higher_is_better = output.primary, output.higher_is_better
        run.results[name][task.name] = output.metrics
        if output.records:
            run.records[name][task.name] = output.records


def run_evaluation(
    models: list[ModelRef],
    prepared: PreparedTasks,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    on_model: Callable[[str, Any, Any], None] | None = None,
    layer_by_layer: bool = False,
    placement: "Placement | None" = None,
    generator: Any = None,
) -> EvalRun:
    """Score every model on every task; models are loaded one at a time and released after.

    `on_model(name, model, tokenizer)` runs once per loaded model (e.g. to generate responses).
    With `layer_by_layer`, models are read one decoder layer at a time (adaptkit.streamed_model;
    backends that support it only); with a `placement`, spread over devices by accelerate. A
    `generator` (a ServerGenerator, `--generation-server`) generates instead of the loaded model.
    """
    if layer_by_layer:
        check_layer_by_layer(prepared)
    _check_models(models, prepared)
    by_backend: dict[str, list[EvalTask]] = {}
    for task in prepared.tasks:
        by_backend.setdefault(task.backend, []).append(task)
    infos = {t.name: TaskInfo(t.name, t.backend, t.spec, info=dict(t.info)) for t in prepared.tasks}
    run = EvalRun(
        models=[{"name": r.name, "location": r.location} for r in models],
        tasks=list(infos.values()),
        results={},
        config=_run_config(prepared, device, dtype, seed, layer_by_layer, placement, generator),
    )
    for number, ref in enumerate(models, 1):
        if progress:
            progress(f"model {number}/{len(models)}: loading {ref.name}")
        start = time.perf_counter()
        model, tokenizer = load_model_ref(ref, dtype, device, layer_by_layer, placement)
        if placement is not None and ref.model is None:  # where accelerate put the model's modules
            run.config.setdefault("placed_on", {})[ref.name] = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {"": device}).values()})
        run.results[ref.name] = {}
        run.records[ref.name] = {}
        for backend_name, tasks in by_backend.items():
            if progress:
                progress(f"{ref.name}: {backend_name} ({', '.join(t.name for t in tasks)})")
            seed_everything(seed)
            outputs = prepared.backends[backend_name].run(model, tokenizer, tasks, RunContext(device, seed, ref.name, generator))
            _record_outputs(run, ref.name, tasks, outputs, infos)
        if on_model is not None:
            on_model(ref.name, model, tokenizer)
        run.seconds[ref.name] = time.perf_counter() - start
        if progress:
            progress(f"model {number}/{len(models)}: {ref.name} done in {run.seconds[ref.name]:.1f} s")
        if ref.model is None:
            del model
    return run

