"""Where a parameter's data lives on this process: the whole tensor, or its FSDP2 shard.

Kept apart from distributed.py so that the optimizer's compact state can ask without importing
the strategies (and their checkpoint I/O).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def is_sharded(tensor: "torch.Tensor") -> bool:
    """Whether `tensor` is an FSDP2 DTensor (this process holds only its shard)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_shard(param: "torch.Tensor") -> tuple["torch.Tensor", int]:
    """(the tensor this process owns, its first row in the full parameter).

    A plain tensor is owned whole. An FSDP2 DTensor is sharded along dim 0 in torch.chunk
    pieces: process r owns rows [r * ceil(n / world), ...), possibly none.
    """
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return param.detach(), 0
    if tuple(param.placements) != (Shard(0),):
        raise ValueError(f"unsupported sharding {param.placements} (expected Shard(0))")
    local = param.to_local().detach()
    rows = param.shape[0]
    chunk = -(-rows // param.device_mesh.size())
    offset = min(param.device_mesh.get_local_rank() * chunk, rows)
    if local.shape[0] != min(chunk, rows - offset):
        raise ValueError(f"unexpected local shard of {tuple(local.shape)} rows at offset {offset} of {rows}")
    return local, offset


def local_grad(param: "torch.Tensor") -> "torch.Tensor | None":
    """This process's part of `param.grad` (None when there is no gradient)."""
    return None if param.grad is None else local_grad_tensor(param.grad)


def local_grad_tensor(tensor: "torch.Tensor") -> "torch.Tensor":
    """This process's part of a gradient (its DTensor shard, or the tensor itself): writes to it change the gradient."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_tensor(tensor: "torch.Tensor") -> "torch.Tensor":
    """The whole tensor: an FSDP2 DTensor all-gathered (a collective: every process must call it), a plain tensor as is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def whole_of(local: "torch.Tensor", like: "torch.Tensor") -> "torch.Tensor":
    """The whole tensor of which `local` is this process's shard, sharded as the parameter `like` (local_shard's
    rows): an FSDP2 DTensor's shards all-gathered (a collective: every process must call it); otherwise `local`."""
    from torch.distributed.tensor import DTensor

    if not isinstance(like, DTensor):
        return local
    return DTensor.from_local(local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride()).full_tensor()


def held_state_dict(model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """The parameters (a tied one under each of its names) and persistent buffers the model holds now, by state-dict name.

    Unlike `state_dict()`, which an FSDP2 module answers by resharding, this reads what an unsharded
    model holds (engine/distributed.py unshard_model); for a plain model, the keys of its state dict.
    """
    state = {name: param.detach() for name, param in model.named_parameters(remove_duplicate=False)}
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                state[f"{module_name}.{name}" if module_name else name] = buffer
    return state
