"""Scorers against independent straightforward computations on tiny models, and the score command."""

from __future__ import annotations

import json

import pytest
import torch

from adaptkit.calibration import load_calibration
from adaptkit.errors import InputError
from adaptkit.scoring.parameters import scored_parameters
from adaptkit.scoring.run import compute_scores
from adaptkit.scoring.score_set import load_scores
from conftest import assert_input_error
from helpers import capture_inputs, load_model

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in LINEARS]


@pytest.fixture(scope="module")
def llama(make_model_dir):
    return load_model(make_model_dir("llama"))


@pytest.fixture(scope="module")
def calibration(calib_dir):
    return load_calibration(calib_dir)


def test_scored_parameters_are_found_structurally(make_model_dir):
    olmo = load_model(make_model_dir("olmo2"))
    names = [sp.name for sp in scored_parameters(olmo)]
    assert "model.embed_tokens.weight" not in names and "lm_head.weight" not in names
    assert "model.layers.1.self_attn.q_norm.weight" in names and "model.norm.weight" in names
    assert sum(1 for sp in scored_parameters(olmo) if sp.is_matrix) == 2 * len(LINEARS)
    every = [sp.name for sp in scored_parameters(olmo, include_embeddings=True)]
    assert set(every) == {n for n, _ in olmo.named_parameters()}


def test_wanda_equals_explicit_products(llama, calibration):
    seen = []
    scores = compute_scores(llama, "wanda", calibration, granularities=("column", "row", "element"), batch_size=5, progress=seen.append)
    blocks = calibration.blocks
    assert seen == [5, 5, 2]  # one forward pass over every block
    modules = _linear_names(llama) + ["model.layers.0.input_layernorm", "model.norm"]
    inputs = capture_inputs(llama, blocks, modules)
    # fully explicit for layer 0's q_proj: RMSNorm of the token embeddings
    layer0 = llama.model.layers[0]
    with torch.no_grad():
        x0 = layer0.input_layernorm(llama.model.embed_tokens(blocks)).double().reshape(-1, 64)
    assert torch.allclose(x0, inputs["model.layers.0.self_attn.q_proj"], atol=1e-6)
    params = dict(llama.named_parameters())
    for name in modules:
        weight = params[f"{name}.weight"].detach().double()
        norms = inputs[name].square().sum(0).sqrt()  # ||X_j||_2 over all calibration tokens
        element = weight.abs() * norms if weight.ndim == 2 else weight.abs() * norms
        got = scores.scores[f"{name}.weight"]
        if weight.ndim == 2:
            assert torch.allclose(got["column"].double(), torch.ones(weight.shape[0], dtype=torch.float64) @ (weight.abs() * norms), rtol=1e-4)
            assert torch.allclose(got["row"].double(), weight.abs() @ norms, rtol=1e-4)
        assert torch.allclose(got["element"].double(), element, rtol=1e-4)
    assert json.loads(scores.metadata["shapes"])["model.layers.0.mlp.down_proj.weight"] == [64, 160]
    assert scores.metadata["calibration_hash"] == calibration.hash and int(scores.metadata["calibration_tokens"]) == blocks.numel()


def test_wanda_statistics_are_float32_for_bfloat16_models(make_model_dir, calibration):
    model = load_model(make_model_dir("llama")).to(torch.bfloat16)
    scores = compute_scores(model, "wanda", calibration, batch_size=12)
    name = "model.layers.1.mlp.down_proj"
    x = capture_inputs(model, calibration.blocks, [name])[name]  # bf16 activations, summed in float64
    weight = dict(model.named_parameters())[f"{name}.weight"].detach().double()
    expected = weight.abs().sum(0) * x.square().sum(0).sqrt()
    assert scores.scores[f"{name}.weight"]["column"].dtype == torch.float32
    assert torch.allclose(scores.scores[f"{name}.weight"]["column"].double(), expected, rtol=1e-4)


def test_wanda_on_embeddings_norm_scales_and_biases(make_model_dir, calibration):
    qwen = load_model(make_model_dir("qwen2"))
    with torch.no_grad():  # transformers initialises biases to zero, which would hide how they are scored
        for name, param in qwen.named_parameters():
            if name.endswith(".bias"):
                param.normal_(generator=torch.Generator().manual_seed(0))
    scores = compute_scores(qwen, "wanda", calibration, include_embeddings=True, granularities=("row",), batch_size=12)
    blocks = calibration.blocks
    counts = torch.bincount(blocks.reshape(-1), minlength=qwen.config.vocab_size).double()
    embed = qwen.model.embed_tokens.weight.detach().double()
    assert torch.allclose(scores.scores["model.embed_tokens.weight"]["row"].double(), embed.abs().sum(1) * counts.sqrt(), rtol=1e-5)
    bias = qwen.model.layers[0].self_attn.q_proj.bias.detach().double()
    expected_bias = bias.abs() * blocks.numel() ** 0.5  # a bias meets the constant input 1
    assert torch.allclose(scores.scores["model.layers.0.self_attn.q_proj.bias"]["element"].double(), expected_bias, rtol=1e-5)
    head = "lm_head"
    x = capture_inputs(qwen, blocks, [head])[head]
    expected_head = qwen.lm_head.weight.detach().double().abs() @ x.square().sum(0).sqrt()
    assert torch.allclose(scores.scores["lm_head.weight"]["row"].double(), expected_head, rtol=1e-4)


def test_wanda_reference_variant_equals_the_ssu_codes_formula(make_model_dir, calibration):
    qwen = load_model(make_model_dir("qwen2"))
    with torch.no_grad():
        for name, param in qwen.named_parameters():
            if name.endswith(".bias"):
                param.normal_(generator=torch.Generator().manual_seed(1))
    scores = compute_scores(qwen, "wanda", calibration, {"variant": "reference"}, include_embeddings=True, granularities=("column", "row"), batch_size=6)
    names = _linear_names(qwen)
    norm = "model.layers.1.input_layernorm"
    inputs = capture_inputs(qwen, calibration.blocks, names + [norm])
    params = dict(qwen.named_parameters())
    for name in names:
        weight = params[f"{name}.weight"].detach().double()
        expected = weight.square().sum(0).sqrt() * inputs[name].square().mean(0)  # ||W_:,j||_2 * mean_t x_tj^2
        assert torch.allclose(scores.scores[f"{name}.weight"]["column"].double(), expected, rtol=1e-4), name
    scale = params[f"{norm}.weight"].detach().double()
    assert torch.allclose(scores.scores[f"{norm}.weight"]["element"].double(), scale.abs() * (1 + inputs[norm].square().mean(0)), rtol=1e-4)
    bias = params["model.layers.0.self_attn.k_proj.bias"].detach().double()
    assert torch.allclose(scores.scores["model.layers.0.self_attn.k_proj.bias"]["element"].double(), 2 * bias.abs(), rtol=1e-6)
    counts = torch.bincount(calibration.blocks.reshape(-1), minlength=qwen.config.vocab_size).double()
    embed = params["model.embed_tokens.weight"].detach().double()
    expected_rows = embed.square().sum(1).sqrt() * counts / calibration.blocks.numel()
    assert torch.allclose(scores.scores["model.embed_tokens.weight"]["row"].double(), expected_rows, rtol=1e-5)
    paper = compute_scores(qwen, "wanda", calibration, granularities=("column",), batch_size=6)
    key = f"{names[0]}.weight"
    assert not torch.allclose(paper.scores[key]["column"], scores.scores[key]["column"], rtol=1e-2)


def test_magnitude_and_random(llama):
    magnitude = compute_scores(llama, "magnitude", granularities=("column",))
    weight = llama.model.layers[0].mlp.up_proj.weight.detach()
    assert torch.allclose(magnitude.scores["model.layers.0.mlp.up_proj.weight"]["column"], weight.abs().sum(0))
    assert magnitude.metadata["calibration_hash"] == "none"
    a, b, c = (compute_scores(llama, "random", seed=s, granularities=("column",)) for s in (1, 1, 2))
    key = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(a.scores[key]["column"], b.scores[key]["column"])
    assert not torch.equal(a.scores[key]["column"], c.scores[key]["column"])


# The SSU reference code's rules (gucci-j/ssu, training/src/utils/model_utils.py), transcribed on plain tensors.
def _ref_magnitude(weight, axis):  # magnitude_based / magnitude_rowwise: torch.norm(|W|, dim=...) ranks columns / rows
    return weight.abs().square().sum(0 if axis == "column" else 1).sqrt()


def _ref_running_ex2(model, blocks, names):  # _collect_sgpt_statistics: stats = (prev + mean_t x^2) / 2 per forward call
    running = {}
    for b in range(blocks.shape[0]):
        inputs = capture_inputs(model, blocks[b:b + 1], names)
        for name, x in inputs.items():
            ex2 = x.square().mean(0)
            running[name] = ex2 if name not in running else (running[name] + ex2) / 2.0
    return running


def test_magnitude_reference_variant_ranks_by_l2_norms(llama):
    paper = compute_scores(llama, "magnitude", granularities=("column", "row", "element"))
    ref = compute_scores(llama, "magnitude", scorer_params={"variant": "reference"}, granularities=("column", "row", "element"))
    params = dict(llama.named_parameters())
    for name in _linear_names(llama):
        weight = params[f"{name}.weight"].detach().double()
        got = ref.scores[f"{name}.weight"]
        assert torch.allclose(got["column"].double(), _ref_magnitude(weight, "column"), rtol=1e-5), name
        assert torch.allclose(got["row"].double(), _ref_magnitude(weight, "row"), rtol=1e-5), name
        assert torch.equal(got["element"], paper.scores[f"{name}.weight"]["element"])  # |W_ij| in both
        assert torch.allclose(paper.scores[f"{name}.weight"]["column"].double(), weight.abs().sum(0), rtol=1e-5)
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.equal(ref.scores[norm]["element"], params[norm].detach().float().abs())


def test_wanda_reference_row_and_element_ablations(llama, calibration):
    scores = compute_scores(llama, "wanda", calibration, {"variant": "reference"}, granularities=("row", "element"), batch_size=5)
    names = _linear_names(llama)
    inputs = capture_inputs(llama, calibration.blocks, names)
    params = dict(llama.named_parameters())
    for name in names:
        weight = params[f"{name}.weight"].detach().double()
        got = scores.scores[f"{name}.weight"]
        assert torch.allclose(got["row"].double(), weight.abs().square().sum(1).sqrt(), rtol=1e-5), name  # ssu_rowwise: row norms only
        ex2 = inputs[name].square().mean(0)  # ssu_elementwise: |w| * (1 + E[x^2]) of the entry's input feature
        assert torch.allclose(got["element"].double(), weight.abs() * (1.0 + ex2.unsqueeze(0)), rtol=1e-4), name


def test_sparsegpt_reference_variant_uses_the_running_statistic(llama, calibration):
    blocks = calibration.blocks[:5]
    from adaptkit.calibration import CalibrationSet

    five = CalibrationSet(blocks=blocks)
    names = _linear_names(llama)
    norm = "model.layers.0.post_attention_layernorm"
    running = _ref_running_ex2(llama, blocks, names + [norm])
    structured = compute_scores(llama, "sparsegpt", five, {"saliency": "reference"}, granularities=("column", "row"), batch_size=1)
    elements = compute_scores(llama, "sparsegpt", five, {"saliency": "reference"}, granularities=("element",), batch_size=1)
    params = dict(llama.named_parameters())
    for name in names:
        weight = params[f"{name}.weight"].detach().double()
        got = structured.scores[f"{name}.weight"]
        assert torch.allclose(got["column"].double(), running[name], rtol=1e-4), name  # sgpt_based: topk(ex2)
        assert torch.allclose(got["row"].double(), (weight.abs() * running[name].unsqueeze(0)).sum(1), rtol=1e-4), name  # sgpt_rowwise
        assert torch.equal(elements.scores[f"{name}.weight"]["element"], weight.float().abs())  # sgpt_elementwise: ex2 too short, |W|
    true_mean = capture_inputs(llama, blocks, [names[0]])[names[0]].square().mean(0)
    assert not torch.allclose(running[names[0]], true_mean, rtol=1e-3)  # the statistic is not the mean over tokens
    assert f"{norm}.weight" not in structured.scores and "model.norm.weight" not in structured.scores  # 1-D scales never frozen
    assert torch.allclose(elements.scores[f"{norm}.weight"]["element"].double(), running[norm], rtol=1e-4)
    from adaptkit.scoring.freeze import build_mask_set

    masks = build_mask_set(structured, 0.5, "column")
    assert f"{norm}.weight" not in masks.masks and f"{names[0]}.weight" in masks.masks


def test_sparsegpt_equals_obs_saliency(llama, calibration):
    damp = 0.05
    scores = compute_scores(llama, "sparsegpt", calibration, {"damp": damp, "saliency": "obs"}, granularities=("column",), batch_size=4)
    names = _linear_names(llama)
    inputs = capture_inputs(llama, calibration.blocks, names + ["model.layers.0.post_attention_layernorm"])
    params = dict(llama.named_parameters())
    for name in names:
        x = inputs[name]
        hessian = 2.0 * x.T @ x / x.shape[0]
        damped = hessian + damp * hessian.diagonal().mean() * torch.eye(x.shape[1], dtype=torch.float64)
        inverse_diagonal = torch.linalg.inv(damped).diagonal()
        weight = params[f"{name}.weight"].detach().double()
        expected = (weight.square() / inverse_diagonal).sum(0)
        assert torch.allclose(scores.scores[f"{name}.weight"]["column"].double(), expected, rtol=2e-3), name
    norm = "model.layers.0.post_attention_layernorm"
    diag = 2.0 * inputs[norm].square().mean(0)
    expected = params[f"{norm}.weight"].detach().double().square() * (diag + damp * diag.mean())
    assert torch.allclose(scores.scores[f"{norm}.weight"]["element"].double(), expected, rtol=1e-4)


def test_sparsegpt_default_is_the_papers_mean_squared_activation(make_model_dir, calibration):
    qwen = load_model(make_model_dir("qwen2"))  # biases too
    scores = compute_scores(qwen, "sparsegpt", calibration, include_embeddings=True, granularities=("column", "row", "element"), batch_size=4)
    names = _linear_names(qwen)
    norm = "model.layers.0.post_attention_layernorm"
    inputs = capture_inputs(qwen, calibration.blocks, names + [norm])
    params = dict(qwen.named_parameters())
    for name in names:
        mean_square = inputs[name].square().mean(0)  # E[x_j^2] over every calibration token
        out_features = params[f"{name}.weight"].shape[0]
        got = scores.scores[f"{name}.weight"]
        assert torch.allclose(got["element"].double(), mean_square.expand(out_features, -1), rtol=1e-4), name
        assert torch.allclose(got["column"].double(), out_features * mean_square, rtol=1e-4), name
        assert torch.allclose(got["row"].double(), mean_square.sum().expand(out_features), rtol=1e-4), name
    assert torch.allclose(scores.scores[f"{norm}.weight"]["element"].double(), inputs[norm].square().mean(0), rtol=1e-4)
    assert torch.equal(scores.scores["model.layers.0.self_attn.q_proj.bias"]["element"], torch.ones(qwen.config.hidden_size))
    counts = torch.bincount(calibration.blocks.reshape(-1), minlength=qwen.config.vocab_size).double()
    expected_rows = counts / calibration.blocks.numel() * qwen.config.hidden_size
    assert torch.allclose(scores.scores["model.embed_tokens.weight"]["row"].double(), expected_rows, rtol=1e-5)
    assert json.loads(scores.metadata["scorer_params"])["saliency"] == "paper"


def test_fisher_equals_mean_squared_gradient(make_model_dir, calibration):
    model = load_model(make_model_dir("olmo2"))
    seen = []
    scores = compute_scores(model, "fisher", calibration, granularities=("column",), batch_size=3, progress=seen.append)
    assert seen == [3, 3, 3, 3]
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # model left as it was
    batches = calibration.blocks.split(3)
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for batch in batches:
        model.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.double().square()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        expected = (total[name] / len(batches)).sum(0)
        assert torch.allclose(scores.scores[name]["column"].double(), expected, rtol=1e-3, atol=1e-12), name
    expected_norm = total["model.layers.1.self_attn.k_norm.weight"] / len(batches)
    assert torch.allclose(scores.scores["model.layers.1.self_attn.k_norm.weight"]["element"].double(), expected_norm, rtol=1e-3, atol=1e-12)


@pytest.mark.parametrize("scorer", ["wanda", "sparsegpt", "fisher"])
def test_calibration_scorers_consume_the_calibration_data(llama, calibration, other_calib_dir, scorer):
    with pytest.raises(InputError, match="--calib"):
        compute_scores(llama, scorer, None)
    a = compute_scores(llama, scorer, calibration, granularities=("column",), batch_size=6)
    b = compute_scores(llama, scorer, load_calibration(other_calib_dir), granularities=("column",), batch_size=6)
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.allclose(a.scores[key]["column"], b.scores[key]["column"])
    assert a.metadata["calibration_hash"] != b.metadata["calibration_hash"]


def test_score_command_writes_scores_with_metadata(tmp_path, llama_dir, olmo2_dir, calib_dir, invoke):
    out = tmp_path / "scores"
    result = invoke("score", "--model", llama_dir, "--calib", calib_dir, "--scorer", "wanda", "--batch-size", "4", "-o", out, "--json")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["calibration_tokens"] == 12 * 32
    scores = load_scores(out)
    assert scores.metadata["scorer"] == "wanda" and set(scores.scores["model.norm.weight"]) == {"element"}
    assert set(scores.scores["model.layers.0.self_attn.q_proj.weight"]) == {"column", "row"}
    result = invoke("score", "--model", olmo2_dir, "--scorer", "sparsegpt", "--calib", calib_dir, "--set", "damp=0.1", "--element-scores", "-o", tmp_path / "s2", "--quiet")
    assert result.returncode == 0, result
    assert set(load_scores(tmp_path / "s2").scores["model.layers.0.mlp.up_proj.weight"]) == {"column", "row", "element"}


def test_score_command_bad_input(tmp_path, llama_dir, calib_dir, invoke):
    out = tmp_path / "scores"
    assert_input_error(invoke("score", "--model", llama_dir, "--calib", calib_dir, "--scorer", "wandaa", "-o", out), "--scorer", "did you mean", "wanda")
    assert_input_error(invoke("score", "--model", llama_dir, "--scorer", "wanda", "-o", out), "--calib", "wanda")
    assert_input_error(invoke("score", "--model", llama_dir, "--calib", calib_dir, "--scorer", "sparsegpt", "--set", "dmp=1", "-o", out), "--set", "dmp")
    assert_input_error(invoke("score", "--model", llama_dir, "--calib", tmp_path, "-o", out), "--calib", "not a calibration directory")
    assert not out.exists()
