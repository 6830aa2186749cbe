"""CPU threads (adaptkit/threads.py): the cores a process may use, the count chosen under load, the user's choice kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptkit import threads


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: a quota of 1.5 cores
    ({"cpu.max": "max 100000\n"}, None),  # v2, unlimited
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, unlimited
    ({}, None),  # no cgroup files
])
def test_quota_cores_reads_cgroup_v1_and_v2(tmp_path, files, expected):
    assert threads.quota_cores(_cgroup(tmp_path, files)) == expected


def test_usable_cores_is_the_affinity_capped_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "affinity_cores", lambda: 8)
    assert threads.usable_cores(_cgroup(tmp_path / "a", {"cpu.max": "150000 100000\n"})) == 2
    assert threads.usable_cores(_cgroup(tmp_path / "b", {"cpu.max": "50000 100000\n"})) == 1
    assert threads.usable_cores(_cgroup(tmp_path / "c", {"cpu.max": "max 100000\n"})) == 8
    monkeypatch.setattr(threads, "affinity_cores", lambda: 2)
    assert threads.usable_cores(_cgroup(tmp_path / "d", {"cpu.max": "1600000 100000\n"})) == 2


def test_busy_elsewhere_counts_the_run_queue_less_this_process(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("6.82 3.48 1.52 5/156 15405\n")
    assert threads.busy_elsewhere(loadavg) == 4
    loadavg.write_text("0.00 0.01 0.05 1/90 100\n")
    assert threads.busy_elsewhere(loadavg) == 0
    assert threads.busy_elsewhere(tmp_path / "absent") == 0


@pytest.mark.parametrize("cores, busy, expected", [(2, 0, 2), (2, 1, 1), (2, 6, 1), (16, 3, 13), (16, 0, 16), (1, 0, 1)])
def test_default_threads_are_the_cores_others_leave_idle_at_least_one(cores, busy, expected):
    assert threads.default_threads(cores, busy) == expected


def test_prepare_chooses_passive_waits_and_a_count_unless_the_user_set_one(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 1)  # other work at start: the idle cores, passive waits
    env: dict[str, str] = {}
    threads.prepare(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "3"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.prepare(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0)  # idle cores: all of them, OpenMP's own wait policy
    env = {}
    threads.prepare(env)
    assert env == {"OMP_NUM_THREADS": "4"}
    env = {"OMP_NUM_THREADS": "5"}  # the user's count: OpenMP is theirs to configure
    threads.prepare(env)
    assert env == {"OMP_NUM_THREADS": "5"}


@pytest.mark.slow  # a fresh interpreter imports torch
def test_the_cli_entry_sets_openmp_before_torch_loads():
    code = (
        "import os, sys\n"
        "from adaptkit.cli import main\n"
        "try:\n    main(['plugins', '--kind', 'method', '--json'])\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "print(os.environ.get('OMP_WAIT_POLICY', '-'), os.environ['OMP_NUM_THREADS'], torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    policy, count, torch_threads = result.stdout.split()[-3:]
    assert 1 <= int(count) <= threads.usable_cores() and int(torch_threads) == int(count)
    assert policy == ("PASSIVE" if int(count) < threads.usable_cores() else "-")  # passive waits only beside other work


@pytest.mark.slow  # over ~0.3 s: a training step
def test_set_threads_sets_torch_threads_for_the_run(tmp_path, llama_dir, corpora, invoke):
    import torch

    try:
        result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--max-steps", "1", "--seq-len", "16",
                        "--batch-size", "2", "--set", "threads=2", "-o", tmp_path / "run", "--quiet")
        assert result.returncode == 0, result
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
