"""Merge models (linear, task vectors, TIES, DARE, SLERP, reversion, LiNeS, LayRA) or run a mergekit YAML.

Subcommands and their options are generated from the registry: every merge method
(built-in or from a plugin) gets `adaptkit merge <name>` with the shared input/output
options and one option per parameter of its pydantic model (`lambda_` -> `--lambda`,
lists are repeatable, booleans are `--x/--no-x`). Without a subcommand, `--config`
runs a mergekit-style YAML file. Light at import: torch loads when a merge runs.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer

from adaptkit.commands.common import (
    ConfigOpt,
    Console,
    DebugOpt,
    JsonOpt,
    OptionalOutputOpt,
    OutputOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
)

ModelsOpt = Annotated[Optional[list[Path]], typer.Option("--model", "-m", help="A model directory (repeatable; order matters for weights).")]
BaseOpt = Annotated[Optional[Path], typer.Option("--base", help="The base model the task vectors are taken from.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Output dtype of floating tensors: float32, bfloat16, float16 (default: as the first --model).")]
ShardOpt = Annotated[str, typer.Option("--shard-size", help="Largest output shard, e.g. 5GB or 500MB.")]
TokenizerOpt = Annotated[Optional[Path], typer.Option("--tokenizer-from", help="Copy tokenizer files from this directory (default: the first --model).")]

COMMON = ("models", "base", "output", "dtype", "seed", "shard_size", "tokenizer_from", "overwrite", "json_out", "quiet", "debug")


def __getattr__(name: str) -> Any:
    """`app` is built on access, so plugins registered in-process get their subcommands."""
    if name == "app":
        return build_app()
    raise AttributeError(name)


def build_app() -> typer.Typer:
    from adaptkit.registry import get_registry

    app = typer.Typer(
        help="Merge models: averages, task / language vectors, TIES, DARE, SLERP, layer-aware reversion, "
        "LiNeS, layer swapping, LayRA presets; or run a mergekit-style YAML with --config.",
        invoke_without_command=True,
        no_args_is_help=False,
    )
    app.callback(invoke_without_command=True)(_from_config)
    for spec in sorted(get_registry().specs.get("merge method", {}).values(), key=lambda s: s.name):
        help_text = f"{spec.summary}. Reference: {spec.reference}." if spec.reference else spec.summary
        app.command(name=spec.name, help=help_text)(_method_command(spec))
    return app


def _from_config(
    ctx: typer.Context,
    config: ConfigOpt = None,
    output: OptionalOutputOpt = None,
    set_: SetOpt = None,
    dtype: DtypeOpt = None,
    seed: SeedOpt = None,
    shard_size: ShardOpt = "5GB",
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge models; give a method subcommand, or --config merge.yaml (mergekit's format) and -o."""
    from adaptkit.errors import InputError

    if ctx.invoked_subcommand is not None:
        if config is not None:
            raise InputError("--config: give either a method subcommand or --config, not both")
        return
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if output is None:
        raise InputError("-o/--output: required with --config (where to write the merged model)")
    from adaptkit.config import parse_set_overrides, read_yaml_mapping, set_nested
    from adaptkit.merge.mergekit_config import plan_config

    data = read_yaml_mapping(config)
    for path, value in parse_set_overrides(set_):
        set_nested(data, path, value)
    plan = plan_config(data, str(config), Path(config).resolve().parent)
    _run(
        plan.method,
        plan.models,
        plan.base,
        plan.params.model_dump(),
        output=output,
        dtype=dtype or plan.dtype,
        seed=seed,
        shard_size=shard_size,
        tokenizer_from=plan.tokenizer_from,
        overwrite=overwrite,
        json_out=json_out,
        quiet=quiet,
        tensor_params=plan.tensor_params,
        command=f"adaptkit merge --config {config}",
        config_text=Path(config).read_text(encoding="utf-8"),
        where=str(config),
    )


def _run(method: str, models, base, params: dict[str, Any], *, output: Path, dtype, seed, shard_size, tokenizer_from, overwrite, json_out, quiet, tensor_params=None, command: str = "", config_text: str = "", where: str | None = None) -> None:
    from adaptkit.merge.api import merge
    from adaptkit.merge.executor import MergeOptions
    from adaptkit.merge.stream import parse_size

    console = Console(json_out, quiet)
    options = MergeOptions(
        overwrite=overwrite,
        dtype=dtype,
        seed=seed if seed is not None else 0,
        shard_size=parse_size(shard_size),
        tokenizer_from=tokenizer_from,
        command=command or f"adaptkit merge {method}",
        config=config_text,
        progress=console.show_progress,
    )
    summary = merge(method, list(models or []), output, base=base, params=params, options=options, tensor_params=tensor_params, where=where)
    console.result(summary, f"[green]merged[/green] {summary['tensors']} tensors with {method} -> {output} ({summary['shards']} shard(s), {summary['seconds']:.1f} s)")


def _method_command(spec):
    """A Typer command whose options are the shared ones plus one per parameter of `spec`."""
    fields = spec.params.model_fields
    method_options = []
    list_of_str = set()
    for field, info in fields.items():
        if field in COMMON:
            raise RuntimeError(f"merge method '{spec.name}' parameter '{field}' clashes with a shared option")
        cli_type, choices = _cli_type(info.annotation)
        if cli_type == list[str]:
            list_of_str.add(field)
        option = _option_name(field)
        help_text = info.description or ""
        if choices:
            help_text += f" Choices: {', '.join(choices)}."
        if not info.is_required():
            default = info.get_default(call_default_factory=True)
            help_text += f" (default: {_show(default)})"
        else:
            help_text += " (required)"
        decls = (f"--{option}/--no-{option}",) if cli_type is bool else (f"--{option}",)
        annotation = Annotated[Optional[cli_type], typer.Option(*decls, help=help_text, show_default=False)]
        method_options.append(inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))

    def command(**values: Any) -> None:
        common = {key: values.pop(key) for key in COMMON}
        params = {}
        for field, value in values.items():
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            if field in list_of_str:
                value = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
            params[field] = list(value) if isinstance(value, tuple) else value
        common.pop("debug")
        _run(spec.name, common.pop("models"), common.pop("base"), params, **common)

    shared = [
        inspect.Parameter("models", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ModelsOpt),
        inspect.Parameter("base", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=BaseOpt),
    ]
    tail = [
        inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, annotation=OutputOpt),
        inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DtypeOpt),
        inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SeedOpt),
        inspect.Parameter("shard_size", inspect.Parameter.KEYWORD_ONLY, default="5GB", annotation=ShardOpt),
        inspect.Parameter("tokenizer_from", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TokenizerOpt),
        inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=OverwriteOpt),
        inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
        inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOpt),
    ]
    parameters = shared + method_options + tail
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__ = spec.name.replace("-", "_")
    command.__doc__ = spec.summary
    return command


def _option_name(field: str) -> str:
    return field.rstrip("_").replace("_", "-")


def _cli_type(annotation: Any) -> tuple[Any, list[str]]:
    """The Typer type of a pydantic field: float, int, bool, str or a list of one of them."""
    origin = get_origin(annotation)
    if origin is Union:
        return _cli_type(next(a for a in get_args(annotation) if a is not type(None)))
    if origin is Annotated:
        return _cli_type(get_args(annotation)[0])
    if origin is Literal:
        return str, [str(a) for a in get_args(annotation)]
    if origin is list:
        inner, _ = _cli_type(get_args(annotation)[0])
        return list[inner], []
    if annotation in (bool, int, float, str):
        return annotation, []
    return str, []


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        return str(value[0])
    return "none" if value is None else str(value)
