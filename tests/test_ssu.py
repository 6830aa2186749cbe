"""train --method ssu-*: the composition, both routes (--mask / --calib), frozen entries bit-identical, bad input."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adaptkit.engine.masks import load_mask_set
from conftest import assert_input_error
from helpers import weights

TRAIN = ["--seq-len", "32", "--batch-size", "4", "--max-steps", "2", "--lr", "5e-2", "--weight-decay", "0.5", "--warmup-ratio", "0", "--quiet"]


def _check_frozen_bit_identical(source_dir, run_dir) -> int:
    """Every frozen entry equals the source; trainable entries of every masked parameter moved. Returns frozen count."""
    before, after = weights(source_dir), weights(run_dir / "final")
    masks = load_mask_set(run_dir / "mask")
    frozen_total = 0
    for name, tensor in before.items():
        mask = masks.masks.get(name)
        if mask is None:  # embeddings and LM head: trained in full
            assert not torch.equal(tensor, after[name]), name
            continue
        trainable = mask.expand(tuple(tensor.shape))
        assert torch.equal(tensor[~trainable], after[name][~trainable]), name
        frozen_total += int((~trainable).sum())
        if trainable.any():
            assert not torch.equal(tensor[trainable], after[name][trainable]), name
    return frozen_total


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_the_documented_pipeline_and_both_routes_give_identical_runs(tmp_path, make_model_dir, corpora, invoke, arch):
    model_dir = make_model_dir(arch)
    calib, scores, mask = tmp_path / "calib", tmp_path / "scores", tmp_path / "mask"
    steps = [
        ["calibrate", "--model", model_dir, "--data", corpora["en"], "--format", "text", "--pool", "500", "--num-samples", "8", "--block-size", "32", "-o", calib],
        ["score", "--model", model_dir, "--calib", calib, "--scorer", "wanda", "-o", scores],
        ["mask", "--scores", scores, "--freeze-ratio", "0.5", "-o", mask],
        ["train", "--model", model_dir, "--data", corpora["ha"], "--method", "ssu-wanda", "--mask", mask, "-o", tmp_path / "with-mask", *TRAIN],
        ["train", "--model", model_dir, "--data", corpora["ha"], "--method", "ssu-wanda", "--calib", calib, "--freeze-ratio", "0.5", "-o", tmp_path / "on-the-fly", *TRAIN],
    ]
    for args in steps:
        result = invoke(*args)
        assert result.returncode == 0, (args[0], result)
    a, b = weights(tmp_path / "with-mask" / "final"), weights(tmp_path / "on-the-fly" / "final")
    assert all(torch.equal(a[name], b[name]) for name in a)
    on_the_fly = tmp_path / "on-the-fly"
    assert torch.equal(load_file(str(on_the_fly / "scores" / "scores.safetensors"))["model.layers.0.mlp.up_proj.weight@column"],
                       load_file(str(scores / "scores.safetensors"))["model.layers.0.mlp.up_proj.weight@column"])
    saved = load_mask_set(on_the_fly / "mask")
    assert all(torch.equal(m.trainable, load_mask_set(mask).masks[n].trainable) for n, m in saved.masks.items())
    assert _check_frozen_bit_identical(model_dir, on_the_fly) > 0
    card = (on_the_fly / "run_card.md").read_text()
    assert "AdamW state" in card and "saves" in card


METHODS = ["ssu-wanda", "ssu-mag", "ssu-rand", "ssu-sparsegpt", "ssu-fisher"]


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["column", "row", "element"])
@pytest.mark.parametrize("method", METHODS)
def test_frozen_entries_stay_bit_identical(tmp_path, make_model_dir, calib_dir, corpora, invoke, method, granularity):
    arch = "olmo2" if (METHODS.index(method) + ["column", "row", "element"].index(granularity)) % 3 == 0 else "llama"
    model_dir = make_model_dir(arch)
    run = tmp_path / "run"
    result = invoke("train", "--model", model_dir, "--data", corpora["ha"], "--method", method, "--calib", calib_dir,
                    "--freeze-ratio", "0.375", "--set", f"granularity={granularity}", "--set", "calib_batch_size=4", "-o", run, *TRAIN)
    assert result.returncode == 0, result
    masks = load_mask_set(run / "mask")
    assert masks.metadata["scorer"] == method.removeprefix("ssu-").replace("mag", "magnitude").replace("rand", "random")
    assert _check_frozen_bit_identical(model_dir, run) > 0


def test_no_optimizer_state_for_frozen_entries(make_model_dir, calib_dir):
    """The optimizer holds exactly the trainable entries (compact copies), never the frozen ones."""
    from adaptkit.calibration import load_calibration
    from adaptkit.engine.optim import apply_plan, build_optimizer
    from adaptkit.engine.config import OptimizerConfig
    from adaptkit.engine.plan import TrainingPlan
    from adaptkit.scoring.freeze import build_mask_set
    from adaptkit.scoring.run import compute_scores
    from helpers import load_model

    model = load_model(make_model_dir("llama"))
    masks = build_mask_set(compute_scores(model, "wanda", load_calibration(calib_dir), granularities=("column",), batch_size=12), 0.5)
    plan = TrainingPlan.from_masks(model, masks)
    trainable, total = plan.counts()
    optimizer = build_optimizer(apply_plan(plan), OptimizerConfig(), torch.device("cpu"))
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == trainable < total


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_ssu_bad_input(tmp_path, llama_dir, olmo2_dir, calib_dir, corpora, invoke):
    out = tmp_path / "run"
    olmo_mask, mag_mask, olmo_mag_mask = tmp_path / "olmo-mask", tmp_path / "mag-mask", tmp_path / "olmo-mag-mask"
    for model_dir, scorer, target in ((olmo2_dir, "wanda", olmo_mask), (llama_dir, "magnitude", mag_mask), (olmo2_dir, "magnitude", olmo_mag_mask)):
        assert invoke("score", "--model", model_dir, "--calib", calib_dir, "--scorer", scorer, "-o", tmp_path / f"s-{target.name}", "--quiet").returncode == 0
        assert invoke("mask", "--scores", tmp_path / f"s-{target.name}", "-o", target, "--quiet").returncode == 0
    base = ["train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, *TRAIN]
    cases = [
        (["--method", "ssu-wanda"], ["--method ssu-wanda", "--mask", "--calib"]),
        (["--method", "ssu-wanda", "--mask", olmo_mask], ["--mask", "different model"]),
        (["--method", "ssu-wanda", "--mask", mag_mask], ["--mask", "magnitude", "ssu-mag"]),
        # another model AND another scorer: the model is named first (no ssu-* method would fit it)
        (["--method", "ssu-wanda", "--mask", olmo_mag_mask], ["--mask", "different model"]),
        (["--method", "ssu-mag", "--mask", mag_mask, "--freeze-ratio", "0.25"], ["--freeze-ratio", "0.25"]),
        (["--method", "ssu-wanda", "--calib", calib_dir, "--freeze-ratio", "1.5"], ["--freeze-ratio:", "freeze_ratio", "between 0 and 1"]),
        (["--method", "ssu-wanda", "--calib", calib_dir, "--set", "granularity=block"], ["granularity"]),
        (["--method", "ssu-wandaa", "--calib", calib_dir], ["--method", "did you mean", "ssu-wanda"]),
        (["--method", "ssu-wanda", "--calib", calib_dir, "--mask", mag_mask], ["--mask", "--calib", "one of them"]),
        (["--method", "ssu-wanda", "--calib", tmp_path / "nope"], ["--calib", "calibration directory"]),
    ]
    for extra, fragments in cases:
        assert_input_error(invoke(*base, *extra), *fragments)
        assert not out.exists(), extra


@pytest.mark.parametrize("granularity", ["column", "row"])
@pytest.mark.parametrize("autocast", [False, True])
def test_compact_linear_backward_equals_the_full_gradient_restricted(granularity, autocast):
    """engine/masked_linear: dX, db and the trainable part of dW as plain autograd gives them (also under bf16 autocast)."""
    from adaptkit.engine import masked_linear
    from adaptkit.engine.masks import UpdateMask
    from adaptkit.engine.optim import CompactParameter

    torch.manual_seed(0)
    reference = torch.nn.Linear(16, 8)
    switched = torch.nn.Sequential(torch.nn.Linear(16, 8))
    switched[0].load_state_dict(reference.state_dict())
    keep = torch.rand(16 if granularity == "column" else 8) > 0.5
    compact = CompactParameter("0.weight", switched[0].weight, UpdateMask(granularity, keep))
    assert masked_linear.install(switched, {"0.weight": compact}) == ["0.weight"]
    x = torch.randn(3, 5, 16)
    grads = []
    for module in (reference, switched):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(xi)
        (out.float() ** 2).sum().backward()
        grads.append(xi.grad)
    atol = 5e-2 if autocast else 1e-5
    assert switched[0].weight.grad is None
    assert torch.allclose(grads[0], grads[1], atol=atol, rtol=1e-2)
    assert torch.allclose(reference.bias.grad, switched[0].bias.grad, atol=atol, rtol=1e-2)
    assert torch.allclose(compact.take(reference.weight.grad), compact.compact.grad, atol=atol, rtol=1e-2)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_fast_and_plain_backward_train_the_same(tmp_path, llama_dir, calib_dir, corpora, invoke):
    finals = []
    for fast in ("true", "false"):
        run = tmp_path / fast
        result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--method", "ssu-wanda", "--calib", calib_dir,
                        "--set", f"fast_backward={fast}", "--micro-batch-size", "2", "-o", run, *TRAIN)
        assert result.returncode == 0, result
        _check_frozen_bit_identical(llama_dir, run)
        finals.append(weights(run / "final"))
    assert all(torch.allclose(finals[0][k], finals[1][k], atol=1e-6) for k in finals[0])


def test_tied_weights_keep_the_plain_backward():
    from adaptkit.engine import masked_linear
    from adaptkit.engine.masks import UpdateMask
    from adaptkit.engine.optim import CompactParameter

    model = torch.nn.Module()
    model.head, model.embed = torch.nn.Linear(4, 6, bias=False), torch.nn.Embedding(6, 4)
    model.head.weight = model.embed.weight
    compact = CompactParameter("head.weight", model.head.weight, UpdateMask("column", torch.tensor([True, False, True, False])))
    assert masked_linear.install(model, {"head.weight": compact}) == [] and model.head.weight.requires_grad


def test_multi_process_runs_keep_the_plain_backward(monkeypatch):
    """Under DDP/FSDP the module weights must keep their gradients for the collective reductions."""
    from adaptkit.engine import masked_linear
    from adaptkit.engine.masks import UpdateMask
    from adaptkit.engine.optim import CompactParameter

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    compact = CompactParameter("0.weight", model[0].weight, UpdateMask("column", torch.tensor([True, False, True, False])))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    assert masked_linear.install(model, {"0.weight": compact}) == [] and model[0].weight.requires_grad
