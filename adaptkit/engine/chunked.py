"""Tensors stored in global coordinates through torch.distributed.checkpoint (DCP), in safetensors.

A *chunk* is the part of one global tensor that this process holds: rows [offset, offset +
rows) along dim 0 of a tensor of `shape`. Every process writes its chunks with DCP's
safetensors storage (`HuggingFaceStorageWriter`, one file per process, the offsets in each
file's header); any number of processes reads any chunks back (`HuggingFaceStorageReader`
reads the headers, no pickle anywhere), so what one layout saved another can load: DCP's
resharding computes which saved pieces overlap each requested chunk.
"""

from __future__ import annotations

import errno
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import InputError


@dataclass
class Chunk:
    """Rows [offset, offset + tensor.shape[0]) of a global tensor of `shape` (all other dims whole)."""

    tensor: torch.Tensor
    offset: int
    shape: tuple[int, ...]

    def box(self) -> Any:
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

        offsets = (self.offset,) + (0,) * (len(self.shape) - 1)
        return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(self.tensor.shape))


def _save_planner(chunks: dict[str, Chunk]) -> Any:
    from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, TensorWriteData, WriteItem, WriteItemType

    class ChunkSavePlanner(SavePlanner):
        """Writes each non-empty chunk as a shard of its global tensor."""

        def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False):
            self.is_coordinator = is_coordinator

        def create_local_plan(self):
            items = [WriteItem(index=MetadataIndex(fqn, box.offsets), type=WriteItemType.SHARD,
                               tensor_data=TensorWriteData(chunk=box, properties=TensorProperties.create_from_tensor(c.tensor),
                                                           size=torch.Size(c.shape)))
                     for fqn, c in chunks.items() if c.tensor.numel() for box in [c.box()]]
            return SavePlan(items)

        def create_global_plan(self, all_plans):
            return create_default_global_save_plan(all_plans)

        def finish_plan(self, new_plan):
            return new_plan

        def resolve_data(self, write_item):
            return chunks[write_item.index.fqn].tensor

    return ChunkSavePlanner()


def _load_planner(chunks: dict[str, Chunk], where: Path) -> Any:
    from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class ChunkLoadPlanner(LoadPlanner):
        """Reads each requested chunk from whatever saved pieces overlap it."""

        def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
            self.metadata = metadata

        def create_local_plan(self):
            items = []
            for fqn, c in chunks.items():
                if not c.tensor.numel():
                    continue  # this process holds none of it
                saved = self.metadata.state_dict_metadata.get(fqn)
                if saved is None or tuple(saved.size) != tuple(c.shape):
                    found = "is missing" if saved is None else f"has shape {tuple(saved.size)}"
                    raise InputError(f"--resume: '{where}': tensor '{fqn}' {found}; this run expects {tuple(c.shape)}")
                items += create_read_items_for_chunk_list(fqn, saved, [c.box()])
            return LoadPlan(items)

        def create_global_plan(self, global_plan):
            return global_plan

        def finish_plan(self, central_plan):
            return central_plan

        def load_bytes(self, read_item, value):
            raise ValueError(f"unexpected non-tensor entry '{read_item.dest_index.fqn}' in a tensor checkpoint")

        def resolve_tensor(self, read_item):
            tensor = chunks[read_item.dest_index.fqn].tensor
            for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
                tensor = tensor.narrow(dim, start, length)
            return tensor

        def commit_tensor(self, read_item, tensor):
            pass  # the reader copied into the view resolve_tensor returned

    return ChunkLoadPlanner()


def storage_writer(path: Path) -> Any:
    """DCP's safetensors writer, one file per process (a seam for the disk-full test)."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    return HuggingFaceStorageWriter(str(path), save_distributed=True)


def _causes(exc: BaseException) -> list[BaseException]:
    """The errors behind a DCP CheckpointException; an interrupt among them (Ctrl-C, SIGTERM: a
    BaseException that is no Exception) is raised again as itself, so the run exits 130/143."""
    causes = [failure[0] if isinstance(failure, tuple) else failure for failure in exc.failures.values()]
    interrupt = next((c for c in causes if isinstance(c, BaseException) and not isinstance(c, Exception)), None)
    if interrupt is not None:
        raise interrupt
    return causes


def save_chunks(path: Path, chunks: dict[str, Chunk], collective: bool) -> None:
    """Write this process's chunks under `path` (a directory). `collective`: every process of the
    process group calls this with its own chunks; otherwise this process alone writes them all.

    A failed write raises the OSError behind it (DCP reports failures as a BaseException)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():  # no_dist: DCP warns that it runs in one process, as asked
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save({}, storage_writer=storage_writer(path), planner=_save_planner(chunks), no_dist=not collective)
    except CheckpointException as exc:
        causes = _causes(exc)
        cause = next((c for c in causes if isinstance(c, OSError)), None)
        raise (cause or OSError(errno.EIO, f"writing the checkpoint tensors failed: {causes[0] if causes else exc}")) from None


def load_chunks(path: Path, chunks: dict[str, Chunk]) -> None:
    """Fill every chunk's tensor in place from the tensors saved under `path`, whatever layout saved them.

    A process reads on its own (no collective), so any number of processes may call this."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException

    if not Path(path).is_dir():
        raise InputError(f"--resume: '{path}' is missing (not a checkpoint of this version?)")
    try:
        with warnings.catch_warnings():  # no_dist: DCP warns that it runs in one process, as asked
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({}, storage_reader=HuggingFaceStorageReader(str(path)), planner=_load_planner(chunks, path), no_dist=True)
    except CheckpointException as exc:
        causes = _causes(exc)
        bad = next((c for c in causes if isinstance(c, InputError)), None)
        raise (bad or InputError(f"--resume: '{path}' is unreadable ({causes[0] if causes else exc})")) from None
