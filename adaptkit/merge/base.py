"""The merge-method contract: a small self-describing class with a per-tensor function.

A method declares its name, summary, reference, parameter model (pydantic, validated),
whether it needs a base model, how many models it takes, and implements

    merge_tensor(tensors, base, params, ctx) -> Tensor

over the aligned float32 tensors of one parameter name. `tensors` are fresh copies owned
by the call, so a method may overwrite them (saving memory); `base` and `ctx.aux` are
shared and must not be modified. The executor
(`adaptkit.merge.executor`) does everything else identically for all methods: loading,
validation, dtype, sharding, writing, the merge card. This module is light at import
(pydantic and the standard library), so plugin modules can build their specs from it.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Optional, Sequence

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.layers import LayerSelection, layer_index, position
from adaptkit.specs import MergeMethodSpec, NoParams, Params, class_spec, option_name  # noqa: F401 (option_name: merge's public names)

if TYPE_CHECKING:
    import torch

# Parameter types shared by the methods: finite numbers in documented ranges.
Coefficient = Annotated[float, Field(ge=-10.0, le=10.0, allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=-10.0, le=10.0, allow_inf_nan=False)]
Density = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Interpolation = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


@dataclass(frozen=True)
class MergeInputs:
    """What a parameter check may know about the merge: the inputs given and the model's depth."""

    n_models: int
    has_base: bool
    num_layers: int


class Check(ABC):
    """A rule a merge parameter declares in its type (`Annotated[..., SomeCheck()]`), checked
    against the inputs before anything is read; `MergeMethod.check` runs every declared rule."""

    @abstractmethod
    def __call__(self, value: Any, flag: str, inputs: MergeInputs) -> None:
        """Raise InputError naming `flag` when `value` does not fit the inputs."""


@dataclass(frozen=True)
class OnePerModel(Check):
    """A list with one value per --model (or, with `broadcast`, one value for all); None: the default."""

    broadcast: bool = False

    def __call__(self, value: Any, flag: str, inputs: MergeInputs) -> None:
        per_model(value, inputs.n_models, flag, 1.0, broadcast=self.broadcast)


@dataclass(frozen=True)
class LayersOfModel(Check):
    """A layer selection ('embed,0-3,22-23', 'head') whose blocks the model has; None: every tensor."""

    def __call__(self, value: Any, flag: str, inputs: MergeInputs) -> None:
        if value is not None:
            LayerSelection.parse(value, flag, ends=True).check(inputs.num_layers, flag)


# Parameter types with their checks, shared by the methods.
Weights = Annotated[Optional[list[Weight]], OnePerModel()]
Densities = Annotated[list[Density], OnePerModel(broadcast=True)]
Layers = Annotated[Optional[str], LayersOfModel()]
RequiredLayers = Annotated[str, LayersOfModel()]


@functools.lru_cache(maxsize=64)
def _parse_layers(text: str) -> LayerSelection:
    return LayerSelection.parse(text, "--layers", ends=True)


def select(name: str, layer: int | None, layers: Optional[str], modules: Optional[Sequence[str]]) -> bool:
    """Whether a tensor is selected by a layer list and/or module-name fragments.

    Both given: tensors in the layers whose name contains a fragment; only layers: all
    tensors of those layers; only modules: every tensor whose name contains a fragment;
    neither: every tensor.
    """
    in_layers = layers is None or _parse_layers(layers).contains(name, layer)
    in_modules = not modules or any(fragment in name for fragment in modules)
    return in_layers and in_modules


@dataclass
class TensorContext:
    """What a method may know about the tensor it merges besides the tensors themselves."""

    name: str
    num_layers: int
    seed: int = 0
    aux: dict[str, Any] = field(default_factory=dict)  # extra aligned tensors (instruct model, mask, scores)
    aux_meta: dict[str, dict[str, str]] = field(default_factory=dict)  # per aux entry: {"granularity": ...} of masks / scores

    @property
    def layer(self) -> int | None:
        return layer_index(self.name)

    @property
    def position(self) -> str:
        return position(self.name, self.layer)

    @property
    def t(self) -> float:
        """Depth in [0, 1]: layer / (num_layers - 1) inside blocks, 0 elsewhere (mergekit's gradients)."""
        layer = self.layer
        if layer is None:
            return 0.0
        return layer / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def generator(self) -> "torch.Generator":
        """A generator seeded by (seed, tensor name): reproducible whatever the tensor order."""
        import torch

        digest = hashlib.sha256(f"{self.seed}:{self.name}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class MergeMethod(ABC):
    """Base class of merge methods; subclasses set the class attributes and `merge_tensor`.

    base: "required" (task-vector methods), "optional" or "none". Parameters listed in
    `model_params` name extra model directories streamed alongside the inputs (aligned
    like a base); those in `tensor_params` name safetensors files, or directories holding
    the file named in the mapping (masks, scores), whose tensor of the same name, when
    present, is passed in `ctx.aux` (and its granularity in `ctx.aux_meta`; see
    `adaptkit.io.mask_files` for the file formats). `base_model_is_first_model`: in a mergekit YAML,
    `base_model` is this method's first model (SLERP's t = 0 end), not a base.
    `row_separable`: every output row depends only on the same row of the inputs (base, aux
    included), computed by the same elementwise operations whatever the number of rows; the
    executor may then merge a large tensor a block of rows at a time (as it does across
    vocabularies), with the same result. `row_statistics`: the same, given `statistics` of the whole
    tensors that add up over blocks of rows (`statistics(inputs, ...)`), and `merge_tensor` is
    `merge_rows(inputs, ..., statistics(inputs, ...))`: the executor then merges across vocabularies
    in two passes over blocks of rows (SLERP's angle), never holding the rebuilt inputs.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = NoParams
    base: ClassVar[str] = "none"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    model_params: ClassVar[tuple[str, ...]] = ()
    tensor_params: ClassVar[dict[str, str]] = {}
    base_model_is_first_model: ClassVar[bool] = False
    row_separable: ClassVar[bool] = False
    row_statistics: ClassVar[bool] = False

    def check(self, params: Params, n_models: int, has_base: bool, num_layers: int) -> None:
        """Refuse inputs the method cannot use (counts, missing base) and run every parameter's
        declared `Check`; subclasses add rules that involve several parameters."""
        if n_models < self.min_models:
            raise InputError(f"--model: {self.name} needs at least {self.min_models} model(s), got {n_models}")
        if self.max_models is not None and n_models > self.max_models:
            raise InputError(f"--model: {self.name} takes at most {self.max_models} model(s), got {n_models}")
        if self.base == "required" and not has_base:
            raise InputError(f"--base: {self.name} needs a base model (the weights the task vectors are taken from)")
        inputs = MergeInputs(n_models, has_base, num_layers)
        for key, info in type(params).model_fields.items():
            for rule in info.metadata:
                if isinstance(rule, Check):
                    rule(getattr(params, key), f"--{option_name(key)}", inputs)

    @abstractmethod
    def merge_tensor(self, tensors: list["torch.Tensor"], base: "torch.Tensor | None", params: Any, ctx: TensorContext) -> "torch.Tensor":
        """Implemented by each method."""

    def statistics(self, tensors: list["torch.Tensor"], base: "torch.Tensor | None", params: Any, ctx: TensorContext) -> "torch.Tensor":
        """A `row_statistics` method's sums over the rows of its inputs (those of blocks of rows add up)."""
        raise NotImplementedError(f"{self.name} does not declare row_statistics")

    def merge_rows(self, tensors: list["torch.Tensor"], base: "torch.Tensor | None", params: Any, ctx: TensorContext,
                   statistics: "torch.Tensor") -> "torch.Tensor":
        """A `row_statistics` method's merge of rows of its inputs, given the whole tensors' `statistics`."""
        raise NotImplementedError(f"{self.name} does not declare row_statistics")


def per_model(values: Optional[Sequence[float]], n_models: int, flag: str, default: float, broadcast: bool = False) -> list[float]:
    """One value per model: the default for all, one value for all (if `broadcast`), or one each."""
    if values is None or len(values) == 0:
        return [default] * n_models
    if broadcast and len(values) == 1:
        return [values[0]] * n_models
    if len(values) != n_models:
        one = " (or one for all)" if broadcast else ""
        raise InputError(f"{flag}: {len(values)} values for {n_models} models; give one per --model{one}")
    return list(values)


def public_params(params: Params) -> dict[str, Any]:
    """Parameters as users write them (CLI / YAML names), for cards and JSON output."""
    return {option_name(key): value for key, value in params.model_dump(mode="json").items()}


def validate_params(spec: MergeMethodSpec, values: dict[str, Any], where: str | None = None) -> Params:
    """Validate merge parameters; errors name the option (`--lambda: ...`) or, with `where`
    (a config file), the parameter (`merge.yaml: parameter 'lambda': ...`)."""
    from adaptkit.params import FieldError, validate

    if any(key not in spec.params.model_fields for key in values):
        return spec.validate_params(values, where or f"merge {spec.name}")  # unknown key: did-you-mean error

    def describe(error: FieldError) -> str:
        field = option_name(error.loc.split(".")[0]) if error.loc else ""
        label = f"{where}: parameter '{field}'" if where else f"--{field}"
        return f"{label}: {error.msg}{error.got()}"

    return validate(spec.params, values, describe)


def merge_spec(method: type[MergeMethod]) -> MergeMethodSpec:
    """The registry spec of a method class (its factory is the class itself, imported lazily)."""
    return class_spec(MergeMethodSpec, method)
