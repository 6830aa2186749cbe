"""The CLI shell: help, version, start-up imports, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

HEAVY = ("torch", "transformers", "peft", "mergekit", "lm_eval", "lighteval", "accelerate", "safetensors")
COMMANDS = ("calibrate", "score", "mask", "train", "merge", "instruct-vector", "evaluate", "generate", "codemix", "plugins", "quickstart", "data", "vocab", "study")


def _imports_after(args: list[str]) -> tuple[int, str, list[str]]:
    code = (
        "import sys, io, contextlib\n"
        "from adaptkit.cli import main\n"
        "out = io.StringIO()\n"
        "rc = 0\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit as e:\n"
        "        rc = e.code or 0\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(rc, ' '.join(heavy) or '-', file=sys.stderr)\n"
        "sys.stdout.write(out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    rc, heavy = done.stderr.strip().splitlines()[-1].split(" ", 1)
    return int(rc), done.stdout, [] if heavy == "-" else heavy.split()


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_help_lists_every_command_without_heavy_imports():
    rc, out, heavy = _imports_after(["--help"])
    assert rc == 0
    for name in COMMANDS:
        assert name in out
    assert heavy == []


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_plugins_listing_without_heavy_imports():
    rc, out, heavy = _imports_after(["plugins", "--json"])
    assert rc == 0
    listing = json.loads(out)
    names = {(p["kind"], p["name"]) for p in listing["plugins"]}
    assert ("method", "fft") in names
    fft = next(p for p in listing["plugins"] if p["name"] == "fft")
    assert fft["plugin"] == "builtin-methods" and fft["reference"]
    assert heavy == []


def test_root_help_summaries_are_the_commands_first_docstring_lines():
    """cli.SUMMARIES (what `adaptkit --help` lists without importing the command modules) is the first
    line of each command's docstring: of its function, its group's help, or its module (merge)."""
    import importlib

    from adaptkit.cli import BUILTIN_COMMANDS, SUMMARIES

    for name, module_name in BUILTIN_COMMANDS.items():
        module = importlib.import_module(module_name)
        if hasattr(module, "build_app"):
            doc = module.__doc__
        elif isinstance(getattr(module, "app", None), typer.Typer):
            doc = module.app.info.help
        else:
            doc = module.command.__doc__
        assert SUMMARIES[name] == doc.strip().splitlines()[0], name


HELP_FORBIDDEN = ("torch", "transformers", "pydantic", "numpy")
HELP_RUNS = [["--help"]] + [[name, "--help"] for name in COMMANDS] + [["data", "prepare", "--help"], ["vocab", "extend", "--help"], ["instruct-vector", "apply", "--help"]]


@pytest.mark.slow  # one fresh process running 18 help commands (2 s)
def test_help_imports_neither_pydantic_nor_plugins_nor_torch():
    """`adaptkit --help` and `adaptkit COMMAND --help` (run one after another in one fresh process, the
    modules checked after each) import no pydantic, torch, numpy or plugin module; then `adaptkit plugins`
    imports no torch and no plugin implementation (its specs come from the catalog)."""
    code = (
        "import sys, io, contextlib\n"
        "from adaptkit.cli import main\n"
        "def loaded(forbidden):\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in forbidden\n"
        "                  or (m.startswith('adaptkit.plugins.') and m.count('.') >= 3))\n"
        f"for args in {HELP_RUNS!r} + [['plugins', '--json']]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(args)\n"
        "        except SystemExit as e:\n"
        "            assert not e.code, (args, e.code)\n"
        f"    forbidden = {HEAVY!r} if args[0] == 'plugins' else {HELP_FORBIDDEN + HEAVY!r}\n"
        "    print(' '.join(args), '|', ' '.join(loaded(forbidden)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(HELP_RUNS) + 1
    assert [line for line in lines if line.split("|", 1)[1].strip()] == []


def _command_tree():
    """(path, click command) for every command and subcommand of the CLI, walked from the root group."""
    import typer

    from adaptkit.cli import build_app

    root = typer.main.get_command(build_app())
    found = []

    def walk(command, path, ctx):
        found.append((path, command))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                child = command.get_command(ctx, name)
                if child is not None and not child.hidden:
                    walk(child, (*path, name), type(ctx)(child, info_name=name, parent=ctx))

    walk(root, (), type(root.make_context("adaptkit", ["--help"], resilient_parsing=True))(root, info_name="adaptkit"))
    return found


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_every_command_and_subcommand_help_lists_its_options(invoke):
    tree = _command_tree()
    paths = {path for path, _ in tree}
    assert {(name,) for name in COMMANDS} <= paths
    assert len([p for p in paths if p[:1] == ("merge",) and len(p) == 2]) >= 10  # one subcommand per merge method
    for path, command in tree:
        result = invoke(*path, "--help")
        assert result.returncode == 0, (path, result)
        usage = next((line for line in result.stdout.splitlines() if line.strip().startswith("Usage:")), "")
        assert " ".join(("adaptkit", *path)) in " ".join(usage.split()), (path, usage)  # a usage line naming the command
        options = [p for p in command.params if getattr(p, "opts", None) and not getattr(p, "hidden", False) and p.param_type_name == "option"]
        if not hasattr(command, "list_commands"):
            assert options, (path, "no options declared")
        for option in options:
            names = [n for n in (*option.opts, *option.secondary_opts) if n.startswith("--")] or list(option.opts)
            for name in names:
                assert name in result.stdout, (path, name, result.stdout)
        if hasattr(command, "list_commands"):  # a group's help lists its subcommands
            for name in command.list_commands(None):
                assert name in result.stdout, (path, name)


def test_version(invoke):
    from adaptkit import __version__

    result = invoke("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_unknown_command_is_one_line_exit_2(invoke):
    from conftest import assert_input_error

    assert_input_error(invoke("trian"), "No such command")


def test_unknown_option_is_one_line_exit_2(invoke):
    from conftest import assert_input_error

    assert_input_error(invoke("plugins", "--kindd", "method"), "--kindd")


def test_unexpected_failure_is_one_line_exit_1_and_traceback_with_debug(monkeypatch, invoke):
    import adaptkit.commands.plugins as plugins_command

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("adaptkit.registry.get_registry", boom)
    result = invoke("plugins")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "disk on fire" in result.stderr and "--debug" in result.stderr
    try:
        invoke("plugins", "--debug")
    except RuntimeError as exc:
        assert "disk on fire" in str(exc)
    else:  # pragma: no cover - the assertion below reports it
        raise AssertionError("--debug should let the exception through")
    assert plugins_command  # imported for monkeypatch target resolution


def test_shared_options_work_before_and_after_the_command_name(invoke):
    for argv in (["--json", "plugins", "--kind", "method"], ["plugins", "--kind", "method", "--json"]):
        result = invoke(*argv)
        assert result.returncode == 0, (argv, result)
        assert {p["kind"] for p in json.loads(result.stdout)["plugins"]} == {"method"}, argv
    for argv in (["--quiet", "plugins"], ["plugins", "-q"]):
        result = invoke(*argv)
        assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (argv, result)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_overwrite_before_or_after_the_command_name_and_only_where_there_is_an_output(invoke, llama_dir, corpora, tmp_path):
    from conftest import assert_input_error

    out = tmp_path / "calib"
    args = ["calibrate", "-m", llama_dir, "-d", corpora["en"], "--format", "text", "--pool", "50", "--num-samples", "2", "--block-size", "16", "-o", out, "-q"]
    assert invoke(*args).returncode == 0
    assert_input_error(invoke(*args), "-o/--output", "--overwrite")
    assert invoke(*args, "--overwrite").returncode == 0
    assert invoke("--overwrite", *args).returncode == 0
    assert "--overwrite" not in invoke("plugins", "--help").stdout
    assert_input_error(invoke("plugins", "--overwrite"), "--overwrite")
    for name in COMMANDS + ("generate",):
        text = invoke(name, "--help").stdout
        assert "--json" in text and "--quiet" in text and "--debug" in text, name


def test_debug_before_the_command_name_shows_the_traceback(monkeypatch, invoke):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("adaptkit.registry.get_registry", boom)
    for argv in (["--debug", "plugins"], ["plugins", "--debug"]):
        try:
            invoke(*argv)
        except RuntimeError as exc:
            assert "disk on fire" in str(exc)
        else:
            raise AssertionError(f"{argv}: --debug should let the exception through")
    assert invoke("plugins").returncode == 1


def test_with_param_options_builds_one_option_per_model_field():
    from typing import Literal

    from pydantic import BaseModel, Field
    from typer.testing import CliRunner

    from adaptkit.commands.merge import with_param_options

    class Params(BaseModel):
        lambda_: float = Field(1.0, description="Scale.")
        layers: list[str] = Field(default_factory=list, description="Layer ranges.")
        weight: list[float] = Field(default_factory=list)
        normalize: bool = True
        mode: Literal["sum", "mean"] = "sum"
        rank: int

    seen = []

    def run(ctx: typer.Context, name: str = typer.Option("x", "--name"), params: dict | None = None) -> None:
        seen.append((name, params))

    app = typer.Typer(rich_markup_mode=None)
    app.command()(with_param_options(run, Params))
    runner = CliRunner()
    result = runner.invoke(app, ["--name", "y", "--lambda", "0.5", "--layers", "0-3,8", "--layers", "10", "--weight", "0.25",
                                 "--weight", "2", "--no-normalize", "--mode", "mean", "--rank", "4"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == ("y", {"lambda_": 0.5, "layers": ["0-3", "8", "10"], "weight": [0.25, 2.0], "normalize": False, "mode": "mean", "rank": 4})
    assert runner.invoke(app, []).exit_code == 0 and seen[-1] == ("x", {})  # nothing given: the model's defaults apply later
    help_text = " ".join(runner.invoke(app, ["--help"]).output.split())
    assert "Scale. [default: 1.0]" in help_text and "Choices: sum, mean." in help_text and "(required)" in help_text

    class Clash(BaseModel):
        name: str = "a"

    try:
        with_param_options(run, Clash)
    except RuntimeError as exc:
        assert "name" in str(exc)
    else:
        raise AssertionError("a parameter named like an option of the command must be refused")


def test_root_help_cuts_long_summaries_at_a_word():
    from adaptkit.cli import short_help

    assert short_help("Merge  models\nfast", 40) == "Merge models fast"
    assert short_help("Score every parameter's columns (and rows) by importance", 30) == "Score every parameter's..."
    assert len(short_help("x" * 50, 20)) <= 20


def _interrupt_training(signum, tmp_path, model_dir, data, name: str):
    """Start a long `adaptkit train` in a child process, send `signum` once it has a checkpoint."""
    import os
    import time

    out = tmp_path / name
    child = subprocess.Popen(
        [sys.executable, "-m", "adaptkit", "train", "--model", str(model_dir), "--data", str(data), "-o", str(out),
         "--max-steps", "100000", "--save-steps", "2", "--seq-len", "16", "--batch-size", "2", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.monotonic() + 300
    while not any(out.glob("checkpoint-*/state.json")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert child.poll() is None, child.communicate()
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=120)
    return child.returncode, stdout, stderr, out


@pytest.mark.slow  # signals to real training processes
def test_ctrl_c_exits_130_sigterm_143_and_sighup_129_with_what_was_kept(tmp_path, llama_dir, corpora):
    """SIGHUP (a closed terminal or SSH connection) stops a training as SIGTERM does: a checkpoint, one line."""
    import signal

    for signum, code, name in ((signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")):
        rc, stdout, stderr, out = _interrupt_training(signum, tmp_path, llama_dir, corpora["ha"], name.lower())
        assert rc == code, (name, rc, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in stderr, stderr
        assert f"interrupted ({name})" in lines[0] and "checkpoint-" in lines[0] and "--resume" in lines[0], lines[0]
        assert stdout == "" and not (out / "final").exists()
        kept = lines[0].split("kept ", 1)[1].split(";")[0]
        assert (Path(kept) / "state.json").is_file(), kept  # the checkpoint named is there



def test_interrupted_train_without_checkpoint_says_nothing_to_resume(tmp_path):
    from adaptkit.commands.train import interrupted_note

    (tmp_path / "run").mkdir()
    assert "nothing to resume" in interrupted_note(tmp_path / "run") and "--save-steps" in interrupted_note(tmp_path / "missing")


def test_bare_command_and_bare_groups_print_their_help(invoke):
    for argv, usage, listed in (([], "Usage: adaptkit [OPTIONS] COMMAND", "quickstart"),
                                (["instruct-vector"], "Usage: adaptkit instruct-vector", "extract"),
                                (["merge"], "Usage: adaptkit merge", "task-arithmetic")):
        result = invoke(*argv)
        assert result.returncode == 0 and result.stderr == "", (argv, result)
        assert usage in result.stdout and listed in result.stdout, (argv, result.stdout)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_plugins_listing_goes_to_stdout_with_whole_values_in_a_pipe(cli):
    from adaptkit.registry import get_registry

    spec = get_registry().specs["method"]["layer-selective"]
    done = cli("plugins")  # stdout is a pipe here, as in `adaptkit plugins | grep layer-selective`
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("layer-selective\t")]
    assert line.split("\t") == [spec.name, "method", spec.plugin, spec.summary, spec.reference, spec.param_summary()]
    assert "…" not in done.stdout and done.stderr == ""


def test_plugins_json_parameters_are_records_and_kind_takes_its_first_word(invoke):
    from adaptkit.registry import get_registry

    by_words = json.loads(invoke("plugins", "--kind", "merge method", "--json").stdout)
    assert json.loads(invoke("plugins", "--kind", "merge", "--json").stdout) == by_words
    assert json.loads(invoke("plugins", "--kind", "merge-method", "--json").stdout) == by_words
    ties = next(p for p in by_words["plugins"] if p["name"] == "ties")
    model = get_registry().specs["merge method"]["ties"].params
    names = [p["name"] for p in ties["parameters"]]
    assert len(names) == len(model.model_fields) and "lambda" in names and "lambda_" not in names  # as the flag --lambda says it
    merge_help = invoke("merge", "ties", "--help").stdout
    assert all(f"--{name}" in merge_help for name in names), (names, merge_help)
    density = next(p for p in ties["parameters"] if p["name"] == "density")
    assert density["type"] == "list[float]" and density["default"] == model().density and density["required"] is False
    assert density["description"] == model.model_fields["density"].description
    assert {p["kind"] for p in json.loads(invoke("plugins", "--kind", "eval", "--json").stdout)["plugins"]} == {"eval backend"}


def test_result_tables_on_a_narrow_terminal_wrap_instead_of_cutting():
    import io

    from rich.console import Console as RichConsole

    from adaptkit.commands.common import Console

    console = Console()
    console.out = RichConsole(file=io.StringIO(), force_terminal=True, width=40, color_system=None)
    value = "model.layers.0.self_attn.q_proj.target_modules"
    console.table("t", ["name", "value"], [["x", value]])
    text = console.out.file.getvalue()
    assert "…" not in text
    assert value in "".join(part.strip(" │┃|") for part in text.replace("│", "\n").splitlines())


def test_resolve_device_against_what_the_machine_has(monkeypatch):
    import pytest

    from adaptkit.errors import InputError
    from adaptkit.io import devices

    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu", "cuda:0", "cuda:1"])
    assert devices.resolve_device("auto") == "cuda" and devices.resolve_device("cuda:1") == "cuda:1" and devices.resolve_device("CPU") == "cpu"
    with pytest.raises(InputError, match=r"--device: 'cuda:2' is not available on this machine \(available: cpu, cuda:0, cuda:1\)"):
        devices.resolve_device("cuda:2")
    with pytest.raises(InputError, match="'mps' is not available"):
        devices.resolve_device("mps")
    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu"])
    assert devices.resolve_device("auto") == "cpu"
    with pytest.raises(InputError, match=r"'cuda' is not available on this machine \(available: cpu\)"):
        devices.resolve_device("cuda")



def test_check_writable_probes_the_nearest_existing_directory(tmp_path, monkeypatch):
    import errno
    import tempfile

    import pytest

    from adaptkit.errors import InputError
    from adaptkit.io.atomic import check_writable

    check_writable(tmp_path / "a" / "b" / "c")  # parents to be made: the probe goes to tmp_path
    assert sorted(tmp_path.iterdir()) == []  # nothing left behind
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(InputError, match=r"-o/--output: cannot write '.*/x/y': .* is on a read-only file system"):
        check_writable(tmp_path / "x" / "y")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is not a directory"):
        check_writable(tmp_path / "file" / "below")


def _every_command():
    """(path, click command, context) for every command and subcommand, as `adaptkit ... --help` builds them."""
    import typer

    from adaptkit.cli import build_app
    from adaptkit.commands.common import prepare_command

    root = prepare_command(typer.main.get_command(build_app()), root=True)
    root_ctx = root.make_context("adaptkit", [], resilient_parsing=True)
    found = []

    def walk(command, path, parent):
        ctx = command.make_context(path[-1], [], parent=parent, resilient_parsing=True) if path else root_ctx
        found.append((" ".join(path), command, ctx))
        for name in getattr(command, "list_commands", lambda c: [])(ctx):
            walk(command.get_command(ctx, name), path + [name], ctx)

    walk(root, [], None)
    return found


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_every_help_text_is_conventional():
    import re

    commands = _every_command()
    paths = {path for path, _, _ in commands}
    assert {"generate", "merge ties", "merge task-arithmetic", "instruct-vector extract", "instruct-vector apply"} <= paths
    for path, command, ctx in commands:
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for param in command.params:
            record = param.get_help_record(ctx)
            if record is None:
                continue
            decl, text = record
            where = f"adaptkit {path} {decl}"
            assert text and not text.startswith("["), f"{where}: no help text"
            assert not re.search(r"<[^>]*>", decl), f"{where}: Python type in the usage ({decl})"
            assert text.count("default:") <= 1, f"{where}: default shown twice ({text})"
            assert not re.search(r"\(default\b|Default:|; default:", text), f"{where}: a default outside [default: ...] ({text})"
            assert "optimizer.lr" not in text or path == "train", f"{where}: train's --set example ({text})"
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text):  # a flag it names must be there (copy-paste errors)
                assert flag in options or "`adaptkit " in text, f"{where}: names {flag}, which `adaptkit {path}` does not have ({text})"


def test_every_device_option_defaults_to_auto(invoke):
    import re

    for argv in (["train"], ["score"], ["evaluate"], ["generate"]):
        text = " ".join(invoke(*argv, "--help").stdout.split())
        assert re.search(r"--device TEXT Where to (run|train): auto .*?\[default: \(?auto\)?\]", text), (argv, text)


def test_a_repeated_sigterm_does_not_cut_the_stopping_short_and_nohup_keeps_sighup_ignored():
    """The first SIGTERM raises Interrupted; a repeat while stopping (the group and a forwarding parent)
    is ignored; after Ctrl-C a SIGTERM is a repeat too. Under nohup SIGHUP stays ignored."""
    import os
    import signal

    from adaptkit import cli
    from adaptkit.errors import Interrupted

    original = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    previous = cli._install_signal_handlers()
    try:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
        assert caught.value.exit_code == 143
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: already stopping
        cli._install_signal_handlers()  # a new command
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored after Ctrl-C
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.signal(signal.SIGHUP, original)
