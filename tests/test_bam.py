"""Branch-and-Merge: the same composition as `adaptkit train` on data slices and `adaptkit merge` by hand,
resumable after a kill, curves across rounds, bad counts refused before any work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import env_with, launch, launch_runs, weights
from conftest import assert_input_error

TINY = ["--seq-len", "32", "--batch-size", "4", "--max-steps", "2", "--lr", "1e-2", "--set", "schedule.warmup_ratio=0", "--quiet"]


def _bam(invoke, model_dir, data, out, *extra):
    return invoke("bam", "--model", model_dir, "--data", data, "--rounds", "2", "--branches", "2", *TINY, "-o", out, *extra)


def _close(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


@pytest.mark.slow
def test_bam_equals_train_and_merge_by_hand(tmp_path, llama_dir, corpora, invoke):
    out = tmp_path / "bam"
    result = _bam(invoke, llama_dir, corpora["ha"], out, "--json")
    assert result.returncode == 0, result
    model = llama_dir
    for r in range(2):  # by hand: two branches on their slices of 4, then SLERP at t=0.5
        for b in range(2):
            run = tmp_path / f"hand-{r}-{b}"
            trained = invoke("train", "--model", model, "--data", corpora["ha"], "--set", f"data.slice={2 * r + b}/4", *TINY, "-o", run)
            assert trained.returncode == 0, trained
        model = tmp_path / f"hand-merged-{r}"
        merged = invoke("merge", "slerp", "-m", tmp_path / f"hand-{r}-0" / "final", "-m", tmp_path / f"hand-{r}-1" / "final", "-o", model, "--quiet")
        assert merged.returncode == 0, merged
        _close(weights(out / ("final" if r == 1 else "round-0/merged")), weights(model))
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights(out / "final")[key], weights(llama_dir)[key])
    # each branch saw its own slice: the two branches of a round differ
    assert not torch.equal(weights(out / "round-0" / "branch-0" / "final")[key], weights(out / "round-0" / "branch-1" / "final")[key])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(row["round"], row["branch"]) for row in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert max(row["step"] for row in rows if row["round"] == 1) == 4  # steps counted across the rounds
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bam_resumes_after_a_kill_keeping_finished_branches(tmp_path, llama_dir, corpora, invoke):
    out = tmp_path / "bam"
    assert _bam(invoke, llama_dir, corpora["ha"], out, "--set", "save_steps=1").returncode == 0
    expected = weights(out / "final")
    kept = (out / "round-0" / "branch-1" / "final" / "model.safetensors").stat().st_mtime_ns
    # as if killed in round 2's second branch, after its checkpoint at step 1: its final/ and the last merge missing
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "round-1" / "branch-1" / "final")
    result = _bam(invoke, llama_dir, corpora["ha"], out, "--set", "save_steps=1")
    assert result.returncode == 0, result
    assert (out / "round-0" / "branch-1" / "final" / "model.safetensors").stat().st_mtime_ns == kept  # not trained again
    got = weights(out / "final")
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("args, message", [
    (["--branches", "0"], "--branches"),
    (["--rounds", "0"], "--rounds"),
    (["--branches", "3"], "--merge slerp"),
    (["--merge", "task_arithmetic"], "--merge"),
])
def test_bad_bam_counts_are_refused_before_work(tmp_path, llama_dir, corpora, invoke, args, message):
    result = invoke("bam", "--model", llama_dir, "--data", corpora["ha"], *args, *TINY, "-o", tmp_path / "bam")
    assert_input_error(result, message)
    assert not (tmp_path / "bam").exists()


@pytest.mark.slow  # tokenizes the corpus to count its blocks
def test_more_slices_than_the_data_has_is_refused(tmp_path, llama_dir, corpora, invoke):
    result = invoke("bam", "--model", llama_dir, "--data", corpora["ha"], "--rounds", "500", "--branches", "2", *TINY, "-o", tmp_path / "bam")
    assert_input_error(result, "--rounds 500 x --branches 2", "1000 data slices")
    assert not (tmp_path / "bam").exists()


def test_slices_partition_the_rows():
    from adaptkit.engine.slices import slice_rows

    for n, count in ((10, 3), (7, 7), (100, 4)):
        parts = [slice_rows(n, i, count) for i in range(count)]
        assert torch.equal(torch.cat(parts), torch.arange(n)) and all(len(p) >= n // count for p in parts)


@pytest.mark.parametrize("value", ["2/2", "1/0", "a/3"])
def test_bad_data_slice_is_refused(tmp_path, llama_dir, corpora, invoke, value):
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--set", f"data.slice={value}", *TINY, "-o", tmp_path / "r")
    assert_input_error(result, "slice")


@pytest.mark.slow
def test_bam_under_fsdp_equals_one_process(tmp_path, llama_dir, corpora, invoke):
    """torchrun, 2 gloo processes, --distributed fsdp: every process trains each branch, the main one merges while
    the other waits, then both start the next round from the merge. The rounds' merges equal the one-process run's
    to 2e-5 (the tolerance of tests/test_fsdp_beyond.py: float summation order differs between 1 and 2 processes)."""
    out = tmp_path / "fsdp"
    args = ["bam", "--model", llama_dir, "--data", corpora["ha"], "--rounds", "2", "--branches", "2", *TINY, "--json"]
    summaries = launch_runs("torchrun", 2, [{"name": "bam", "args": [*args, "--distributed", "fsdp", "-o", out]}],
                            env_with(None, ADAPTKIT_CACHE=str(tmp_path / "cache")), tmp_path)
    assert summaries["bam"]["merged"] == [str(out / "round-0" / "merged"), str(out / "final")]
    one = invoke(*args, "--set", "micro_batch_size=2", "-o", tmp_path / "one")
    assert one.returncode == 0, one
    for merged in ("round-0/merged", "final"):
        reference, sharded = weights(tmp_path / "one" / merged), weights(out / merged)
        assert reference.keys() == sharded.keys()
        for name, tensor in reference.items():
            assert torch.allclose(sharded[name], tensor, atol=2e-5, rtol=0), (merged, name, (sharded[name] - tensor).abs().max())
    for r in range(2):
        for b in range(2):
            result = json.loads((out / f"round-{r}" / f"branch-{b}" / "result.json").read_text())
            assert result["distributed"] == "fsdp" and result["processes"] == 2
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights(out / "final")[key], weights(out / "round-0" / "merged")[key])
    # the main process's error (another merge than the run's, in bam.json) reaches the waiting process: both exit 2
    other = launch("torchrun", 2, [*args, "--merge", "linear", "--distributed", "fsdp", "-o", out],
                   env_with(None, ADAPTKIT_CACHE=str(tmp_path / "cache")), timeout=300)
    errors = [line for line in other.stderr.splitlines() if line.startswith("adaptkit: error:")]
    assert other.returncode != 0 and len(errors) == 2 and all("holds a BaM run with other settings" in line for line in errors), other.stderr[-3000:]
    assert all(line.count("adaptkit: error:") == 1 for line in errors)  # each rank's line whole, not run into the other's
    # torchrun's report: the first rank to exit did so with 2 (it may then stop the other before that one's own exit 2)
    assert "exitcode  : 2" in other.stderr, other.stderr[-3000:]


@pytest.mark.slow
def test_main_rank_killed_while_merging_ends_the_launch_in_seconds(tmp_path, llama_dir, corpora):
    """Rank 0 SIGKILLed as round 1's branches finish (when it merges; the other rank waits for the merge's
    outcome): the waiting rank does not wait out the process group's timeout; the whole launch ends within 60 s."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from helpers import assert_ended, children, end_group, wait_for

    out = tmp_path / "bam"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    args = ["bam", "--model", llama_dir, "--data", corpora["ha"], "--rounds", "2", "--branches", "2", *TINY, "--distributed", "fsdp", "-o", out]
    launch = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", "-m", "adaptkit", *map(str, args)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: (out / "round-0" / "branch-1" / "result.json").is_file(), 600, "round 1's last branch", launch)
        ranks = {p.environ().get("RANK"): p for p in children(launch.pid) if "adaptkit" in " ".join(p.cmdline())}
        assert set(ranks) == {"0", "1"}, ranks
        everything = [p.pid for p in children(launch.pid)]
        os.kill(ranks["0"].pid, signal.SIGKILL)
        killed = time.monotonic()
        launch.wait(60)
        assert time.monotonic() - killed < 60
    finally:
        end_group(launch)
    assert launch.returncode != 0 and not (out / "final").exists()
    assert_ended(everything)
