"""The documentation cannot drift from the CLI: every `adaptkit ...` line in README.md and docs/*.md goes
through the command tree (the subcommand exists, each flag is listed by that subcommand's --help), and
every relative link (file and #anchor) resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {";", "&&", "||", "|", "&", "do", "then", "done", "(", ")"}
ROOT_OPTIONS = {"--json", "--quiet", "--debug", "--overwrite", "--version", "-h", "--help"}


# ----- reading the pages -----


def _code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, shell text) of every candidate command: lines of shell code blocks (fenced or
    indented, continuation lines joined) and inline code spans of prose."""
    found: list[tuple[int, str]] = []
    fence: str | None = None
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        in_code = (fence is not None and fence in SHELL_LANGUAGES) or (fence is None and line.startswith("    "))
        if fence is not None and not in_code:
            continue
        if in_code:
            start, joined = pending or (number, "")
            joined += " " + stripped
            if joined.endswith("\\"):
                pending = (start, joined[:-1])
                continue
            pending = None
            found.append((start, joined))
        else:
            found += [(number, span) for span in re.findall(r"`([^`]+)`", line)]
    return found


def _tokens(shell: str) -> list[str]:
    shell = re.sub(r"<[^<>\s]+>", "PLACEHOLDER", shell)  # <method>, <lang>
    shell = re.sub(r"(?<=\S)\|(?=\S)", "\x00", shell)  # a|b|c: alternatives, not a pipe
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in a prose span: not a command
        return []


def _invocations(shell: str) -> list[list[str]]:
    """The argument lists after each `adaptkit` (also `python -m adaptkit`, `.venv/bin/adaptkit`)."""
    runs: list[list[str]] = []
    segment: list[str] = []
    for token in [*_tokens(shell), ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        for i, word in enumerate(segment):
            starts = i == 0 or segment[i - 1] == "-m" or all(re.match(r"^\w+=", w) for w in segment[:i])
            if (word == "adaptkit" or word.endswith("/adaptkit")) and starts:
                runs.append(segment[i + 1 :])
                break
        segment = []
    return runs


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page:line, arguments) for every documented adaptkit invocation."""
    out = []
    for page in PAGES:
        for number, shell in _code_lines(page.read_text(encoding="utf-8")):
            if "adaptkit" in shell:
                out += [(f"{page.relative_to(ROOT)}:{number}", args) for args in _invocations(shell)]
    return out


# ----- checking against the command tree -----


def _is_placeholder(word: str) -> bool:
    return word in ("...", "PLACEHOLDER") or word.isupper() or word.startswith("$")


def _root():
    from adaptkit.cli import build_app
    from adaptkit.commands.common import prepare_command

    return prepare_command(typer.main.get_command(build_app()), root=True)


def _options(command) -> dict[str, object]:
    options = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            for name in [*param.opts, *param.secondary_opts]:
                options[name] = param
    return options


def check_invocation(root, args: list[str]) -> list[str]:
    """What is wrong with `adaptkit ARGS` as documented: an unknown subcommand, or a flag that the
    subcommand's --help does not list."""
    ctx = root.context_class(root, info_name="adaptkit")
    command, path = root, ["adaptkit"]
    words = [w.strip("[]") for w in args]
    words = [w for w in words if w]
    i = 0
    while hasattr(command, "list_commands"):  # a group (typer vendors its own click)
        while i < len(words) and words[i] in ROOT_OPTIONS:
            i += 1
        if i == len(words) or words[i].startswith("-"):
            break
        name = words[i]
        if _is_placeholder(name):
            return []  # `adaptkit merge METHOD ...`: the flags depend on the placeholder
        alternatives = name.split("\x00")
        unknown = [n for n in alternatives if command.get_command(ctx, n) is None]
        if unknown:
            return [f"`{' '.join(path)} {unknown[0]}`: no such command"]
        if len(alternatives) > 1:  # `merge layra-merge|layra-series ...`: each alternative takes the flags
            return [p for n in alternatives for p in check_invocation(root, [*path[1:], n, *words[i + 1 :]])]
        command = command.get_command(ctx, name)
        ctx = command.context_class(command, info_name=name, parent=ctx)
        path.append(name)
        i += 1
    options = _options(command)
    help_text = command.get_help(ctx)
    problems = []
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word in ("-", "--") or re.match(r"^-\d", word):
            continue
        flag = word.split("=", 1)[0]
        if flag in ROOT_OPTIONS and flag not in options:
            continue
        param = options.get(flag)
        if param is None:
            problems.append(f"`{' '.join(path)}`: no option {flag}")
            continue
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text):
            problems.append(f"`{' '.join(path)} --help` does not list {flag}")
        if "=" not in word and not getattr(param, "is_flag", False) and not getattr(param, "count", False):
            i += 1  # the option's value
    return problems


def test_pages_document_commands():
    """The extraction finds the commands the pages show (a test that cannot pass on an empty list)."""
    found = {" ".join(args[:2]) for _, args in documented_commands()}
    assert {"train --model", "merge linear", "vocab extend", "study study.yaml", "evaluate --model"} <= found


def test_every_documented_command_parses():
    root = _root()
    problems = [f"{where}: {p}" for where, args in documented_commands() for p in check_invocation(root, args)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["trian", "--model", "x"], "no such command"),
        (["train", "--modle", "x"], "no option --modle"),
        (["merge", "linear", "--lamda", "1"], "no option --lamda"),
        (["merge", "linear\x00nope", "--model", "a"], "no such command"),
    ],
)
def test_a_wrong_command_is_reported(args, problem):
    assert any(problem in p for p in check_invocation(_root(), args))


def test_invocations_join_continuations_and_split_pipelines():
    text = "    adaptkit train --model m \\\n        --data d -o out   # a comment\n\nSee `adaptkit plugins | grep x`.\n"
    commands = [args for _, shell in _code_lines(text) for args in _invocations(shell)]
    assert commands == [["train", "--model", "m", "--data", "d", "-o", "out"], ["plugins"]]


# ----- links -----


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, fence = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        match = re.match(r"^#+ (.*)", line)
        if match and not fence:
            anchors.add(_slug(match.group(1)))
    return anchors


def test_every_relative_link_resolves():
    problems = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path) if path else page
            if not resolved.exists():
                problems.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                problems.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_slug_is_githubs():
    assert _slug("Models larger than memory: `--layer-by-layer`") == "models-larger-than-memory---layer-by-layer"
    assert _slug("The SSU paper's MRC and MMLU tasks (lm-eval)") == "the-ssu-papers-mrc-and-mmlu-tasks-lm-eval"
