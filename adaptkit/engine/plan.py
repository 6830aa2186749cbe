"""The method contract: a method turns (model, context) into a TrainingPlan.

The engine owns the loop; a method only says what trains and plugs in callbacks:

- `TrainingPlan.trainable`: parameter name -> None (the whole tensor trains) or an
  UpdateMask (only its True entries train). Parameters not listed stay frozen.
- `TrainingPlan.model`: the model to train (the loaded one, or a wrapped one such as a
  peft model).
- `TrainingPlan.callbacks`: objects whose hooks the engine calls at fixed points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

from adaptkit.engine.masks import MaskSet, UpdateMask
from adaptkit.specs import NoParams

if TYPE_CHECKING:
    import torch

    from adaptkit.engine.chunked import Chunk
    from adaptkit.engine.config import TrainConfig
    from adaptkit.specs import Need, Params


class TrainingCallback:
    """Method-specific behaviour at fixed points of the loop. Every hook is a no-op by default.

    `shard_aware`: the hooks work on FSDP-sharded parameters too (each process sees only its dim-0
    shard of a parameter and of its gradient: engine/shards.py). The sharded strategy refuses a
    plan with a callback that does not declare it, since such hooks need whole parameters.
    """

    shard_aware: ClassVar[bool] = False
    # `export` works on the whole model (e.g. merging adapters): under FSDP the strategy then
    # unshards the trained model on every process before the main process exports it
    exports_whole_model: ClassVar[bool] = False

    def extra_loss(self, model: "torch.nn.Module") -> "Optional[torch.Tensor]":
        """A term added to the language-modelling loss of every micro-batch (e.g. L2-SP, EWC)."""
        return None

    def after_backward(self, model: "torch.nn.Module", step: int, micro: int) -> None:
        """After each micro-batch's backward: the gradients accumulated so far (e.g. GMT's reference mode)."""

    def transform_gradients(self, model: "torch.nn.Module", step: int) -> None:
        """Change accumulated gradients in place, before masking and clipping (e.g. GMT)."""

    def on_step_end(self, model: "torch.nn.Module", step: int) -> None:
        """After the optimizer step, gradients still present (e.g. AdaLoRA's rank allocator)."""

    def export(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """The model to save as final/: a plain dense HF model (e.g. LoRA merged into weights)."""
        return model

    def save_extra(self, model: "torch.nn.Module", directory: Path, state: "Optional[dict[str, torch.Tensor]]" = None) -> None:
        """Write extra artefacts beside the final model (e.g. a PEFT adapter). `state`: the tensors final/ was
        written from when they are not the model's own state_dict() (the gathered weights of a sharded model)."""

    def state_dict(self) -> dict[str, "torch.Tensor"]:
        """Tensors to checkpoint so that a resumed run continues identically (the main process's, restored on every process)."""
        return {}

    def placed_state(self) -> dict[str, "Chunk"]:
        """Tensors to checkpoint in global coordinates (engine/chunked.py): this process's rows of each (its
        FSDP shard, or the whole tensor), saved by every process that holds a part and read back in place
        under any layout. For state kept per shard (e.g. weight averages); state_dict() is for the rest."""
        return {}

    def load_state_dict(self, state: dict[str, "torch.Tensor"]) -> None:
        """Restore what state_dict() returned."""

    def gather(self, model: "torch.nn.Module", keep: bool) -> None:
        """At the end of training, on every process, before the main process exports: state kept per shard is
        gathered here (a collective under FSDP: every process calls it); `keep`: this process exports."""


@dataclass
class TrainingPlan:
    model: "torch.nn.Module"
    trainable: dict[str, Optional[UpdateMask]]
    callbacks: list[TrainingCallback] = field(default_factory=list)
    summary: str = ""
    # Column/row-masked nn.Linear weights get gradients only for their trainable part
    # (engine/masked_linear.py): less backward work and memory; leaves their .grad empty,
    # so not for methods whose callbacks read full weight gradients.
    compact_linear_grads: bool = False
    # dtype name of the compact copies of partly trained parameters; None: the precision's weight dtype
    # (bf16 under bf16-pure). "float32" keeps an fp32 copy in every precision mode (S2FT, as its reference).
    masked_dtype: Optional[str] = None

    @classmethod
    def full(cls, model: "torch.nn.Module", summary: str = "all parameters") -> "TrainingPlan":
        return cls(model, {name: None for name, _ in model.named_parameters()}, summary=summary)

    @classmethod
    def only(cls, model: "torch.nn.Module", keep: Callable[[str, "torch.nn.Parameter"], bool], summary: str = "") -> "TrainingPlan":
        """Train exactly the parameters for which keep(name, param) is true."""
        return cls(model, {n: None for n, p in model.named_parameters() if keep(n, p)}, summary=summary)

    @classmethod
    def from_masks(cls, model: "torch.nn.Module", masks: MaskSet, summary: str = "") -> "TrainingPlan":
        """Train everything, restricted by the masks where a parameter has one."""
        trainable: dict[str, Optional[UpdateMask]] = {}
        for name, _ in model.named_parameters():
            mask = masks.masks.get(name)
            if mask is not None and mask.all_frozen:
                continue
            trainable[name] = None if mask is None or mask.all_trainable else mask
        return cls(model, trainable, summary=summary)

    def restrict_rows(self, name: str, rows: "torch.Tensor") -> None:
        """Leave only `rows` (bool over dim 0, True = may train) of the trainable parameter `name` trainable."""
        shape = tuple(dict(self.model.named_parameters())[name].shape)
        mask = self.trainable[name]
        restricted = UpdateMask("row", rows.bool()) if mask is None else mask.restrict_rows(rows.bool(), shape)
        if restricted.all_frozen:
            del self.trainable[name]
        else:
            self.trainable[name] = restricted

    def counts(self) -> tuple[int, int]:
        """(trainable entries, all entries) of the planned model."""
        total = trainable = 0
        for name, param in self.model.named_parameters():
            total += param.numel()
            if name in self.trainable:
                mask = self.trainable[name]
                trainable += param.numel() if mask is None else mask.trainable_count(tuple(param.shape))
        return trainable, total


@dataclass
class MethodContext:
    """What a method may use to make its plan. Heavy pieces are loaded on first access."""

    params: "Params"
    config: "TrainConfig"
    tokenizer: Any
    output_dir: Path
    total_steps: int
    device: "torch.device"
    train_blocks: "torch.Tensor"  # (N, seq_len) token ids of the training data
    log: Callable[[str], None] = print
    is_main_process: bool = True  # False on the other processes of a multi-process run: write shared files only when True
    # `train --dry-run`: the model has no weights (meta device) and there is no data; a method that
    # chooses entries from weights or scores chooses as many from its ratio alone (engine/planner.py)
    dry_run: bool = False
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

    def mask_set(self) -> MaskSet:
        """The mask set of the method's `mask` parameter (given with --mask)."""
        if "mask" not in self._cache:
            from adaptkit.engine.masks import load_mask_set

            self._cache["mask"] = load_mask_set(Path(getattr(self.params, "mask", None) or ""), "--mask")
        return self._cache["mask"]


class TrainingMethod(ABC):
    """Base class of training methods: validated params in, a TrainingPlan out.

    The class attributes declare the method for the registry (`adaptkit.specs.method_spec(Class)`):
    its name, a one-line summary, the paper reference, its pydantic parameter model, what the run must
    provide (`needs`: adaptkit.specs.Need) and optional packages it imports (`extras`).
    `freeze_special_tokens` is the method's default of the run setting of that name (engine/special_tokens.py).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Params: ClassVar[type["Params"]] = NoParams
    needs: ClassVar[tuple["Need", ...]] = ()
    extras: ClassVar[tuple[str, ...]] = ()
    freeze_special_tokens: ClassVar[bool] = False

    def __init__(self, params: "Params"):
        self.params = params

    @abstractmethod
    def plan(self, model: "torch.nn.Module", ctx: MethodContext) -> TrainingPlan:
        """Decide what trains (and how) for this model."""
