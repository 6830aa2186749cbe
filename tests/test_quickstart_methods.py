"""`adaptkit quickstart --methods ...`: methods side by side on the embedded demo."""

from __future__ import annotations

import json

import _methods_helpers  # noqa: F401  (one intra-op thread)
from conftest import assert_input_error

FAST = ["--steps", "2", "--pretrain-steps", "2", "--seq-len", "32", "--batch-size", "4"]


def test_quickstart_compares_the_given_methods(tmp_path, invoke):
    out = tmp_path / "qs"
    result = invoke("quickstart", "-o", out, "--methods", "fft,lora,layer-freeze", "--set", "lora.r=2", *FAST, "--json")
    assert result.returncode == 0, result
    results = json.loads(result.stdout)
    assert [r["method"] for r in results["rows"]] == ["base", "fft", "lora", "layer-freeze"]
    assert results["rows"][2]["parameters"] == {"r": 2}
    assert results["rows"][3]["parameters"] == {"layers": "0-1"}  # demo value for the required parameter
    for row in results["rows"]:
        assert row["target_loss"] > 0 and row["source_loss"] > 0
    assert results["rows"][1]["trainable_fraction"] == 1.0 > results["rows"][2]["trainable_fraction"]
    assert json.loads((out / "results.json").read_text()) == results
    table = (out / "results.md").read_text()
    assert "| lora |" in table and "ha loss" in table
    assert (out / "runs" / "lora" / "final" / "adapter" / "adapter_config.json").is_file()


def test_quickstart_bad_input_writes_nothing(tmp_path, invoke):
    out = tmp_path / "qs"
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "fft,lorra", *FAST), "--methods", "did you mean: lora")
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "lora", "--set", "lora.rr=2", *FAST), "'rr'")
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "fft", "--set", "lora.r=2", *FAST), "not among --methods")
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "fft", "--target-lang", "xx", *FAST), "--target-lang")
    assert not out.exists()
