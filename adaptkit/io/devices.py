"""Devices: `--device auto|cpu|cuda|cuda:N|mps`, checked against this machine before any work.

One default for every command: `auto`, a GPU when there is one (CUDA or ROCm, both `cuda` in
torch; Apple's `mps`), else the CPU. An unknown or unavailable device is bad input whose message
lists what this machine has.
"""

from __future__ import annotations

import re

from adaptkit.errors import InputError

DEVICE_HELP = "auto (a GPU when there is one, else cpu), cpu, cuda, cuda:N or mps."
_CUDA = re.compile(r"^cuda(:(\d+))?$")


def available_devices() -> list[str]:
    """What this machine can run on: cpu, each cuda:N, and mps."""
    import torch

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(text: str, flag: str = "--device") -> str:
    """The torch device string for `text` ('auto' becomes cuda, mps or cpu); refuses what is not here."""
    wanted = text.strip().lower()
    available = available_devices()
    if wanted == "auto":
        return "cuda" if "cuda:0" in available else ("mps" if "mps" in available else "cpu")
    cuda = _CUDA.match(wanted)
    if not cuda and wanted not in ("cpu", "mps"):
        raise InputError(f"{flag}: unknown device '{text}' (expected {DEVICE_HELP[:-1]}; this machine has: {', '.join(available)})")
    needed = f"cuda:{cuda.group(2) or 0}" if cuda else wanted
    if needed not in available:
        raise InputError(f"{flag}: '{text}' is not available on this machine (available: {', '.join(available)})")
    return wanted
