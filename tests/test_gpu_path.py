"""The GPU-path options, exercised on CPU: bf16 autocast (fp32 master weights), activation
checkpointing, and `--compile` (inductor's CPU backend; about half a minute of compiling here).

The CUDA path itself (bf16 on GPU, fused AdamW on CUDA, flash-attention 2) needs a GPU and is not
exercised here.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from adaptkit.specs import NoParams
from test_engine import MaskedTestMethod, _masks_for, train_directly  # the engine tests' masked method (layer-1 attention frozen)

ARGS = ["--max-steps", "3", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--warmup-ratio", "0", "--quiet", "--json"]
SETTINGS = {"max_steps": 3, "optimizer": {"lr": 1e-2}, "schedule": {"warmup_ratio": 0}}


def test_bf16_autocast_keeps_fp32_master_weights_and_frozen_entries(tmp_path, llama_dir, corpora):
    result = train_directly(MaskedTestMethod(NoParams()), tmp_path / "bf16", llama_dir, corpora["ha"], precision="bf16", **SETTINGS)
    assert torch.isfinite(torch.tensor(result.final_loss))
    before, after = load_file(str(llama_dir / "model.safetensors")), load_file(str(tmp_path / "bf16" / "final" / "model.safetensors"))
    from transformers import AutoModelForCausalLM

    masks = _masks_for(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name, tensor in before.items():
        assert after[name].dtype == torch.float32, name
        if "layers.1.self_attn" in name:
            assert torch.equal(tensor, after[name]), name
        elif name in masks:
            frozen = ~masks[name].expand(tuple(tensor.shape))
            assert torch.equal(tensor[frozen], after[name][frozen]), name
        else:  # fp32 master weights: bf16-sized steps are not lost to rounding
            assert not torch.equal(tensor, after[name]), name


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, llama_dir, corpora, invoke):
    base = ["train", "--model", llama_dir, "--data", corpora["ha"], *ARGS]
    assert invoke(*base, "-o", tmp_path / "plain").returncode == 0
    result = invoke(*base, "--gradient-checkpointing", "-o", tmp_path / "gc")
    assert result.returncode == 0, result
    a, b = load_file(str(tmp_path / "plain" / "final" / "model.safetensors")), load_file(str(tmp_path / "gc" / "final" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_compile_trains_like_eager_and_keeps_frozen_entries(tmp_path, llama_dir, corpora):
    from transformers import AutoModelForCausalLM

    for run, compile in (("eager", False), ("compiled", True)):
        train_directly(MaskedTestMethod(NoParams()), tmp_path / run, llama_dir, corpora["ha"], compile=compile, **SETTINGS)
    before = load_file(str(llama_dir / "model.safetensors"))
    eager, compiled = (load_file(str(tmp_path / run / "final" / "model.safetensors")) for run in ("eager", "compiled"))
    masks = _masks_for(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name, tensor in before.items():
        # the same steps up to kernel-fusion rounding, which AdamW's normalization amplifies on tiny
        # gradients (measured: at most 0.3% of the update of a tensor)
        assert (compiled[name] - eager[name]).abs().max() <= 0.01 * (eager[name] - tensor).abs().max(), name
        if "layers.1.self_attn" in name:
            assert torch.equal(tensor, compiled[name]), name
        elif name in masks:
            frozen = ~masks[name].expand(tuple(tensor.shape))
            assert torch.equal(tensor[frozen], compiled[name][frozen]), name
    assert any(not torch.equal(before[n], compiled[n]) for n in before)
