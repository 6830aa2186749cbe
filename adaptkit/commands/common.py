"""Options and helpers shared by every subcommand.

Every command takes `-o/--output`, `--overwrite`, `--json`, `--quiet`, `--debug`, and
where it has settings, `--config FILE.yaml`, `--set a.b=value` and `--seed`. Commands
print a short Rich summary, or with `--json` one JSON object on stdout.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="Where to write the result (refused if it exists, unless --overwrite).")]
OptionalOutputOpt = Annotated[Optional[Path], typer.Option("-o", "--output", help="Where to write the result.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file with settings (flags and --set override it).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: --set optimizer.lr=1e-4 (repeatable).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]


ComputeDtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")]
DeviceMapOpt = Annotated[Optional[str], typer.Option("--device-map", help="Spread a model too large for one device over GPUs, CPU and disk (accelerate): auto, balanced, sequential; replaces --device.")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option("--max-memory", help="With --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB.")]
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_compute_dtype(dtype: str, flag: str = "--dtype") -> str:
    """The dtype a model is loaded in for evaluation or generation."""
    if dtype not in COMPUTE_DTYPES:
        from adaptkit.errors import InputError

        raise InputError(f"{flag}: expected {', '.join(COMPUTE_DTYPES[:-1])} or {COMPUTE_DTYPES[-1]}, got '{dtype}'")
    return dtype


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


class Console:
    """Where a command reports: Rich on stderr for people, JSON on stdout for programs."""

    def __init__(self, json_mode: bool = False, quiet: bool = False):
        from rich.console import Console as RichConsole

        self.json_mode = json_mode
        self.quiet = quiet or json_mode
        self.rich = RichConsole(stderr=True, quiet=self.quiet)

    @property
    def show_progress(self) -> bool:
        return not self.quiet and sys.stderr.isatty()

    def print(self, *args: Any, **kwargs: Any) -> None:
        self.rich.print(*args, **kwargs)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*[_fmt(v) for v in row])
        self.rich.print(table)

    def result(self, result: dict[str, Any], summary: str | None = None) -> None:
        """Finish a command: JSON on stdout with --json, else a one-line summary."""
        if self.json_mode:
            sys.stdout.write(json.dumps(result, default=str, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif summary:
            self.rich.print(summary)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
