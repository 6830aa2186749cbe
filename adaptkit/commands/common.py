"""Options and helpers shared by every subcommand.

`--json`, `--quiet`, `--debug` (and `--overwrite` on commands with `-o`) are parsed once into a
`Shared` object on the root context, whether they come before or after the command name
(`adaptkit --json plugins` and `adaptkit plugins --json`): see `add_shared_options`. A command
reads them with `shared(ctx)` or `Console.of(ctx)`. Where it has settings, a command also takes
`--config FILE.yaml`, `--set a.b=value` and `--seed`. Commands print a short summary, or with
`--json` one JSON object on stdout.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from adaptkit.io.devices import DEVICE_HELP

OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="Where to write the result (refused if it exists, unless --overwrite).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file with settings (flags and --set override it).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: --set optimizer.lr=1e-4, --set log_steps=5, or a method parameter (repeatable).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
PushOpt = Annotated[Optional[str], typer.Option("--push-to-hub", help="After a successful run, upload the output to this Hub model repository (OWNER/NAME); token from `hf auth login` or HF_TOKEN.")]
PrivateOpt = Annotated[bool, typer.Option("--private", help="With --push-to-hub: create the repository as private.")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="With --push-to-hub: the branch to upload to (created when missing).", show_default="main")]


DeviceOpt = Annotated[str, typer.Option("--device", help=f"Where to run: {DEVICE_HELP}")]
ComputeDtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")]
DeviceMapOpt = Annotated[Optional[str], typer.Option("--device-map", help="Spread a model too large for one device over GPUs, CPU and disk (accelerate): auto, balanced, sequential; replaces --device.")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option("--max-memory", help="With --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB.")]
GenerationServerOpt = Annotated[Optional[str], typer.Option("--generation-server", help="OpenAI-compatible endpoint serving the evaluated model (e.g. http://127.0.0.1:8000/v1, from `vllm serve` or `transformers serve`): generation goes there instead of in-process.")]
GenerationServerModelOpt = Annotated[Optional[str], typer.Option("--generation-server-model", help="With --generation-server: the served model's name as /v1/models lists it; without it, the only model served.")]
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_device_or_map(ctx: typer.Context, device: str, placement: Any) -> str:
    """The --device to run on (checked against this machine); --device-map replaces it, so not both."""
    from adaptkit.io.devices import resolve_device

    if placement is not None:
        if ctx.get_parameter_source("device").name != "DEFAULT":
            from adaptkit.errors import InputError

            raise InputError("--device: give either --device or --device-map (which spreads the model over devices), not both")
        return "cpu"  # where inputs start; accelerate's hooks move them
    return resolve_device(device)


def check_compute_dtype(dtype: str, flag: str = "--dtype") -> str:
    """The dtype a model is loaded in for evaluation or generation."""
    if dtype not in COMPUTE_DTYPES:
        from adaptkit.errors import InputError

        raise InputError(f"{flag}: expected {', '.join(COMPUTE_DTYPES[:-1])} or {COMPUTE_DTYPES[-1]}, got '{dtype}'")
    return dtype


def generation_server(url: Optional[str], served: Optional[str], refs: list[Any]) -> Any:
    """The checked ServerGenerator of `--generation-server` (None without it) for the one --model,
    whose tokenizer decides the chat-template handling as in-process."""
    from adaptkit.errors import InputError

    if url is None:
        if served is not None:
            raise InputError("--generation-server-model: applies only with --generation-server URL")
        return None
    if len(refs) != 1:
        raise InputError(f"--generation-server: a server serves one evaluated model; give exactly one --model (got {len(refs)})")
    from adaptkit.evals.server_generation import server_generator
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    tokenizer = refs[0].tokenizer or load_tokenizer(resolve_model_source(refs[0].location, "--model"))
    return server_generator(url, served, tokenizer)


@contextmanager
def offload_folder(placement: Any) -> Iterator[Any]:
    """The placement with a temporary offload folder for layers that fit on no device (removed after)."""
    if placement is None:
        yield None
        return
    import dataclasses
    import tempfile

    with tempfile.TemporaryDirectory(prefix="adaptkit-offload-") as folder:
        yield dataclasses.replace(placement, offload_folder=folder)


@dataclass
class Shared:
    """The options every command takes, parsed once per invocation (see `add_shared_options`)."""

    overwrite: bool = False
    json: bool = False
    quiet: bool = False
    debug: bool = False
    progress: bool = False  # progress lines on stderr also with --json (a study's steps)
    on_interrupt: Optional[Callable[[], str]] = None  # what an interrupted command kept and how to go on
    # `adaptkit ARGV` in this process -> (exit code, stdout): set by the CLI (cli.run_in_process), for a
    # command that runs other adaptkit commands without a fresh interpreter for each (the quickstart's study)
    run_command: Optional[Callable[[list[str]], tuple[int, str]]] = None


def _shared_declarations(
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    progress: Annotated[bool, typer.Option("--progress", hidden=True, help="Progress lines on stderr also with --json.")] = False,
) -> None:
    """The shared options, declared once; `add_shared_options` copies them onto commands."""


def shared(ctx: typer.Context) -> Shared:
    """This invocation's shared options (kept on the root context)."""
    return ctx.find_root().ensure_object(Shared)


def _store_shared(ctx: typer.Context, param: Any, value: bool) -> None:
    if value:  # a flag given anywhere stays set: `adaptkit --json CMD` and `adaptkit CMD --json`
        setattr(shared(ctx), param.name, True)


def has_output_option(command: Any) -> bool:
    return any("--output" in getattr(param, "opts", ()) for param in command.params)


def add_shared_options(command: Any, root: bool = False) -> Any:
    """Add --json, --quiet, --debug (and --overwrite on the root and where the command has
    -o/--output) to a click command and, for a group, to each of its subcommands. The values go
    to `shared(ctx)`, not to the command's function, so no command declares them itself."""
    if getattr(command, "_adaptkit_shared", False):
        return command
    command._adaptkit_shared = True
    template = typer.Typer(add_completion=False)
    template.command()(_shared_declarations)
    for param in typer.main.get_command(template).params:
        if param.name == "overwrite" and not (root or has_output_option(command)):
            continue
        param.expose_value = False
        param.callback = _store_shared
        command.params.append(param)
    for sub in getattr(command, "commands", {}).values():
        add_shared_options(sub)
    return command


def short_help(text: str, limit: int) -> str:
    """`text` cut at a word boundary to fit `limit` characters, with '...' when cut (as click shows commands)."""
    from adaptkit.errors import one_line

    text = one_line(text)
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 3)].rsplit(" ", 1)[0].rstrip(" .,;:")
    return cut + "..."


METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOLEAN"}


def prepare_command(command: Any, root: bool = False) -> Any:
    """A click command (and its subcommands) as adaptkit shows it: the shared options added and the
    conventional metavars (TEXT, PATH, INTEGER, FLOAT) instead of typer's Python types (<list[str]>)."""
    add_shared_options(command, root)
    _conventional_metavars(command)
    _help_defaults_false(command)
    return command


def _help_defaults_false(command: Any) -> None:
    """--help of a command and its subcommands: False when not given (click leaves None), which typer
    passes through without building its pydantic coercion, so `adaptkit COMMAND --help` imports no pydantic."""
    if getattr(command, "_adaptkit_help_false", False):
        return
    command._adaptkit_help_false = True
    get_help_option = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            option.default = False
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _help_defaults_false(sub)


def _conventional_metavars(command: Any) -> None:
    for param in command.params:
        if getattr(param, "param_type_name", "") == "argument" and hasattr(param, "display_type_rich"):
            param.display_type_rich = lambda ctx=None: None  # an argument's help shows its name (STORE), not '<path>'
            continue
        if getattr(param, "is_flag", False) or param.metavar is not None or not hasattr(param, "display_type"):
            continue
        shown = str(param.display_type(None) or "").strip("<>")  # typer: 'int range', 'list[Path]', 'a|b'
        inner = shown[5:-1] if shown.startswith("list[") and shown.endswith("]") else shown
        word = inner.split(" ")[0].lower()
        param.metavar = METAVARS.get(word) or (f"[{inner}]" if "|" in inner else "TEXT")
    for sub in getattr(command, "commands", {}).values():
        _conventional_metavars(sub)


def push_output(target: Any, files: dict[str, Path], console: "Console", message: str) -> Optional[str]:
    """Upload an output to the Hub when --push-to-hub named a target (checked before the run); its URL."""
    if target is None:
        return None
    from adaptkit.io.hub import push

    console.print(f"uploading {len(files)} file(s) to the Hub repository {target.repo_id}")
    url = push(target, files, message)
    console.print(f"uploaded: {url}")
    return url


class Console:
    """Where a command reports: results (tables, summaries) on stdout, progress and logs on stderr;
    with --json one JSON object on stdout instead. In a pipe, tables are plain text with whole values."""

    def __init__(self, json_mode: bool = False, quiet: bool = False, progress: bool = False):
        from rich.console import Console as RichConsole

        self.json_mode = json_mode
        self.quiet = quiet or json_mode  # no results but the JSON
        self.silent = quiet or (json_mode and not progress)  # no progress or logs: --quiet, or --json without --progress
        self.rich = RichConsole(stderr=True, quiet=self.silent, soft_wrap=True)  # progress and logs, lines whole in a log file
        self.out = RichConsole(quiet=self.quiet, soft_wrap=True)  # results

    @classmethod
    def of(cls, ctx: typer.Context) -> "Console":
        """The console of a command, set by the shared --json and --quiet options."""
        options = shared(ctx)
        return cls(options.json, options.quiet, options.progress)

    @property
    def show_progress(self) -> bool:
        return not self.silent and sys.stderr.isatty()

    def print(self, *args: Any, **kwargs: Any) -> None:
        """A log or progress line (stderr)."""
        self.rich.print(*args, **kwargs)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A result table on stdout: a Rich table on a terminal (cells wrap, never cut), else plain text."""
        if self.quiet:
            return
        cells = [[_fmt(v) for v in row] for row in rows]
        if not self.out.is_terminal:
            sys.stdout.write(plain_table(title, columns, cells))
            sys.stdout.flush()
            return
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        self.out.print(table)

    def result(self, result: dict[str, Any], summary: str | None = None) -> None:
        """Finish a command: JSON on stdout with --json, else a one-line summary on stdout."""
        if self.json_mode:
            sys.stdout.write(json.dumps(result, default=str, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif summary:
            self.out.print(summary)


def plain_table(title: str, columns: list[str], rows: list[list[str]]) -> str:
    """A table for pipes and logs: the title, then tab-separated header and rows with whole values."""
    from adaptkit.errors import one_line

    lines = [one_line(title), "\t".join(one_line(c) for c in columns)]
    lines += ["\t".join(one_line(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
