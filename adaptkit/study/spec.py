"""The study file and its grid: methods x method parameters x seeds, expanded into named runs.

    model: ./instruct                 # relative paths are relative to the study file
    sources:                          # every named source, tokenized once into STUDY/tokens/NAME
      ha: {spec: ha-train.txt}
      en: {spec: en-train.txt, max_tokens: 20k}
    mixture: {ha: 1}                  # what every run trains on (NAME: weight), unless an entry says
    train: {max_steps: 200, batch_size: 4, data: {seq_len: 128}, eval: {data: [ha=ha-dev.txt:target]}}
    calibration: {data: en-train.txt, format: text, num_samples: 32}   # for methods that need one
    seeds: [0]
    grid:
      - method: fft
      - {method: ssu-wanda, sweep: {freeze_ratio: [0.25, 0.5, 0.75]}}
      - {method: fft, name: fft-replay, mixture: {ha: 0.95, en: 0.05}}

Every entry is checked (method, parameters, needs, the run's full train settings) before anything
runs; an error names the entry's position (`grid entry 2 (line 14)`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from adaptkit.errors import InputError, did_you_mean

TOP_KEYS = ("model", "sources", "mixture", "train", "calibration", "evaluate", "seeds", "grid")
ENTRY_KEYS = ("method", "name", "params", "sweep", "seeds", "mixture", "train", "bam")
BAM_KEYS = ("rounds", "branches", "merge", "merge_params")  # a grid entry trained by Branch-and-Merge (`adaptkit bam`)
SOURCE_KEYS = ("spec", "text_field", "max_tokens")
CALIBRATION_KEYS = ("data", "format", "template", "pool", "num_samples", "block_size", "text_field", "seed")
OWNED = ("model", "method", "method_params", "seed")  # set by the study for each run, not in `train:`
CALIB_DIR = "calib"
BASE = "base"  # the base model's name in a study's evaluation and report


@dataclass(frozen=True)
class Run:
    """One training run of the grid."""

    name: str
    method: str
    params: dict[str, Any]
    seed: int
    mixture: dict[str, float]
    train: dict[str, Any]
    position: str  # where it came from in the study file
    needs_calibration: bool = False
    bam: Optional[dict[str, Any]] = None  # Branch-and-Merge settings: the run is `adaptkit bam` instead of `adaptkit train`


@dataclass
class Study:
    path: Path
    model: str
    sources: dict[str, dict[str, Any]]
    train: dict[str, Any]
    calibration: Optional[dict[str, Any]]
    evaluate: list[str]
    runs: list[Run] = field(default_factory=list)
    base: str = BASE

    @property
    def needs_calibration(self) -> bool:
        return any(run.needs_calibration for run in self.runs)

    def used_sources(self) -> list[str]:
        return [name for name in self.sources if any(name in run.mixture for run in self.runs)]


def load_study(path: Path) -> Study:
    """Read, validate and expand a study file; every error is a one-line InputError naming the file."""
    from adaptkit.settings import read_yaml_mapping

    path = Path(path)
    data = read_yaml_mapping(path, "STUDY")
    where = str(path)
    _known_keys(data, TOP_KEYS, where)
    base = path.resolve().parent
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise InputError(f"{where}: 'model' must be a model directory, .gguf file or Hub id")
    sources = _sources(data.get("sources"), base, where)
    train = _mapping(data.get("train", {}), f"{where}: 'train'")
    for key in OWNED:
        if key in train:
            raise InputError(f"{where}: 'train.{key}' is set by the study for each run; give it at the top level or in a grid entry")
    if "sources" in train.get("data", {}) or "paths" in train.get("data", {}):
        raise InputError(f"{where}: 'train.data' must not name data; give the sources in 'sources' and the weights in 'mixture'")
    train = _resolve_eval_specs(train, base)
    study = Study(path, _resolve_path(data["model"], base), sources, train, _calibration(data.get("calibration"), base, where),
                  _evaluate(data.get("evaluate"), train, base, where))
    mixture = _mixture(data.get("mixture", {name: 1.0 for name in sources}), sources, f"{where}: 'mixture'")
    seeds = _seeds(data.get("seeds", [train.get("seed", 42)]), f"{where}: 'seeds'")
    study.runs = expand_grid(data.get("grid"), study, mixture, seeds, _entry_lines(path))
    return study


def check_inputs(study: Study) -> None:
    """Everything the study reads exists and is usable, before anything is written: the model (a loadable
    directory with a tokenizer, a GGUF file or a reachable Hub id), every source its runs train on, the
    calibration data when a method needs it, every eval file, and the optional extras of every method."""
    from adaptkit.data.sources import resolve
    from adaptkit.engine.evaluation import parse_eval_data
    from adaptkit.io.models import check_tokenizer_files, resolve_model_source
    from adaptkit.registry import get_spec

    where = str(study.path)
    check_tokenizer_files(resolve_model_source(study.model, f"{where}: 'model'"))
    for name in study.used_sources():
        resolve(study.sources[name]["spec"], f"{where}: 'sources.{name}'")
    if study.needs_calibration and study.calibration is not None:
        resolve(study.calibration["data"], f"{where}: 'calibration.data'")
    during = {value for run in study.runs for value in run.train.get("eval", {}).get("data", []) if isinstance(value, str)}
    for key, values in (("evaluate", study.evaluate), ("train.eval.data", sorted(during))):
        for spec in parse_eval_data(values):
            resolve(spec.spec, f"{where}: '{key}' set '{spec.name}'")
    for run in study.runs:
        get_spec("method", run.method, "method").check_extras(f"{where}: {run.position}")


def expand_grid(grid: Any, study: Study, mixture: dict[str, float], seeds: list[int], lines: list[int]) -> list[Run]:
    """Every entry x its sweep's cartesian product x its seeds, in file order; names unique."""
    where = str(study.path)
    if not isinstance(grid, list) or not grid:
        raise InputError(f"{where}: 'grid' must be a non-empty list of entries ({{method: NAME, ...}})")
    runs: list[Run] = []
    for i, entry in enumerate(grid):
        position = f"grid entry {i + 1}" + (f" (line {lines[i]})" if i < len(lines) else "")
        try:
            runs.extend(_expand_entry(entry, study, mixture, seeds, position))
        except InputError as exc:
            raise InputError(f"{where}: {position}: {exc}") from None
    seen: dict[str, str] = {}
    for run in runs:
        if run.name in seen:
            raise InputError(f"{where}: {run.position} gives the run name '{run.name}' that {seen[run.name]} gives too; set 'name:' on one of them")
        seen[run.name] = run.position
    return runs


def _expand_entry(entry: Any, study: Study, mixture: dict[str, float], seeds: list[int], position: str) -> list[Run]:
    from adaptkit.registry import get_spec

    entry = _mapping(entry, "the entry")
    _known_keys(entry, ENTRY_KEYS, "the entry")
    if not isinstance(entry.get("method"), str):
        raise InputError("'method' must name a training method (see `adaptkit plugins --kind method`)")
    spec = get_spec("method", entry["method"], "method")
    params = _mapping(entry.get("params", {}), "'params'")
    sweep = _mapping(entry.get("sweep", {}), "'sweep'")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"'sweep.{key}' must be a non-empty list of values")
        if key in params:
            raise InputError(f"'{key}' is both in 'params' and in 'sweep'")
    needs_calibration = any("calib" in need.one_of for need in spec.needs)  # a need the study's calibration set meets
    if needs_calibration and not any(key in params for need in spec.needs for key in need.one_of):
        if study.calibration is None:
            raise InputError(f"method '{spec.name}' needs a calibration set: add a 'calibration:' section (data, format, num_samples)")
        params.setdefault("calib", CALIB_DIR)
    entry_mixture = _mixture(entry["mixture"], study.sources, "'mixture'") if "mixture" in entry else mixture
    entry_seeds = _seeds(entry["seeds"], "'seeds'") if "seeds" in entry else seeds
    train = _merge(study.train, _mapping(entry.get("train", {}), "'train'"))
    bam = _bam(entry["bam"]) if "bam" in entry else None
    runs = []
    for values in itertools.product(*sweep.values()):
        run_params = {**params, **dict(zip(sweep, values))}
        spec.check_needs(spec.validate_params(run_params, "params"))
        for seed in entry_seeds:
            name = run_name(entry.get("name") or spec.name, dict(zip(sweep, values)), seed if len(entry_seeds) > 1 else None)
            run = Run(name, spec.name, run_params, seed, entry_mixture, train, position, needs_calibration, bam)
            check_train_settings(study, run)
            runs.append(run)
    return runs


def _bam(value: Any) -> dict[str, Any]:
    """An entry's `bam:` settings (rounds, branches, merge, merge_params), checked as `adaptkit bam` checks them."""
    from adaptkit.bam_plan import BamPlan, check_plan

    bam = _mapping(value, "'bam'")
    _known_keys(bam, BAM_KEYS, "'bam'")
    settings = {"rounds": 2, "branches": 2, "merge": "slerp", "merge_params": {}, **bam}
    if not all(isinstance(settings[k], int) and not isinstance(settings[k], bool) for k in ("rounds", "branches")):
        raise InputError("'bam.rounds' and 'bam.branches' must be whole numbers")
    check_plan(BamPlan(settings["rounds"], settings["branches"], str(settings["merge"]), _mapping(settings["merge_params"], "'bam.merge_params'")))
    return settings


def run_name(base: str, swept: dict[str, Any], seed: Optional[int]) -> str:
    """A stable directory name: the entry's name, each swept value, the seed when the entry has several."""
    if not isinstance(base, str) or not base.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InputError(f"'name' must be letters, digits, '-', '_' or '.', got {base!r}")
    parts = [base] + [f"{key}{value}" for key, value in swept.items()] + ([f"seed{seed}"] if seed is not None else [])
    return "-".join(str(p).replace("/", "_") for p in parts)


def check_train_settings(study: Study, run: Run) -> None:
    """The run's train settings validate as `adaptkit train --config` would take them."""
    from adaptkit.settings import validate_config
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.evaluation import check_eval_config

    config = validate_config(TrainConfig, train_values(study, run, tokens=Path("tokens")), "'train'")
    check_eval_config(config)


def train_values(study: Study, run: Run, tokens: Path, calib: Optional[Path] = None) -> dict[str, Any]:
    """The `adaptkit train --config` mapping of a run: shared settings, its mixture of token stores, method, seed."""
    values = _merge(run.train, {})
    data = values.setdefault("data", {})
    data["sources"] = [{"name": name, "spec": str(tokens / name), "weight": weight} for name, weight in run.mixture.items()]
    params = dict(run.params)
    if calib is not None and params.get("calib") == CALIB_DIR:
        params["calib"] = str(calib)
    values.update({"model": study.model, "method": run.method, "method_params": params, "seed": run.seed})
    return values


def _sources(value: Any, base: Path, where: str) -> dict[str, dict[str, Any]]:
    sources = _mapping(value, f"{where}: 'sources'")
    if not sources:
        raise InputError(f"{where}: 'sources' must name at least one training source (NAME: {{spec: FILE}})")
    out = {}
    for name, source in sources.items():
        source = {"spec": source} if isinstance(source, str) else _mapping(source, f"{where}: 'sources.{name}'")
        _known_keys(source, SOURCE_KEYS, f"{where}: 'sources.{name}'")
        if not isinstance(source.get("spec"), str):
            raise InputError(f"{where}: 'sources.{name}.spec' must be a file, directory, glob or hub:ID")
        out[str(name)] = {**source, "spec": _resolve_path(source["spec"], base)}
    return out


def _mixture(value: Any, sources: dict[str, Any], where: str) -> dict[str, float]:
    mixture = _mapping(value, where)
    if not mixture:
        raise InputError(f"{where}: must give at least one source (NAME: WEIGHT)")
    for name, weight in mixture.items():
        if name not in sources:
            raise InputError(f"{where}: unknown source '{name}'{did_you_mean(str(name), sources)} (sources: {', '.join(sources)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise InputError(f"{where}: the weight of '{name}' must be a positive number, got {weight!r}")
    return {str(k): float(v) for k, v in mixture.items()}


def _seeds(value: Any, where: str) -> list[int]:
    seeds = value if isinstance(value, list) else [value]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"{where}: expected a list of distinct integer seeds, got {value!r}")
    return seeds


def _calibration(value: Any, base: Path, where: str) -> Optional[dict[str, Any]]:
    if value is None:
        return None
    calibration = _mapping(value, f"{where}: 'calibration'")
    _known_keys(calibration, CALIBRATION_KEYS, f"{where}: 'calibration'")
    if not isinstance(calibration.get("data"), str):
        raise InputError(f"{where}: 'calibration.data' must name the source-side data (as `adaptkit calibrate --data`)")
    return {**calibration, "data": _resolve_path(calibration["data"], base)}


def _evaluate(value: Any, train: dict[str, Any], base: Path, where: str) -> list[str]:
    """The final evaluation's sets, NAME=SPEC:ROLE (default: the sets evaluated during training)."""
    from adaptkit.engine.evaluation import parse_eval_data

    sets = value if value is not None else train.get("eval", {}).get("data", [])
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise InputError(f"{where}: 'evaluate' must be a list of NAME=SPEC:ROLE eval sets")
    specs = parse_eval_data([_resolve_eval(s, base) for s in sets], flag=f"{where}: 'evaluate'")
    roles = {s.role for s in specs}
    if not {"source", "target"} <= roles:
        raise InputError(f"{where}: 'evaluate' (or 'train.eval.data') needs a source and a target set (NAME=SPEC:source, NAME=SPEC:target)")
    return [f"{s.name}={s.spec}:{s.role}" if s.role else f"{s.name}={s.spec}" for s in specs]


def _resolve_eval_specs(train: dict[str, Any], base: Path) -> dict[str, Any]:
    evals = train.get("eval")
    if isinstance(evals, dict) and isinstance(evals.get("data"), list):
        train = {**train, "eval": {**evals, "data": [_resolve_eval(s, base) if isinstance(s, str) else s for s in evals["data"]]}}
    return train


def _resolve_eval(value: str, base: Path) -> str:
    from adaptkit.engine.evaluation import parse_eval_data

    (spec,) = parse_eval_data([value])
    resolved = _resolve_path(spec.spec, base)
    return f"{spec.name}={resolved}" + (f":{spec.role}" if spec.role else "")


def _resolve_path(value: str, base: Path) -> str:
    """A path relative to the study file when it exists there; anything else (hub ids) as given."""
    candidate = base / value
    return str(candidate.resolve()) if not Path(value).is_absolute() and candidate.exists() else value


def _entry_lines(path: Path) -> list[int]:
    """The line number of each grid entry in the file (1-based)."""
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return []
    for key, node in getattr(root, "value", []):
        if getattr(key, "value", None) == "grid" and isinstance(node, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in node.value]
    return []


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _known_keys(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in known:
            raise InputError(f"{where}: unknown key '{key}'{did_you_mean(str(key), known)} (keys: {', '.join(known)})")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with the mappings of `update` merged in."""
    import copy

    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out
