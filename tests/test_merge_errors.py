"""Bad input to merge and instruct-vector: exit 2, one line naming the problem, nothing written."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from _merge_helpers import no_partial_outputs
from conftest import assert_input_error


@pytest.fixture(scope="module")
def models(make_model_dir):
    return {
        "base": make_model_dir("llama", 0),
        "a": make_model_dir("llama", 1),
        "b": make_model_dir("llama", 2),
        "olmo": make_model_dir("olmo2", 0),
        "narrow": make_model_dir("llama", 1, hidden=32),
    }


def refused(invoke, out, *args_and_fragments):
    *args, fragments = args_and_fragments
    result = invoke(*args, "-o", out)
    assert_input_error(result, *fragments)
    assert not out.exists() and no_partial_outputs(out.parent)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_inputs_that_do_not_align(invoke, models, tmp_path):
    out = tmp_path / "out"
    refused(invoke, out, "merge", "linear", "-m", models["a"], "-m", models["olmo"], ("'olmo2' model", "'llama'", "one architecture"))
    refused(invoke, out, "merge", "linear", "-m", models["a"], "-m", models["narrow"], ("tensor 'lm_head.weight' has shape (384, 32)", "(384, 64)"))
    refused(invoke, out, "merge", "task-arithmetic", "--base", models["narrow"], "-m", models["a"], ("--base", "has shape"))
    refused(invoke, out, "merge", "linear", "-m", models["a"], "-m", tmp_path / "missing", ("--model", "missing", "not a local model directory"))


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_parameters_out_of_range_or_inconsistent(invoke, models, tmp_path):
    out = tmp_path / "out"
    base, a, b = models["base"], models["a"], models["b"]
    refused(invoke, out, "merge", "linear", "-m", a, "-m", b, "--weight", "0.5", ("--weight", "1 values for 2 models"))
    refused(invoke, out, "merge", "task-arithmetic", "--base", base, "-m", a, "--lambda", "20", ("--lambda:", "less than or equal to 10"))
    refused(invoke, out, "merge", "task-arithmetic", "--base", base, "-m", a, "--lambda", "nan", ("lambda", "finite"))
    refused(invoke, out, "merge", "ties", "--base", base, "-m", a, "-m", b, "--density", "0", ("density", "greater than 0"))
    refused(invoke, out, "merge", "dare-ties", "--base", base, "-m", a, "-m", b, "--density", "nan", ("density", "finite"))
    refused(invoke, out, "merge", "slerp", "-m", a, "-m", b, "--t", "1.5", ("--t:", "less than or equal to 1", "got 1.5"))
    refused(invoke, out, "merge", "slerp", "-m", a, ("slerp needs at least 2",))
    refused(invoke, out, "merge", "ties", "-m", a, "-m", b, ("--base", "needs a base model"))
    refused(invoke, out, "merge", "revert", "--base", base, "-m", a, "--layers", "0-9", ("--layers", "layer 9 is outside the model", "2 layers (0-1)"))
    refused(invoke, out, "merge", "revert", "--base", base, "-m", a, "--layers", "embed,x", ("--layers", "expected layer indices", "'embed', 'head'"))
    refused(invoke, out, "merge", "layer-swap", "-m", a, "-m", b, "--layers", "1-0", ("--layers", "runs backwards"))
    refused(invoke, out, "merge", "revert", "--base", base, "-m", a, "--mask", tmp_path, "--fraction", "0.5", ("--mask", "cannot be combined"))
    refused(invoke, out, "merge", "revert", "--base", base, "-m", a, "--mask", tmp_path, ("--mask", "masks.safetensors"))
    save_file({"model.layers.7.mlp.up_proj.weight": torch.ones(3, dtype=torch.uint8)}, str(tmp_path / "masks.safetensors"))
    refused(invoke, out, "merge", "revert", "--base", base, "-m", a, "--mask", tmp_path, ("--mask", "'model.layers.7.mlp.up_proj.weight'", "another model"))
    refused(invoke, out, "merge", "layer-swap", "-m", a, "-m", b, ("--layers: Field required",))
    refused(invoke, out, "instruct-vector", "apply", "-m", a, "--base", base, "--instruct", b, "--alpha", "nan", ("--alpha", "finite"))
    refused(invoke, out, "instruct-vector", "apply", "-m", a, "--base", base, ("--instruct", "required"))


def test_vector_from_another_architecture(invoke, models, make_model_dir, tmp_path):
    iv = tmp_path / "iv"
    assert invoke("instruct-vector", "extract", "--base", models["base"], "--instruct", models["a"], "-o", iv, "-q").returncode == 0
    refused(invoke, tmp_path / "out", "instruct-vector", "apply", "-m", models["olmo"], "--vector", iv, ("--vector", "'llama' model", "'olmo2'"))
    refused(invoke, tmp_path / "out", "instruct-vector", "apply", "-m", models["a"], "--vector", models["b"], ("--vector", "not an instruction vector"))


def test_corrupt_or_truncated_safetensors(invoke, models, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(models["a"], truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage"
    shutil.copytree(models["a"], garbage)
    (garbage / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    out = tmp_path / "out"
    refused(invoke, out, "merge", "linear", "-m", models["b"], "-m", truncated, ("--model", "model.safetensors", "truncated"))
    refused(invoke, out, "merge", "task-arithmetic", "--base", garbage, "-m", models["b"], ("--base", "not a valid safetensors"))


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_yaml_configs(invoke, models, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: arcee_fusion\nbase_model: {models['base']}\nmodels:\n  - model: {models['a']}\n")
    refused(invoke, out, "merge", "--config", config, ("merge_method 'arcee_fusion' is not supported", "linear, task_arithmetic, ties, dare_ties, dare_linear, slerp", "revert"))
    config.write_text(f"merge_method: ties\nmodels:\n  - model: {models['a']}\n")
    refused(invoke, out, "merge", "--config", config, ("needs a base_model",))
    config.write_text(f"merge_method: linear\nslices: []\nmodels:\n  - model: {models['a']}\n")
    refused(invoke, out, "merge", "--config", config, ("'slices'", "only one slice"))
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {models['a']}\n    parameters: {{wieght: 1}}\n")
    refused(invoke, out, "merge", "--config", config, ("no parameter 'wieght'", "did you mean: weight"))
    config.write_text(f"merge_method: task_arithmetic\nbase_model: {models['base']}\nmodels:\n  - model: {models['a']}\n")
    refused(invoke, out, "merge", "--config", config, "--set", "parameters.lambda=nan", ("merge.yaml: parameter 'lambda'", "finite"))
    assert_input_error(invoke("merge", "--config", config), "-o/--output", "required with --config")
    result = invoke("merge")
    assert result.returncode == 0 and "--config" in result.stdout and "task-arithmetic" in result.stdout
