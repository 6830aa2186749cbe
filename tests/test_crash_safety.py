"""Crash safety: however a run stops (a lost checkpoint, SIGINT, SIGKILL at a random moment), --resume
ends bit-identical to an uninterrupted run; a full disk keeps the last checkpoint.

The randomized kill trial here is one of the trials of scripts/kill_resume_trials.py
(which CI runs with 6 trials); the disk-full cases run in this process.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--max-steps", "6", "--save-steps", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--quiet"]


def _trials_module():
    spec = importlib.util.spec_from_file_location("kill_resume_trials", ROOT / "scripts" / "kill_resume_trials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _final(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _after_a_lost_checkpoint(tmp_path, llama_dir, corpora, invoke):
    """A run killed after the checkpoint at step 4: later state removed, a partial save left behind."""
    args = ["--model", llama_dir, "--data", corpora["ha"], "--max-steps", "9", "--lr", "1e-2",
            "--micro-batch-size", "2", "--save-steps", "4", "--seq-len", "32", "--batch-size", "4", "--quiet"]
    assert invoke("train", *args, "-o", tmp_path / "straight").returncode == 0
    assert invoke("train", *args, "-o", tmp_path / "stopped").returncode == 0
    stopped = tmp_path / "stopped"
    shutil.rmtree(stopped / "final")
    shutil.rmtree(stopped / "checkpoint-8")
    (stopped / ".checkpoint-8.partial").mkdir()
    resumed = invoke("train", *args, "-o", stopped, "--resume", "--json")
    assert resumed.returncode == 0, resumed
    assert json.loads(resumed.stdout)["resumed_from"] == 4
    assert _same(_final(tmp_path / "straight"), _final(stopped))
    steps = [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


SLOW_CHILD = """
import sys, time
from adaptkit.engine import loop
step = loop.train_step
loop.train_step = lambda *args: (time.sleep(0.1), step(*args))[1]
from adaptkit.cli import main
main(sys.argv[1:])
"""


def _after_sigint(tmp_path, llama_dir, corpora, invoke):
    """A real child process gets SIGINT mid-run (LoRA: its dropout draws random numbers every step);
    it exits 130 with a checkpoint of the last completed step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["train", "-m", llama_dir, "-d", corpora["ha"], "--seq-len", "32", "--batch-size", "4", "--method", "lora", "--max-steps", "40",
            "--lr", "1e-2", "--save-steps", "1000", "--set", "log_steps=1", "--quiet"]
    assert invoke(*args, "-o", tmp_path / "reference").returncode == 0
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, *map(str, args), "-o", str(run)], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while (not metrics.is_file() or len(metrics.read_text().splitlines()) < 5) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    [saved] = [int(p.name.split("-")[1]) for p in run.glob("checkpoint-*")]
    rows = len(metrics.read_text().splitlines())  # one per completed step; the last one may not have been written
    assert saved in (rows, rows + 1) and 5 <= saved < 40 and not (run / "final").exists()
    [line] = [line for line in stderr.splitlines() if "interrupted" in line]
    assert f"checkpoint-{saved}" in line and "--resume" in line, stderr
    result = invoke(*args, "-o", run, "--resume", "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["resumed_from"] == saved
    assert _same(_final(run), _final(tmp_path / "reference"))


def _after_sigkill(tmp_path, llama_dir, corpora, invoke):
    """SIGKILL at a random moment (one trial of scripts/kill_resume_trials.py)."""
    trials = _trials_module()
    [result] = trials.run_trials(1, seed=3, workdir=tmp_path, steps=10, window_s=1.0, setup=(llama_dir, corpora["ha"]))
    assert result["bit_identical"], result
    assert result["leftovers"] == [], result
    assert not any(k["finished_before_kill"] for k in result["kills"]), result


@pytest.mark.slow  # trainings, a child process and signals
@pytest.mark.parametrize("stop", [_after_a_lost_checkpoint, _after_sigint, _after_sigkill], ids=["lost-checkpoint", "sigint", "sigkill"])
def test_an_interrupted_run_resumes_bit_identical(stop, tmp_path, llama_dir, corpora, invoke):
    """One property, three ways a run stops: `train --resume` continues it to the uninterrupted run's
    final weights, bit for bit (each way asserts what it leaves behind, too)."""
    stop(tmp_path, llama_dir, corpora, invoke)


def _one_error_line(result, *fragments):
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, llama_dir, corpora, invoke, monkeypatch):
    from adaptkit.engine import chunked

    original = chunked.storage_writer

    def full_disk(path):
        writer = original(path)
        if ".checkpoint-4." in str(path):  # the tensors of checkpoint-4 (DCP reports the failure as its own exception)
            def write_data(plan, planner):
                raise OSError(errno.ENOSPC, "No space left on device")
            writer.write_data = write_data
        return writer

    monkeypatch.setattr(chunked, "storage_writer", full_disk)
    run = tmp_path / "run"
    args = ["train", "--model", llama_dir, "--data", corpora["ha"], *ARGS, "-o", run]
    _one_error_line(invoke(*args), "checkpoint-4", "no space left on device", "checkpoint-2 is kept")
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    assert (run / "checkpoint-2" / "state.json").is_file() and not (run / "final").exists()

    monkeypatch.setattr(chunked, "storage_writer", original)  # space freed: resume from checkpoint-2
    result = invoke(*args, "--resume", "--json")
    assert result.returncode == 0, result
    assert '"resumed_from": 2' in result.stdout and (run / "final" / "model.safetensors").is_file()


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_disk_full_during_final_save(tmp_path, llama_dir, corpora, invoke, monkeypatch):
    from adaptkit.io import models

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models, "save_model", full_disk)
    run = tmp_path / "run"
    _one_error_line(invoke("train", "--model", llama_dir, "--data", corpora["ha"], *ARGS, "-o", run),
                    "final", "no space left on device", "--resume")
    assert not (run / "final").exists() and not list(run.glob(".*partial"))
    assert (run / "checkpoint-4" / "state.json").is_file()


@pytest.mark.parametrize("leftover", [".checkpoint-6.partial", ".checkpoint-2.deleting", ".final.old-123"])
def test_resume_removes_what_a_kill_left_half_written(tmp_path, leftover):
    from adaptkit.engine.checkpoint import latest_checkpoint, remove_partials

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "state.json").write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()  # renamed in without state.json cannot happen, but is never picked up either
    (tmp_path / leftover).mkdir()
    (tmp_path / leftover / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    assert remove_partials(tmp_path) == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
