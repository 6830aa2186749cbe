"""Block expansion, Spectrum and the wsd schedule under FSDP2 (gloo, CPU): two sharded processes give the
one-process weights (to the tolerance of tests/test_distributed.py) and leave frozen entries bit-identical.
All FSDP runs share one torchrun launch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from _scale_helpers import env_with, launch_runs

STEPS = ["--max-steps", "4", "--save-steps", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2",
         "--warmup-ratio", "0", "--quiet", "--json"]
TOLERANCE = 2e-5  # float summation order differs between 1 and 2 processes
RUNS = {
    "block-expansion": ["--method", "block-expansion", "--set", "positions=0"],
    "spectrum": ["--method", "spectrum", "--set", "fraction=0.5"],
    "fft-wsd": ["--schedule", "wsd", "--set", "schedule.cooldown_ratio=0.5"],
}


def _args(label, model, corpora):
    return ["train", "--model", model, "--data", corpora["ha"], *RUNS[label], *STEPS]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, make_model_dir, corpora):
    root = tmp_path_factory.mktemp("fsdp-beyond")
    model = make_model_dir("llama")
    runs = [{"name": label, "args": [*_args(label, model, corpora), "--distributed", "fsdp", "-o", root / label / "fsdp"]} for label in sorted(RUNS)]
    return root, launch_runs("torchrun", 2, runs, env_with(None, ADAPTKIT_CACHE=str(root / "cache")), root)


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(RUNS))
def test_fsdp_matches_one_process(label, fsdp_runs, make_model_dir, corpora, invoke):
    model = make_model_dir("llama")
    root, summaries = fsdp_runs
    one = invoke(*_args(label, model, corpora), "--micro-batch-size", "2", "-o", root / label / "one")
    assert one.returncode == 0, one
    assert summaries[label]["distributed"] == "fsdp" and summaries[label]["processes"] == 2
    reference = load_file(str(root / label / "one" / "final" / "model.safetensors"))
    sharded = load_file(str(root / label / "fsdp" / "final" / "model.safetensors"))
    before = load_file(str(model / "model.safetensors"))
    assert reference.keys() == sharded.keys()
    for name, tensor in reference.items():
        assert torch.allclose(sharded[name], tensor, atol=TOLERANCE, rtol=0), (name, (sharded[name] - tensor).abs().max())
        if name in before and tensor.shape == before[name].shape and label != "block-expansion":
            frozen = tensor == before[name]
            assert torch.equal(sharded[name][frozen], before[name][frozen]), name
    if label == "block-expansion":  # the original blocks 0 and 1 are blocks 0 and 2 of the expanded model, bit for bit
        for name, tensor in before.items():
            moved = name.replace("model.layers.1.", "model.layers.2.")
            assert torch.equal(sharded[moved], tensor), name
