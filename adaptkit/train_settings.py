"""The settings of a training run from a --config file, command-line options and --set overrides.

Defaults < YAML file < options < --set. `OPTION_SETTINGS` maps every `adaptkit train` option that sets a
run setting to its dotted TrainConfig key, `DATA_OPTIONS` are the options that become `data` settings
(`data_settings`), `METHOD_OPTIONS` set method parameters of those names; tests/test_train_settings.py
fails when an option of the command is in none of them (nor in the command's own options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from adaptkit.errors import InputError

# option -> dotted TrainConfig key
OPTION_SETTINGS = {
    "model": "model",
    "method": "method",
    "max_steps": "max_steps",
    "epochs": "epochs",
    "seq_len": "data.seq_len",
    "num_proc": "data.num_proc",
    "packing": "data.packing",
    "batch_size": "batch_size",
    "micro_batch_size": "micro_batch_size",
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "schedule": "schedule.name",
    "warmup_ratio": "schedule.warmup_ratio",
    "ema_decay": "averaging.ema_decay",
    "lawa_k": "averaging.lawa_k",
    "max_grad_norm": "max_grad_norm",
    "save_steps": "save_steps",
    "precision": "precision",
    "device": "device",
    "distributed": "distributed",
    "seed": "seed",
    "gradient_checkpointing": "gradient_checkpointing",
    "compile": "compile",
    "trust_remote_code": "trust_remote_code",
    "report_to": "report_to",
    "run_name": "run_name",
    "project": "project",
    "eval_data": "eval.data",
    "eval_steps": "eval.steps",
    "validation_fraction": "data.validation_fraction",
}
DATA_OPTIONS = ("data", "text_field", "max_tokens")  # options -> `data` settings (see data_settings)
# method parameter -> the option that sets it (for methods that have that parameter)
METHOD_OPTIONS = {"mask": "--mask", "calib": "--calib", "freeze_ratio": "--freeze-ratio"}


def build_config(config_file: Optional[Path], flags: dict[str, Any], overrides: Optional[list[str]], method_flags: Optional[dict[str, Any]] = None,
                 require_inputs: bool = True):
    """Defaults < YAML file < explicit flags < --set. Method parameters go to `method_params`:
    from METHOD_OPTIONS, `--set KEY=V` (a key that is not a setting) and `--set METHOD.KEY=V`.
    The DATA_OPTIONS (--data, --text-field, --max-tokens) become `data` settings by `data_settings`.
    `require_inputs`: --model and --data must be given (not for --print-config)."""
    from adaptkit.settings import check_key, parse_set_overrides, read_yaml_mapping, resolve_config_file, set_nested, validate_config
    from adaptkit.engine.evaluation import check_eval_config
    from adaptkit.engine.config import TrainConfig
    from adaptkit.registry import get_spec

    data: dict[str, Any] = read_yaml_mapping(resolve_config_file(config_file)) if config_file else {}
    for key in METHOD_OPTIONS:  # config files of earlier versions kept these at the top level
        if key in data and key not in TrainConfig.model_fields:
            value = data.pop(key)
            if value is not None:
                data.setdefault("method_params", {})[key] = value
    file_data = data.get("data") if isinstance(data.get("data"), dict) else {}
    data_flags = data_settings(*(_as_list(flags.get(flag)) for flag in DATA_OPTIONS), file_data.get("sources"))
    for flag, value in flags.items():
        if flag not in DATA_OPTIONS and value is not None and value != []:
            if isinstance(value, list):
                value = [str(v) for v in value]
            set_nested(data, OPTION_SETTINGS[flag].split("."), value)
    data.setdefault("method_params", {}).update({k: v for k, v in (method_flags or {}).items() if v is not None})
    if data_flags:
        section = data.setdefault("data", {})
        if not isinstance(section, dict):
            raise InputError(f"--config {config_file}: 'data' must be a mapping of data settings")
        if "paths" in data_flags or "sources" in data_flags:  # --data replaces the file's sources
            section.pop("paths", None), section.pop("sources", None)
        section.update(data_flags)
    flag_names = {key: "--" + flag.replace("_", "-") for flag, key in OPTION_SETTINGS.items() if flags.get(flag) is not None}
    flag_names.update({"data.paths": "--data", "data.sources": "--data", "data.max_tokens": "--max-tokens", "data.text_field": "--text-field"})
    config = validate_config(TrainConfig, data, f"--config {config_file}" if config_file else "settings", flag_names)
    spec = get_spec("method", config.method, "--method")
    for path, value in parse_set_overrides(overrides):
        if check_key(TrainConfig, path):
            set_nested(data, path, value)
        else:
            data.setdefault("method_params", {})[_method_key(path, spec, TrainConfig)] = value
    config = validate_config(TrainConfig, data, "--set")
    if require_inputs and not config.model:
        raise InputError("--model: required (a model directory, .gguf file or Hub id)")
    if require_inputs and not config.data.mixture():
        raise InputError("--data: required (text, JSONL or HF dataset directory)")
    check_eval_config(config)
    return config


def _as_list(value: Any) -> Optional[list[str]]:
    return None if value is None else [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def data_settings(values: Optional[list[str]], text_fields: Optional[list[str]], max_tokens: Optional[list[str]],
                  file_sources: Any = None) -> dict[str, Any]:
    """The `data` settings of --data (SPEC, or NAME=SPEC[:WEIGHT] repeated for a mixture), --text-field
    and --max-tokens (FIELD / COUNT for all sources, NAME=FIELD / NAME=COUNT for one: a source of
    --data, or else of the config file's `data.sources`)."""
    from adaptkit.data.mixture import parse_mixture, parse_source
    from adaptkit.data.store import parse_count

    settings: dict[str, Any] = {}
    sources: list[dict[str, Any]] = []
    if values:
        named = [parse_source(v).name for v in values]
        if any(v.startswith(f"{n}=") for v, n in zip(values, named)):
            sources = [{"name": s.name, "spec": s.spec, "weight": s.weight} for s in parse_mixture(values)]
            settings["sources"] = sources
        else:
            settings["paths"] = list(values)  # one source, as given
    elif isinstance(file_sources, list) and all(isinstance(s, dict) for s in file_sources):
        sources = [dict(s) for s in file_sources]
    for flag, given, key, parse in (("--text-field", text_fields, "text_field", str), ("--max-tokens", max_tokens, "max_tokens", lambda v: parse_count(v, "--max-tokens"))):
        for value in given or []:
            name, sep, rest = value.rpartition("=")
            if not sep:
                settings[key] = parse(rest)
                continue
            source = next((s for s in sources if s.get("name") == name), None)
            if source is None:
                known = ", ".join(str(s.get("name")) for s in sources) or "none; name them with --data NAME=SPEC"
                raise InputError(f"{flag}: unknown source name '{name}' (sources: {known})")
            source[key] = parse(rest)
            settings["sources"] = sources
    return settings


def _method_key(path: list[str], spec, settings) -> str:
    """The method parameter a --set key names (KEY or METHOD.KEY); anything else is an unknown key."""
    from adaptkit.settings import fields_at
    from adaptkit.errors import did_you_mean

    key, params = ".".join(path), list(spec.params.model_fields)
    if len(path) == 1 and path[0] in params:
        return path[0]
    if len(path) == 2 and path[0] == spec.name:
        if path[1] in params:
            return path[1]
        raise InputError(f"--set: method '{spec.name}' has no parameter '{path[1]}'{did_you_mean(path[1], params)} (parameters: {', '.join(params) or 'none'})")
    if len(path) > 1:
        known = fields_at(settings, path)
        raise InputError(f"--set: unknown key '{key}'{did_you_mean(path[-1], known)} (keys there: {', '.join(known)}; method parameters: --set {spec.name}.KEY=VALUE)")
    known = list(settings.model_fields) + params
    raise InputError(f"--set: unknown key '{key}'{did_you_mean(path[-1], known)} (method '{spec.name}' parameters: {', '.join(params) or 'none'}; settings: {', '.join(settings.model_fields)})")


def build_method(config, method_flags: Optional[dict[str, Any]] = None, require_inputs: bool = True):
    """The configured method with its validated parameters; a parameter set by a flag (--freeze-ratio)
    is reported under that flag, also when the method lacks it. `require_inputs`: its inputs (--mask or
    --calib of ssu-*) must be given (not for --print-config)."""
    from adaptkit.registry import get_spec

    given = {key: METHOD_OPTIONS[key] for key, value in (method_flags or {}).items() if value is not None}
    return get_spec("method", config.method, "--method").build(config.method_params, "--set", given, check_needs=require_inputs)
