"""`adaptkit quickstart --methods ...` runs the baselines side by side, with method parameters from --set.

Each method's effect is checked on the saved models against the quickstart's source model: frozen
entries bit-identical, trainable entries changed (derived independently of the method's code where the
definition allows it), and the reported trainable fraction equal to the count of those entries (for
PEFT adapters: the adapter's parameters over the base's plus the adapter's).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import LINEAR, assert_hft_rule, assert_trains_exactly, weights
from conftest import assert_input_error
from safetensors.torch import load_file

FAST = ["--source-steps", "2", "--steps", "2", "--seq-len", "32", "--batch-size", "4"]
METHODS = ("hft", "gmt", "lota", "s2ft", "lora", "adalora", "layra", "layer-selective", "layer-freeze", "soft-reg")
ADAPTERS = ("lora", "adalora", "layra")


def _layer(name: str):
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def _linear(name: str) -> bool:
    return any(f".{p}." in name for p in LINEAR)


def _embeddings(name: str) -> bool:
    return name in ("model.embed_tokens.weight", "lm_head.weight")


def _s2ft(before, after):
    """S2FT (default ratio 0.015, 'down'): whole down_proj input channels, floor(ratio * layers * channels) of them;
    and, as the SSU reference, the embeddings and LM head in full."""
    down = [n for n in before if n.endswith("mlp.down_proj.weight")]
    columns = {n: (before[n] != after[n]).any(dim=0) for n in down}
    assert sum(int(c.sum()) for c in columns.values()) == math.floor(0.015 * len(down) * before[down[0]].shape[1])
    return {**{n: c.reshape(1, -1) for n, c in columns.items()}, **{n: None for n in before if _embeddings(n)}}


def _lota(run, total):
    masks = load_file(str(run / "lota" / "masks.safetensors"))
    # as the SSU reference: embeddings and LM head train in full; sparsity 0.9 over all other entries
    dense = {name: m for name, m in masks.items() if _embeddings(name)}
    assert dense and all(bool(m.all()) for m in dense.values()), sorted(dense)
    dense_entries = sum(m.numel() for m in dense.values())
    kept = sum(int(m.sum()) for name, m in masks.items() if name not in dense)
    assert abs(kept - 0.1 * (total - dense_entries)) <= 2, (kept, total, dense_entries)
    return {name: mask.bool() for name, mask in masks.items() if mask.any()}


def _adalora(run, before):
    pattern = json.loads((run / "final" / "adapter" / "adapter_config.json").read_text()).get("rank_pattern")
    embeddings = {n: None for n in before if _embeddings(n)}  # modules_to_save, as the SSU reference
    if not pattern:
        return {**{n: None for n in before if _linear(n)}, **embeddings}
    kept = {f"{key.split('.lora_E')[0].removeprefix('base_model.model.')}.weight": None for key, keep in pattern.items() if sum(keep)}
    return {**kept, **embeddings}


def _without_special_rows(trainable, before, source):
    from transformers import AutoTokenizer

    special = sorted(set(AutoTokenizer.from_pretrained(source).all_special_ids))
    assert special, "the quickstart tokenizer has special tokens"
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in trainable and name in before:
            rows = torch.ones(before[name].shape[0], 1, dtype=torch.bool)
            rows[special] = False
            trainable[name] = rows
    return trainable


def _expected(name, before, after, run, source):
    layers = 1 + max(i for i in map(_layer, before) if i is not None)
    total = sum(t.numel() for t in before.values())
    return {
        # quickstart's --seed default; HFT keeps the special tokens' embedding and head rows (freeze_special_tokens,
        # on for hft as in the SSU reference): the tokenizer's own special ids, read with transformers
        "hft": lambda: _without_special_rows(assert_hft_rule(before, after, source, seed=0), before, source),
        "gmt": lambda: {n: None for n in before},
        "lota": lambda: _lota(run, total),
        "s2ft": lambda: _s2ft(before, after),
        "lora": lambda: {n: None for n in before if _linear(n)},
        "adalora": lambda: _adalora(run, before),
        "layra": lambda: {n: None for n in before if _embeddings(n) or _linear(n)},  # first=10, last=2: every layer here
        "layer-selective": lambda: {n: None for n in before if _embeddings(n) or _layer(n) in (0, layers - 1)},
        "layer-freeze": lambda: {n: None for n in before if _layer(n) not in (0, 1)},  # --set layer-freeze.layers=0-1
        "soft-reg": lambda: {n: None for n in before},
    }[name]()


@pytest.mark.slow
def test_quickstart_runs_baselines_side_by_side(tmp_path, invoke):
    out = tmp_path / "demo"
    result = invoke("quickstart", "-o", out, "--methods", ",".join(METHODS), "--set", "lota.calibration_steps=2", "--set", "layer-freeze.layers=0-1",
                    "--set", "adalora.tinit=0", "--set", "adalora.tfinal=0", "--set", "lora.r=2", *FAST, "--json")
    assert result.returncode == 0, result
    models = json.loads(result.stdout)["models"]
    assert set(models) == {"source", *METHODS}
    source = out / "runs" / "source" / "final"
    before = weights(source)
    total = sum(t.numel() for t in before.values())
    for name in METHODS:
        assert "source_gain_bpb" in models[name] and "target_gain_bpb" in models[name]
        run = out / "runs" / name
        after = weights(run / "final")
        trainable = _expected(name, before, after, run, source)
        assert_trains_exactly(before, after, trainable)
        fraction = models[name]["trainable_fraction"]
        if name in ADAPTERS:  # the PEFT model's trainable parameters: the adapters, and the embeddings / head trained in place
            saved = load_file(str(run / "final" / "adapter" / "adapter_model.safetensors"))
            adapter = sum(t.numel() for k, t in saved.items() if "lora_" in k)
            ends = sum(before[n].numel() for n in trainable if _embeddings(n))
            assert ends == 0 or any("lora_" not in k for k in saved), name  # trained ends are saved in the adapter
            ranknum = sum(k.endswith("lora_E") for k in saved)  # AdaLoRA: one frozen rank-count scalar per adapted module, not saved
            assert fraction == pytest.approx((adapter + ends) / (total + adapter + ranknum), rel=1e-12), name
        else:
            entries = sum(before[n].numel() if m is None else int(m.expand(before[n].shape).sum()) for n, m in trainable.items())
            assert round(fraction * total) == entries, (name, fraction * total, entries)
    config = json.loads((out / "runs" / "lora" / "final" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2
    lora = load_file(str(out / "runs" / "lora" / "final" / "adapter" / "adapter_model.safetensors"))
    assert {t.shape[0] for k, t in lora.items() if "lora_A" in k} == {2}


def test_quickstart_method_parameters_are_checked_before_anything_is_written(tmp_path, invoke):
    out = tmp_path / "demo"
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "layer-freeze", *FAST), "--set layer-freeze.*", "layers")
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "lora", "--set", "lora.rr=2", *FAST), "'rr'", "did you mean: r")
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "lora", "--set", "lorra.r=2", *FAST), "--set", "did you mean: lora")
    assert not out.exists() and not list(tmp_path.iterdir())
