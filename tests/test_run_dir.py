"""The run directory (engine/rundir.py): one owner at a time (its lock), and the --resume / --overwrite checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import assert_input_error

SMALL = ["--seq-len", "32", "--batch-size", "4", "--quiet"]


def _train(llama_dir, corpora, out, *extra):
    return ["train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, *SMALL, *extra]


@pytest.fixture
def sleeper():
    """A live process of this host (its pid is what a lock names)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait(timeout=30)


@pytest.mark.slow  # a short training
def test_a_live_owner_refuses_a_second_run_and_a_stale_lock_is_taken_over(tmp_path, llama_dir, corpora, invoke, sleeper):
    from adaptkit.engine.rundir import LOCK

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(f"{sleeper.pid} {socket.gethostname()}\n")
    for extra in ([], ["--overwrite"]):
        assert_input_error(invoke(*_train(llama_dir, corpora, out, "--max-steps", "1", *extra)), "-o/--output", "in use", f"pid {sleeper.pid}")
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # --overwrite removed nothing of the owner's
    sleeper.kill()
    sleeper.wait(timeout=30)
    result = invoke(*_train(llama_dir, corpora, out, "--max-steps", "1"))  # its owner is gone: a stale lock
    assert result.returncode == 0, result
    assert (out / "final").is_dir() and not (out / LOCK).exists()  # released at the end


def test_a_lock_of_a_reused_pid_is_stale(tmp_path):
    """The lock names its owner's start time: a live process with the same pid that started later is not the owner."""
    from adaptkit.engine.rundir import LOCK, lock_owner

    (tmp_path / LOCK).write_text(f"{os.getppid()} {socket.gethostname()} 1\n")  # our parent, but not started at tick 1
    assert lock_owner(tmp_path) is None
    (tmp_path / LOCK).write_text(f"{os.getppid()} {socket.gethostname()}\n")  # no start time recorded: the pid decides
    assert lock_owner(tmp_path) == f"pid {os.getppid()} on {socket.gethostname()}"
    (tmp_path / LOCK).write_text(f"{os.getppid()} another-host 1\n")  # another host's process cannot be checked: held
    assert lock_owner(tmp_path) == f"pid {os.getppid()} on another-host"


@pytest.mark.slow  # the CLI in process (torch imports)
def test_resume_with_overwrite_is_refused(tmp_path, llama_dir, corpora, invoke):
    out = tmp_path / "run"
    assert_input_error(invoke(*_train(llama_dir, corpora, out, "--resume"), "--overwrite"), "--resume", "--overwrite")
    assert not out.exists()


@pytest.mark.slow  # two short trainings
def test_resume_with_another_schedule_length_is_refused(tmp_path, llama_dir, corpora, invoke):
    out = tmp_path / "run"
    assert invoke(*_train(llama_dir, corpora, out, "--max-steps", "2", "--save-steps", "1")).returncode == 0
    assert_input_error(invoke(*_train(llama_dir, corpora, out, "--max-steps", "3", "--resume")), "--resume", "max_steps: 2 there, 3 now")
    assert_input_error(invoke(*_train(llama_dir, corpora, out, "--max-steps", "2", "--resume", "--overwrite")), "--resume", "--overwrite")


# the CLI with each training step slowed down, so that a second command comes while the first trains
SLOW_CHILD = """
import sys, time
from adaptkit.engine import loop
step = loop.train_step
loop.train_step = lambda *args: (time.sleep(0.2), step(*args))[1]
from adaptkit.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow  # a real child process
def test_two_commands_into_one_directory_one_refuses(tmp_path, llama_dir, corpora, invoke):
    """While a run trains, a second `train` into its -o (with --resume or --overwrite) refuses at once; the first is unharmed."""
    from adaptkit.engine.rundir import LOCK

    out = tmp_path / "run"
    args = [str(a) for a in _train(llama_dir, corpora, out, "--max-steps", "30", "--set", "log_steps=1")]
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, *args], stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert (out / LOCK).read_text().split()[0] == str(child.pid)
        for extra in (["--resume"], ["--overwrite"]):
            assert_input_error(invoke(*_train(llama_dir, corpora, out, "--max-steps", "30", "--set", "log_steps=1", *extra)),
                               "in use", f"pid {child.pid}")
        _, stderr = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    assert (out / "final").is_dir() and not (out / LOCK).exists()
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 30  # one row per step: the second command wrote none


def test_a_killed_owner_not_yet_reaped_holds_no_lock(tmp_path):
    """SIGKILL leaves the lock behind and, until its parent waits for it, a zombie with the owner's pid: stale."""
    import signal

    from adaptkit.engine.rundir import LOCK, lock_owner

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (tmp_path / LOCK).write_text(f"{child.pid} {socket.gethostname()}\n")
    assert lock_owner(tmp_path) == f"pid {child.pid} on {socket.gethostname()}"
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while lock_owner(tmp_path) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock_owner(tmp_path) is None
    child.wait(timeout=30)
