"""The token store's tokenizer processes never hang a command: a worker killed mid-build, an
interrupt (Ctrl-C to the process group, SIGTERM, SIGHUP), a worker that errs or is stuck, and
builds repeated under load (busy processes on both cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers import assert_ended, busy_processes, children, end_group, start_cli, wait_for, write_corpus
from adaptkit.io.workers import WorkerDied, WorkerPool


def _fail_on_three(x):
    if x == 3:
        raise ValueError("no threes")
    return x * 2


def _sleep(x):
    time.sleep(x)
    return x


def _signal_masks(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as handle:
        return {k: int(v, 16) for k, v in (line.split(":\t") for line in handle) if k in ("SigIgn", "SigCgt", "SigBlk")}


def test_results_in_order_and_a_worker_error_ends_the_pool():
    pool = WorkerPool(_fail_on_three, 2)
    assert list(pool.imap([5, 1, 2, 0, 4])) == [10, 2, 4, 0, 8]
    pids = [p.pid for p, _ in pool.workers]
    with pytest.raises(ValueError, match="no threes"):
        list(pool.imap(range(6)))
    assert pool.workers == []  # aborted: ended, not left for the next caller
    assert_ended(pids)


def test_a_stuck_worker_fails_after_the_task_timeout():
    pool = WorkerPool(_sleep, 1, task_timeout=0.1)
    pid = pool.workers[0][0].pid
    with pytest.raises(WorkerDied, match=rf"pid {pid}\) gave no answer in 0s"):
        list(pool.imap([30]))
    assert_ended([pid], timeout=1)


def test_workers_have_their_own_signal_handling_not_the_parents(monkeypatch):
    """Forked while adaptkit's handlers are installed: SIGTERM default, SIGINT and SIGHUP ignored, none caught."""
    from adaptkit import cli

    previous = cli._install_signal_handlers()
    try:
        pool = WorkerPool(_sleep, 2)
        assert list(pool.imap([0, 0])) == [0, 0]  # the workers have run their set-up
        parent = _signal_masks(os.getpid())
        assert parent["SigCgt"] & (1 << (signal.SIGTERM - 1))  # the parent does catch SIGTERM
        for process, _ in pool.workers:
            masks = _signal_masks(process.pid)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                assert not masks["SigCgt"] & (1 << (sig - 1)) and not masks["SigBlk"] & (1 << (sig - 1)), sig
            assert masks["SigIgn"] & (1 << (signal.SIGINT - 1)) and masks["SigIgn"] & (1 << (signal.SIGHUP - 1))
            assert not masks["SigIgn"] & (1 << (signal.SIGTERM - 1))
        pids = [p.pid for p, _ in pool.workers]
        pool.close()
        assert_ended(pids, timeout=1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.fixture
def big_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "big.txt", 4)


def _prepare(llama_dir, corpus, output, stderr):
    """`data prepare` with 2 tokenizer processes and chunks of 50k characters (80 tasks for 4 MB)."""
    return start_cli(["data", "prepare", "--model", llama_dir, "--data", corpus, "--num-proc", "2", "-o", output],
                     stderr, chunk_chars=50_000)


def _workers(proc):
    found = children(proc.pid)
    return found if len(found) == 2 else None


def _no_partial_output(output):
    assert not output.exists(), "the output exists"
    assert not list(output.parent.glob(f".{output.name}.*")), "a partial output is left"


@pytest.mark.slow
def test_a_killed_tokenizer_process_fails_the_build_at_once(llama_dir, big_corpus, tmp_path):
    """A worker SIGKILLed mid-build (as the OOM killer does): exit 1 within 10 s, one line, no partial
    store, no process left. (multiprocessing.Pool lost the killed worker's task and waited forever.)"""
    output, stderr = tmp_path / "store", tmp_path / "stderr"
    with busy_processes(4):
        proc = _prepare(llama_dir, big_corpus, output, stderr)
        try:
            workers = wait_for(lambda: _workers(proc), 120, "two tokenizer processes", proc)
            pids = [w.pid for w in workers]
            os.kill(pids[0], signal.SIGKILL)
            killed = time.monotonic()
            proc.wait(10)
            elapsed = time.monotonic() - killed
        finally:
            end_group(proc)
    lines = stderr.read_text().strip().splitlines()
    assert proc.returncode == 1, lines
    assert elapsed < 10
    assert len(lines) == 1 and f"tokenizer process (pid {pids[0]}) was killed by SIGKILL" in lines[0], lines
    _no_partial_output(output)
    assert_ended(pids)


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, True)],
                         ids=["SIGINT-to-group", "SIGTERM-to-command", "SIGHUP-to-group"])
def test_an_interrupted_build_ends_its_workers_and_leaves_nothing(llama_dir, big_corpus, tmp_path, signum, to_group):
    """Ctrl-C (SIGINT to the whole process group), `kill` (SIGTERM to the command) and a closed
    terminal (SIGHUP to the group) once the workers tokenize: 128 + signal, one line, nothing left."""
    output, stderr = tmp_path / "store", tmp_path / "stderr"
    with busy_processes(4):
        proc = _prepare(llama_dir, big_corpus, output, stderr)
        try:
            pids = [w.pid for w in wait_for(lambda: _workers(proc), 120, "two tokenizer processes", proc)]
            (os.killpg if to_group else os.kill)(proc.pid, signum)
            proc.wait(10)
        finally:
            end_group(proc)
    lines = stderr.read_text().strip().splitlines()
    assert proc.returncode == 128 + signum, lines
    assert len(lines) == 1 and f"interrupted ({signal.Signals(signum).name})" in lines[0], lines
    _no_partial_output(output)
    assert_ended(pids)


@pytest.mark.slow
def test_builds_repeated_under_load_never_hang(llama_dir, tmp_path):
    """Builds of 2 MB in 40 chunks each with 2 tokenizer processes while 4 busy processes load both
    cores; each build must end within its timeout (multiprocessing.Pool hung here under load)."""
    corpus = write_corpus(tmp_path / "corpus.txt", 2)
    with busy_processes(4):
        for build in range(4):
            output, stderr = tmp_path / f"store-{build}", tmp_path / f"stderr-{build}"
            proc = _prepare(llama_dir, corpus, output, stderr)
            try:
                proc.wait(240)
            except subprocess.TimeoutExpired:
                pytest.fail(f"build {build} hung: {[c.pid for c in children(proc.pid)]} still running")
            finally:
                end_group(proc)
            assert proc.returncode == 0, stderr.read_text()
            assert (output / "index.json").is_file()
