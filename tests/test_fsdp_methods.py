"""Methods with training callbacks under FSDP2 (gloo, CPU): two sharded processes give the
one-process weights, to the tolerance of the DDP test (float summation order differs).

GMT's per-tensor threshold is an exact order statistic of the whole (sharded) gradient; soft
regularization pulls each shard toward its rows of the source copy; LoTA calibrates its mask in
every process and trains it through compact shards, its frozen entries bit-identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _scale_helpers import env_with, launch

STEPS = ["--max-steps", "4", "--save-steps", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2",
         "--warmup-ratio", "0", "--quiet", "--json"]
TOLERANCE = 2e-5  # as tests/test_distributed.py: float summation order differs between 1 and 2 processes
METHODS = {
    "gmt": ["--set", "mask_ratio=0.5"],
    "soft-reg": ["--set", "penalty=l2sp", "--set", "strength=5"],
    "lota": ["--set", "calibration_steps=2", "--set", "sparsity=0.5"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_fsdp_matches_one_process(method, tmp_path, make_model_dir, corpora, invoke):
    model = make_model_dir("llama")
    args = ["train", "--model", model, "--data", corpora["ha"], "--method", method, *METHODS[method], *STEPS]
    one = invoke(*args, "--micro-batch-size", "2", "-o", tmp_path / "one")
    assert one.returncode == 0, one
    env = env_with(None, ADAPTKIT_CACHE=str(tmp_path / "cache"))
    result = launch("torchrun", 2, [*args, "--distributed", "fsdp", "-o", tmp_path / "fsdp"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["distributed"] == "fsdp"
    reference = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    sharded = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    before = load_file(str(model / "model.safetensors"))
    assert reference.keys() == sharded.keys()
    moved = 0
    for name, tensor in reference.items():
        assert torch.allclose(sharded[name], tensor, atol=TOLERANCE, rtol=0), (name, (sharded[name] - tensor).abs().max())
        frozen = tensor == before[name]  # entries the one-process run left untouched stay bit-identical
        assert torch.equal(sharded[name][frozen], before[name][frozen]), name
        moved += int((~frozen).sum())
    assert moved > 0
    if method == "lota":  # half the entries frozen by the calibrated mask, the same mask in both runs
        masks = load_file(str(tmp_path / "fsdp" / "lota" / "masks.safetensors"))
        alone = load_file(str(tmp_path / "one" / "lota" / "masks.safetensors"))
        assert masks.keys() == alone.keys() and all(torch.equal(masks[k], alone[k]) for k in masks)
