"""mergekit's newer merge methods: parity with the installed mergekit on tiny models, the same YAML.

Model Stock, breadcrumbs (alone and with TIES), NuSLERP, Karcher mean, SCE and multi-SLERP are
deterministic: each config runs once through mergekit (in-process, module fixture) and once
through `adaptkit merge --config`; the float32 outputs must be equal to the tolerance stated per
method in TOLERANCE (0.0: bit for bit). DELLA draws at random (mergekit from torch's global
generator in its own tensor order, we from a generator seeded per tensor), so its tests check
the sampling rule against a transcription of the paper's formula instead.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from _merge_helpers import run_mergekit_configs, weights


def configs(base, a, b, c) -> dict[str, dict]:
    three = [{"model": str(m)} for m in (a, b, c)]
    return {
        "model_stock": {"merge_method": "model_stock", "base_model": str(base), "models": three},
        "model_stock_filter_wise": {"merge_method": "model_stock", "base_model": str(base), "models": three, "parameters": {"filter_wise": True}},
        "breadcrumbs": {
            "merge_method": "breadcrumbs", "base_model": str(base),
            "models": [{"model": str(a), "parameters": {"weight": 0.5, "density": 0.8, "gamma": 0.05}},
                       {"model": str(b), "parameters": {"weight": 1.2, "density": 0.6, "gamma": 0.1}}],
            "parameters": {"lambda": 0.8},
        },
        "breadcrumbs_ties": {
            "merge_method": "breadcrumbs_ties", "base_model": str(base),
            "models": [{"model": str(a), "parameters": {"weight": 0.5, "density": 0.8, "gamma": 0.05}},
                       {"model": str(b), "parameters": {"weight": 1.2, "density": 0.6, "gamma": 0.1}}],
            "parameters": {"normalize": True},
        },
        "nuslerp": {"merge_method": "nuslerp", "models": [{"model": str(a), "parameters": {"weight": 0.3}}, {"model": str(b), "parameters": {"weight": 0.7}}]},
        "nuslerp_rows_base": {
            "merge_method": "nuslerp", "base_model": str(base),
            "models": [{"model": str(a), "parameters": {"weight": 0.6}}, {"model": str(b), "parameters": {"weight": 0.4}}],
            "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        },
        "karcher": {"merge_method": "karcher", "models": three, "parameters": {"max_iter": 20, "tol": 1e-6}},
        "sce": {"merge_method": "sce", "base_model": str(base), "models": three, "parameters": {"select_topk": 0.5}},
        "multislerp": {"merge_method": "multislerp", "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip((a, b, c), (0.2, 0.3, 0.5))]},
    }


# measured on this machine's CPU: 0.0 where our code does mergekit's float32 operations in its order
TOLERANCE = {
    "model_stock": 0.0, "model_stock_filter_wise": 0.0, "breadcrumbs": 1e-8, "breadcrumbs_ties": 0.0, "nuslerp": 0.0,
    "nuslerp_rows_base": 0.0, "karcher": 0.0, "sce": 0.0, "multislerp": 0.0,
}


@pytest.fixture(scope="module")
def mergekit_outputs(make_model_dir, tmp_path_factory):
    float32 = {name: {**config, "dtype": "float32"} for name, config in configs(*(make_model_dir("llama", s) for s in range(4))).items()}
    return run_mergekit_configs(float32, tmp_path_factory.mktemp("mergekit-newer"))


@pytest.mark.parametrize("name", sorted(TOLERANCE))
@pytest.mark.slow  # mergekit's import and merges: seconds
def test_same_yaml_same_weights(invoke, mergekit_outputs, tmp_path, name):
    config, reference = mergekit_outputs[name]
    result = invoke("merge", "--config", config, "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result
    ours, theirs = weights(tmp_path / "out"), weights(reference)
    assert ours.keys() == theirs.keys()
    worst = max((ours[n].double() - theirs[n].double()).abs().max().item() for n in theirs)
    assert all(ours[n].dtype == theirs[n].dtype == torch.float32 for n in theirs)
    assert worst <= TOLERANCE[name], (name, worst)


def paper_keep_probabilities(row: list[float], density: float, epsilon: float) -> list[float]:
    """DELLA's MagPrune (arXiv 2406.11617) written out: rank r = 0..m-1 by magnitude within the row,
    keep probability density - epsilon + 2 epsilon r / (m - 1)."""
    order = sorted(range(len(row)), key=lambda i: abs(row[i]))
    rank = {index: r for r, index in enumerate(order)}
    return [density - epsilon + 2 * epsilon * rank[i] / (len(row) - 1) for i in range(len(row))]


@pytest.mark.slow  # 4000 draws: about 1 s
def test_della_keeps_entries_with_the_papers_probabilities():
    from adaptkit.plugins.merges.della import magprune_

    torch.manual_seed(0)
    delta = torch.randn(3, 40)
    expected = torch.tensor([paper_keep_probabilities(row.tolist(), 0.5, 0.2) for row in delta])
    draws = 4000
    generator = torch.Generator().manual_seed(1)
    kept = torch.zeros_like(delta)
    total = torch.zeros_like(delta)
    for _ in range(draws):
        pruned = magprune_(delta.clone(), 0.5, 0.2, generator, rescale=True)
        kept += pruned != 0
        total += pruned
    # a kept entry is divided by its own keep probability: exactly delta / p
    assert torch.allclose(pruned[pruned != 0], (delta / expected)[pruned != 0], rtol=1e-6)
    # the keep frequency follows p (binomial standard error <= 0.008 at 4000 draws; 5 sigma)
    assert (kept / draws - expected).abs().max() < 0.04
    # rescaled by 1/p the pruned task vector is unbiased: E[pruned] = delta
    assert ((total / draws - delta).abs() / delta.abs().clamp(min=0.3)).max() < 0.25


@pytest.mark.slow  # four merges
def test_della_linear_output_is_base_plus_magpruned_delta(invoke, make_model_dir, tmp_path):
    base, model = make_model_dir("llama", 0), make_model_dir("llama", 1)
    args = ("merge", "della-linear", "--base", base, "-m", model, "--density", "0.6", "--epsilon", "0.3", "-q")
    assert invoke(*args, "--seed", "3", "-o", tmp_path / "one").returncode == 0
    assert invoke(*args, "--seed", "3", "-o", tmp_path / "again").returncode == 0
    assert invoke(*args, "--seed", "4", "-o", tmp_path / "other").returncode == 0
    w0, w1, one = weights(base), weights(model), weights(tmp_path / "one")
    assert all(torch.equal(one[n], t) for n, t in weights(tmp_path / "again").items())
    assert any(not torch.equal(one[n], t) for n, t in weights(tmp_path / "other").items())
    name = "model.layers.0.mlp.up_proj.weight"
    delta = w1[name] - w0[name]
    p = torch.tensor([paper_keep_probabilities(row.tolist(), 0.6, 0.3) for row in delta])
    moved = one[name] - w0[name]
    kept = moved.abs() > 1e-6
    assert torch.allclose(moved[kept], (delta / p)[kept], rtol=1e-4, atol=1e-6)
    assert 0.5 < kept.float().mean().item() < 0.7  # about density of the entries
    # mergekit's YAML for the same merge reads into the same call
    config = {"merge_method": "della_linear", "base_model": str(base), "dtype": "float32",
              "models": [{"model": str(model), "parameters": {"weight": 1.0, "density": 0.6, "epsilon": 0.3}}]}
    (tmp_path / "della.yaml").write_text(yaml.safe_dump(config))
    assert invoke("merge", "--config", tmp_path / "della.yaml", "--seed", "3", "-o", tmp_path / "yaml", "-q").returncode == 0
    assert all(torch.equal(one[n], t) for n, t in weights(tmp_path / "yaml").items())


@pytest.mark.parametrize("args,fragments", [
    (["della", "--base", "{base}", "-m", "{a}", "--density", "0.9", "--epsilon", "0.15"], ["--epsilon", "inside (0, 1)"]),
    (["della-linear", "--base", "{base}", "-m", "{a}", "--epsilon", "0.6"], ["--epsilon", "less than 0.5"]),
    (["breadcrumbs", "--base", "{base}", "-m", "{a}", "--gamma", "1.0"], ["--gamma", "less than 1"]),
    (["breadcrumbs-ties", "--base", "{base}", "-m", "{a}", "--density", "0"], ["--density", "greater than 0"]),
    (["model-stock", "--base", "{base}", "-m", "{a}"], ["--model", "at least 2"]),
    (["model-stock", "-m", "{a}", "-m", "{b}"], ["--base", "needs a base"]),
    (["nuslerp", "-m", "{a}", "-m", "{b}", "-m", "{base}"], ["--model", "at most 2"]),
    (["karcher", "-m", "{a}", "-m", "{b}", "--max-iter", "0"], ["--max-iter", "greater than or equal to 1"]),
    (["sce", "--base", "{base}", "-m", "{a}", "--select-topk", "1.5"], ["--select-topk", "less than or equal to 1"]),
    (["multislerp", "-m", "{a}", "-m", "{b}", "--weight", "1"], ["--weight", "1 values for 2 models"]),
])
def test_parameters_out_of_range_are_refused(invoke, make_model_dir, tmp_path, args, fragments):
    from conftest import assert_input_error

    paths = {"base": make_model_dir("llama", 0), "a": make_model_dir("llama", 1), "b": make_model_dir("llama", 2)}
    out = tmp_path / "out"
    result = invoke("merge", *[a.format(**paths) for a in args], "-o", out)
    assert_input_error(result, *fragments)
    assert not out.exists() and not list(tmp_path.iterdir())
