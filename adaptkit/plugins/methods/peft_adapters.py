"""What the peft-based methods (lora, adalora, layra) share: wrapping the model, the plan, and saving
both a merged dense model (final/) and a standard PEFT adapter (final/adapter/).

Not a plugin itself. peft is an optional extra (`pip install 'adaptkit[peft]'`), imported only when
a run uses one of these methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BeforeValidator

from adaptkit.engine.plan import TrainingCallback, TrainingPlan
from adaptkit.errors import InputError, require, first_line

ADAPTER_DIR = "adapter"
ALL_LINEAR = "all-linear"


def _split(value: Any) -> Any:
    if isinstance(value, str) and value != ALL_LINEAR:
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


TargetModules = Annotated[Union[list[str], str], BeforeValidator(_split)]
"""'all-linear' (every linear projection of the blocks, not the LM head) or module names: 'q_proj,v_proj'."""


def import_peft(method: str):
    return require("peft", "peft", f"--method {method}")


def embedding_module_names(model) -> list[str]:
    """Short names of the input-embedding and LM-head modules (peft's `modules_to_save`)."""
    modules = {id(module): name for name, module in model.named_modules()}
    names = [modules[id(model.get_input_embeddings())].rsplit(".", 1)[-1]]
    output = model.get_output_embeddings()
    if output is not None and id(output) in modules:
        names.append(modules[id(output)].rsplit(".", 1)[-1])
    return names


def resolve_targets(model, targets: "list[str] | str") -> list[str]:
    """'all-linear' as the explicit list of the blocks' linear projection names (q_proj, ..., down_proj)."""
    if targets != ALL_LINEAR:
        return list(targets)
    from adaptkit.layers import block_linears, find_layers

    block = find_layers(model)[1][0]
    return sorted({name.rsplit(".", 1)[-1] for role in block_linears(block).values() for name in role})


def wrap(model, config, method: str):
    """The peft model for `config`; peft's complaints about targets become one-line input errors."""
    import warnings

    peft = import_peft(method)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise InputError(f"--set target_modules: {first_line(exc)}") from None


def train_ends_in_place(wrapped, model) -> dict[str, Any]:
    """Train the token embeddings and LM head of the wrapped model in full, in place (one tensor when tied).

    What peft's `modules_to_save` does, without its wrapper: peft trains a copy of each module, which starts
    equal to the original, so training the original gives the same weights; and the base model's own
    parameters shard under FSDP2 like any other (the wrapper does not). Returns the adapter-config fields
    that make the saved adapter load the trained modules as peft's modules_to_save.
    """
    base = wrapped.get_base_model()
    for module in (base.get_input_embeddings(), base.get_output_embeddings()):
        if module is not None:
            for param in module.parameters():
                param.requires_grad_(True)
    fields: dict[str, Any] = {"modules_to_save": embedding_module_names(model)}
    if getattr(model.config, "tie_word_embeddings", False):
        fields["ensure_weight_tying"] = True  # peft keeps the loaded copies tied (peft >= 0.18)
    return fields


def adapter_plan(wrapped, summary: str, callbacks: list[TrainingCallback]) -> TrainingPlan:
    """Train what requires a gradient (adapters, and the embeddings and head if train_ends_in_place ran); the base model stays frozen."""
    plan = TrainingPlan.only(wrapped, lambda _, param: param.requires_grad)
    plan.summary = summary
    plan.callbacks.extend(callbacks)
    return plan


class MergeAndSaveAdapter(TrainingCallback):
    """Export the adapter merged into dense weights; save the PEFT adapter in final/adapter/.

    Its only hook is the export, which needs the whole model: under FSDP the strategy unshards it first.
    `saved_config`: adapter-config fields for the saved adapter that differ from the training config
    (modules_to_save for embeddings trained in place; AdaLoRA's orthogonality weight, applied by the engine).
    """

    shard_aware = True
    exports_whole_model = True

    def __init__(self, base_model: str, saved_config: dict[str, Any] | None = None):
        local = Path(base_model).expanduser()
        self.base_model = str(local.resolve()) if local.exists() else base_model
        self.saved_config = dict(saved_config or {})
        self.config = None
        self.state: dict = {}

    def export(self, model):
        import copy
        import warnings

        from peft import get_peft_model_state_dict

        from adaptkit.engine.shards import held_state_dict

        held = held_state_dict(model)
        # get_peft_model_state_dict resizes AdaLoRA matrices to the allocated ranks (and records them in the
        # config); a matrix pruned to rank 0 is legitimate there, not the unsaved shard peft warns about
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*invalid shape.*")
            state = get_peft_model_state_dict(model, state_dict=held)
        state.update(_in_place_modules(model, held, self.saved_config.get("modules_to_save", [])))
        self.state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
        self.config = copy.deepcopy(model.peft_config["default"])
        for key, value in self.saved_config.items():
            setattr(self.config, key, value)
        self.config.inference_mode = True
        self.config.base_model_name_or_path = self.base_model
        return model.merge_and_unload()

    def save_extra(self, model, directory: Path, state=None) -> None:
        from adaptkit.io.tensors import save_tensors

        target = Path(directory) / ADAPTER_DIR
        target.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(target))
        save_tensors(self.state, target / "adapter_model.safetensors", {"format": "pt"})


def _in_place_modules(model, held: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The tensors of the modules trained in place, under the keys peft saves modules_to_save with
    (the module's state-dict name in the peft model: base_model.model.<path>.weight)."""
    prefixes = tuple(f"{path}." for path, _ in model.named_modules() if path.rsplit(".", 1)[-1] in names)
    return {key: tensor for key, tensor in held.items() if key.startswith(prefixes) and "lora_" not in key}
