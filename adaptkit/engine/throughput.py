"""Throughput and model FLOPs utilisation (MFU), the one home of the peak table and the FLOP count.

MFU = tokens/s x model FLOPs per token / (devices x dense bf16 peak). Model FLOPs per token are the
standard training estimate of PaLM (Chowdhery et al. 2022, appendix B): 6 N + 12 L s d, with N the
parameters of the matrix multiplications a token goes through (every parameter but the input
embedding; the LM head counts, also when tied), L layers, s the sequence length and d the hidden
size (attention scores and values, forward and backward, with no discount for the causal mask). A
masked method (SSU) is counted with the same model FLOPs, so its MFU compares directly with FFT's.

The peak comes from `--set peak_tflops=T` or, on a GPU, from the table below by device name; on a
CPU or an unknown GPU there is none and the run reports tokens/s only.
"""

from __future__ import annotations

import re
from typing import Any, Optional

# Dense (no sparsity) bf16 tensor-core peak of one device as torch sees it, in TFLOPS, from the vendors'
# data sheets. Matched in order against the upper-cased device name. An MI250/MI250X shows up as two
# devices (one per GCD), so its entries are half the package figure.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    (r"GB200|B200", 2250.0),
    (r"H100.*PCIE", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100|H200|GH200|H800", 989.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"L4\b", 121.0),
    (r"A10G", 70.0),
    (r"A10\b", 125.0),
    (r"MI325X|MI300X", 1307.0),
    (r"MI300A", 980.0),
    (r"MI250X", 191.5),
    (r"MI250", 181.0),
    (r"MI210", 181.0),
]


def peak_tflops(device_name: str) -> Optional[float]:
    """The dense bf16 peak (TFLOPS) of a device, looked up from its name; None when unknown."""
    name = device_name.upper()
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops
    return None


def device_peak_tflops(device: Any, given: Optional[float] = None) -> Optional[float]:
    """The peak of the training device: `given` (--set peak_tflops=), else the table's for a GPU, else None."""
    if given:
        return float(given)
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    return peak_tflops(torch.cuda.get_device_name(device))


def flops_per_token(matmul_params: int, layers: int, seq_len: int, hidden: int) -> float:
    """Training FLOPs per token: 6 N (forward + backward of the matmuls) + 12 L s d (attention), PaLM appendix B."""
    return 6.0 * matmul_params + 12.0 * layers * seq_len * hidden


def mfu(tokens_per_s: float, per_token: float, peak: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s (all devices) over `devices` x `peak` TFLOPS."""
    return tokens_per_s * per_token / (devices * peak * 1e12)


def matmul_parameters(model: Any) -> int:
    """Parameters a token's matmuls use: all but the input embedding (a tied LM head still counts once)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    return sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())


def model_flops_per_token(model: Any, seq_len: int) -> float:
    """6 N + 12 L s d of a Hugging Face causal LM (its text config's layers and hidden size)."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    return flops_per_token(matmul_parameters(model), text.num_hidden_layers, seq_len, text.hidden_size)
