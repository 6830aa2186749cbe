"""The GPU-path options, exercised on CPU: bf16 autocast (fp32 master weights: the optimizer holds fp32
tensors, and updates below bf16 resolution accumulate), activation
checkpointing, and `--compile` (inductor's CPU backend; about half a minute of compiling here).

The CUDA path itself (bf16 on GPU, fused AdamW on CUDA, flash-attention 2) needs a GPU and is not
exercised here.
"""

from __future__ import annotations

import pytest

import torch
from safetensors.torch import load_file

from adaptkit.specs import NoParams
from helpers import MaskedTestMethod, masks_for, train_directly  # the engine tests' masked method (layer-1 attention frozen)

ARGS = ["--max-steps", "3", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--warmup-ratio", "0", "--quiet", "--json"]
SETTINGS = {"max_steps": 3, "optimizer": {"lr": 1e-2}, "schedule": {"warmup_ratio": 0}}


def _record_optimizer_dtypes(monkeypatch) -> set:
    """Wrap AdamW.step: record the dtypes of every parameter, gradient and state tensor the optimizer holds."""
    seen: set = set()
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        for group in self.param_groups:
            for p in group["params"]:
                seen.add(("param", p.dtype))
                if p.grad is not None:
                    seen.add(("grad", p.grad.dtype))
                seen.update(("state", t.dtype) for t in self.state[p].values() if torch.is_tensor(t) and t.dim() > 0)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    return seen


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_bf16_autocast_keeps_fp32_master_weights_and_frozen_entries(tmp_path, llama_dir, corpora, monkeypatch):
    seen = _record_optimizer_dtypes(monkeypatch)
    result = train_directly(MaskedTestMethod(NoParams()), tmp_path / "bf16", llama_dir, corpora["ha"], precision="bf16", **SETTINGS)
    # the optimizer steps fp32 master weights with fp32 gradients and fp32 moments
    assert seen == {("param", torch.float32), ("grad", torch.float32), ("state", torch.float32)}, seen
    assert torch.isfinite(torch.tensor(result.final_loss))
    before, after = load_file(str(llama_dir / "model.safetensors")), load_file(str(tmp_path / "bf16" / "final" / "model.safetensors"))
    from transformers import AutoModelForCausalLM

    masks = masks_for(AutoModelForCausalLM.from_pretrained(llama_dir))
    for name, tensor in before.items():
        assert after[name].dtype == torch.float32, name
        if "layers.1.self_attn" in name:
            assert torch.equal(tensor, after[name]), name
        elif name in masks:
            frozen = ~masks[name].expand(tuple(tensor.shape))
            assert torch.equal(tensor[frozen], after[name][frozen]), name
        else:
            assert not torch.equal(tensor, after[name]), name


@pytest.mark.slow
def test_bf16_updates_below_bf16_resolution_accumulate(tmp_path, llama_dir, corpora, invoke):
    """Steps of ~1e-5 on weights equal to 1.0 (the norms), where bf16's spacing is 2^-7: kept and summed only
    by fp32 master weights (a bf16 copy would round every one of them away)."""
    tiny = ["--precision", "bf16", "--lr", "1e-5", "--weight-decay", "0", "--warmup-ratio", "0", "--set", "schedule.name=constant",
            "--seq-len", "32", "--batch-size", "4", "--quiet"]
    deltas = {}
    for steps in (1, 4):
        result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--max-steps", str(steps), *tiny, "-o", tmp_path / f"s{steps}")
        assert result.returncode == 0, result
        before, after = load_file(str(llama_dir / "model.safetensors")), load_file(str(tmp_path / f"s{steps}" / "final" / "model.safetensors"))
        norms = [n for n in before if n.endswith("norm.weight")]
        assert norms and all(torch.equal(before[n], torch.ones_like(before[n])) for n in norms)
        new = torch.cat([after[n] for n in norms])
        assert new.dtype == torch.float32
        assert torch.equal(new.to(torch.bfloat16).float(), torch.ones_like(new))  # every change is below bf16 resolution
        deltas[steps] = (new - 1).abs()
    assert (deltas[1] > 0).float().mean() > 0.9  # one step of ~lr moved (nearly) every norm entry
    assert deltas[1].max() <= 1.5e-5
    assert deltas[4].mean() > 1.5 * deltas[1].mean() and deltas[4].max() > 2.5e-5  # and four steps added up (more than two steps' worth)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_gradient_checkpointing_gives_the_same_weights(tmp_path, llama_dir, corpora, invoke):
    base = ["train", "--model", llama_dir, "--data", corpora["ha"], *ARGS]
    assert invoke(*base, "-o", tmp_path / "plain").returncode == 0
    result = invoke(*base, "--gradient-checkpointing", "-o", tmp_path / "gc")
    assert result.returncode == 0, result
    a, b = load_file(str(tmp_path / "plain" / "final" / "model.safetensors")), load_file(str(tmp_path / "gc" / "final" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


@pytest.mark.slow
def test_compile_trains_like_eager_and_keeps_frozen_entries(tmp_path, llama_dir, corpora):
    from transformers import AutoModelForCausalLM

    for run, compile in (("eager", False), ("compiled", True)):
        train_directly(MaskedTestMethod(NoParams()), tmp_path / run, llama_dir, corpora["ha"], compile=compile, **SETTINGS)
    before = load_file(str(llama_dir / "model.safetensors"))
    eager, compiled = (load_file(str(tmp_path / run / "final" / "model.safetensors")) for run in ("eager", "compiled"))
    masks = masks_for(AutoModelForCausalLM.from_pretrained(llama_dir))
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
