"""Start-up cost of the CLI: the CPU time of `adaptkit --help` (and a few `COMMAND --help`, `plugins`)
against `import typer, rich`, the floor any Typer + rich CLI pays, measured side by side.

    python benchmarks/bench_startup.py [--runs 15]

Each command runs in a fresh interpreter (`python -m adaptkit ...`, bytecode caches written first, as
an installed package has them), alternating with the yardstick run by run; the CPU time is the child's
user + system time from the operating system. Prints the median CPU seconds of each and the median of
the pairwise ratios (target for `--help`: <= 1.2x).
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
YARDSTICK = [sys.executable, "-c", "import typer, rich"]
COMMANDS = (["--help"], ["train", "--help"], ["merge", "--help"], ["evaluate", "--help"], ["plugins"])


def cpu_seconds(argv: list[str], env: dict[str, str]) -> float:
    """User + system CPU seconds of one run of `argv` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(ROOT / "adaptkit", quiet=1)
    for _ in range(2):  # warm-up: page cache, bytecode
        cpu_seconds(YARDSTICK, env)
    print(f"{'command':<28} {'cpu s':>8} {'typer+rich s':>13} {'ratio':>7}")
    for command in COMMANDS:
        ours, floor, ratios = [], [], []
        for _ in range(args.runs):
            a = cpu_seconds([sys.executable, "-m", "adaptkit", *command], env)
            b = cpu_seconds(YARDSTICK, env)
            ours.append(a), floor.append(b), ratios.append(a / b)
        name = "adaptkit " + " ".join(command)
        print(f"{name:<28} {statistics.median(ours):>8.3f} {statistics.median(floor):>13.3f} {statistics.median(ratios):>6.2f}x")


if __name__ == "__main__":
    main()
