"""Shared fixtures of the SSU tests (calibrate, scorers, mask, ssu): small calibration sets and loaded models."""

from __future__ import annotations

from pathlib import Path

import pytest

BLOCK = 32


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory, corpora, tokenizer) -> Path:
    """12 blocks of 32 English (source-side) tokens, saved as a calibration directory."""
    from adaptkit.calibration import build_calibration

    directory = tmp_path_factory.mktemp("calib") / "en"
    build_calibration(tokenizer, corpora["en"], fmt="text", pool=500, num_samples=12, block_size=BLOCK, seed=0).save(directory)
    return directory


@pytest.fixture(scope="session")
def other_calib_dir(tmp_path_factory, corpora, tokenizer) -> Path:
    """A calibration set from other (Hausa) text, to show that scorers consume their data."""
    from adaptkit.calibration import build_calibration

    directory = tmp_path_factory.mktemp("calib") / "ha"
    build_calibration(tokenizer, corpora["ha"], fmt="text", pool=500, num_samples=12, block_size=BLOCK, seed=0).save(directory)
    return directory


def load_model(model_dir: Path):
    import torch

    from adaptkit.io.models import load_causal_lm, resolve_model_source

    return load_causal_lm(resolve_model_source(str(model_dir)), torch.float32).eval()


def capture_inputs(model, blocks, module_names: list[str]) -> dict[str, "torch.Tensor"]:
    """Every input row of the named modules over all blocks, as float64 (N, features), via pre-hooks."""
    import torch

    modules = dict(model.named_modules())
    captured: dict[str, list] = {name: [] for name in module_names}
    handles = [
        modules[name].register_forward_pre_hook(lambda m, args, name=name: captured[name].append(args[0].detach().double().reshape(-1, args[0].shape[-1])))
        for name in module_names
    ]
    with torch.no_grad():
        model(input_ids=blocks)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(rows) for name, rows in captured.items()}
