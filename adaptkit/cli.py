"""The `adaptkit` command line: subcommands from adaptkit/commands/ and from plugins.

Start-up imports only typer, rich, pluggy and pydantic; torch, transformers and the
optional extras are imported inside commands when they run. Errors become one line on
stderr and an exit code (2 bad input, 1 runtime failure); `--debug` shows tracebacks.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

from adaptkit import __version__
from adaptkit.commands.common import Shared, prepare_command, short_help
from adaptkit.errors import AdaptkitError, Interrupted, one_line
from adaptkit.threads import prepare as prepare_threads

# name -> module; a module exposes `command` (a function) or `app` (a Typer group)
BUILTIN_COMMANDS = {
    "calibrate": "adaptkit.commands.calibrate",
    "score": "adaptkit.commands.score",
    "mask": "adaptkit.commands.mask",
    "train": "adaptkit.commands.train",
    "merge": "adaptkit.commands.merge",
    "instruct-vector": "adaptkit.commands.instruct_vector",
    "evaluate": "adaptkit.commands.evaluate",
    "generate": "adaptkit.commands.generate",
    "codemix": "adaptkit.commands.codemix",
    "vocab": "adaptkit.commands.vocab",
    "plugins": "adaptkit.commands.plugins",
    "quickstart": "adaptkit.commands.quickstart",
    "data": "adaptkit.commands.data",
    "study": "adaptkit.commands.study",
    "bam": "adaptkit.commands.bam",
}
# what `adaptkit --help` shows for each, without importing the 15 modules (a third of the start-up):
# the first line of the command's docstring (its group's help, or its module's docstring for merge);
# tests/test_cli.py checks that the two agree
SUMMARIES = {
    "calibrate": "Sample source-side examples, render them with the chat template and pack them into token blocks.",
    "score": "Score every parameter's columns (and rows) by importance to the source model.",
    "mask": "Turn scores into masks (k = round-half-up(ratio x units) frozen per matrix) and print the frozen fraction per module type.",
    "train": "Continually pre-train a model with a method (fft, ssu-*, lora, ...) and save runs/NAME/final.",
    "merge": "Merge models (linear, task vectors, TIES, DARE, SLERP, reversion, LiNeS, LayRA) or run a mergekit YAML.",
    "instruct-vector": "Instruction residuals (chat vectors): extract theta_instruct - theta_base once, apply it with any alpha.",
    "evaluate": "Evaluate models on perplexity, lm-eval/lighteval tasks and MT/summarization (chrF++), with changes vs a baseline.",
    "generate": "Generate one response per prompt and model; writes JSONL records {id, prompt, model, response} (or chat records).",
    "codemix": "Flag code-mixed responses with a language identifier (SSU paper: GlotLID, threshold 0.9).",
    "vocab": "Vocabulary: measure a tokenizer on target text (inspect), extend it with new tokens (extend), or give a model another tokenizer (transplant).",
    "plugins": "List registered plugins and methods: name, kind, plugin, summary, reference, parameters.",
    "quickstart": "Run the whole pipeline on the embedded default (or --model): adapt with several methods, compare forgetting and learning.",
    "data": "Token stores: tokenize corpora once (data prepare), look inside one (data inspect).",
    "study": "Run a grid of trainings (skipping finished runs, resuming interrupted ones), evaluate them all and write the report.",
    "bam": "Branch-and-Merge: rounds x branches trainings on data slices, merged each round (resumable).",
}


class LazyGroup(TyperGroup):
    """The root command group: a built-in command's module is imported and its click command
    built only when that command runs or shows its own help; the root help lists each by the
    first line of its docstring. So `adaptkit --help` pays for no option introspection."""

    lazy_modules: dict[str, str] = {}

    def list_commands(self, ctx) -> list[str]:
        names = list(super().list_commands(ctx))
        return list(self.lazy_modules) + [n for n in names if n not in self.lazy_modules]

    def get_command(self, ctx, name: str):
        if name in self.lazy_modules and name not in self.commands:
            module = importlib.import_module(self.lazy_modules[name])
            if hasattr(module, "build_app"):  # a group generated from the registry (merge)
                target = module.build_app()
            elif isinstance(getattr(module, "app", None), typer.Typer):
                target = module.app
            else:
                target = typer.Typer(add_completion=False)
                target.command(name=name)(module.command)
            target._add_completion = False  # a subcommand of adaptkit, not a program of its own
            target.rich_markup_mode = None  # plain help: rich's help renderer costs more than the whole start-up
            command = typer.main.get_command(target)
            command.name = name
            self.add_command(command, name)
        command = super().get_command(ctx, name)
        return prepare_command(command) if command is not None else None

    def invoke(self, ctx):
        """Run the command; Ctrl-C becomes `Interrupted` here, before typer turns it into a silent exit code."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted(signal.SIGINT) from None

    def format_commands(self, ctx, formatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            if name in self.lazy_modules and name not in self.commands:
                rows.append((name, short_help(SUMMARIES[name], limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adaptkit {__version__}")
        raise typer.Exit()


def _add(app: typer.Typer, name: str, target: object, help_text: str | None = None) -> None:
    if isinstance(target, typer.Typer):
        target.rich_markup_mode = None  # plain help: rich's help renderer costs more than the whole CLI start-up
        app.add_typer(target, name=name, **({"help": help_text} if help_text else {}))
    else:
        app.command(name=name, help=help_text)(target)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="adaptkit",
        help="Language adaptation of LLMs: calibrate -> score -> mask -> train -> merge / instruct-vector -> evaluate -> codemix.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        cls=LazyGroup,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    ) -> None:
        """adaptkit: adapt language models to new languages without forgetting."""

    LazyGroup.lazy_modules = dict(BUILTIN_COMMANDS)

    for spec in _plugin_commands():
        if spec.name in BUILTIN_COMMANDS:
            continue
        try:
            _add(app, spec.name, spec.load(), spec.summary or None)
        except AdaptkitError as exc:
            print(f"warning: plugin command '{spec.name}' is unavailable: {exc}", file=sys.stderr)
    return app


def _plugin_commands() -> list:
    """Commands added by third-party plugins. Built-in plugins add none, so without third-party
    entry points the registry (and pydantic) is not loaded at all: `adaptkit --help` stays fast."""
    from adaptkit.entry_points import third_party_installed

    if not third_party_installed():
        return []
    from adaptkit.registry import get_registry

    return list(get_registry().specs.get("command", {}).values())


_stopping = False  # an Interrupted was raised for SIGTERM/SIGHUP: the command is stopping


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM or SIGHUP: raise Interrupted, once. A repeat while the command stops (a launcher that
    signals the whole process group and the parent that forwards it) is ignored, so that the checkpoint
    or cleanup under way is not cut short; SIGKILL remains for a command that must die now."""
    global _stopping
    if not _stopping:
        _stopping = True
        raise Interrupted(signum)


def _ctrl_c(signum: int, frame: object) -> None:
    """SIGINT: KeyboardInterrupt, every time (a second Ctrl-C cuts the cleanup short); a SIGTERM or
    SIGHUP that follows is a repeat and ignored."""
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def _interrupted_line(exc: Interrupted, options: Shared) -> str:
    """One line: which signal stopped the command, what it kept and how to go on."""
    kept = "partial outputs were removed; run the command again"
    if options.on_interrupt is not None:
        try:
            kept = options.on_interrupt()
        except Exception:  # the message must not hide the interrupt
            pass
    return f"adaptkit: interrupted ({exc.signal_name}); {kept}"


def main(argv: list[str] | None = None, nested: bool = False) -> None:
    """Entry point of the `adaptkit` script. `nested` (a command run by another in this process, see
    `run_in_process`): an interrupt goes on up as `Interrupted`, for the outer command's one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    prepare_threads()  # before anything imports torch: OpenMP reads its variables once, when it loads
    options = Shared(debug=os.environ.get("ADAPTKIT_DEBUG", "") not in ("", "0"), run_command=run_in_process)
    handlers = _install_signal_handlers()
    try:
        command = prepare_command(typer.main.get_command(build_app()), root=True)
        code = command.main(args=args, prog_name="adaptkit", standalone_mode=False, obj=options)
        if code == 130:  # typer's code for a Ctrl-C outside the command (while parsing)
            raise Interrupted(signal.SIGINT)
        if isinstance(code, int) and code:  # typer returns a typer.Exit's code instead of raising it
            sys.exit(code)
    except Interrupted as exc:
        if nested:
            raise
        print(_interrupted_line(exc, options), file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("adaptkit: aborted", file=sys.stderr)
        sys.exit(130)
    except click_exceptions.ClickException as exc:
        if options.debug:
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `adaptkit` or a bare group: its help, exit 0
            typer.echo(exc.ctx.get_help())
            sys.exit(0)
        _error_line(f"adaptkit: error: {one_line(exc.format_message())}")
        sys.exit(2)
    except AdaptkitError as exc:
        if options.debug:
            raise
        _error_line(f"adaptkit: error: {one_line(str(exc))}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # before the command ran (while its options were parsed)
        if nested:
            raise Interrupted(signal.SIGINT) from None
        print(_interrupted_line(Interrupted(signal.SIGINT), options), file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line unless --debug
        if options.debug:
            raise
        _error_line(f"adaptkit: error: {type(exc).__name__}: {one_line(str(exc))} (run again with --debug for the traceback)")
        sys.exit(1)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def run() -> None:
    """The `adaptkit` program (its script and `python -m adaptkit`): `main`, then the end of the process. A
    process of a launched run (one that joined a process group) ends with os._exit once every exit hook
    has run (the group's teardown among them): left to the interpreter's own teardown, the group's C++
    threads can abort the process (SIGABRT) when a peer has gone first, and a launch that should exit 2
    exits -6."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        sys.exit(code)
    import atexit

    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()  # what the interpreter's exit runs: the process group's teardown, child processes' cleanup
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """`adaptkit ARGV` run by `main` in this process: its exit code and its stdout (stderr passes through).
    For a command that runs other adaptkit commands without a fresh interpreter's imports for each.
    An interrupt is raised (`Interrupted`), not returned as an exit code."""
    import contextlib
    import io

    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            main(argv, nested=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, stdout.getvalue()


def _install_signal_handlers() -> dict[int, object]:
    """Ctrl-C raises KeyboardInterrupt (even where the shell started us ignoring it); SIGTERM and
    SIGHUP (a closed terminal or SSH connection; not under `nohup`) raise Interrupted: a command stops
    the same way for each (a checkpoint for train, children ended, partial outputs removed, one line,
    128 + the signal number). Returns the previous handlers. Only the main thread may set them."""
    import threading

    global _stopping
    if threading.current_thread() is not threading.main_thread():
        return {}
    _stopping = False
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, _ctrl_c)
    signal.signal(signal.SIGTERM, _terminate)
    if previous[signal.SIGHUP] != signal.SIG_IGN:  # under `nohup` a hang-up stays ignored
        signal.signal(signal.SIGHUP, _terminate)
    return previous


def _error_line(text: str) -> None:
    """One error line in one write: with several processes on one stderr (a launcher's ranks, unbuffered),
    print's separate write of the newline could let another process's line start in the middle of it."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
