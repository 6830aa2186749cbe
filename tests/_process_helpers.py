"""Helpers for tests of processes under load, killed or interrupted: busy processes on every core,
a CLI started in its own process group, waiting for a condition, the processes a command left.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil

# `adaptkit ARGS` with the token store's chunk size set first: many small chunks give a pool many
# tasks (and a worker to kill mid-build) from a corpus of a few MB
PREPARE_SMALL_CHUNKS = (
    "import sys; from adaptkit.data import store; store.CHUNK_CHARS = int(sys.argv[1]); "
    "from adaptkit.cli import main; main(sys.argv[2:])"
)


@contextlib.contextmanager
def busy_processes(count: int = 4) -> Iterator[list[int]]:
    """`count` processes spinning on the CPU (two per core on this machine), killed on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)


def start_cli(args: list[str], stderr: Path, chunk_chars: int | None = None, python_args: bool = False) -> subprocess.Popen:
    """`python -m adaptkit ARGS` (with small store chunks; or `python ARGS`) in its own session and
    process group (so that a signal to the group is what a terminal's Ctrl-C does), stderr to a file."""
    if python_args:
        command = [sys.executable, *map(str, args)]
    elif chunk_chars is not None:
        command = [sys.executable, "-c", PREPARE_SMALL_CHUNKS, str(chunk_chars), *map(str, args)]
    else:
        command = [sys.executable, "-m", "adaptkit", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(stderr, "w"), start_new_session=True)


def wait_for(condition: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll `condition` until it returns something truthy; fails after `timeout` s or when `proc` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def assert_ended(pids: list[int], timeout: float = 5.0) -> None:
    """Every process in `pids` is gone (a zombie waiting for init to reap it counts as gone)."""
    def alive() -> list[int]:
        left = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive()
    for pid in left:  # do not leave them behind for the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


def end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a test's command and its process group (after a failed assertion)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A text file of about `megabytes` MB: documents of UDHR-like words, one per line."""
    from adaptkit import demo

    words = " ".join(demo.udhr_paragraphs("ha") + demo.udhr_paragraphs("en")).split()
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(words, k=rng.randint(8, 120))) for _ in range(2000)]
    block = "\n".join(lines) + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(max(1, round(megabytes * 1_000_000 / len(block.encode())))):
            handle.write(block)
    return path
