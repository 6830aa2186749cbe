"""Loading causal LMs and tokenizers: a local HF directory, a GGUF file, or a Hub id.

`trust_remote_code` is off unless asked. A Hub id goes through the Hugging Face cache
and honours HF_HUB_OFFLINE. A GGUF file is dequantized by transformers into a plain
model (rebuilt without its quantization config, so it can be trained and saved).
Every failure the user can fix is an InputError naming the flag and the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.errors import InputError, first_line

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: kind is 'dir', 'gguf' or 'hub'."""

    kind: str
    location: str  # directory, GGUF file or Hub id
    flag: str = "--model"

    @property
    def load_args(self) -> tuple[str, dict[str, Any]]:
        """(pretrained_model_name_or_path, extra kwargs) for transformers' from_pretrained."""
        if self.kind == "gguf":
            path = Path(self.location)
            return str(path.parent), {"gguf_file": path.name}
        return self.location, {}


def _looks_like_path(text: str) -> bool:
    """A local path, not a Hub id (`org/name`): starts with . / ~, has no or several '/', a
    backslash, a model-file suffix, or its first part is a local directory (`models/instrcut`)."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1 or text.endswith((".gguf", ".safetensors")):
        return True
    return Path(text.split("/")[0]).expanduser().is_dir()


def _hub_offline() -> bool:
    """Whether the Hugging Face Hub may not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    import os

    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a config.json of `repo_id`."""
    import os

    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception:  # an id the Hub would refuse (bad characters): not in the cache
        return False
    return isinstance(found, str)


def _check_gguf(path: Path, flag: str) -> None:
    """A readable GGUF file: the header and tensor table parse (tensor data is only memory-mapped)."""
    from adaptkit.errors import require

    gguf = require("gguf", "gguf", f"{flag} with a .gguf file")
    try:
        gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError... on damaged files
        raise InputError(f"{flag}: '{path}' is not a readable GGUF file ({type(exc).__name__}: {str(exc)[:120]})") from None


def resolve_model_source(location: str | Path, flag: str = "--model") -> ModelSource:
    """Classify `location` and check that a local one is a loadable model directory or GGUF file."""
    text = str(location)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix == ".gguf":
                _check_gguf(path, flag)
                return ModelSource("gguf", str(path), flag)
            raise InputError(f"{flag}: '{text}' is a file; expected a model directory (with config.json) or a .gguf file")
        if not (path / "config.json").is_file():
            raise InputError(f"{flag}: '{text}' has no config.json; expected a Hugging Face model directory")
        check_safetensors_files(path, flag)
        return ModelSource("dir", str(path), flag)
    if _looks_like_path(text):
        raise InputError(f"{flag}: '{text}' does not exist (expected a model directory, a .gguf file or a Hub id)")
    if _hub_offline() and not _in_hub_cache(text):
        raise InputError(f"{flag}: '{text}' is not a local path and not in the Hugging Face cache, and the Hub is offline (HF_HUB_OFFLINE); "
                         "give a model directory or .gguf file, or download the model first")
    return ModelSource("hub", text, flag)


def check_safetensors_files(directory: Path, flag: str) -> None:
    """Fail early, with the file name, on truncated or corrupt safetensors files."""
    from adaptkit.io.tensors import check_safetensors

    for file in sorted(Path(directory).glob("*.safetensors")):
        check_safetensors(file, flag)


def _hub_error(source: ModelSource, exc: Exception) -> InputError:
    return InputError(
        f"{source.flag}: could not load '{source.location}' ({first_line(exc)}); "
        "give a local model directory or .gguf file, or a Hub id reachable from here"
    )


def quiet_transformers() -> None:
    """No per-file progress bars from transformers / the Hub: adaptkit shows its own progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


def check_tokenizer_files(source: ModelSource) -> None:
    """A model directory must hold a tokenizer (transformers' own error names none of the files)."""
    if source.kind == "dir" and not any((Path(source.location) / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(f"{source.flag}: '{source.location}' has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
                         "copy them from the model it was trained from")


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    check_tokenizer_files(source)
    name, kwargs = source.load_args
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _hub_error(source, exc) from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_attn_implementation(device: "torch.device | str") -> str:
    """flash_attention_2 on CUDA/ROCm when flash-attn is installed, otherwise PyTorch SDPA."""
    import importlib.util

    if str(device).startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    """Big-model placement for inference (accelerate): layers spread over GPUs, then CPU, then disk.

    `device_map` is one of DEVICE_MAPS; `max_memory` caps each device ({0: "70GiB", "cpu": "200GiB"});
    layers that fit nowhere are offloaded to `offload_folder` and streamed in at each forward.
    """

    device_map: str
    max_memory: dict[Any, str] | None = None
    offload_folder: str | None = None

    @classmethod
    def from_options(cls, device_map: str | None, max_memory: str | None, offload_folder: str | None = None) -> "Placement | None":
        """From `--device-map` and `--max-memory 0=70GiB,1=70GiB,cpu=200GiB` (None without --device-map)."""
        if device_map is None:
            if max_memory is not None:
                raise InputError("--max-memory: only applies with --device-map (e.g. --device-map auto)")
            return None
        if device_map not in DEVICE_MAPS:
            raise InputError(f"--device-map: expected {', '.join(DEVICE_MAPS)}, got '{device_map}'")
        return cls(device_map, parse_max_memory(max_memory) if max_memory is not None else None, offload_folder)


def parse_max_memory(text: str, flag: str = "--max-memory") -> dict[Any, str]:
    """'0=70GiB,cpu=200GiB' -> {0: '70GiB', 'cpu': '200GiB'} (GPU indices, cpu, mps)."""
    limits: dict[Any, str] = {}
    for item in text.split(","):
        device, sep, amount = (part.strip() for part in item.partition("="))
        if not sep or not (device.isdigit() or device in ("cpu", "mps")) or not _MEMORY_RE.match(amount):
            raise InputError(f"{flag}: expected DEVICE=AMOUNT[,...] with DEVICE a GPU index, cpu or mps and AMOUNT like 70GiB, got '{item.strip()}'")
        limits[int(device) if device.isdigit() else device] = amount.replace(" ", "")
    return limits


def input_device(model: Any) -> "torch.device":
    """Where input ids go: the input embeddings' device (CPU when they are offloaded; accelerate's hooks move them)."""
    import torch

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = embeddings.weight.device if embeddings is not None else torch.device(model.device)
    return torch.device("cpu") if device.type == "meta" else device


def load_causal_lm(
    source: ModelSource,
    dtype: "torch.dtype | None" = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    placement: Placement | None = None,
) -> "PreTrainedModel":
    """Load a causal LM in `dtype` (float32 by default: training keeps fp32 master weights).

    With a `placement`, the weights are spread over devices (and disk) by accelerate for inference.
    """
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    dtype = dtype or torch.float32
    name, kwargs = source.load_args
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if placement is not None:
        if source.kind == "gguf":
            raise InputError(f"{source.flag}: --device-map needs a model directory or Hub id; '{source.location}' is a GGUF file")
        kwargs.update(device_map=placement.device_map, max_memory=placement.max_memory, offload_folder=placement.offload_folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as exc:
        raise _hub_error(source, exc) from None
    if source.kind == "gguf":
        model = _dequantized_copy(model, dtype)
    model.config.use_cache = False
    return model


def _dequantized_copy(model: "PreTrainedModel", dtype: "torch.dtype") -> "PreTrainedModel":
    """A GGUF-loaded model is flagged as quantized and cannot be saved: rebuild it as a plain model."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(model.state_dict(), strict=False)
    fresh.tie_weights()
    return fresh


def model_fingerprint(model: "torch.nn.Module") -> str:
    """A short hash of the architecture: parameter names, shapes and dtypes (not values)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(str(getattr(config, "model_type", "")).encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


def save_model(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase | None", directory: Path, state_dict: "dict[str, torch.Tensor] | None" = None) -> None:
    """Save as a normal HF model directory (safetensors, config, tokenizer, generation config).

    `state_dict` replaces the model's own tensors (e.g. the gathered weights of a sharded model).
    The weight files get the mode a plain open() gives (safetensors writes them 0600).
    """
    from adaptkit.io.atomic import plain_mode

    quiet_transformers()
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    for weights in Path(directory).glob("*.safetensors"):
        os.chmod(weights, plain_mode(is_dir=False))


def read_config(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "config.json").read_text())


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(config: Any) -> int | None:
    """The longest input a model takes, from its config (object or config.json dict): max_position_embeddings
    or an older name of it, also inside a multimodal `text_config`; None when the config does not say."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    for key in CONTEXT_KEYS:
        value = get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    text_config = get("text_config")
    return context_length(text_config) if text_config else None


def source_context_length(source: ModelSource) -> int | None:
    """The context length from a model directory's config.json, before any weights load (None for GGUF and Hub ids)."""
    if source.kind != "dir":
        return None
    try:
        return context_length(read_config(Path(source.location)))
    except (OSError, ValueError):
        return None


def check_context_length(length: int, limit: int | None, flag: str) -> None:
    """A window, block or sequence length must fit the model's context length."""
    if limit is not None and length > limit:
        raise InputError(f"{flag}: {length} tokens is longer than the model's context length of {limit} tokens "
                         f"(max_position_embeddings in its config); use at most {limit}")
