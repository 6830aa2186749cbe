"""Training an extended model (`adaptkit vocab extend`) through the CLI: train_embeddings=new-only / none
with fft and ssu-wanda, a separate embedding_lr (optimizer groups, schedule applied), and SSU's
include_embeddings making the new rows trainable."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import run_ok, weights

STEPS = ["--max-steps", "3", "--seq-len", "16", "--batch-size", "2", "--lr", "1e-2", "--weight-decay", "0.1", "--quiet"]


@pytest.fixture(scope="module")
def extended_dirs(make_model_dir, corpora, tmp_path_factory):
    """extended_dirs(tied) -> (extended model dir, its old vocabulary size), made with `vocab extend --add 40` (cached)."""
    from adaptkit.cli import main

    cache: dict[bool, tuple[Path, int]] = {}

    def make(tied: bool = False) -> tuple[Path, int]:
        if tied not in cache:
            out = tmp_path_factory.mktemp("extended") / "model"
            source = make_model_dir("llama", **({"tie_word_embeddings": True} if tied else {}))
            try:
                main(["vocab", "extend", "--model", str(source), "--data", str(corpora["ha"]), "--add", "40", "-o", str(out), "-q"])
            except SystemExit as done:
                assert done.code in (0, None)
            cache[tied] = (out, json.loads((out / "adaptkit_vocab.json").read_text())["old_vocab_size"])
        return cache[tied]

    return make


def token_rows(model_dir: Path, old: int) -> dict[str, torch.Tensor]:
    """The saved tensors with a row per token (input embeddings, LM head) of a model extended beyond `old` rows."""
    found = {name: t for name, t in weights(model_dir).items() if t.ndim == 2 and t.shape[0] > old}
    assert found
    return found


def train(invoke, model: Path, corpora, out: Path, *extra) -> Path:
    run_ok(invoke, "train", "--model", model, "--data", corpora["ha"], "-o", out, *STEPS, *extra)
    return out / "final"


def calibrate(invoke, model: Path, corpora, out: Path) -> list[str]:
    run_ok(invoke, "calibrate", "--model", model, "--data", corpora["en"], "--format", "text", "--pool", "500", "--num-samples", "8", "--block-size", "32", "-o", out)
    return ["--method", "ssu-wanda", "--calib", str(out)]


@pytest.mark.parametrize("method,tied", [("fft", False), ("fft", True), ("ssu-wanda", False)])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_new_only_keeps_old_rows(invoke, extended_dirs, corpora, tmp_path, method, tied):
    model, old = extended_dirs(tied)
    args = calibrate(invoke, model, corpora, tmp_path / "calib") if method == "ssu-wanda" else ["--method", "fft"]
    final = train(invoke, model, corpora, tmp_path / "run", *args, "--set", "train_embeddings=new-only")
    before, after = token_rows(model, old), token_rows(final, old)
    assert len(before) == (1 if tied else 2)
    for name, tensor in before.items():
        assert torch.equal(after[name][:old], tensor[:old]), name  # weight decay 0.1 at lr 1e-2 would move them
        assert not torch.equal(after[name][old:], tensor[old:]), name
    rest = {n: t for n, t in weights(model).items() if n not in before}
    trained = weights(final)
    assert any(not torch.equal(trained[n], t) for n, t in rest.items())  # the method's other parameters still train


@pytest.mark.parametrize("method", ["fft", "ssu-wanda"])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_none_keeps_embeddings(invoke, extended_dirs, corpora, tmp_path, method):
    model, old = extended_dirs()
    args = calibrate(invoke, model, corpora, tmp_path / "calib") if method == "ssu-wanda" else ["--method", "fft"]
    final = train(invoke, model, corpora, tmp_path / "run", *args, "--set", "train_embeddings=none")
    before, after = token_rows(model, old), token_rows(final, old)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    trained = weights(final)
    assert any(not torch.equal(trained[n], t) for n, t in weights(model).items() if n not in before)


def test_embedding_lr_through_cli(invoke, extended_dirs, corpora, tmp_path):
    """One AdamW step from zero state moves each entry with a gradient by lr * sign(grad) (weight decay 0):
    the new embedding/head rows by embedding_lr, other matrices by optimizer.lr, old rows not at all."""
    model, old = extended_dirs()
    final = tmp_path / "run" / "final"
    run_ok(invoke, "train", "--model", model, "--data", corpora["ha"], "-o", tmp_path / "run", "--max-steps", "1", "--seq-len", "16",
           "--batch-size", "2", "--lr", "1e-4", "--weight-decay", "0", "--schedule", "constant", "--warmup-ratio", "0", "--quiet",
           "--set", "embedding_lr=1e-2", "--set", "train_embeddings=new-only")
    before, after = weights(model), weights(final)
    head = "lm_head.weight"
    step = (after[head] - before[head]).abs()
    assert step[:old].max() == 0
    assert math.isclose(step[old:].max().item(), 1e-2, rel_tol=0.02)  # the head's new rows all get a gradient
    other = "model.layers.0.mlp.down_proj.weight"
    assert math.isclose((after[other] - before[other]).abs().max().item(), 1e-4, rel_tol=0.02)


def test_embedding_lr_groups_follow_the_schedule(make_model_dir):
    """Each step: the embedding/head groups at embedding_lr, the others at optimizer.lr, both scaled by the
    cosine schedule (computed here independently), with a row-masked (compact) embedding."""
    from adaptkit.engine.config import OptimizerConfig, ScheduleConfig
    from adaptkit.engine.optim import apply_plan, build_optimizer, build_schedule
    from adaptkit.engine.plan import TrainingPlan
    from adaptkit.engine.special_tokens import token_row_parameters
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_model_dir("llama"), dtype=torch.float32)
    plan = TrainingPlan.full(model)
    rows = torch.zeros(model.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    rows[100:] = True
    plan.restrict_rows("model.embed_tokens.weight", rows)
    trainable = apply_plan(plan)
    names = frozenset(token_row_parameters(plan))
    assert names == {"model.embed_tokens.weight", "lm_head.weight"} and "model.embed_tokens.weight" in trainable.compact
    optimizer = build_optimizer(trainable, OptimizerConfig(lr=1e-3), torch.device("cpu"), 3e-2, names)
    embedding_tensors = {id(trainable.compact["model.embed_tokens.weight"].compact), id(trainable.whole["lm_head.weight"])}
    total = 10
    scheduler = build_schedule(optimizer, ScheduleConfig(name="cosine", warmup_ratio=0.0), total)
    for step in range(total):
        factor = 0.5 * (1 + math.cos(math.pi * step / total))
        for group in optimizer.param_groups:
            is_embedding = {id(p) for p in group["params"]} <= embedding_tensors
            assert is_embedding or not ({id(p) for p in group["params"]} & embedding_tensors)
            assert math.isclose(group["lr"], (3e-2 if is_embedding else 1e-3) * factor, rel_tol=1e-9, abs_tol=1e-15), (step, group["lr"])
        assert sum(len(g["params"]) for g in optimizer.param_groups if {id(p) for p in g["params"]} <= embedding_tensors) == 2
        optimizer.step()
        scheduler.step()


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_ssu_embeddings_on_extended_model(invoke, extended_dirs, corpora, tmp_path):
    """Not scored by default; with include_embeddings the new rows of the column-masked head all train,
    while its old rows keep the frozen columns of the saved mask."""
    from adaptkit.engine.masks import load_mask_set

    model, old = extended_dirs()
    ssu = calibrate(invoke, model, corpora, tmp_path / "calib")
    train(invoke, model, corpora, tmp_path / "default", *ssu)
    assert not set(load_mask_set(tmp_path / "default" / "mask").masks) & set(token_rows(model, old))
    final = train(invoke, model, corpora, tmp_path / "with", *ssu, "--set", "include_embeddings=true", "--set", "freeze_special_tokens=false")
    mask = load_mask_set(tmp_path / "with" / "mask").masks["lm_head.weight"]
    assert mask.granularity == "column" and 0 < int(mask.trainable.sum()) < mask.trainable.numel()
    before, after = weights(model)["lm_head.weight"], weights(final)["lm_head.weight"]
    changed = after != before
    assert changed[old:].all()  # every entry of the new rows, frozen columns included
    assert not changed[:old][:, ~mask.trainable].any()
    assert changed[:old][:, mask.trainable].any()


def test_train_embeddings_from_yaml_is_resume_invariant(invoke, extended_dirs, corpora, tmp_path):
    """Set in a --config YAML; a resume with another value is refused, naming both."""
    from conftest import assert_input_error

    model, old = extended_dirs()
    config = tmp_path / "run.yaml"
    config.write_text("train_embeddings: new-only\n")
    run = tmp_path / "run"
    common = ["train", "--model", model, "--data", corpora["ha"], "-o", run, "--config", config, "--save-steps", "1", *STEPS]
    run_ok(invoke, *common)
    before, after = token_rows(model, old), token_rows(run / "final", old)
    assert all(torch.equal(after[n][:old], t[:old]) and not torch.equal(after[n][old:], t[old:]) for n, t in before.items())
    assert_input_error(invoke(*common, "--resume", "--set", "train_embeddings=all"), "--resume", "train_embeddings", "'new-only' there", "'all' now")
