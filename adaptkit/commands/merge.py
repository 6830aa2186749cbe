"""Merge models (linear, task vectors, TIES, DARE, SLERP, reversion, LiNeS, LayRA) or run a mergekit YAML.

Subcommands and their options are generated from the registry: every merge method
(built-in or from a plugin) gets `adaptkit merge <name>` with the shared input/output
options and one option per parameter of its pydantic model (`lambda_` -> `--lambda`,
lists are repeatable, booleans are `--x/--no-x`). Without a subcommand, `--config`
runs a mergekit-style YAML file. Light at import: torch loads when a merge runs.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin, get_type_hints

import typer

from typer.core import TyperGroup

from adaptkit.commands.common import Console, OutputOpt, PrivateOpt, PushOpt, RevisionOpt, SeedOpt, prepare_command, push_output, shared, short_help

ModelsOpt = Annotated[Optional[list[Path]], typer.Option("--model", "-m", help="A model directory (repeatable; order matters for weights).")]
BaseOpt = Annotated[Optional[Path], typer.Option("--base", help="The base model the task vectors are taken from.")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Output dtype of floating tensors: float32, bfloat16 or float16.", show_default="as the first --model")]
ShardOpt = Annotated[str, typer.Option("--shard-size", help="Largest output shard, e.g. 5GB or 500MB.")]
TokenizerOpt = Annotated[Optional[Path], typer.Option("--tokenizer-from", help="Copy tokenizer files from this directory; rows are merged by id.", show_default="the first --model")]
TokenizerSourceOpt = Annotated[Optional[str], typer.Option("--tokenizer-source", help="Merge across vocabularies: base, union, or the path of an input; embedding and head rows are mapped by token string.")]
VocabInitOpt = Annotated[Optional[str], typer.Option("--vocab-init", help="With --tokenizer-source: give a token an input lacks a row from that input's own rows (subword-mean, mean, random).", show_default="the other inputs' rows for the token")]


def __getattr__(name: str) -> Any:
    """`app` is built on access, so plugins registered in-process get their subcommands."""
    if name == "app":
        return build_app()
    raise AttributeError(name)


class MergeGroup(TyperGroup):
    """`adaptkit merge`: one subcommand per registered merge method, listed from the specs (name and
    summary) and built only when it runs or shows its own help, so `merge --help` imports no merge
    method's module."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(_merge_specs()) | set(super().list_commands(ctx)))

    def get_command(self, ctx, name: str):
        spec = _merge_specs().get(name)
        if spec is not None and name not in self.commands:
            app = typer.Typer(add_completion=False, rich_markup_mode=None)
            help_text = f"{spec.summary}. Reference: {spec.reference}." if spec.reference else spec.summary
            app.command(name=spec.name, help=help_text)(_method_command(spec))
            self.add_command(prepare_command(typer.main.get_command(app)), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter) -> None:
        limit = formatter.width - 6 - max(map(len, self.list_commands(ctx)), default=0)
        rows = [(name, short_help(spec.summary, limit)) for name, spec in sorted(_merge_specs().items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _merge_specs() -> dict[str, Any]:
    from adaptkit.registry import get_registry

    return get_registry().specs.get("merge method", {})


def build_app() -> typer.Typer:
    app = typer.Typer(
        help="Merge models: averages, task / language vectors, TIES, DARE, SLERP, layer-aware reversion, "
        "LiNeS, layer swapping, LayRA presets; or run a mergekit-style YAML with --config.",
        invoke_without_command=True,
        no_args_is_help=False,
        cls=MergeGroup,
    )
    app.callback(invoke_without_command=True)(_from_config)
    return app


def _from_config(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", help="A mergekit-style YAML file to run (instead of a method subcommand).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="With --config: where to write the merged model.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="With --config: override a key of the file, e.g. --set parameters.lambda=0.5 (repeatable).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="With --config: output dtype, float32, bfloat16 or float16.", show_default="the file's dtype")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="With --config: random seed (DARE).")] = None,
    shard_size: Annotated[str, typer.Option("--shard-size", help="With --config: largest output shard, e.g. 5GB or 500MB.")] = "5GB",
    push_to_hub: PushOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
) -> None:
    """Merge models; give a method subcommand, or --config merge.yaml (mergekit's format) and -o."""
    from adaptkit.errors import InputError

    if ctx.invoked_subcommand is not None:
        _refuse_group_options(ctx, ctx.invoked_subcommand)
        return
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if output is None:
        raise InputError("-o/--output: required with --config (where to write the merged model)")
    from adaptkit.io.hub import check_target

    target = check_target(push_to_hub, private, revision)
    from adaptkit.settings import parse_set_overrides, read_yaml_mapping, set_nested
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
        tokenizer_source=plan.tokenizer_source,
        ctx=ctx,
        tensor_params=plan.tensor_params,
        command=f"adaptkit merge --config {config}",
        config_text=Path(config).read_text(encoding="utf-8"),
        where=str(config),
        target=target,
    )


# the options of `adaptkit merge --config` itself, and where each goes with a method subcommand
GROUP_OPTIONS = {
    "config": ("--config", "give either a method subcommand or --config, not both"),
    "output": ("-o/--output", "give it after the method name: adaptkit merge {method} -o DIR"),
    "set_": ("--set", "it edits a --config file; give the method's parameters after its name (adaptkit merge {method} --help lists them)"),
    "dtype": ("--dtype", "give it after the method name: adaptkit merge {method} --dtype ..."),
    "seed": ("--seed", "give it after the method name: adaptkit merge {method} --seed ..."),
    "shard_size": ("--shard-size", "give it after the method name: adaptkit merge {method} --shard-size ..."),
    "push_to_hub": ("--push-to-hub", "give it after the method name: adaptkit merge {method} --push-to-hub REPO_ID"),
    "private": ("--private", "give it after the method name: adaptkit merge {method} --private"),
    "revision": ("--revision", "give it after the method name: adaptkit merge {method} --revision BRANCH"),
}


def _refuse_group_options(ctx: typer.Context, method: str) -> None:
    """With a method subcommand, an option placed before it (meant for --config) would be ignored: refuse it."""
    from adaptkit.errors import InputError

    for name, (flag, advice) in GROUP_OPTIONS.items():
        if ctx.get_parameter_source(name).name != "DEFAULT":
            raise InputError(f"{flag}: before the method name it applies only to `adaptkit merge --config`; {advice.format(method=method)}")


def _run(method: str, models, base, params: dict[str, Any], *, output: Path, dtype, seed, shard_size, tokenizer_from, ctx: typer.Context, tensor_params=None, command: str = "", config_text: str = "", where: str | None = None, target=None, tokenizer_source=None, vocab_init=None) -> None:
    from adaptkit.merge.api import merge
    from adaptkit.merge.executor import MergeOptions
    from adaptkit.merge.stream import parse_size

    console = Console.of(ctx)
    options = MergeOptions(
        overwrite=shared(ctx).overwrite,
        dtype=dtype,
        seed=seed if seed is not None else 0,
        shard_size=parse_size(shard_size),
        tokenizer_from=tokenizer_from,
        tokenizer_source=tokenizer_source,
        vocab_init=vocab_init,
        command=command or f"adaptkit merge {method}",
        config=config_text,
        progress=console.show_progress,
    )
    summary = merge(method, list(models or []), output, base=base, params=params, options=options, tensor_params=tensor_params, where=where)
    push_hub(target, output, summary, console, options.command)
    console.result(summary, f"[green]merged[/green] {summary['tensors']} tensors with {method} -> {output} ({summary['shards']} shard(s), {summary['seconds']:.1f} s)")


def push_hub(target, output: Path, summary: dict[str, Any], console: Console, command: str) -> None:
    """After a merge: upload the output directory when --push-to-hub named a target; its URL goes into the summary."""
    from adaptkit.io.hub import output_files

    url = push_output(target, output_files(output), console, command)
    if url:
        summary["hub"] = url


def _method_command(spec) -> Callable[..., None]:
    """`adaptkit merge NAME`: the shared merge options below plus one option per parameter of the method."""

    def merge_with(
        ctx: typer.Context,
        models: ModelsOpt = None,
        base: BaseOpt = None,
        output: OutputOpt = ...,
        dtype: DtypeOpt = None,
        seed: SeedOpt = None,
        shard_size: ShardOpt = "5GB",
        tokenizer_from: TokenizerOpt = None,
        tokenizer_source: TokenizerSourceOpt = None,
        vocab_init: VocabInitOpt = None,
        push_to_hub: PushOpt = None,
        private: PrivateOpt = False,
        revision: RevisionOpt = None,
        params: Optional[dict[str, Any]] = None,
    ) -> None:
        from adaptkit.io.hub import check_target

        target = check_target(push_to_hub, private, revision)
        _run(spec.name, models, base, params or {}, output=output, dtype=dtype, seed=seed, shard_size=shard_size, tokenizer_from=tokenizer_from,
             ctx=ctx, target=target, tokenizer_source=tokenizer_source, vocab_init=vocab_init)

    command = with_param_options(merge_with, spec.params)
    command.__name__ = spec.name.replace("-", "_")
    command.__doc__ = spec.summary
    return command


def with_param_options(function: Callable[..., None], model: Any, into: str = "params") -> Callable[..., None]:
    """`function` as a Typer command with one more option per field of the pydantic `model`.

    `lambda_` becomes `--lambda` (`option_name`), a list is a repeatable option that also takes
    commas (`--layers 0-3,8`), a bool is `--x/--no-x`; --help shows each field's default. The
    options given on the command line reach `function` as one dict in its `into` argument
    (pydantic validates them there, so a method can tell what was given); `function` must take
    `ctx: typer.Context`, its other parameters keep their options and `into` is not an option.
    """
    from adaptkit.merge.base import option_name

    hints = get_type_hints(function, include_extras=True)  # the Annotated options, not their names as strings
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(function).parameters.values() if p.name != into]
    names = {p.name for p in own}
    fields = list(model.model_fields.items())
    for field, _ in fields:
        if field in names or option_name(field) in {option_name(n) for n in names}:
            raise RuntimeError(f"parameter '{field}' of {model.__name__} clashes with an option of the command")
    added = [inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=_cli_default(info), annotation=_option(field, info)) for field, info in fields]

    def command(**values: Any) -> None:
        ctx = values["ctx"]
        given = {field: _given(values.pop(field)) for field, _ in fields}
        given = {k: v for k, v in given.items() if v is not None and ctx.get_parameter_source(k).name != "DEFAULT"}
        return function(**values, **{into: given})

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__, command.__doc__ = function.__name__, function.__doc__
    return command


def _option(field: str, info: Any) -> Any:
    """The Typer annotation of one parameter's option: its type, flag names and help with the default."""
    from adaptkit.merge.base import option_name

    cli_type, choices = _cli_type(info.annotation)
    help_text, described = _split_default(info.description or "")
    if choices:
        help_text += f" Choices: {', '.join(choices)}."
    if info.is_required():
        help_text += " (required)"
    name = option_name(field)
    decls = (f"--{name}/--no-{name}",) if cli_type is bool else (f"--{name}",)
    shown = True if _cli_default(info) is not None else (described or False)  # what a None default means, from the description
    return Annotated[Optional[cli_type], typer.Option(*decls, help=help_text.strip(), show_default=shown)]


def _cli_default(info: Any) -> Any:
    """The default --help shows (the field's own; None when required or none)."""
    if info.is_required():
        return None
    default = info.get_default(call_default_factory=True)
    return None if default == [] else default


_DESCRIBED_DEFAULT = re.compile(r"\s*\(default:?\s+([^)]*)\)|;\s*default:\s*([^.;)]+)")


def _split_default(description: str) -> tuple[str, str | None]:
    """A description without its '(default ...)' words, and those words, shown as [default: ...] like every default."""
    match = _DESCRIBED_DEFAULT.search(description)
    if match is None:
        return description, None
    return (description[: match.start()] + description[match.end():]).strip(), (match.group(1) or match.group(2)).strip()


def _given(value: Any) -> Any:
    """An option's value as the parameter model takes it: None when not given, lists split at commas."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    if isinstance(value, (list, tuple)):
        parts = [part for item in value for part in (item.split(",") if isinstance(item, str) else [item])]
        return [part.strip() if isinstance(part, str) else part for part in parts if not isinstance(part, str) or part.strip()]
    return value


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
