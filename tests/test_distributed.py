"""Multi-process training on CPU with gloo: DDP and FSDP2 give the one-process weights.

Every run uses the same global batch (4 sequences): one process accumulates two
micro-batches of 2, two processes take one micro-batch of 2 each. A mask set with
column, row and element masks (and one parameter frozen whole) is trained through the
entry-point test plugin `mask-file`; frozen entries must stay bit-identical everywhere.
Checkpoints are resumed across processes: a DDP run with `accelerate launch`, a DDP
checkpoint by one process, an FSDP run with the same number of processes.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _scale_helpers import env_with, install_mask_file_plugin, launch, write_mask_set

STEPS = ["--max-steps", "6", "--save-steps", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2",
         "--weight-decay", "0.5", "--warmup-ratio", "0", "--quiet", "--json"]
TOLERANCE = 2e-5  # float summation order differs between 1 and 2 processes


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_model_dir, corpora):
    root = tmp_path_factory.mktemp("dist")
    model = make_model_dir("llama")
    masks = write_mask_set(model, root / "mask")
    site = install_mask_file_plugin(root / "site")
    env = env_with(site, ADAPTKIT_CACHE=str(root / "cache"))
    args = ["train", "--model", model, "--data", corpora["ha"], "--method", "mask-file", "--mask", root / "mask", *STEPS]
    return {"root": root, "model": model, "masks": masks, "env": env, "args": args, "site": site}


@pytest.fixture(scope="module")
def plugin_here(setup):
    """The `mask-file` plugin visible to in-process invocations too."""
    import sys

    from adaptkit.registry import reset_registry

    sys.path.insert(0, str(setup["site"]))
    reset_registry()
    yield
    sys.path.remove(str(setup["site"]))
    reset_registry()


@pytest.fixture(scope="module")
def reference(setup, plugin_here):
    """The one-process run (in this process: the comparisons allow for float summation order)."""
    from adaptkit.cli import main

    out = setup["root"] / "one"
    try:
        main([str(a) for a in [*setup["args"], "--micro-batch-size", "2", "-o", out]])
    except SystemExit as exc:
        assert not exc.code, exc.code
    return load_file(str(out / "final" / "model.safetensors"))


def _weights(run):
    return load_file(str(run / "final" / "model.safetensors"))


def _check_against(reference, weights, setup):
    before = load_file(str(setup["model"] / "model.safetensors"))
    for name, tensor in reference.items():
        assert torch.allclose(weights[name], tensor, atol=TOLERANCE, rtol=0), (name, (weights[name] - tensor).abs().max())
        if name in setup["masks"]:
            frozen = ~setup["masks"][name].expand(tuple(tensor.shape))
            assert torch.equal(weights[name][frozen], before[name][frozen]), name
    assert torch.equal(weights["model.layers.1.self_attn.k_proj.weight"], before["model.layers.1.self_attn.k_proj.weight"])


def _interrupt(run, into):
    """A copy of `run` as if killed during the save of checkpoint-4."""
    shutil.copytree(run, into)
    shutil.rmtree(into / "final")
    shutil.rmtree(into / "checkpoint-4")
    (into / ".checkpoint-4.partial").mkdir()
    return into


@pytest.mark.slow
def test_ddp_matches_one_process_and_resumes_across_launchers(setup, reference, invoke, plugin_here):
    root = setup["root"]
    result = launch("torchrun", 2, [*setup["args"], "-o", root / "ddp"], setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["processes"] == 2 and lines[0]["distributed"] == "ddp"  # rank 0 alone reports
    ddp = _weights(root / "ddp")
    _check_against(reference, ddp, setup)

    # resume the same run with `accelerate launch` (2 processes): bit-identical to the uninterrupted run
    stopped = _interrupt(root / "ddp", root / "ddp-stopped")
    resumed = launch("accelerate", 2, [*setup["args"], "-o", stopped, "--resume"], setup["env"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.splitlines()[-1])
    assert summary["resumed_from"] == 2 and summary["processes"] == 2
    again = _weights(stopped)
    assert all(torch.equal(again[k], ddp[k]) for k in ddp)
    assert not (stopped / ".checkpoint-4.partial").exists()

    # a DDP checkpoint resumes in one process too (same global batch: to float tolerance)
    alone = _interrupt(root / "ddp", root / "ddp-alone")
    result = invoke(*setup["args"], "--micro-batch-size", "2", "-o", alone, "--resume")
    assert result.returncode == 0, result
    _check_against(reference, _weights(alone), setup)


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes(setup, reference, invoke, plugin_here):
    root = setup["root"]
    result = launch("torchrun", 2, [*setup["args"], "--distributed", "fsdp", "-o", root / "fsdp"], setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["distributed"] == "fsdp"
    fsdp = _weights(root / "fsdp")
    _check_against(reference, fsdp, setup)
    shards = sorted(p.name for p in (root / "fsdp" / "checkpoint-4").glob("*.rank*"))
    assert shards == [f"{kind}.rank{r}-of-2.safetensors" for kind in ("optimizer", "trainable") for r in (0, 1)]

    stopped = _interrupt(root / "fsdp", root / "fsdp-stopped")
    resumed = launch("torchrun", 2, [*setup["args"], "--distributed", "fsdp", "-o", stopped, "--resume"], setup["env"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _weights(stopped)
    assert all(torch.equal(again[k], fsdp[k]) for k in fsdp)

    # a sharded checkpoint cannot be resumed by another layout: one clear line
    from conftest import assert_input_error

    other = _interrupt(root / "fsdp", root / "fsdp-alone")
    assert_input_error(invoke(*setup["args"], "-o", other, "--resume", "--distributed", "fsdp"),
                       "--resume", "sharded over 2 processes")
