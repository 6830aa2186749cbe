"""Errors that the CLI turns into one-line messages and exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad input, 130 interrupted (SIGINT,
Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP: a closed terminal). Raise `InputError`
for anything the user can fix by changing a flag or a file; name the flag or file
in the message and say what was expected.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class AdaptkitError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 1


class InputError(AdaptkitError):
    """Bad usage or bad input (a flag, a file, a config value): exit code 2."""

    exit_code = 2


class MissingExtraError(InputError):
    """An optional dependency is not installed; the message says how to install it."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}': "
            f"install it with `pip install 'adaptkit[{extra}]'`"
        )
        self.package = package
        self.extra = extra


class PluginError(AdaptkitError):
    """A plugin is broken or two plugins clash."""

    exit_code = 2


class Interrupted(BaseException):
    """The run was stopped by a signal (SIGINT, SIGTERM or SIGHUP); exit code 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so `except Exception` cleanup code lets it through.
    """

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + int(signum)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean: a, b?)' for the closest candidates, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def one_line(text: object) -> str:
    """A message on one line: every run of whitespace (newlines included) becomes one space."""
    return " ".join(str(text).split())


def require(package: str, extra: str, purpose: str):
    """Import an optional package or raise a MissingExtraError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingExtraError(package.split(".")[0], extra, purpose) from exc
