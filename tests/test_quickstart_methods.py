"""`adaptkit quickstart --methods ...` runs the baselines side by side, with method parameters from --set."""

from __future__ import annotations

import json

import _methods_helpers  # noqa: F401  (one intra-op thread)
from conftest import assert_input_error

FAST = ["--source-steps", "2", "--steps", "2", "--seq-len", "32", "--batch-size", "4"]


def test_quickstart_runs_baselines_side_by_side(tmp_path, invoke):
    out = tmp_path / "demo"
    methods = "hft,gmt,lota,s2ft,lora,adalora,layra,layer-selective,layer-freeze,soft-reg"
    result = invoke("quickstart", "-o", out, "--methods", methods, "--set", "lota.calibration_steps=2", "--set", "layer-freeze.layers=0-1",
                    "--set", "adalora.tinit=0", "--set", "adalora.tfinal=0", "--set", "lora.r=2", *FAST, "--json")
    assert result.returncode == 0, result
    models = json.loads(result.stdout)["models"]
    assert set(models) == {"source", *methods.split(",")}
    for name in methods.split(","):
        assert "source_gain_bpb" in models[name] and "target_gain_bpb" in models[name]
        assert 0 < models[name]["trainable_fraction"] <= 1
    assert (out / "runs" / "lora" / "final" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "runs" / "lora" / "final" / "adapter" / "adapter_config.json").read_text())["r"] == 2


def test_quickstart_method_parameters_are_checked_before_anything_is_written(tmp_path, invoke):
    out = tmp_path / "demo"
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "layer-freeze", *FAST), "--set layer-freeze.*", "layers")
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "lora", "--set", "lora.rr=2", *FAST), "'rr'", "did you mean: r")
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "lora", "--set", "lorra.r=2", *FAST), "--set", "did you mean: lora")
    assert not out.exists() and not list(tmp_path.iterdir())
