"""Crash safety: SIGKILL at a random moment then --resume is bit-identical; a full disk keeps the last checkpoint.

The randomized kill trial here is one of the trials of scripts/kill_resume_trials.py
(which CI runs with 6 trials); the disk-full cases run in this process.
"""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--max-steps", "6", "--save-steps", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--quiet"]


def _trials_module():
    spec = importlib.util.spec_from_file_location("kill_resume_trials", ROOT / "scripts" / "kill_resume_trials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, llama_dir, corpora):
    trials = _trials_module()
    [result] = trials.run_trials(1, seed=3, workdir=tmp_path, steps=10, window_s=1.0, setup=(llama_dir, corpora["ha"]))
    assert result["bit_identical"], result
    assert result["leftovers"] == [], result
    assert not any(k["finished_before_kill"] for k in result["kills"]), result


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
