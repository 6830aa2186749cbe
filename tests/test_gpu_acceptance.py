"""scripts/gpu_acceptance.py on a machine without a GPU: the refusal, the MFU arithmetic and peak
table, and the pieces that drive adaptkit (so that the script stays valid as the engine evolves)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_acceptance.py"


@pytest.fixture(scope="module")
def acceptance():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_refuses_without_a_gpu(tmp_path):
    from _scale_helpers import env_with

    env = env_with(None, CUDA_VISIBLE_DEVICES="", HIP_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "no CUDA or ROCm GPU" in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0),
    ("NVIDIA L4", 121.0), ("NVIDIA A10G", 70.0), ("AMD Instinct MI300X", 1307.0), ("AMD Instinct MI250X/MI250", 191.5),
    ("AMD Instinct MI210", 181.0), ("NVIDIA B200", 2250.0), ("Tesla T4", None), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_lookup_by_device_name(acceptance, name, tflops):
    assert acceptance.peak_tflops(name) == tflops


def test_mfu_arithmetic(acceptance):
    # 6 N + 12 L s d (PaLM appendix B), worked by hand for N = 1e9, L = 22, s = d = 2048
    assert acceptance.flops_per_token(10**9, 22, 2048, 2048) == 6e9 + 12 * 22 * 2048 * 2048
    assert acceptance.mfu(1000.0, 1e12, 1000.0, 2) == pytest.approx(0.5)
    assert acceptance.mfu(5000.0, 6e9, 989.0) == pytest.approx(5000 * 6e9 / 989e12)


@pytest.mark.parametrize("tied", [False, True])
def test_matmul_parameters_of_the_1b_llama(acceptance, tied):
    from transformers import AutoModelForCausalLM

    from adaptkit import demo

    shape = acceptance.LLAMA_1B
    config = demo.tiny_config("llama", 32000, **{**shape, "tie_word_embeddings": tied})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    d, i = shape["hidden"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * d // shape["heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * i + 2 * d  # q, o; k, v; gate, up, down; two norms
    expected = shape["layers"] * per_layer + d + 32000 * d  # + final norm + LM head (the input embedding costs no FLOPs)
    assert acceptance.matmul_parameters(model) == expected
    assert 0.9e9 < expected < 1.2e9  # "~1B"


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_masked_linear_check_runs_against_this_engine(acceptance):
    outcome = acceptance.check_masked_linear("cpu")
    assert outcome["status"] == "pass", outcome
    assert outcome["layers_switched"] == 2 * acceptance.SMALL["layers"]


@pytest.mark.slow
def test_training_check_drives_the_current_cli(acceptance, tmp_path):
    torch.set_num_threads(1)
    workspace = acceptance.Workspace(tmp_path, 256)
    assert acceptance.check_precision(workspace, "no-such-precision") == {"status": "skipped: not available in this adaptkit"}
    outcome = acceptance.check_precision(workspace, "fp32")
    assert outcome["status"] == "pass", outcome
    assert len(outcome["losses"]) == 8
    from adaptkit.commands import train

    planned = acceptance.dry_run_plan(workspace.train_args(workspace.model("small", **acceptance.SMALL), tmp_path / "dry", "fft", 2, 256, 8))
    if "dry_run" in train.command.__code__.co_varnames:  # the script reads the plan of an adaptkit that has --dry-run
        assert planned and not str(planned).startswith("skipped")
    else:
        assert planned == "skipped: this adaptkit has no --dry-run"


@pytest.mark.slow  # builds a model twice and runs four steps' worth of forward and backward
def test_chunked_loss_check_runs_against_this_engine(acceptance):
    torch.set_num_threads(1)
    outcome = acceptance.check_chunked_loss("cpu", vocab=3000, batch=2, seq_len=64)
    assert outcome["status"] == "pass", outcome
    assert outcome["fp32"]["max_relative_grad_difference"] <= acceptance.CHUNKED_FP32_RTOL


def test_liger_check_is_skipped_without_the_package(acceptance):
    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here: the check needs CUDA")
    assert acceptance.check_liger_loss("cpu") == {"status": "skipped: liger-kernel is not installed"}
