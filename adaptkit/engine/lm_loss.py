"""The engine's language-modelling loss: the model's own, or a chunked linear cross-entropy.

A causal LM's loss materialises the logits of a whole micro-batch (tokens x vocabulary, upcast to
fp32), and their gradient of the same size: at 8 x 2,048 tokens and a 128k vocabulary, 8.4 GB. The
chunked loss never holds them: the model runs with `logits_to_keep` selecting no position (its head
sees an empty slice) and returns its final hidden states (`output_hidden_states`, the last one after
the final norm), and `chunked_cross_entropy` takes the hidden states (N x d) and the head (V x d)
chunk by chunk over tokens: fp32 logits of the chunk, log-softmax, the loss and dlogits, then
dhidden = dlogits @ W and dW += dlogits^T @ hidden for the chunk. The gradients are computed in the
forward pass (three matmuls per chunk, as the plain loss does; Liger-Kernel's fused linear
cross-entropy does the same) and scaled by the incoming gradient in the backward.

The loss is the model's: the mean over the micro-batch's predicted tokens (labels shifted by one,
-100 ignored), which the step divides by the accumulation steps as before. The head is
- a plain nn.Linear (trainable, frozen, or tied to the input embeddings: its weight's gradient adds
  to the embedding's through autograd);
- a row- or column-masked head switched by engine/masked_linear.py: the gradient of its trainable
  rows or columns goes straight into the compact optimizer copy, as that layer's own backward does;
- a peft LoRA layer without dropout: the effective weight W0 + scaling B A (autograd takes the
  gradient to A and B).
Final-logit scaling and soft-capping are applied in each chunk (Cohere `logit_scale`, Granite
`logits_scaling`, Gemma-2 `final_logit_softcapping`). A head this does not cover (a head that is an
FSDP2 unit of its own, LoRA dropout on the head, DoRA, a model without `logits_to_keep`) is refused by
name with loss.chunked=on and keeps the model's own loss with auto.

Several processes: under DDP the head's gradient reaches its parameter through autograd and DDP
averages it as any other. Under FSDP2 the head is read after the model's forward, in each micro-batch:
the root unit (which holds the head, engine/distributed.py) keeps its parameters unsharded from its
forward to the end of the backward, so the loss sees the whole weight, and the gradient it accumulates
into it is reduce-scattered by FSDP's post-backward. A tied head is the embedding's parameter in the same
unit; a masked head takes the plain path there (engine/masked_linear.py switches no layer with several
processes), its trainable part gathered from the sharded gradient by the optimizer.

With loss.kernel=liger (CUDA, the `liger-kernel` package) Liger's fused Triton kernel does the same
on a plain head.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from adaptkit.errors import AdaptkitError, InputError

IGNORE = -100
AUTO_ELEMENTS = 1 << 26  # vocabulary x tokens per micro-batch from which `auto` chunks: 256 MiB of fp32 logits
CHUNK_ELEMENTS = 1 << 25  # fp32 logits per chunk by default: 128 MiB (1,024 tokens at a 32k vocabulary, 261 at 128k)


@dataclass
class Head:
    """The LM head as the chunked loss uses it: weight (V x d), bias, the compact copy of a masked
    weight (its tensor, selector and dim: engine/optim.py's CompactParameter), and what the model does
    to its logits after the head (multiply by `scale`, then soft-cap at `softcap`)."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    compact: Optional[torch.Tensor] = None
    selector: Optional[torch.Tensor] = None
    dim: int = 0
    scale: float = 1.0
    softcap: Optional[float] = None


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight^T + bias) against `targets`, chunk by chunk; the
    gradients are computed in the forward and scaled by the incoming gradient in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, compact, targets, head, chunk, need):
        loss_sum, ctx.grads = _chunk_loop(hidden, weight, bias, compact, targets, head, chunk, need)
        ctx.dtypes = [None if t is None else t.dtype for t in (hidden, weight, bias, compact)]
        ctx.count = (targets != IGNORE).sum()
        return loss_sum / ctx.count

    @staticmethod
    def backward(ctx, grad_loss):
        scale = grad_loss / ctx.count
        grads = [None if g is None or not needed else (g * scale).to(dtype)
                 for g, needed, dtype in zip(ctx.grads, ctx.needs_input_grad[:4], ctx.dtypes)]
        return (*grads, None, None, None, None)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the head's matmul, as a plain forward would run it (autocast's, or the inputs')."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_loop(hidden, weight, bias, compact, targets, head, chunk, need):
    """Sum of the token losses; with `need`, the unscaled gradients (dh, dW, db, dcompact)."""
    dtype = _compute_dtype(hidden, weight)
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    w = weight.to(dtype)
    b = None if bias is None else bias.to(dtype)
    grad_h = torch.empty_like(h) if need and hidden.requires_grad else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need and weight.requires_grad else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need and bias is not None and bias.requires_grad else None
    grad_c = torch.zeros(compact.shape, dtype=torch.float32, device=compact.device) if need and compact is not None else None
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk):
        hc, yc = h[start:start + chunk].to(dtype), y[start:start + chunk]
        losses, dlogits = _chunk(hc, w, b, yc, head, need)
        loss_sum = loss_sum + losses
        if dlogits is None:
            continue
        if grad_h is not None:
            grad_h[start:start + chunk] = (dlogits @ w).to(h.dtype)
        if grad_w is not None:
            _accumulate(grad_w, dlogits.T, hc)
        if grad_b is not None:
            grad_b += dlogits.sum(0).float()
        if grad_c is not None:
            grad_c += _compact_grad(dlogits, hc, head).float()  # (the trainable part only: small or a fraction)
    grads = [None if grad_h is None else grad_h.reshape(hidden.shape), grad_w, grad_b, grad_c]
    return loss_sum, grads


def _accumulate(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """total (fp32) += a @ b, in place when the matmul runs in fp32 (no temporary of total's size)."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    else:
        total += (a @ b).float()


def _chunk(hc, w, b, yc, head: Head, need: bool):
    """One chunk: the summed token losses and, with `need`, dloss/dlogits (in the matmul dtype)."""
    logits = (hc @ w.T if b is None else torch.addmm(b, hc, w.T)).float()
    if head.scale != 1.0:
        logits = logits * head.scale
    capped = None
    if head.softcap is not None:
        capped = torch.tanh(logits / head.softcap)
        logits = capped * head.softcap
    valid = yc != IGNORE
    safe = torch.where(valid, yc, 0)
    lse = torch.logsumexp(logits, dim=-1)
    losses = ((lse - logits.gather(1, safe[:, None]).squeeze(1)) * valid).sum()
    if not need:
        return losses, None
    grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
    grad[torch.arange(grad.shape[0], device=grad.device), safe] -= 1.0
    grad.mul_(valid[:, None])
    if capped is not None:
        grad.mul_(1.0 - capped * capped)
    if head.scale != 1.0:
        grad.mul_(head.scale)
    return losses, grad.to(hc.dtype)


def _compact_grad(dlogits: torch.Tensor, hc: torch.Tensor, head: Head) -> torch.Tensor:
    """The gradient of the trainable rows (dim 0) or columns (dim 1) of the head's weight only."""
    if head.dim == 1:
        return dlogits.T @ hc.index_select(1, head.selector)
    return dlogits.index_select(1, head.selector).T @ hc


def chunked_cross_entropy(hidden: torch.Tensor, head: Head, targets: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """Mean cross-entropy of the logits hidden @ head.weight^T (+ bias, scale, soft-cap) against
    `targets` (already aligned with `hidden`; -100 ignored), never holding more than `chunk` tokens'
    logits. The same value and gradients as F.cross_entropy over the full fp32 logits."""
    vocab = head.weight.shape[0]
    chunk = chunk or max(1, CHUNK_ELEMENTS // vocab)
    inputs = (hidden, head.weight, head.bias, head.compact)
    need = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _ChunkedLinearCrossEntropy.apply(*inputs, targets, head, chunk, need)


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """What each position predicts: the next label (the last position none), as HF's causal LM loss."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE)


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside DDP, torch.compile and peft wrappers."""
    for attribute in ("module", "_orig_mod"):
        while hasattr(model, attribute) and isinstance(getattr(model, attribute), torch.nn.Module):
            model = getattr(model, attribute)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_of(model: torch.nn.Module) -> Head:
    """The model's LM head for the chunked loss, read after the model's forward (each micro-batch): under
    FSDP2 its weight is then the whole tensor (see `_check_fsdp_unit`). InputError naming what is not covered."""
    from adaptkit.engine.masked_linear import compact_entry
    from adaptkit.engine.shards import is_sharded

    lm, module = _head_module(model)
    scale, softcap = _logit_transform(lm.config)
    if _is_lora(module):
        weight, bias = _lora_weight(module), module.base_layer.bias
    else:
        weight, bias = module.weight, module.bias
    if is_sharded(weight):  # FSDP resharded the root after its forward (not adaptkit's sharding): a runtime failure
        raise AdaptkitError("the chunked loss: the LM head's weight is still sharded by FSDP after the model's forward; "
                            "use --set loss.chunked=off")
    entry = compact_entry(module)
    if entry is None:
        return Head(weight, bias, scale=scale, softcap=softcap)
    return Head(weight, bias, entry.compact, entry.selector, entry.dim, scale, softcap)


def head_vocabulary(model: torch.nn.Module) -> int:
    """The rows of the model's LM head (its vocabulary), once the head is known to be covered: the checks
    of `head_of` that need no forward (under FSDP2 the weight is still sharded here; its shape is the whole one)."""
    _, module = _head_module(model)
    return (module.base_layer if _is_lora(module) else module).weight.shape[0]


def _head_module(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the causal LM, its head module) when the chunked loss covers the head; InputError naming what it does not cover."""
    lm = causal_lm(model)
    module = lm.get_output_embeddings()
    if module is None:
        raise InputError(f"{type(lm).__name__} has no output embeddings (LM head)")
    if "logits_to_keep" not in inspect.signature(type(lm).forward).parameters:
        raise InputError(f"{type(lm).__name__}.forward has no logits_to_keep argument")
    if _is_lora(module):
        _check_lora(module)
    elif not isinstance(module, torch.nn.Linear):
        raise InputError(f"the LM head is a {type(module).__name__}, not an nn.Linear or a peft LoRA layer")
    _check_fsdp_unit(model, module)
    return lm, module


def _check_fsdp_unit(model: torch.nn.Module, head: torch.nn.Module) -> None:
    """Under FSDP2 the head must belong to the root unit (engine/distributed.py shards it so): the root keeps
    its parameters unsharded from its forward to the end of the backward (torch does not reshard the root
    after forward), so after the model's forward the head's weight is the whole plain parameter, and the
    gradient the loss accumulates into it is reduce-scattered by FSDP's post-backward like any other. A head
    that is a unit of its own is resharded after its forward, and its backward hooks never see this loss."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no FSDP2
        return
    path = next((name for name, module in model.named_modules() if module is head), None)
    if path is None:
        return
    parts = path.split(".") if path else []
    units = [m for m in (model.get_submodule(".".join(parts[:i])) for i in range(len(parts) + 1)) if isinstance(m, FSDPModule)]
    if units and units[-1] is not units[0]:
        raise InputError("the LM head is an FSDP unit of its own (resharded after its forward); shard it with the root module")


def _logit_transform(config: Any) -> tuple[float, Optional[float]]:
    """(scale, soft-cap) a model applies to its logits: Cohere logit_scale, Granite 1/logits_scaling,
    Gemma-2 final_logit_softcapping."""
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        scale /= float(scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return scale, (float(softcap) if softcap else None)


def _is_lora(module: torch.nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def _check_lora(module: torch.nn.Module) -> None:
    """A peft LoRA head the chunked loss covers: not merged, no dropout, no DoRA."""
    if getattr(module, "merged", False):
        raise InputError("the LM head's LoRA adapter is merged")
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if not isinstance(module.lora_dropout[name], torch.nn.Identity):
            raise InputError("the LM head has LoRA dropout (the chunked loss needs the head to be one linear map)")
        if getattr(module, "use_dora", {}).get(name):
            raise InputError("the LM head has a DoRA adapter")


def _lora_weight(module: torch.nn.Module) -> torch.Tensor:
    """W0 + sum of scaling x B A over the active adapters of a peft LoRA head (checked by _check_lora)."""
    weight = module.base_layer.weight
    for name in module.active_adapters:
        if name in module.lora_A:
            weight = weight + module.scaling[name] * (module.lora_B[name].weight @ module.lora_A[name].weight)
    return weight


class LMLoss:
    """The step's loss of one micro-batch: `loss(forward_model, inputs)`; `chunked` says which."""

    def __init__(self, chunked: bool, kernel: str = "torch", chunk: Optional[int] = None):
        self.chunked, self.kernel, self.chunk = chunked, kernel, chunk

    def __call__(self, forward_model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.chunked:
            return forward_model(**inputs).loss
        labels = inputs["labels"]
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        nothing = torch.empty(0, dtype=torch.long, device=labels.device)
        with warnings.catch_warnings():  # FSDP2 warns of outputs that are views (hidden_states[0]); none is changed in place here
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            output = forward_model(**rest, logits_to_keep=nothing, output_hidden_states=True)
        hidden, targets = output.hidden_states[-1], shifted_targets(labels)
        head = head_of(forward_model)
        if self.kernel == "liger":
            return liger_loss(hidden, head, targets)
        return chunked_cross_entropy(hidden, head, targets, self.chunk)


def liger_loss(hidden: torch.Tensor, head: Head, targets: torch.Tensor) -> torch.Tensor:
    """Liger-Kernel's fused linear cross-entropy (CUDA, Triton) on a plain head."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    if head.compact is not None or head.scale != 1.0:
        raise InputError("--set loss.kernel=liger: the LM head is masked or its logits are scaled; use loss.kernel=torch")
    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, softcap=head.softcap)
    return fused(head.weight, hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), head.bias)


def select_loss(setting: Any, model: torch.nn.Module, device: torch.device, tokens_per_micro_batch: int,
                log: Callable[[str], None]) -> LMLoss:
    """The run's loss from `loss.chunked` (auto: chunked when vocabulary x tokens per micro-batch
    reaches AUTO_ELEMENTS and the head is covered), `loss.kernel` and `loss.chunk_tokens`."""
    check_kernel(setting, device)
    if setting.chunked == "off":
        return LMLoss(False)
    try:
        vocabulary = head_vocabulary(model)
    except InputError as exc:
        if setting.chunked == "on":
            raise InputError(f"--set loss.chunked=on: {exc}; use loss.chunked=off") from None
        log(f"loss: the model's own ({exc})")
        return LMLoss(False)
    large = vocabulary * tokens_per_micro_batch >= AUTO_ELEMENTS
    chunked = setting.chunked == "on" or large or setting.kernel == "liger"
    if chunked:
        log(f"loss: chunked linear cross-entropy ({setting.kernel})")
    return LMLoss(chunked, setting.kernel, setting.chunk_tokens)


def check_kernel(setting: Any, device: torch.device) -> None:
    """loss.kernel=liger needs CUDA and the liger-kernel package (checked before anything is loaded or written)."""
    if setting.kernel != "liger":
        return
    if device.type != "cuda":
        raise InputError(f"--set loss.kernel=liger: needs a CUDA device (this run's is {device.type}); use loss.kernel=torch")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        raise InputError("--set loss.kernel=liger: the liger-kernel package is not installed (pip install 'adaptkit[liger]')") from None
