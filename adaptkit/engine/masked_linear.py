"""Weight gradients of masked nn.Linear layers for their trainable part only.

For y = x W^T + b with W of shape (out, in), the weight gradient is dW = dY^T X. When
only the columns C of W train (a column mask), the optimizer needs dW[:, C] = dY^T X[:, C]
and nothing else; for a row mask R, dW[R, :] = dY[:, R]^T X. The plain engine path
computes the full dW and then gathers the trainable part; here the layer's backward
computes the input and bias gradients as usual and dY^T X[:, C] (or dY[:, R]^T X)
straight into the compact parameter's gradient. Same mathematics, fewer FLOPs (at freeze ratio r a linear layer's
backward shrinks by r/2) and no full-size gradient buffer for the layer.

Used when a TrainingPlan sets `compact_linear_grads` and the run is a single process
(DDP reduces module parameters' gradients, and these weights then have none). Only
exact `nn.Linear` modules (not subclasses with their own forward) whose weight no other
module shares (tied embeddings keep the plain path) are switched.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from adaptkit.engine.optim import CompactParameter, TrainableSet
    from adaptkit.engine.plan import TrainingPlan


class _CompactLinear(torch.autograd.Function):
    """y = x W^T + b; backward gives dX, db, and dW only at the trainable columns (dim 1) or rows (dim 0)."""

    @staticmethod
    def forward(ctx, x, weight, bias, compact, selector, dim):
        y = F.linear(x, weight, bias)  # under autocast this runs in the autocast dtype, as a plain linear would
        ctx.save_for_backward(x, weight, selector)
        ctx.dim, ctx.bias_dtype, ctx.compact_dtype = dim, None if bias is None else bias.dtype, compact.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, selector = ctx.saved_tensors
        dy = grad_y.reshape(-1, grad_y.shape[-1])
        xs = x.reshape(-1, x.shape[-1]).to(dy.dtype)
        grad_x = (grad_y @ weight.to(dy.dtype)).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = dy.sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        if ctx.dim == 1:  # trainable columns: dW[:, C] = dY^T X[:, C]
            grad = dy.T @ xs.index_select(1, selector)
        else:  # trainable rows: dW[R, :] = dY[:, R]^T X
            grad = dy.index_select(1, selector).T @ xs
        return grad_x, None, grad_bias, grad.to(ctx.compact_dtype), None, None


def _compact_forward(compact: "CompactParameter"):
    def forward(self, x):
        return _CompactLinear.apply(x, self.weight, self.bias, compact.compact, compact.selector, compact.dim)

    return forward


def install(model: torch.nn.Module, compact: dict[str, "CompactParameter"]) -> list[str]:
    """Switch every exact nn.Linear whose weight has a column or row mask; returns their parameter names."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return []
    modules = dict(model.named_modules())
    users: dict[int, int] = {}  # a weight shared by several modules (tied embeddings) keeps the plain path
    for module in modules.values():
        for param in module.parameters(recurse=False):
            users[id(param)] = users.get(id(param), 0) + 1
    switched = []
    for name, entry in compact.items():
        module_name, _, attribute = name.rpartition(".")
        module = modules.get(module_name)
        if attribute != "weight" or entry.granularity not in ("column", "row") or type(module) is not torch.nn.Linear:
            continue
        if users.get(id(module.weight), 0) != 1:
            continue
        module.forward = types.MethodType(_compact_forward(entry), module)
        module.adaptkit_compact = entry  # read by compact_entry (the chunked LM loss routes the head's gradient here too)
        module.weight.requires_grad_(False)
        switched.append(name)
    return switched


def compact_entry(module: torch.nn.Module) -> "CompactParameter | None":
    """The compact parameter a switched layer writes its weight gradient into, or None."""
    return getattr(module, "adaptkit_compact", None)


def install_for_plan(plan: "TrainingPlan", trainable: "TrainableSet") -> list[str]:
    """Switch the masked linear layers of a plan that asks for it (`compact_linear_grads`); returns their names."""
    return install(plan.model, trainable.compact) if plan.compact_linear_grads else []
