"""Weight averaging (--ema-decay, --lawa-k) under FSDP2 (gloo, CPU): each process averages its own shards,
saves only them in the checkpoints and the main process writes final-ema/ and final-lawa/ from the gathered
averages. Two sharded processes give the one-process averages (to the tolerance of tests/test_fsdp_beyond.py)
and a run resumed from its mid checkpoint gives the uninterrupted run's averages bit for bit. One torchrun
launch for both FSDP runs."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import env_with, launch_runs, stop_copy, weights

STEPS = ["--max-steps", "6", "--save-steps", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2",
         "--warmup-ratio", "0", "--quiet", "--json"]
# LAWA: snapshots at steps 2, 4 and 6, all three averaged: the one at 2 comes from the checkpoint a resume starts at
AVERAGES = ["--ema-decay", "0.8", "--lawa-k", "3", "--set", "averaging.lawa_interval=2"]
TOLERANCE = 2e-5  # float summation order differs between 1 and 2 processes (the weights the averages are made of)
MODELS = ("final", "final-ema", "final-lawa")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_model_dir, corpora):
    """The FSDP run, and a copy of it stopped while saving checkpoint-4, resumed from checkpoint-2 (one launch)."""
    root = tmp_path_factory.mktemp("fsdp-averaging")
    model = make_model_dir("llama", tie_word_embeddings=True)  # the tied head is written from the averaged embeddings
    args = ["train", "--model", model, "--data", corpora["ha"], *AVERAGES, *STEPS]
    plan = [{"name": "fsdp", "args": [*args, "--distributed", "fsdp", "-o", root / "fsdp"]},
            {"name": "resumed", "stop": [root / "fsdp", root / "resumed", 4],
             "args": [*args, "--distributed", "fsdp", "-o", root / "resumed", "--resume"]}]
    return root, args, launch_runs("torchrun", 2, plan, env_with(None, ADAPTKIT_CACHE=str(root / "cache")), root)


@pytest.mark.slow
def test_fsdp_averages_match_one_process(runs, invoke):
    root, args, summaries = runs
    assert summaries["fsdp"]["distributed"] == "fsdp" and summaries["fsdp"]["processes"] == 2
    one = invoke(*args, "--micro-batch-size", "2", "-o", root / "one")
    assert one.returncode == 0, one
    for model in MODELS:
        reference, sharded = weights(root / "one" / model), weights(root / "fsdp" / model)
        assert set(sharded) == set(reference), model  # the tied head written once, as by one process
        for name, tensor in reference.items():
            assert torch.allclose(sharded[name], tensor, atol=TOLERANCE, rtol=0), (model, name, (sharded[name] - tensor).abs().max())
    final, ema, lawa = (weights(root / "fsdp" / model) for model in MODELS)
    embed = "model.embed_tokens.weight"
    assert not torch.equal(ema[embed], final[embed]) and not torch.equal(lawa[embed], final[embed])


@pytest.mark.slow
def test_fsdp_checkpoints_hold_each_process_shard_of_the_averages(runs):
    """Each process saves only its rows of every average: the checkpoint's two files hold two halves."""
    root, _, _ = runs
    files = sorted((root / "fsdp" / "checkpoint-4" / "tensors").glob("*.safetensors"))
    assert len(files) == 2
    rows = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                if key.startswith("callbacks/"):
                    rows.setdefault(key, []).append(handle.get_slice(key).get_shape()[0])
    whole = weights(root / "fsdp" / "final")
    embed = "model.embed_tokens.weight"
    for key in ("callbacks/0/ema." + embed, *(f"callbacks/1/slots.{j}." + embed for j in range(3))):
        n = whole[embed].shape[0]
        assert sorted(rows[key]) == sorted([-(-n // 2), n - -(-n // 2)]), (key, rows[key])


@pytest.mark.slow
def test_fsdp_averaging_resumes_bit_identically(runs):
    root, _, summaries = runs
    assert summaries["resumed"]["resumed_from"] == 2
    for model in MODELS:
        a, b = weights(root / "fsdp" / model), weights(root / "resumed" / model)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), model


@pytest.mark.slow
def test_fsdp_averages_resume_in_one_process(runs, invoke):
    """The averages are stored in global coordinates: the FSDP run's checkpoint-2 resumes in one process and
    reaches the FSDP run's averages to 2e-5 (one process sums the gradients in another order)."""
    root, args, _ = runs
    alone = stop_copy(root / "fsdp", root / "alone", 4)
    result = invoke(*args, "--micro-batch-size", "2", "-o", alone, "--resume")
    assert result.returncode == 0, result
    for model in MODELS:
        sharded, resumed = weights(root / "fsdp" / model), weights(alone / model)
        for name, tensor in resumed.items():
            assert torch.allclose(sharded[name], tensor, atol=TOLERANCE, rtol=0), (model, name, (sharded[name] - tensor).abs().max())
