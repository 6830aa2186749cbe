"""The step and its metrics: no host synchronisation between logging steps, throughput and MFU in
every row, the loss window carried through a checkpoint, and the plan's one count."""

from __future__ import annotations

import json

import pytest
import torch

SMALL = ["--seq-len", "32", "--batch-size", "4", "--quiet"]


def _config(model_dir, data, **settings):
    from adaptkit.engine.config import TrainConfig

    return TrainConfig(model=str(model_dir), data={"paths": [str(data)], "seq_len": 32}, **{"batch_size": 4, **settings})


def _fft():
    from adaptkit.registry import get_spec

    return get_spec("method", "fft").build({})


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a short training
def test_no_host_read_inside_the_step_between_logging_steps(tmp_path, llama_dir, corpora, monkeypatch):
    """Tensor.item / __float__ / .cpu() / .tolist() counted while train_step runs: none on steps 1-4 with log_steps=5."""
    from adaptkit.engine import loop

    calls: dict[int, list[str]] = {}
    current: list[int] = []
    for name in ("item", "__float__", "cpu", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if current:
                calls.setdefault(current[-1], []).append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    step = loop.train_step

    def watched(run, t, index):
        current.append(index + 1)
        try:
            return step(run, t, index)
        finally:
            current.pop()

    monkeypatch.setattr(loop, "train_step", watched)
    loop.train(_config(llama_dir, corpora["ha"], max_steps=5, log_steps=5, save_steps=2), _fft(), tmp_path / "run", log=lambda m: None)
    assert not any(calls.get(s) for s in range(1, 5)), calls
    assert [r["step"] for r in _rows(tmp_path / "run")] == [5]


@pytest.mark.slow  # a short training
def test_mfu_and_tokens_per_device_in_rows_card_and_progress(tmp_path, llama_dir, corpora, invoke):
    """--set peak_tflops=: each row's MFU is tokens/s x (6 N + 12 L s d) / peak, with N worked out by hand from config.json."""
    run = tmp_path / "run"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", run, "--max-steps", "4", "--set", "log_steps=2",
                    "--set", "peak_tflops=0.5", "--seq-len", "32", "--batch-size", "4")
    assert result.returncode == 0, result
    config = json.loads((llama_dir / "config.json").read_text())
    d, i, L, V = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"]
    kv = config["num_key_value_heads"] * d // config["num_attention_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * i + 2 * d  # q, o; k, v; gate, up, down; two norms
    n = L * per_layer + d + V * d  # + final norm + LM head (the input embedding costs no FLOPs)
    per_token = 6 * n + 12 * L * 32 * d
    rows = [r for r in _rows(run) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert row["tokens_per_s_per_device"] == row["tokens_per_s"]  # one process
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * per_token / 0.5e12, rel=1e-12)
    assert f"MFU {100 * rows[-1]['mfu']:.1f}%" in (run / "run_card.md").read_text()
    assert "tokens/s per device" in (run / "run_card.md").read_text()
    assert "MFU" in result.stderr  # the progress lines


def test_no_peak_on_a_cpu_means_no_mfu():
    from adaptkit.engine.throughput import device_peak_tflops

    assert device_peak_tflops(torch.device("cpu")) is None and device_peak_tflops(torch.device("cpu"), 2.0) == 2.0


@pytest.mark.slow  # three short trainings
def test_a_resumed_run_logs_the_loss_of_the_uninterrupted_run(tmp_path, llama_dir, corpora, invoke):
    """The loss window (steps 1-3 of the row at step 4) is in checkpoint-2, so the resumed run's first row is the straight run's."""
    import shutil

    args = ["train", "--model", llama_dir, "--data", corpora["ha"], "--max-steps", "6", "--save-steps", "2", "--set", "log_steps=3",
            "--lr", "1e-2", *SMALL]
    assert invoke(*args, "-o", tmp_path / "straight").returncode == 0
    stopped = tmp_path / "stopped"
    assert invoke(*args, "-o", stopped).returncode == 0
    shutil.rmtree(stopped / "final")
    shutil.rmtree(stopped / "checkpoint-4")  # as if killed after step 4: resumes at 2, inside the window of the row at step 3
    assert invoke(*args, "-o", stopped, "--resume").returncode == 0
    straight, resumed = _rows(tmp_path / "straight"), _rows(stopped)
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in resumed] == [(r["step"], r["loss"], r["grad_norm"]) for r in straight]


@pytest.mark.slow  # two short trainings
def test_resume_before_the_first_checkpoint_writes_the_step_0_rows_once(tmp_path, llama_dir, corpora, invoke):
    """Stopped after the step-0 evaluation (as a SIGTERM during it leaves it, or later without a checkpoint): --resume starts at 0
    and the rows of steps 0.. are written once."""
    import shutil

    run = tmp_path / "run"
    args = ["train", "--model", llama_dir, "--data", corpora["ha"], "-o", run, "--max-steps", "2", "--save-steps", "0",
            "--eval-data", f"ha={corpora['ha-test']}:target", "--set", "log_steps=1", *SMALL]
    assert invoke(*args).returncode == 0
    first = _rows(run)
    shutil.rmtree(run / "final")
    assert invoke(*args, "--resume").returncode == 0
    again = _rows(run)
    keys = [(r["step"], r.get("eval")) for r in again]
    assert len(keys) == len(set(keys)) and keys == [(r["step"], r.get("eval")) for r in first]


@pytest.mark.slow  # scoring and a short training
def test_the_plan_line_the_run_card_and_the_dry_run_give_one_count(tmp_path, make_model_dir, corpora, invoke):
    """SSU freezes the special-token rows after its own plan: the one counted line comes after them."""
    from adaptkit.calibration import build_calibration
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    model = make_model_dir("llama")
    calib = tmp_path / "calib"
    build_calibration(load_tokenizer(resolve_model_source(str(model), "--model"), False), corpora["en"], fmt="text", pool=500,
                      num_samples=4, block_size=32, seed=0).save(calib)
    args = ["train", "--model", model, "--data", corpora["ha"], "--method", "ssu-wanda", "--calib", calib, "--seq-len", "32", "--batch-size", "4"]
    planned = json.loads(invoke(*args, "-o", tmp_path / "dry", "--dry-run", "--json").stdout)["counts"]
    result = invoke(*args, "-o", tmp_path / "run", "--max-steps", "1")  # (the plan line is a log line on stderr)
    assert result.returncode == 0, result
    card = (tmp_path / "run" / "run_card.md").read_text()
    trained = int(card.split("- trainable parameters: ")[1].split(" of ")[0].replace(",", ""))
    [line] = [line for line in result.stderr.splitlines() if "plan: SSU" in line]
    assert planned["trainable"] == trained and f"{trained:,} of {planned['total']:,} parameters train" in line
    assert "special tokens frozen" in line.split(f"{trained:,} of")[0]


@pytest.mark.slow  # a LoTA plan with its calibration fine-tune
def test_the_pilot_fine_tune_runs_through_the_engine_step(tmp_path, llama_dir, corpora, monkeypatch):
    from adaptkit.engine import loop, pilot
    from adaptkit.engine.plan import MethodContext
    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model_source

    steps = []
    step = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda run, t, index: (steps.append((index, type(run.strategy).__name__)), step(run, t, index))[1])
    source = resolve_model_source(str(llama_dir), "--model")
    config = _config(llama_dir, corpora["ha"], micro_batch_size=2)
    blocks = torch.randint(4, 300, (16, 32), generator=torch.Generator().manual_seed(0))
    ctx = MethodContext(None, config, load_tokenizer(source, False), tmp_path, 3, torch.device("cpu"), blocks, log=lambda m: None)
    model = load_causal_lm(source, torch.float32, False, "sdpa")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = pilot.pilot_finetune(model, ctx, 3)
    assert steps == [(0, "LocalStrategy"), (1, "LocalStrategy"), (2, "LocalStrategy")] and len(losses) == 3
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.slow  # the fused CPU AdamW takes seconds to start
def test_a_non_finite_step_leaves_weights_and_optimizer_state_as_they_were(tmp_path):
    """The device-side check: the fused AdamW skips the update (AMP's found-inf) and every later one; the host read raises."""
    from adaptkit.engine.divergence import Divergence
    from adaptkit.errors import AdaptkitError

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.1, fused=True)
    divergence = Divergence(optimizer, torch.device("cpu"), lambda: "kept")
    for step, grad in enumerate([torch.ones(4, 3), torch.full((4, 3), float("nan")), torch.ones(4, 3)], start=1):
        weight.grad = grad
        divergence.update(step, (grad.sum() / 12).reshape(()), grad.norm())
        if step == 2:
            before = (weight.detach().clone(), {k: v.clone() for k, v in optimizer.state[weight].items()})
        optimizer.step()
    assert torch.equal(weight.detach(), before[0])
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in before[1].items())  # moments and step count
    with pytest.raises(AdaptkitError, match="diverged at step 2: loss nan, gradient norm nan"):
        divergence.check()
