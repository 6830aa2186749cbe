"""`adaptkit train` as a user meets it: divergence stops, context length, default checkpoints,
tiny data, progress lines in logs, --print-config and --resume on a finished run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

SMALL = ["--seq-len", "32", "--batch-size", "4"]


def _error_line(result, code: int) -> str:
    assert result.returncode == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
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
    files = (run / f"checkpoint-{kept[-1]}" / "tensors").glob("*.safetensors")  # the DCP files (engine/checkpoint.py)
    tensors = {k: v for f in files for k, v in load_file(str(f)).items() if k.startswith("trainable/")}
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors.values())


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_context_length_is_checked_before_weights_load(tmp_path, make_model_dir, corpora, invoke, monkeypatch):
    """A model with max_position_embeddings 8: --seq-len, --block-size and ppl windows above it are bad input;
    at the limit they run; calibrate's default block is the context length."""
    from adaptkit.io import models

    short = make_model_dir("llama", max_position_embeddings=8)
    load = models.load_causal_lm
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("weights loaded before the check"))
    line = _error_line(invoke("train", "-m", short, "-d", corpora["ha"], "-o", tmp_path / "run", "--seq-len", "9", "--batch-size", "2", "--quiet"), 2)
    assert line.startswith("adaptkit: error: --seq-len: 9 tokens") and "context length of 8" in line, line
    line = _error_line(invoke("evaluate", "-m", short, "--task", f"ppl:{corpora['ha']}", "--set", "ppl.block_size=9", "-o", tmp_path / "eval", "--quiet"), 2)
    assert "--set ppl.block_size: 9 tokens" in line and "context length of 8" in line, line
    monkeypatch.setattr(models, "load_causal_lm", load)
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()

    result = invoke("train", "-m", short, "-d", corpora["ha"], "-o", tmp_path / "run", "--seq-len", "8", "--batch-size", "2", "--max-steps", "1", "--quiet")
    assert result.returncode == 0, result
    result = invoke("calibrate", "-m", short, "-d", corpora["en"], "--format", "text", "--pool", "50", "--num-samples", "4", "-o", tmp_path / "calib", "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["block_size"] == 8
    result = invoke("score", "-m", short, "--calib", tmp_path / "calib", "-o", tmp_path / "scores", "--quiet")
    assert result.returncode == 0, result
    nll = []
    for name, extra in (("eval", []), ("eval8", ["--set", "ppl.block_size=8"])):  # the default window is the context length
        result = invoke("evaluate", "-m", short, "--task", f"ppl:ha={corpora['ha-test']}", "-o", tmp_path / name, "--quiet", *extra)
        assert result.returncode == 0, result
        [scores] = json.loads((tmp_path / name / "results.json").read_text())["results"].values()
        nll.append(scores["ha"]["nll_sum"])
    assert nll[0] == nll[1]


def _final_tensors(run) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_checkpoints_by_default_every_tenth_of_the_run_without_changing_training(tmp_path, llama_dir, corpora, invoke):
    base = ["train", "-m", llama_dir, "-d", corpora["ha"], *SMALL, "--max-steps", "20", "--lr", "1e-2", "--quiet"]
    assert invoke(*base, "-o", tmp_path / "default").returncode == 0
    assert invoke(*base, "-o", tmp_path / "none", "--save-steps", "0").returncode == 0
    assert sorted(p.name for p in (tmp_path / "default").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-18"]
    assert not list((tmp_path / "none").glob("checkpoint-*"))
    assert _same(_final_tensors(tmp_path / "default"), _final_tensors(tmp_path / "none"))


# the CLI with each training step slowed down by 0.1 s, so that the signal lands mid-run on any machine
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_progress_lines_in_a_log_agree_with_the_metrics(tmp_path, llama_dir, corpora, invoke):
    """stderr is no terminal here (a job's log): a plain line per logging step; none with --quiet or --json."""
    import re
    import sys

    assert not sys.stderr.isatty()  # captured, as a pipe would be
    base = ["train", "-m", llama_dir, "-d", corpora["ha"], *SMALL, "--max-steps", "6", "--set", "log_steps=2", "--lr", "1e-2"]
    result = invoke(*base, "-o", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: step")]
    assert len(lines) == len(rows) == 3, result.stderr
    pattern = re.compile(r"train: step (\d+)/6 \(\d+%\), loss ([0-9.]+), lr ([0-9.e+-]+), ([0-9,]+) tok/s(, ETA \d+:\d\d:\d\d)?$")
    for line, row in zip(lines, rows):
        match = pattern.match(line)
        assert match, line
        assert int(match[1]) == row["step"] and match[2] == f"{row['loss']:.4f}" and float(match[3]) == float(f"{row['lr']:.2e}")
        assert int(match[4].replace(",", "")) == round(row["tokens_per_s"])
        assert (match[5] is not None) == (row["step"] < 6)
    for flag in ("--quiet", "--json"):
        result = invoke(*base, "-o", tmp_path / flag, flag)
        assert result.returncode == 0 and "train: step" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["steps"] == 6


def test_progress_bar_shows_no_metrics_before_the_first_logging_step():
    from io import StringIO

    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from adaptkit.commands.progress import ProgressBar

    screen = Console(file=StringIO(), force_terminal=True, width=120)
    with Progress(TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[metrics]}"), console=screen, auto_refresh=False) as rich:
        bar = ProgressBar(rich)
        task = bar.add_task("training", total=10, completed=0)
        bar.update(task, completed=3)
        before = str(rich.columns[1].render(rich.tasks[0]))
        bar.update(task, completed=5, loss=2.5, tps=1000.0, lr=1e-4)
        after = str(rich.columns[1].render(rich.tasks[0]))
    assert before == "" and after == "loss 2.5000, lr 1.00e-04, 1,000 tok/s"


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_calibrate_and_evaluate_report_their_stages_in_a_log(tmp_path, llama_dir, corpora, invoke):
    result = invoke("calibrate", "-m", llama_dir, "-d", corpora["en"], "--format", "text", "--pool", "50", "--num-samples", "4", "--block-size", "16", "-o", tmp_path / "calib")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("calibrate: ")]
    assert [line.split(" ")[1] for line in lines] == ["sampled", "tokenized"], result.stderr
    assert "sampled 50 of" in lines[0] and "blocks of 16" in lines[1]
    result = invoke("evaluate", "-m", llama_dir, "--task", f"ppl:ha={corpora['ha-test']}", "-o", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("evaluate: ")]
    assert len(lines) == 3 and "model 1/1: loading" in lines[0] and " done in " in lines[2], result.stderr
    assert not [line for line in invoke("calibrate", "-m", llama_dir, "-d", corpora["en"], "--format", "text", "--pool", "50", "--num-samples", "4",
                                        "--block-size", "16", "-o", tmp_path / "calib2", "--quiet").stderr.splitlines() if line.startswith("calibrate: ")]


def _warnings(stderr: str) -> list[str]:
    """The run's warnings (not those of plugins the environment may have installed)."""
    return [line for line in stderr.splitlines() if line.startswith("warning:") and not line.startswith("warning: plugin")]


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_data_smaller_than_one_batch_warns_and_says_what_to_change(tmp_path, llama_dir, corpora, invoke):
    """The README's first `train` with the paper's defaults (batch 32 x 512) on a small file: one step at lr 0."""
    result = invoke("train", "-m", llama_dir, "-d", corpora["ha"], "-o", tmp_path / "run")
    assert result.returncode == 0, result
    warnings = _warnings(result.stderr)
    assert len(warnings) == 2, result.stderr
    assert "fewer than one batch of 32 x 512 tokens" in warnings[0] and "--batch-size" in warnings[0]
    assert "stays 0 for all 1 optimizer step(s)" in warnings[1] and "--warmup-ratio 0" in warnings[1]
    assert _same(_final_tensors(tmp_path / "run"), load_file(str(llama_dir / "model.safetensors")))  # what the warning says
    result = invoke("train", "-m", llama_dir, "-d", corpora["ha"], "-o", tmp_path / "short", "--seq-len", "32", "--batch-size", "2",
                    "--max-steps", "4", "--warmup-ratio", "0.9")
    [warning] = _warnings(result.stderr)
    assert "warmup takes 4 of the 4 optimizer steps" in warning and "never reaches --lr 5e-05" in warning
    result = invoke("train", "-m", llama_dir, "-d", corpora["ha"], "-o", tmp_path / "fine", *SMALL, "--max-steps", "4")
    assert result.returncode == 0 and not _warnings(result.stderr), result.stderr


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_print_config_round_trips_through_config(tmp_path, llama_dir, corpora, invoke):
    import yaml

    result = invoke("train", "--print-config", "-m", llama_dir, "-d", corpora["ha"], "--method", "lora", *SMALL, "--max-steps", "2",
                    "--lr", "1e-3", "--set", "r=4")
    assert result.returncode == 0, result
    printed = yaml.safe_load(result.stdout)
    assert printed["method_params"] == {"r": 4, "alpha": 16.0, "dropout": 0.05, "target_modules": "all-linear", "train_embeddings_and_head": False}
    assert printed["optimizer"]["lr"] == 1e-3 and printed["schedule"]["warmup_ratio"] == 0.05 and printed["save_total_limit"] == 2
    assert not (tmp_path / "run").exists()
    (tmp_path / "printed.yaml").write_text(result.stdout)
    result = invoke("train", "--config", tmp_path / "printed.yaml", "-o", tmp_path / "run", "--quiet")
    assert result.returncode == 0, result
    assert (tmp_path / "run" / "config.yaml").read_text() == (tmp_path / "printed.yaml").read_text()
    assert yaml.safe_load(invoke("train", "--print-config").stdout)["batch_size"] == 32  # the defaults alone


@pytest.mark.slow  # over ~0.3 s: a training
def test_json_with_progress_keeps_progress_lines_on_stderr(tmp_path, llama_dir, corpora, invoke):
    args = ["train", "-m", llama_dir, "-d", corpora["ha"], *SMALL, "--max-steps", "2", "--set", "log_steps=1", "--json"]
    plain = invoke(*args, "-o", tmp_path / "plain")
    progress = invoke(*args, "--progress", "-o", tmp_path / "progress")
    assert plain.returncode == progress.returncode == 0, (plain, progress)
    assert json.loads(plain.stdout)["steps"] == json.loads(progress.stdout)["steps"] == 2  # stdout: the JSON alone
    assert "train: step" not in plain.stderr and "train: step 2/2 (100%)" in progress.stderr


def test_print_config_with_json_prints_the_same_settings_as_json(invoke):
    import yaml

    as_yaml = invoke("train", "--print-config", "--set", "threads=3", "--lr", "1e-3")
    as_json = invoke("train", "--print-config", "--set", "threads=3", "--lr", "1e-3", "--json")
    assert as_yaml.returncode == as_json.returncode == 0, (as_yaml, as_json)
    assert json.loads(as_json.stdout) == yaml.safe_load(as_yaml.stdout)
    assert json.loads(as_json.stdout)["threads"] == 3 and json.loads(as_json.stdout)["optimizer"]["lr"] == 1e-3


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_resume_of_a_finished_run_says_so_and_trains_nothing(tmp_path, llama_dir, corpora, invoke):
    args = ["train", "-m", llama_dir, "-d", corpora["ha"], *SMALL, "--max-steps", "4", "-o", tmp_path / "run"]
    assert invoke(*args, "--quiet").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    result = invoke(*args, "--resume", "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["finished"] is True
    result = invoke(*args, "--resume")
    message = " ".join(result.stdout.split())  # the summary, on stdout
    assert result.returncode == 0 and "is a finished run" in message and "nothing to resume" in message, result
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
