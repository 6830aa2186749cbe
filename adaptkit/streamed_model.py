"""Running a causal LM one decoder layer at a time, for models larger than memory.

`LayerwiseModel.open(source)` builds the model's skeleton without weights (parameters on
the meta device; buffers such as rotary frequencies are real) and reads weights from the
model's safetensors files only while the part of the model that needs them runs:

1. the parts outside the decoder layers (embeddings, final norm, LM head, rotary
   embedding) are read once and stay loaded;
2. a *capture* pass runs the decoder's own forward with every layer replaced by a stand-in
   that records what the decoder hands it: the embedding output and, per layer, the
   keyword arguments (attention mask, rotary position embeddings, positions). The masks
   and position embeddings are therefore exactly those of a normal forward, for any
   architecture whose decoder calls its layers in a loop (Llama, Qwen2, OLMo-2, Mistral, ...);
3. layer i is installed, run on the hidden states of every batch (kept on the CPU in the
   model dtype), and released before layer i + 1 is installed; with `prefetch` (default) a
   background thread reads layer i + 1 from disk while layer i runs;
4. a *tail* pass runs the decoder's forward again with the first layer replaced by a
   stand-in that returns the batch's final hidden states and the others by identities, so
   the final norm and the LM head run as the model defines them.

Peak memory: the outside parts and one decoder layer on the device, plus the hidden
states of all batches of one pass on the CPU (tokens x hidden size x dtype bytes) and, with
prefetch, the next layer on the CPU. Freed memory goes back to the OS after each layer.
Outputs equal a whole-model forward up to float rounding: the same modules run on the
same inputs. The decoder's layers are found structurally (`adaptkit.layers.find_layers`);
checkpoint tensor names must match the parameter names, as in every model saved by
transformers.

Callers observe stages through `run(..., watch=, after=)`: `adaptkit score
--layer-by-layer` collects calibration statistics per layer this way and scores each layer
while its weights are loaded; `adaptkit evaluate --layer-by-layer` gets the logits.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Protocol, Sequence

import torch

from adaptkit.errors import InputError, first_line
from adaptkit.layers import decoder_of, find_layers

if TYPE_CHECKING:
    from adaptkit.io.models import ModelSource
    from adaptkit.merge.stream import TensorSource

OUTSIDE = ""  # stage name of everything outside the decoder layers
HIDDEN_CACHE_BYTES = 4 << 30  # one pass keeps at most this much of hidden states on the CPU (evaluation)


class StageObserver(Protocol):
    """Entered around one stage's batches; `end_batch()` after each batch (e.g. `scoring.InputStatistics`)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...

    def end_batch(self) -> None: ...


class _StopForward(Exception):
    """Raised by the last stand-in of the capture pass: nothing after the layers needs to run."""


class _StandIn(torch.nn.Module):
    """Takes a decoder layer's place in its ModuleList; other attributes read through to the layer."""

    def __init__(self, layer: torch.nn.Module, behaviour: Callable[[tuple, dict], Any]):
        super().__init__()
        self.__dict__["_layer"] = layer
        self.__dict__["_behaviour"] = behaviour

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["_behaviour"](args, kwargs)

    def __getattr__(self, name: str) -> Any:  # e.g. `decoder_layer.attention_type` in the decoder loop
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_layer"], name)


@dataclass(frozen=True)
class _StoredTensor:
    """One checkpoint tensor and the model names it fills (several when weights are tied)."""

    stored: str
    names: list[str]
    is_parameter: bool
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass
class _Batch:
    """One input batch between stages: its current hidden states (CPU) and each layer's call arguments."""

    hidden: torch.Tensor
    layer_args: list[tuple[tuple, dict]] = field(default_factory=list)


class LayerwiseModel:
    """A causal LM whose weights are read from disk one stage (outside parts, then each layer) at a time."""

    training = False  # always in eval mode (no dropout); inference only

    def __init__(self, model: torch.nn.Module, weights: "TensorSource", device: torch.device | str = "cpu", flag: str = "--model", prefetch: bool = True):
        self.model = model.eval()
        self.config = model.config
        self.weights = weights
        self.device = torch.device(device)
        self.flag = flag
        self.prefetch = prefetch  # read the next stage's weights in a background thread while one runs
        self.layers_name, self.layers = find_layers(model)
        self.decoder = decoder_of(model)
        self.dtype = next(model.parameters()).dtype
        self.resident_bytes = 0
        self.peak_bytes = 0  # most parameter bytes loaded on the device at once (outside parts plus one layer)
        self._outputs_are_tuples: bool | None = None
        for buffer_owner in model.modules():  # real buffers (rotary frequencies) go to the device
            for key, buffer in list(buffer_owner._buffers.items()):
                if buffer is not None and buffer.device.type != "meta":
                    buffer_owner._buffers[key] = buffer.to(self.device)
        self._plan = self._plan_stages()
        self.install(OUTSIDE, self.read(OUTSIDE))

    def _plan_stages(self) -> dict[str, list[_StoredTensor]]:
        """Which stored tensor fills which (possibly tied) parameter or buffer, per stage; checked up front."""
        by_id: dict[int, tuple[list[str], torch.Tensor, bool]] = {}
        for is_parameter, named in ((True, self.model.named_parameters(remove_duplicate=False)), (False, self.model.named_buffers(remove_duplicate=False))):
            for name, tensor in named:
                by_id.setdefault(id(tensor), ([], tensor, is_parameter))[0].append(name)
        plan: dict[str, list[_StoredTensor]] = {stage: [] for stage in [*self.stages, OUTSIDE]}
        for names, tensor, is_parameter in by_id.values():
            stored = next((n for n in names if n in self.weights.tensors), None)
            if stored is None:
                if tensor.device.type == "meta":
                    raise InputError(f"{self.flag}: '{names[0]}' is not in the model's safetensors files (checkpoint names must match the model's parameters for --layer-by-layer)")
                continue  # a non-persistent buffer, already real
            shape = self.weights.tensors[stored].shape
            if tuple(shape) != tuple(tensor.shape):
                raise InputError(f"{self.flag}: tensor '{stored}' has shape {tuple(shape)}, the model's config expects {tuple(tensor.shape)}")
            plan[self.stage_of(names[0])].append(_StoredTensor(stored, names, is_parameter, tensor.dtype, tuple(tensor.shape)))
        return plan

    @classmethod
    def open(cls, source: "ModelSource", dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", trust_remote_code: bool = False) -> "LayerwiseModel":
        """The skeleton of the model at `source` (a local directory or a Hub id in the local cache) with its weights on disk."""
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        from adaptkit.io.models import quiet_transformers
        from adaptkit.merge.stream import TensorSource

        quiet_transformers()
        if source.kind == "gguf":
            raise InputError(f"{source.flag}: '{source.location}' is a GGUF file; --layer-by-layer reads safetensors weights from a model directory")
        directory = source.location if source.kind == "dir" else _hub_snapshot(source)
        try:
            config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
            with init_empty_weights(include_buffers=False):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{source.flag}: '{source.location}' does not load as a causal LM ({first_line(exc)})") from None
        model.tie_weights()
        model.config.use_cache = False
        return cls(model, TensorSource(directory, source.flag), device, source.flag)

    def eval(self) -> "LayerwiseModel":
        """Already in eval mode (what `perplexity` and other callers of `model.eval()` expect)."""
        return self

    # --- weights ---------------------------------------------------------------------------------

    def stage_of(self, name: str) -> str:
        """'model.layers.3' for a parameter of decoder layer 3, OUTSIDE for anything else."""
        if name.startswith(self.layers_name + "."):
            index = name[len(self.layers_name) + 1 :].split(".", 1)[0]
            return f"{self.layers_name}.{index}"
        return OUTSIDE

    @property
    def stages(self) -> list[str]:
        return [f"{self.layers_name}.{i}" for i in range(len(self.layers))]

    def read(self, stage: str) -> list[tuple["_StoredTensor", torch.Tensor]]:
        """A stage's tensors read from disk (CPU, in the model's dtypes); touches no module, so it may run in a thread."""
        return [(entry, self.weights.read(entry.stored).to(dtype=entry.dtype)) for entry in self._plan[stage]]

    def install(self, stage: str, tensors: list[tuple["_StoredTensor", torch.Tensor]]) -> None:
        """Put a stage's tensors into the model, on the device."""
        for entry, value in tensors:
            value = value.to(self.device)
            self._replace(entry, value)
            self.resident_bytes += value.numel() * value.element_size()
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)

    def release(self, stage: str) -> None:
        """Put a stage's parameters back on the meta device and return the freed memory."""
        for entry in self._plan[stage]:
            self.resident_bytes -= math.prod(entry.shape) * torch.empty((), dtype=entry.dtype).element_size()
            self._replace(entry, torch.empty(entry.shape, dtype=entry.dtype, device="meta"))
        return_freed_memory()

    def each_loaded(self, stages: Sequence[str]) -> Iterator[str]:
        """Yield each stage while its weights are installed; with `prefetch`, the next one is read meanwhile."""
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = None
            for i, stage in enumerate(stages):
                tensors = pending.result() if pending is not None else self.read(stage)
                pending = reader.submit(self.read, stages[i + 1]) if self.prefetch and i + 1 < len(stages) else None
                self.install(stage, tensors)
                del tensors
                try:
                    yield stage
                finally:
                    self.release(stage)

    def _owner(self, name: str) -> tuple[torch.nn.Module, str]:
        module_name, _, key = name.rpartition(".")
        return self.model.get_submodule(module_name), key

    def _replace(self, entry: "_StoredTensor", value: torch.Tensor) -> None:
        """Set a (possibly tied) tensor under every name it has."""
        new = torch.nn.Parameter(value, requires_grad=False) if entry.is_parameter else value
        for name in entry.names:
            owner, key = self._owner(name)
            (owner._parameters if entry.is_parameter else owner._buffers)[key] = new

    # --- running ---------------------------------------------------------------------------------

    @contextmanager
    def _stand_ins(self, behaviour: Callable[[int], Callable[[tuple, dict], Any]]) -> Iterator[None]:
        originals = list(self.layers)
        for i, layer in enumerate(originals):
            self.layers[i] = _StandIn(layer, behaviour(i))
        try:
            yield
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer

    def _capture(self, inputs: Sequence[torch.Tensor]) -> list[_Batch]:
        """Embedding outputs and per-layer call arguments of every batch, from the decoder's own forward."""
        batches: list[_Batch] = []
        last = len(self.layers) - 1

        def record(i: int) -> Callable[[tuple, dict], Any]:
            def behaviour(args: tuple, kwargs: dict) -> Any:
                kwargs = dict(kwargs)
                hidden = args[0] if args else kwargs.pop("hidden_states")
                if i == 0:
                    batches.append(_Batch(hidden.detach().to("cpu")))
                batches[-1].layer_args.append((tuple(args[1:]), kwargs))
                if i == last:
                    raise _StopForward
                return hidden  # what flows to the next stand-in does not matter: only arguments are recorded

            return behaviour

        with self._stand_ins(record):
            for input_ids in inputs:
                try:
                    self.decoder(input_ids=input_ids.to(self.device), use_cache=False)
                except _StopForward:
                    pass
        return batches

    def _run_layer(self, layer: torch.nn.Module, batch: _Batch, i: int) -> None:
        args, kwargs = batch.layer_args[i]
        output = layer(batch.hidden.to(self.device), *args, **kwargs)
        self._outputs_are_tuples = isinstance(output, tuple)
        batch.hidden = (output[0] if self._outputs_are_tuples else output).to("cpu")

    def _tail(self, batches: list[_Batch], inputs: Sequence[torch.Tensor], through_head: bool, observer: Optional[StageObserver], on_output: Optional[Callable[[int, torch.Tensor], None]]) -> None:
        current: dict[str, torch.Tensor] = {}
        wrap = (lambda x: (x,)) if self._outputs_are_tuples else (lambda x: x)

        def replay(i: int) -> Callable[[tuple, dict], Any]:
            if i == 0:
                return lambda args, kwargs: wrap(current["hidden"])
            return lambda args, kwargs: wrap(args[0] if args else kwargs["hidden_states"])

        target = self.model if through_head else self.decoder
        with self._stand_ins(replay), (observer if observer is not None else nullcontext()):
            for index, (batch, input_ids) in enumerate(zip(batches, inputs)):
                current["hidden"] = batch.hidden.to(self.device)
                output = target(input_ids=input_ids.to(self.device), use_cache=False)
                if observer is not None:
                    observer.end_batch()
                if on_output is not None:
                    on_output(index, output.logits if through_head else output.last_hidden_state)

    def run(
        self,
        inputs: Sequence[torch.Tensor],
        on_output: Optional[Callable[[int, torch.Tensor], None]] = None,
        through_head: bool = True,
        watch: Optional[Callable[[str], Optional[StageObserver]]] = None,
        after: Optional[Callable[[str], None]] = None,
    ) -> None:
        """Run every batch of token ids through the model, one layer at a time (see the module docstring).

        `on_output(i, tensor)` gets batch i's logits (or last hidden state without `through_head`);
        `watch(stage)` may return an observer entered around a stage's batches; `after(stage)` runs
        while the stage's weights are still loaded. The outside stage (OUTSIDE) comes last.
        """
        if not inputs:
            return
        with torch.no_grad():
            batches = self._capture(inputs)
            for i, stage in enumerate(self.each_loaded(self.stages)):
                observer = watch(stage) if watch is not None else None
                with observer if observer is not None else nullcontext():
                    for batch in batches:
                        self._run_layer(self.layers[i], batch, i)
                        if observer is not None:
                            observer.end_batch()
                if after is not None:
                    after(stage)
            for batch in batches:
                batch.layer_args.clear()
            self._tail(batches, inputs, through_head, watch(OUTSIDE) if watch is not None else None, on_output)
            if after is not None:
                after(OUTSIDE)

    def visit(self, after: Callable[[str], None]) -> None:
        """Load each stage in turn (no forward pass) and call `after(stage)` while it is loaded."""
        for stage in self.each_loaded(self.stages):
            after(stage)
        after(OUTSIDE)

    def close(self) -> None:
        self.weights.close()


def return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc `malloc_trim`; elsewhere nothing to do).

    Measured here: without it, glibc's adaptive mmap threshold serves the next layer's
    tensors from the heap and the freed layers' pages stay resident, so a layer-by-layer
    run reached the whole model's RSS.
    """
    import ctypes
    import ctypes.util

    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def _hub_snapshot(source: "ModelSource") -> str:
    """The local snapshot directory of a Hub model (config and safetensors only; honours HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source.location, allow_patterns=["*.json", "*.safetensors"])
    except Exception as exc:  # offline and not cached, unknown repository, network errors
        raise InputError(f"{source.flag}: could not get '{source.location}' ({first_line(exc)}); give a local model directory") from None


def batch_groups(inputs: Sequence[torch.Tensor], hidden_size: int, element_size: int, budget: int) -> list[range]:
    """Consecutive groups of batches whose hidden states fit `budget` bytes (at least one batch each)."""
    groups, start, used = [], 0, 0
    for i, batch in enumerate(inputs):
        size = batch.numel() * hidden_size * element_size
        if i > start and used + size > budget:
            groups.append(range(start, i))
            start, used = i, 0
        used += size
    groups.append(range(start, len(inputs)))
    return groups


def for_each_logits(model: Any, inputs: Sequence[torch.Tensor], device: torch.device | str, consume: Callable[[int, torch.Tensor], None]) -> None:
    """consume(i, logits) for every batch of token ids: a whole-model forward, or layer by layer for a LayerwiseModel."""
    if isinstance(model, LayerwiseModel):
        hidden = int(getattr(model.config, "hidden_size", 0) or 1)
        element = torch.empty((), dtype=model.dtype).element_size()
        for group in batch_groups(inputs, hidden, element, HIDDEN_CACHE_BYTES):
            model.run([inputs[i] for i in group], on_output=lambda i, logits, offset=group.start: consume(offset + i, logits))
        return
    with torch.no_grad():  # not inference_mode: the model may be one in training (evaluation during training)
        for i, input_ids in enumerate(inputs):
            consume(i, model(input_ids=input_ids.to(device)).logits)


__all__ = ["LayerwiseModel", "for_each_logits", "batch_groups", "OUTSIDE", "StageObserver"]
