"""Spectrum (arXiv 2406.06623): the SNR of each matrix against a computation written out here, the scorer's
saved scores, and the method training exactly the top fraction of modules of each type."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _methods_helpers import TRAIN, assert_trains_exactly, weights
from conftest import assert_input_error


def independent_snr(matrix: torch.Tensor) -> float:
    """The reference's SNR, from the singular values: noise scale IQR / 1.349 (numpy's linear percentiles),
    Marchenko-Pastur edge sigma (1 + sqrt(min/max)), (signal sum / noise sum) / largest singular value."""
    s = torch.linalg.svdvals(matrix.double()).numpy()
    sigma = (np.percentile(s, 75) - np.percentile(s, 25)) / 1.349
    n, m = matrix.shape
    edge = sigma * (1 + math.sqrt(min(n, m) / max(n, m)))
    signal, noise = s[s > edge].sum(), s[s <= edge].sum()
    return (signal / noise if noise else math.inf) / s.max()


def _matrices():
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(48, 4, generator=g) @ torch.randn(4, 32, generator=g) * 3
    return {
        "noise": torch.randn(40, 40, generator=g),
        "tall": torch.randn(64, 16, generator=g),
        "wide": torch.randn(16, 96, generator=g),
        "low-rank+noise": low_rank + 0.1 * torch.randn(48, 32, generator=g),
    }


@pytest.mark.parametrize("label", list(_matrices()))
def test_snr_matches_independent_computation(label):
    from adaptkit.scoring.spectral import matrix_snr

    matrix = _matrices()[label]
    assert matrix_snr(matrix) == pytest.approx(independent_snr(matrix), rel=1e-5)


def test_snr_ranks_structure_above_noise():
    from adaptkit.scoring.spectral import matrix_snr

    m = _matrices()
    assert matrix_snr(m["low-rank+noise"]) > matrix_snr(m["noise"])


@pytest.mark.slow  # builds and scores a model through the CLI
def test_spectrum_scorer_saves_each_matrix_snr(tmp_path, llama_dir, invoke):
    from safetensors.torch import load_file

    out = tmp_path / "scores"
    result = invoke("score", "--model", llama_dir, "--scorer", "spectrum", "--element-scores", "-o", out, "--quiet")
    assert result.returncode == 0, result
    saved = load_file(str(out / "scores.safetensors"))
    checked = 0
    for name, weight in weights(llama_dir).items():
        key = next((k for k in saved if k.startswith(name) and k.endswith("element")), None)
        if weight.ndim == 2 and key is not None:
            assert torch.allclose(saved[key], torch.full_like(saved[key], independent_snr(weight)), rtol=1e-5), name
            checked += 1
    assert checked >= 7  # every projection of the blocks


def _expected_trainable(before: dict, fraction: float) -> dict:
    """Per module type (the name after the layer index), the int(count * fraction) modules of highest
    independent SNR, whole (weight and bias); and the embeddings and head."""
    by_type: dict[str, list[tuple[float, str]]] = {}
    for name, tensor in before.items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"] and parts[-1] == "weight" and tensor.ndim == 2:
            by_type.setdefault(".".join(parts[3:-1]), []).append((independent_snr(tensor), ".".join(parts[:-1])))
    chosen = {module for rows in by_type.values() for _, module in sorted(rows, reverse=True)[:int(len(rows) * fraction)]}
    trainable = {name: None for name in before if name.rpartition(".")[0] in chosen}
    trainable.update({name: None for name in before if name in ("model.embed_tokens.weight", "lm_head.weight")})
    return trainable


@pytest.mark.slow
def test_spectrum_trains_top_fraction_of_each_type(tmp_path, make_model_dir, corpora, invoke):
    model_dir = make_model_dir("llama", layers=4)
    run = tmp_path / "spectrum"
    result = invoke("train", "--model", model_dir, "--data", corpora["ha"], "--method", "spectrum", "--set", "fraction=0.5",
                    "-o", run, *TRAIN, "--json")
    assert result.returncode == 0, result
    before = weights(model_dir)
    expected = _expected_trainable(before, 0.5)
    assert sum(name.startswith("model.layers.") for name in expected) == 7 * 2  # 2 of 4 modules of each of 7 types
    assert_trains_exactly(before, weights(run / "final"), expected)
    assert json.loads(result.stdout)["trainable_fraction"] < 1


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_spectrum_fraction_outside_range_is_refused(tmp_path, llama_dir, corpora, invoke, value):
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--method", "spectrum", "--set", f"fraction={value}",
                 "-o", tmp_path / "run", *TRAIN)
    assert_input_error(result, "fraction")
    assert not (tmp_path / "run").exists()
