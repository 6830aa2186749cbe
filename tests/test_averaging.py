"""Weight averaging during training (final-ema/, final-lawa/) against averages computed here from the
models of separate runs that stop after each step (the same steps: constant lr, no warmup)."""

from __future__ import annotations

import pytest
import torch
from helpers import TRAIN, assert_resume_bit_identical, weights
from conftest import assert_input_error

CONSTANT = [a for a in TRAIN if a not in ("--max-steps", "3")] + ["--schedule", "constant", "--save-steps", "0"]


def _snapshots(invoke, tmp_path, args, steps: int) -> list[dict]:
    """theta_0 (the source) and the final weights of runs stopped after 1..steps steps."""
    models = []
    for step in range(1, steps + 1):
        assert invoke("train", *args, "--max-steps", str(step), "-o", tmp_path / f"s{step}").returncode == 0
        models.append(weights(tmp_path / f"s{step}" / "final"))
    return models


def _close(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), (name, (a[name] - b[name]).abs().max())


@pytest.mark.slow
def test_ema_and_lawa_equal_averages_of_the_steps(tmp_path, make_model_dir, corpora, invoke):
    model_dir = make_model_dir("llama", layers=2)
    args = ["--model", model_dir, "--data", corpora["ha"], *CONSTANT]
    theta = [weights(model_dir), *_snapshots(invoke, tmp_path, args, 5)]
    run = tmp_path / "run"
    result = invoke("train", *args, "--max-steps", "5", "--ema-decay", "0.5", "--lawa-k", "2", "--set", "averaging.lawa_interval=2", "-o", run)
    assert result.returncode == 0, result
    _close(weights(run / "final"), theta[5])  # the snapshots are the steps of this run
    ema = dict(theta[0])
    for t in range(1, 6):  # ema_t = d ema_{t-1} + (1 - d) theta_t, from theta_0
        ema = {k: 0.5 * ema[k] + 0.5 * theta[t][k] for k in ema}
    _close(weights(run / "final-ema"), ema)
    # LAWA k=2, a snapshot every 2 steps and at the end: steps 2, 4, 5; the last two: 4 and 5
    _close(weights(run / "final-lawa"), {k: (theta[4][k] + theta[5][k]) / 2 for k in theta[0]})
    assert (run / "final-ema" / "tokenizer.json").is_file() and (run / "final-ema" / "README.md").is_file()


@pytest.mark.slow
def test_averages_keep_frozen_entries_bit_identical(tmp_path, make_model_dir, corpora, invoke):
    model_dir = make_model_dir("llama", layers=4)
    run = tmp_path / "run"
    result = invoke("train", "--model", model_dir, "--data", corpora["ha"], *TRAIN, "--method", "spectrum", "--set", "fraction=0.5",
                    "--ema-decay", "0.9", "--lawa-k", "3", "--set", "averaging.lawa_interval=1", "-o", run)
    assert result.returncode == 0, result
    before, final = weights(model_dir), weights(run / "final")
    frozen = [name for name in before if torch.equal(before[name], final[name])]
    assert len(frozen) > len(before) // 3
    for directory in ("final-ema", "final-lawa"):
        averaged = weights(run / directory)
        assert all(torch.equal(averaged[name], before[name]) for name in frozen), directory
        assert any(not torch.equal(averaged[name], before[name]) for name in before if name not in frozen)


@pytest.mark.slow
def test_averaging_resumes_bit_identically(tmp_path, make_model_dir, corpora, invoke):
    args = ["--model", make_model_dir("llama", layers=2), "--data", corpora["ha"], *[a for a in TRAIN if a not in ("--max-steps", "3")],
            "--ema-decay", "0.8", "--lawa-k", "3", "--set", "averaging.lawa_interval=2"]  # LAWA: steps 2 (restored), 4, 6
    assert_resume_bit_identical(invoke, tmp_path, args, models=("final", "final-ema", "final-lawa"))


@pytest.mark.slow
def test_resume_from_a_checkpoint_without_the_averages_is_refused(tmp_path, llama_dir, corpora, invoke):
    """The averages are tensors of the checkpoint (in global coordinates, with the trained ones); a checkpoint
    that lacks them (another version's, which kept them elsewhere) is an input error, not averages restarted."""
    import json
    import shutil

    run = tmp_path / "run"
    args = ["train", "--model", llama_dir, "--data", corpora["ha"], *[a for a in TRAIN if a not in ("--max-steps", "3")],
            "--max-steps", "4", "--save-steps", "2", "--ema-decay", "0.9", "-o", run]
    assert invoke(*args).returncode == 0
    state = json.loads((run / "checkpoint-2" / "state.json").read_text())
    assert state["callback_tensors"] and all(name.startswith("callbacks/0/ema.") for name in state["callback_tensors"])
    (run / "checkpoint-2" / "state.json").write_text(json.dumps({**state, "callback_tensors": []}))
    for model in ("final", "final-ema"):  # as if stopped after checkpoint-2
        shutil.rmtree(run / model)
    assert_input_error(invoke(*args, "--resume"), "--resume", "checkpoint-2", "other training-callback tensors", "--ema-decay")


@pytest.mark.parametrize("flag, value", [("--ema-decay", "1"), ("--ema-decay", "0"), ("--ema-decay", "-0.5"), ("--lawa-k", "1")])
def test_bad_averaging_settings_are_refused(tmp_path, llama_dir, corpora, invoke, flag, value):
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], flag, value, "-o", tmp_path / "run", *TRAIN)
    assert_input_error(result, flag)
    assert not (tmp_path / "run").exists()


def _toy_plan(callbacks=()):
    from adaptkit.engine.plan import TrainingPlan

    model = torch.nn.Linear(3, 2)
    return TrainingPlan(model, {"weight": None}, list(callbacks))


def test_averaging_refuses_adapter_exports():
    from adaptkit.engine.averaging import averaging_callbacks
    from adaptkit.engine.config import AveragingConfig
    from adaptkit.engine.plan import TrainingCallback
    from adaptkit.errors import InputError

    class Merges(TrainingCallback):
        def export(self, model):
            return model

    assert averaging_callbacks(AveragingConfig(), _toy_plan(), 10, 2) == []
    assert [type(c).__name__ for c in averaging_callbacks(AveragingConfig(ema_decay=0.9, lawa_k=2), _toy_plan(), 10, 2)] == ["EMA", "LAWA"]
    with pytest.raises(InputError, match="--lawa-k: weight averaging needs a method that trains the model's own weights"):
        averaging_callbacks(AveragingConfig(lawa_k=2), _toy_plan([Merges()]), 10, 2)


def test_lawa_keeps_the_last_k_snapshots_and_the_end():
    """Steps 1..7, a snapshot every 3 steps and at the end (3, 6, 7), k=2: the mean of steps 6 and 7; the bias
    (not trained) is not averaged."""
    from adaptkit.engine.averaging import EMA, LAWA

    plan = _toy_plan()
    lawa, ema = LAWA(plan, k=2, interval=3, total_steps=7), EMA(plan, 0.75)
    seen, expected_ema = {}, plan.model.weight.detach().clone()
    for step in range(7):
        with torch.no_grad():
            plan.model.weight.add_(float(step + 1))
        seen[step + 1] = plan.model.weight.detach().clone()
        expected_ema = 0.75 * expected_ema + 0.25 * seen[step + 1]
        lawa.on_step_end(plan.model, step), ema.on_step_end(plan.model, step)
    assert set(lawa.average()) == {"weight"} and int(lawa.taken) == 3
    assert torch.allclose(lawa.average()["weight"], (seen[6] + seen[7]) / 2, atol=1e-6)
    assert torch.allclose(ema.average()["weight"], expected_ema, atol=1e-5)
