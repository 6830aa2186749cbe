"""Helpers for the merge tests: read model directories back, compute expectations independently."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers import run_ok, weights  # noqa: F401  (the one reader and runner; the merge tests import them from here)


def close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        diff = (actual[name].double() - expected[name].double()).abs().max().item()
        assert diff <= atol, (name, diff)


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming by a full sort (independent of the selection used by adaptkit)."""
    k = max(1, int(density * delta.numel()))
    order = delta.abs().flatten().argsort(descending=True)[:k]
    keep = torch.zeros(delta.numel())
    keep[order] = 1
    return delta * keep.reshape(delta.shape)


def disjoint_merge(deltas: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """TIES elect + disjoint mean (or sum, without `normalize`), written elementwise."""
    weighted = [d * w for d, w in zip(deltas, weights)]
    total = sum(weighted)
    sign = torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))
    numerator = torch.zeros_like(total)
    denominator = torch.zeros_like(total)
    for d, w in zip(weighted, weights):
        agree = (torch.sign(d) == sign).float()
        numerator += d * agree
        denominator += w * agree
    denominator[denominator == 0] = 1
    return numerator / denominator if normalize else numerator


def no_partial_outputs(parent: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in Path(parent).iterdir())


def save_tiny_model(directory: Path, tokenizer, seed: int, arch: str = "llama", **config) -> Path:
    """A tiny model (adaptkit.demo) with `tokenizer`'s vocabulary size, saved with that tokenizer."""
    from adaptkit import demo

    demo.tiny_model(arch, len(tokenizer), seed=seed, **config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def copy_tokenizer(source: Path, target: Path) -> None:
    """Give a model directory saved by hand the tokenizer files of `source` (merges refuse outputs without one)."""
    import shutil

    for file in Path(source).iterdir():
        if file.name.startswith("tokenizer") or file.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copyfile(file, Path(target) / file.name)


def run_mergekit_configs(configs: dict[str, dict], root: Path, copy_tokenizer: bool = False) -> dict[str, tuple[Path, Path]]:
    """Write each config as YAML under `root` and merge it with the installed mergekit, in-process;
    returns {name: (yaml file, mergekit output)}. Skips (fails under CI=true) without mergekit."""
    import importlib
    import os

    import pytest
    import yaml

    try:
        mergekit_config = importlib.import_module("mergekit.config")
        mergekit_merge = importlib.import_module("mergekit.merge")
    except ImportError as exc:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"mergekit parity is required in CI but mergekit does not import: {exc}")
        pytest.skip(f"mergekit is not installed ({exc}); pip install 'adaptkit[mergekit]'")
    outputs = {}
    for name, config in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
        out = root / f"mergekit-{name}"
        mergekit_merge.run_merge(
            mergekit_config.MergeConfiguration.model_validate(config), str(out),
            options=mergekit_merge.MergeOptions(copy_tokenizer=copy_tokenizer, quiet=True, write_model_card=False),
        )
        outputs[name] = (root / f"{name}.yaml", out)
    return outputs
