"""`adaptkit train` as a user meets it: divergence stops, context length, default checkpoints,
tiny data, progress lines in logs, --print-config and --resume on a finished run."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

SMALL = ["--seq-len", "32", "--batch-size", "4"]


def _error_line(result, code: int) -> str:
    assert result.returncode == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path, llama_dir, corpora, invoke):
    """lr 1e3 without clipping on the tiny Llama: the gradient norm overflows within a few steps."""
    run = tmp_path / "run"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", run, *SMALL, "--max-steps", "40",
                    "--lr", "1e3", "--warmup-ratio", "0", "--schedule", "constant", "--save-steps", "2",
                    "--set", "max_grad_norm=null", "--set", "log_steps=1", "--quiet")
    line = _error_line(result, 1)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    bad = len(rows) + 1  # one metrics row per finite step; the step after them diverged
    assert f"diverged at step {bad}:" in line, line
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert 2 <= bad < 40 and not (run / "final").exists()
    kept = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert kept and kept[-1] == (bad - 1) // 2 * 2, (kept, bad)
    assert f"checkpoint-{kept[-1]}" in line and "is kept" in line
    tensors = load_file(str(run / f"checkpoint-{kept[-1]}" / "trainable.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
