"""Every training method through the CLI on tiny Llama and OLMo-2: it trains exactly what it claims.

For each method the trainable entries are derived independently of the method's code where the
definition allows it (module roles, layer ranges, the saved LoTA mask), then the saved model is
compared with the source weights: frozen entries bit-identical, trainable entries changed.
"""

from __future__ import annotations

import json

import pytest
import torch
from _methods_helpers import TRAIN, assert_hft_rule, assert_trains_exactly, weights
from safetensors.torch import load_file

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LAYERS = 3


def _layer(name: str):
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def _embeddings(name: str) -> bool:
    return name in ("model.embed_tokens.weight", "lm_head.weight")


def _special_rows(model_dir) -> torch.Tensor:
    """Row mask (True = trains) of the embeddings / LM head without the test tokenizer's four special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>")]
    rows = torch.ones(len(tokenizer), dtype=torch.bool)
    rows[ids] = False
    return rows.reshape(-1, 1)


def _changed_columns(before, after, name):
    return (before[name] != after[name]).any(dim=0)


# method -> (extra CLI args, expected trainable entries: f(before, run_dir, model_dir) -> {name: None | bool mask})
def _all(before, run, model_dir):
    return {name: None for name in before}


def _hft(before, run, model_dir):  # the rule, checked on the frozen modules seen in the weights (seed 42: the run's default)
    trainable = assert_hft_rule(before, weights(run / "final"), model_dir, seed=42)
    rows = _special_rows(model_dir)  # hft freezes the special-token rows by default, as the SSU repository
    return {name: rows if _embeddings(name) else mask for name, mask in trainable.items()}


def _lota(before, run, model_dir):
    masks = load_file(str(run / "lota" / "masks.safetensors"))
    assert all(bool(masks[name].all()) for name in before if _embeddings(name))  # trained in full, outside the ranking
    ranked = [m for name, m in masks.items() if not _embeddings(name)]
    total = sum(m.numel() for m in ranked)
    kept = sum(int(m.sum()) for m in ranked)
    assert kept == int(0.1 * total) or abs(kept - 0.1 * total) <= 2, (kept, total)
    return {name: mask.bool() for name, mask in masks.items() if mask.any()}


def _s2ft(variant):
    def expect(before, run, model_dir):
        after = weights(run / "final")
        trainable = {}
        down = [n for n in before if n.endswith("mlp.down_proj.weight")]
        columns = [_changed_columns(before, after, n) for n in down]
        assert sum(int(c.sum()) for c in columns) == int(0.05 * LAYERS * columns[0].numel())
        trainable.update({n: c.reshape(1, -1) for n, c in zip(down, columns)})
        trainable.update({n: None for n in before if _embeddings(n)})  # trained in full, as the SSU repository
        if variant == "down+output":
            output = [n for n in before if n.endswith("self_attn.o_proj.weight")]
            heads = []
            for name in output:
                changed = _changed_columns(before, after, name).reshape(-1, 16)  # head_dim = 64 / 4
                assert torch.equal(changed.all(dim=1), changed.any(dim=1)), "o_proj columns must train in whole heads"
                heads.append(int(changed.all(dim=1).sum()))
                trainable[name] = changed.reshape(1, -1)
            assert sum(heads) == max(1, int(0.05 * LAYERS * 4))
        return trainable

    return expect


def _lora(before, run, model_dir):
    return {name: None for name in before if any(f".{p}." in name for p in LINEAR)}


def _adalora(before, run, model_dir):
    """AdaLoRA's allocator must have run: ranks below init_r (4), the average at target_r (2); a matrix
    whose rank fell to 0 keeps its source weights."""
    pattern = json.loads((run / "final" / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    ranks = {key.split(".lora_E")[0]: sum(keep) for key, keep in pattern.items()}
    assert len(ranks) == 7 * LAYERS and sum(ranks.values()) == 2 * len(ranks) and min(ranks.values()) < 4
    ends = {name: None for name in before if _embeddings(name)}  # modules_to_save, as the SSU repository
    return {**ends, **{f"{module}.weight": None for module, rank in ranks.items() if rank > 0}}


def _adalora_fixed(before, run, model_dir):
    """allocate=false (the SSU repository's run, which never calls update_and_allocate): no rank is pruned, so every
    adapted matrix keeps all init_r (4) singular values, each of them trained away from its zero start."""
    from safetensors.torch import load_file as load

    config = json.loads((run / "final" / "adapter" / "adapter_config.json").read_text())
    assert not config.get("rank_pattern") and config["init_r"] == 4
    singular = {k: v for k, v in load(str(run / "final" / "adapter" / "adapter_model.safetensors")).items() if "lora_E" in k}
    assert len(singular) == 7 * LAYERS and all(v.numel() == 4 and bool((v != 0).all()) for v in singular.values())
    ends = {name: None for name in before if _embeddings(name)}
    return {**ends, **_lora(before, run, model_dir)}


def _layra(before, run, model_dir):  # first=1, last=1: layers 0 and 2
    return {name: None for name in before if _embeddings(name) or (_layer(name) in (0, 2) and any(f".{p}." in name for p in LINEAR))}


def _layer_selective(before, run, model_dir):  # default: first and last layer
    return {name: None for name in before if _embeddings(name) or _layer(name) in (0, LAYERS - 1)}


def _layer_freeze(before, run, model_dir):  # layers=1
    return {name: None for name in before if _layer(name) != 1}


METHODS = {
    "fft": ([], _all),
    "hft": ([], _hft),
    "gmt": ([], _all),
    "lota": (["--set", "calibration_steps=2"], _lota),
    "s2ft": (["--set", "ratio=0.05"], _s2ft("down")),
    "s2ft-output": (["--set", "ratio=0.05", "--set", "variant=down+output"], _s2ft("down+output")),
    "lora": ([], _lora),
    "adalora": (["--set", "tinit=0", "--set", "tfinal=0.34", "--set", "delta_t=1", "--set", "init_r=4", "--set", "target_r=2"], _adalora),
    "adalora-fixed": (["--set", "allocate=false", "--set", "init_r=4", "--set", "target_r=2"], _adalora_fixed),
    "layra": (["--set", "first=1", "--set", "last=1"], _layra),
    "layer-selective": ([], _layer_selective),
    "layer-freeze": (["--set", "layers=1"], _layer_freeze),
    "soft-reg": (["--set", "layers=0-1", "--set", "strength=0.5"], _all),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@pytest.mark.parametrize("label", list(METHODS))
def test_method_trains_exactly_what_it_claims(tmp_path, make_model_dir, corpora, invoke, label, arch):
    args, expect = METHODS[label]
    model_dir = make_model_dir(arch, layers=LAYERS)
    run = tmp_path / label
    result = invoke("train", "--model", model_dir, "--data", corpora["ha"], "--method", label.split("-output")[0].split("-fixed")[0], "-o", run, *args, *TRAIN, "--json")
    assert result.returncode == 0, result
    summary = json.loads(result.stdout)
    assert summary["steps"] == 3 and 0 < summary["trainable_fraction"] <= 1
    before = weights(model_dir)
    assert_trains_exactly(before, weights(run / "final"), expect(before, run, model_dir))


def test_plugins_lists_every_method_with_parameters(invoke):
    result = invoke("plugins", "--kind", "method", "--json")
    assert result.returncode == 0, result
    listed = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    for name in ("fft", "hft", "gmt", "lota", "s2ft", "lora", "adalora", "layra", "layer-selective", "layer-freeze", "soft-reg", "spectrum", "block-expansion"):
        assert name in listed and listed[name]["reference"], name
    defaults = {name: {p["name"]: (None if p["required"] else p["default"]) for p in entry["parameters"]} for name, entry in listed.items()}
    assert defaults["gmt"]["keep_ratio"] == 0.5
    assert defaults["lota"]["sparsity"] == 0.9 and defaults["lota"]["calibration_steps"] == 100
    assert defaults["layra"]["first"] == 10 and defaults["layra"]["last"] == 2
    assert next(p for p in listed["layer-freeze"]["parameters"] if p["name"] == "layers")["required"] is True
    assert listed["lora"]["extras"] == ["peft"]
