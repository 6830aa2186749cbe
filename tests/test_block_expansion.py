"""Block expansion (LLaMA-Pro): the expanded model computes exactly what the original did, only the new
blocks train, and final/ is a normal transformers model with the new layer count."""

from __future__ import annotations

import json

import pytest
import torch
from _methods_helpers import PROBE, TRAIN, assert_trains_exactly, logits_of, weights
from conftest import assert_input_error


def _expand(model, **params):
    from adaptkit.plugins.methods.block_expansion import BlockExpansion, BlockExpansionParams

    return BlockExpansion(BlockExpansionParams(**params)).plan(model, None)


@pytest.mark.slow  # builds three models (the first import of their modelling code: seconds)
@pytest.mark.parametrize("arch", ["llama", "olmo2", "qwen2"])
def test_expanded_model_computes_exactly_the_original(arch):
    from adaptkit import demo

    original = demo.tiny_model(arch, 384, layers=3)
    expanded = demo.tiny_model(arch, 384, layers=3)
    plan = _expand(expanded, positions="0,2")
    assert expanded.config.num_hidden_layers == 5 and len(expanded.model.layers) == 5
    assert torch.equal(logits_of(original), logits_of(expanded))  # exactly, in fp32
    # the KV cache: one slot per block (distinct layer_idx), greedy decoding with the cache unchanged
    assert [layer.self_attn.layer_idx for layer in expanded.model.layers] == list(range(5))
    kwargs = {"max_new_tokens": 6, "do_sample": False, "use_cache": True, "pad_token_id": 0}
    assert torch.equal(original.generate(PROBE, **kwargs), expanded.generate(PROBE, **kwargs))
    # only the new blocks (1 and 4 of the expanded model) train, and they start with zero output projections
    trained_blocks = {int(name.split(".")[2]) for name in plan.trainable}
    assert trained_blocks == {1, 4}
    for index in (1, 4):
        block = expanded.model.layers[index]
        assert not block.self_attn.o_proj.weight.any() and not block.mlp.down_proj.weight.any()
        source = original.model.layers[0 if index == 1 else 2]
        assert torch.equal(block.self_attn.q_proj.weight, source.self_attn.q_proj.weight)


def test_every_k_places_copies_as_llama_pro():
    from adaptkit.plugins.methods.block_expansion import BlockExpansionParams, expansion_points

    assert expansion_points(BlockExpansionParams(every=4), 32) == [3, 7, 11, 15, 19, 23, 27, 31]  # 32 -> 40 blocks
    assert expansion_points(BlockExpansionParams(every=2), 5) == [1, 3]


@pytest.mark.slow
def test_block_expansion_trains_only_new_blocks_and_saves_a_normal_model(tmp_path, make_model_dir, corpora, invoke):
    from transformers import AutoModelForCausalLM

    model_dir = make_model_dir("llama", layers=4)
    run = tmp_path / "expand"
    result = invoke("train", "--model", model_dir, "--data", corpora["ha"], "--method", "block-expansion", "--set", "every=2",
                    "-o", run, *TRAIN, "--max-steps", "4", "--json")
    assert result.returncode == 0, result
    before, after = weights(model_dir), weights(run / "final")
    new_index = {0: 0, 1: 1, 2: 3, 3: 4}  # original block -> its place among 6; new blocks at 2 and 5
    moved = {}
    for name, tensor in before.items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            parts[2] = str(new_index[int(parts[2])])
        moved[".".join(parts)] = tensor
    for name, tensor in after.items():  # the new blocks: copies of blocks 1 and 3 (o_proj, down_proj from zero)
        parts = name.split(".")
        if parts[:2] == ["model", "layers"] and int(parts[2]) in (2, 5):
            source = ".".join(parts[:2] + [str(new_index[1 if parts[2] == "2" else 3])] + parts[3:])
            moved[name] = torch.zeros_like(tensor) if parts[-2] in ("o_proj", "down_proj") else moved[source]
    trainable = {name: None for name in moved if name.split(".")[2:3] in (["2"], ["5"])}  # the whole new blocks, norms included
    assert_trains_exactly(moved, after, trainable)  # every original block bit-identical; the new ones moved
    reloaded = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32)
    assert reloaded.config.num_hidden_layers == 6 and len(reloaded.model.layers) == 6
    assert torch.isfinite(logits_of(reloaded)).all()
    assert json.loads(result.stdout)["trainable_fraction"] < 0.5
    # the other commands take it as any model: generate, and merge with a model of the same shape
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Everyone has the right"}\n')
    generated = invoke("generate", "--model", run / "final", "--prompts", prompts, "--max-new-tokens", "4", "-o", tmp_path / "g.jsonl")
    assert generated.returncode == 0, generated
    merged = invoke("merge", "linear", "-m", run / "final", "-m", run / "final", "-o", tmp_path / "merged", "--quiet")
    assert merged.returncode == 0, merged
    assert all(torch.equal(tensor, after[name]) for name, tensor in weights(tmp_path / "merged").items())


@pytest.mark.parametrize("flag, message", [
    (["--set", "positions=1,9"], "--set positions"),
    (["--set", "every=9"], "--set every"),
    (["--set", "every=0"], "every"),
    ([], "exactly one of every"),
])
def test_bad_expansion_places_are_refused(tmp_path, make_model_dir, corpora, invoke, flag, message):
    run = tmp_path / "run"
    result = invoke("train", "--model", make_model_dir("llama", layers=4), "--data", corpora["ha"], "--method", "block-expansion",
                    *flag, "-o", run, *TRAIN)
    assert_input_error(result, message)
    assert not run.exists()
