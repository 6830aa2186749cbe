"""Outputs of the adapter and structured methods reload as plain models with the in-memory logits;
AdaLoRA's allocator state survives a resume; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from _methods_helpers import TRAIN, logits_of, train_capturing, weights
from conftest import assert_input_error

ADALORA_FAST = ["--set", "tinit=0", "--set", "tfinal=0.34", "--set", "delta_t=1", "--set", "init_r=4", "--set", "target_r=2"]


@pytest.mark.parametrize("method, args", [
    ("s2ft", ["--set", "variant=down+output", "--set", "lora_rank=1"]),
    ("lora", ["--set", "target_modules=q_proj,v_proj,down_proj"]),
    ("adalora", ADALORA_FAST),
    ("layra", ["--set", "first=1", "--set", "last=0"]),
    ("layra-tied", ["--set", "first=0", "--set", "last=1"]),
])
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")  # peft checks AdaLoRA rank patterns like LoRA ones
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_outputs_reload_with_the_in_memory_logits(tmp_path, make_model_dir, corpora, method, args):
    from transformers import AutoModelForCausalLM

    model_dir = make_model_dir("olmo2" if method in ("adalora", "layra") else "llama", tie_word_embeddings=method == "layra-tied")
    method = method.removesuffix("-tied")
    out = tmp_path / method
    expected = train_capturing(["--model", model_dir, "--data", corpora["ha"], "--method", method, *args, *TRAIN], out)
    dense = AutoModelForCausalLM.from_pretrained(out / "final")
    assert type(dense).__name__.endswith("ForCausalLM") and not hasattr(dense, "peft_config")
    if method == "s2ft":
        assert sorted(p.name for p in (out / "final").iterdir()) == sorted([p.name for p in model_dir.iterdir()] + ["README.md"])  # + the model card
        assert torch.equal(logits_of(dense), expected)
        return
    torch.testing.assert_close(logits_of(dense), expected, rtol=1e-4, atol=1e-5)
    from peft import PeftModel

    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out / "final" / "adapter")
    torch.testing.assert_close(logits_of(adapter), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_adalora_resume_is_exact(tmp_path, llama_dir, corpora, invoke):
    args = ["--model", llama_dir, "--data", corpora["ha"], "--method", "adalora", *ADALORA_FAST, "--set", "tfinal=0.25",
            "--seq-len", "32", "--batch-size", "4", "--max-steps", "4", "--save-steps", "2", "--lr", "1e-2", "--quiet"]
    assert invoke("train", *args, "-o", tmp_path / "straight").returncode == 0
    stopped = tmp_path / "stopped"
    assert invoke("train", *args, "-o", stopped).returncode == 0
    shutil.rmtree(stopped / "final")
    resumed = invoke("train", *args, "-o", stopped, "--resume")
    assert resumed.returncode == 0, resumed
    a, b = weights(tmp_path / "straight" / "final"), weights(stopped / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (stopped / "final" / "adapter" / "adapter_config.json").read_text() == (tmp_path / "straight" / "final" / "adapter" / "adapter_config.json").read_text()


BAD_INPUT = [
    (["--method", "gmt", "--set", "keep_ratoi=0.3"], ("--set", "keep_ratoi", "did you mean: keep_ratio")),
    (["--method", "lora", "--set", "alpah=8"], ("--set", "'alpah'", "did you mean: alpha")),
    (["--method", "layer-freeze", "--set", "layers=0-5"], ("--set layers", "layer 5 is outside the model", "2 layers")),
    (["--method", "layer-selective", "--set", "layers=1,x"], ("layers", "expected layer indices")),
    (["--method", "layra", "--set", "layers=2"], ("--set layers", "outside the model")),
    (["--method", "soft-reg", "--set", "layers=3"], ("--set layers", "outside the model")),
    (["--method", "layer-freeze"], ("layers", "Field required")),
    (["--method", "s2ft", "--set", "ratio=1.5"], ("ratio", "less than or equal to 1")),
    (["--method", "s2ft", "--set", "ratio=0"], ("ratio", "greater than 0")),
    (["--method", "s2ft", "--set", "ratio=0.1", "--set", "lora_rank=16"], ("either ratio or lora_rank",)),
    (["--method", "gmt", "--set", "keep_ratio=1.5"], ("keep_ratio", "less than or equal to 1")),
    (["--method", "gmt", "--set", "mask_ratio=0.5"], ("mask_ratio", "keep_ratio")),
    (["--method", "lota", "--set", "sparsity=1.2"], ("sparsity", "less than 1")),
    (["--method", "lora", "--set", "target_modules=qkv_proj"], ("--set target_modules", "qkv_proj")),
    (["--method", "adalora", "--set", "tinit=0.9", "--set", "tfinal=0.34"], ("tinit", "no steps for rank allocation")),
]


@pytest.mark.parametrize("args, fragments", BAD_INPUT, ids=[" ".join(a[1:]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, llama_dir, corpora, invoke, args, fragments):
    out = tmp_path / "run"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, *args, *TRAIN)
    assert_input_error(result, *fragments)
    assert not out.exists()


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_missing_peft_says_how_to_install_it(tmp_path, llama_dir, corpora, invoke, monkeypatch):
    for name in [m for m in sys.modules if m == "peft" or m.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    for method in ("lora", "adalora", "layra"):
        result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--method", method, "-o", tmp_path / method, *TRAIN)
        assert_input_error(result, f"--method {method}", "pip install 'adaptkit[peft]'")
        assert not (tmp_path / method).exists()
