"""`adaptkit merge --config merge.yaml`: mergekit's YAML format for the methods both tools share.

Accepted keys: `merge_method`, `base_model`, `models: [{model, parameters}]`,
`parameters`, `dtype`, `out_dtype`, `tokenizer_source` (`base`, `union` or a model path:
embedding and head rows mapped by token string, `adaptkit.merge.vocab`); also
`slices:` when it is one slice whose sources each span all layers of their model (the
common way SLERP configs are written), read as `models:`. Shared
methods, with mergekit's names and defaults: linear, task_arithmetic, ties, dare_ties,
dare_linear, slerp, model_stock, della, della_linear, breadcrumbs, breadcrumbs_ties, nuslerp,
karcher, sce, multislerp; adaptkit's own methods are accepted by their names too (with `-` or
`_`). Parameter values follow mergekit: a scalar; a list of numbers, a gradient
interpolated over the layers (t = layer / (L - 1), 0 outside the blocks); or conditional
values `[{filter: self_attn, value: ...}, {value: ...}]`, the first whose filter is a
substring of the tensor name winning. Per-model `weight`, `density`, `gamma` and `epsilon` fall back to the
global `parameters`, then to the default. `int8_mask` (a memory option of mergekit) has no
effect here. Paths are relative to the working directory, or else to the YAML file.

Differences, by design: computation is always float32 (float64 for float64 inputs) and
`dtype` / `out_dtype` set the output dtype; without `tokenizer_source` the tokenizer comes
from the first model (mergekit: the base) and rows are merged by id, which is right for adapted
vocabularies (ids kept) and refused when the inputs' tokenizers disagree; DARE rescales by 1/density and DELLA by
1/(keep probability) per entry (the papers), not to the L1 norm; `slices` that cut or stack layers, `modules`, `tokenizer` and
`chat_template` are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, get_args, get_origin

from adaptkit.errors import InputError, did_you_mean
from adaptkit.merge.base import validate_params
from adaptkit.registry import get_registry
from adaptkit.specs import Params, Spec

MERGEKIT_METHODS = {
    "linear": "linear",
    "task_arithmetic": "task-arithmetic",
    "ties": "ties",
    "dare_ties": "dare-ties",
    "dare_linear": "dare-linear",
    "slerp": "slerp",
    "model_stock": "model-stock",
    "della": "della",
    "della_linear": "della-linear",
    "breadcrumbs": "breadcrumbs",
    "breadcrumbs_ties": "breadcrumbs-ties",
    "nuslerp": "nuslerp",
    "karcher": "karcher",
    "sce": "sce",
    "multislerp": "multislerp",
}
# mergekit's defaults where ours differ (our CLI defaults follow the papers)
MERGEKIT_DEFAULTS = {
    name: {"density": 1.0} for name in ("ties", "dare_ties", "dare_linear", "della", "della_linear", "breadcrumbs", "breadcrumbs_ties")
}
PER_MODEL = ("weight", "density", "gamma", "epsilon")
IGNORED = ("int8_mask",)
KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source", "slices")
REFUSED = {
    "modules": "per-module definitions are not supported; list whole models under 'models:'",
    "tokenizer": "per-token tokenizer settings are not supported; use tokenizer_source: base, union or a model path",
    "chat_template": "chat_template is not supported; the tokenizer files are copied from tokenizer_source",
}


@dataclass
class ConfigPlan:
    """A YAML config turned into one `merge()` call."""

    method: str
    models: list[Path]
    base: Optional[Path]
    params: Params  # the parameters of tensors outside any filter or gradient
    tensor_params: Optional[Callable[[str, float], Params]]
    dtype: Optional[str]
    tokenizer_from: Optional[Path]  # tokenizer files copied, rows kept by id
    tokenizer_source: Optional[str] = None  # base, union or a model path: rows mapped by token string


def supported_methods() -> str:
    ours = [name for name in get_registry().names("merge method") if name not in MERGEKIT_METHODS.values()]
    return f"{', '.join(MERGEKIT_METHODS)} (mergekit's names) and adaptkit's {', '.join(ours)}"


def plan_config(data: dict[str, Any], source: str, config_dir: Path) -> ConfigPlan:
    """Validate a mergekit-style mapping and resolve it into a merge plan (nothing is read yet)."""
    data = _slices_as_models(data, source, config_dir)
    _check_keys(data, source)
    raw_method, method, spec = _merge_method(data, source)
    implementation = spec.load()
    base = _path(data.get("base_model"), f"{source}: base_model", config_dir) if data.get("base_model") else None
    models, model_settings = _models(data, source, config_dir)
    global_settings = _mapping(data.get("parameters"), f"{source}: parameters")
    tokenizer_source = _tokenizer_source(data.get("tokenizer_source"), base, source, config_dir)
    tokenizer_from = None
    # Roles as mergekit sees them: the base is not merged as a model (listed or not).
    if base is not None:
        keep = [i for i, model in enumerate(models) if model.resolve() != base.resolve()]
        if implementation.base_model_is_first_model:
            models, model_settings = [base] + [models[i] for i in keep], [{}] + [model_settings[i] for i in keep]
            tokenizer_source = str(base) if tokenizer_source == "base" else tokenizer_source
            base = None
        elif implementation.base == "none":
            if tokenizer_source in (None, "base"):  # the base is not merged: its tokenizer files, rows by id
                tokenizer_source, tokenizer_from = None, base
            base = None
        else:
            models, model_settings = [models[i] for i in keep], [model_settings[i] for i in keep]
    elif implementation.base == "required":
        raise InputError(f"{source}: merge_method '{raw_method}' needs a base_model")
    defaults = MERGEKIT_DEFAULTS.get(raw_method if raw_method in MERGEKIT_METHODS else "", {})
    resolver = _Resolver(spec, source, global_settings, model_settings, defaults)
    return ConfigPlan(
        method=method,
        models=models,
        base=base,
        params=resolver("", 0.0),
        tensor_params=resolver if resolver.dynamic else None,
        dtype=str(data.get("out_dtype") or data.get("dtype") or "") or None,
        tokenizer_from=tokenizer_from,
        tokenizer_source=tokenizer_source,
    )


def _check_keys(data: dict[str, Any], source: str) -> None:
    for key in data:
        if key in REFUSED:
            raise InputError(f"{source}: '{key}': {REFUSED[key]}")
        if key not in KEYS:
            raise InputError(f"{source}: unknown key '{key}'{did_you_mean(key, KEYS)} (keys: {', '.join(KEYS)})")


def _merge_method(data: dict[str, Any], source: str) -> tuple[str, str, Spec]:
    """(merge_method as written, our name for it, its spec): mergekit's names map to ours."""
    raw_method = str(data.get("merge_method") or "")
    if not raw_method:
        raise InputError(f"{source}: 'merge_method' is missing (supported: {supported_methods()})")
    method = MERGEKIT_METHODS.get(raw_method, raw_method.replace("_", "-"))
    registry = get_registry()
    if method not in registry.names("merge method"):
        raise InputError(f"{source}: merge_method '{raw_method}' is not supported; supported: {supported_methods()}")
    return raw_method, method, registry.get("merge method", method)


def _models(data: dict[str, Any], source: str, config_dir: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """The `models` entries: their paths and per-model parameters."""
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{source}: 'models' must be a non-empty list of {{model: PATH, parameters: {{...}}}}")
    models: list[Path] = []
    model_settings: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        where = f"{source}: models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry or set(entry) - {"model", "parameters"}:
            raise InputError(f"{where}: expected {{model: PATH, parameters: {{...}}}}")
        models.append(_path(entry["model"], f"{where}.model", config_dir))
        model_settings.append(_mapping(entry.get("parameters"), f"{where}.parameters"))
    return models, model_settings


def _tokenizer_source(tokenizer_source: Any, base: Path | None, source: str, config_dir: Path) -> str | None:
    """`tokenizer_source`: 'base', 'union' or a model path (rows mapped by token string); None: the first model's, rows by id."""
    if tokenizer_source in (None, ""):
        return None
    if tokenizer_source == "base" and base is None:
        raise InputError(f"{source}: tokenizer_source is 'base' but there is no base_model")
    if tokenizer_source in ("base", "union"):
        return tokenizer_source
    return str(_path(tokenizer_source, f"{source}: tokenizer_source", config_dir))


class _Resolver:
    """Per-tensor parameters from mergekit settings (scalars, gradients, conditionals), validated once per value set."""

    def __init__(self, spec: Spec, source: str, global_settings: dict, model_settings: list[dict], defaults: dict):
        self.spec = spec
        self.source = source
        self.fields = spec.params.model_fields
        self.global_settings = {self._field(k): v for k, v in global_settings.items() if k not in IGNORED}
        self.model_settings = []
        for i, settings in enumerate(model_settings):
            mapped = {}
            for key, value in settings.items():
                if key in IGNORED:
                    continue
                field = self._field(key)
                if field not in PER_MODEL:
                    raise InputError(f"{source}: models[{i}].parameters.{key}: only {' and '.join(PER_MODEL)} can be set per model; move it to 'parameters'")
                mapped[field] = value
            self.model_settings.append(mapped)
        self.defaults = {k: v for k, v in defaults.items() if k in self.fields}
        self.cache: dict[str, Params] = {}
        settings = list(self.global_settings.items()) + [item for s in self.model_settings for item in s.items()]
        self.dynamic = any(self._is_dynamic(field, value) for field, value in settings)

    def _field(self, key: str) -> str:
        for candidate in (key, key + "_", key.replace("-", "_"), key.replace("-", "_") + "_"):
            if candidate in self.fields:
                return candidate
        known = [name.rstrip("_") for name in self.fields]
        raise InputError(
            f"{self.source}: merge method '{self.spec.name}' has no parameter '{key}'{did_you_mean(key, known)} "
            f"(parameters: {', '.join(known) or 'none'})"
        )

    def _numeric(self, field: str) -> bool:
        annotation = self.fields[field].annotation
        while get_origin(annotation) is not None and get_origin(annotation) is not list:
            args = [a for a in get_args(annotation) if a is not type(None)]
            annotation = args[0] if args else annotation
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
            while get_origin(annotation) is not None:
                annotation = get_args(annotation)[0]
        return annotation in (int, float)

    def _is_dynamic(self, field: str, value: Any) -> bool:
        return _is_conditional(value) or (isinstance(value, list) and self._numeric(field))

    def _evaluate(self, field: str, value: Any, name: str, t: float) -> Any:
        if _is_conditional(value):
            for condition in [value] if isinstance(value, dict) else value:
                extra = set(condition) - {"filter", "value"}
                if extra or "value" not in condition:
                    raise InputError(f"{self.source}: parameter '{field.rstrip('_')}': a conditional value is {{filter: TEXT, value: ...}}")
                pattern = condition.get("filter")
                if pattern in (None, "*") or (name and str(pattern) in name):
                    return self._evaluate(field, condition["value"], name, t)
            return None
        if isinstance(value, list) and self._numeric(field):
            if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise InputError(f"{self.source}: parameter '{field.rstrip('_')}': a gradient is a list of numbers, got {value!r}")
            scaled = t * (len(value) - 1)
            low = int(scaled)
            high = min(len(value) - 1, low + 1)
            return (1 - (scaled - low)) * value[low] + (scaled - low) * value[high]
        return value

    def __call__(self, name: str, t: float) -> Params:
        values: dict[str, Any] = {}
        for field, setting in self.global_settings.items():
            if field in PER_MODEL:
                continue
            value = self._evaluate(field, setting, name, t)
            if value is not None:
                values[field] = value
        for field in PER_MODEL:
            if field not in self.fields:
                continue
            per_model = []
            for settings in self.model_settings:
                setting = settings.get(field, self.global_settings.get(field, self.defaults.get(field)))
                per_model.append(self._evaluate(field, setting, name, t) if setting is not None else None)
            if all(v is None for v in per_model):
                continue
            if any(v is None for v in per_model):
                missing = per_model.index(None)
                raise InputError(f"{self.source}: models[{missing}] has no '{field}' while other models do; give it to every model or in 'parameters'")
            values[field] = per_model
        key = json.dumps(values, sort_keys=True, default=str)
        if key not in self.cache:
            self.cache[key] = validate_params(self.spec, values, self.source)
        return self.cache[key]


def _slices_as_models(data: dict[str, Any], source: str, config_dir: Path) -> dict[str, Any]:
    """One slice of whole models -> `models:` (source parameters per model, slice parameters global)."""
    if "slices" not in data:
        return data
    slices = data["slices"]
    refusal = f"{source}: 'slices': only one slice whose sources span all layers of their models is supported; list whole models under 'models:'"
    if "models" in data or not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], dict):
        raise InputError(refusal)
    piece = slices[0]
    if set(piece) - {"sources", "parameters", "base_model"} or not isinstance(piece.get("sources"), list):
        raise InputError(refusal)
    models = []
    for i, item in enumerate(piece["sources"]):
        if not isinstance(item, dict) or "model" not in item or set(item) - {"model", "layer_range", "parameters"}:
            raise InputError(f"{source}: slices[0].sources[{i}]: expected {{model, layer_range, parameters}}")
        path = _path(item["model"], f"{source}: slices[0].sources[{i}].model", config_dir)
        layers = _num_hidden_layers(path)
        if "layer_range" in item and (layers is None or list(item["layer_range"]) != [0, layers]):
            raise InputError(f"{refusal} (sources[{i}] has layer_range {item['layer_range']}, the model has {layers} layers)")
        models.append({"model": item["model"], **({"parameters": item["parameters"]} if "parameters" in item else {})})
    converted = {key: value for key, value in data.items() if key != "slices"}
    converted["models"] = models
    converted["parameters"] = {**(piece.get("parameters") or {}), **(data.get("parameters") or {})}
    if piece.get("base_model") and not data.get("base_model"):
        converted["base_model"] = piece["base_model"]
    return converted


def _num_hidden_layers(path: Path) -> int | None:
    try:
        return int(json.loads((path / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_conditional(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a mapping of parameter names to values")
    return value


def _path(value: Any, where: str, config_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a model directory path, got {value!r}")
    path = Path(value).expanduser()
    if path.exists() or path.is_absolute():
        return path
    beside = config_dir / path
    if beside.exists():
        return beside
    if "+" in value:
        raise InputError(f"{where}: '{value}': LoRA references (model+adapter) are not supported; merge the adapter into the model first")
    return path
