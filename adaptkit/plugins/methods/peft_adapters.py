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


def adapter_plan(wrapped, summary: str, callbacks: list[TrainingCallback]) -> TrainingPlan:
    """Train what peft made trainable (adapters and modules_to_save); the base model stays frozen."""
    plan = TrainingPlan.only(wrapped, lambda _, param: param.requires_grad)
    count, total = plan.counts()
    plan.summary = f"{summary}: {count:,} trainable parameters ({count / max(1, total):.2%} of {total:,})"
    plan.callbacks.extend(callbacks)
    if wrapped.peft_config["default"].modules_to_save:
        for callback in plan.callbacks:  # peft reads fully trained modules through state_dict(), which reshards an FSDP2 model
            if isinstance(callback, MergeAndSaveAdapter):
                callback.shard_aware = False
    return plan


class MergeAndSaveAdapter(TrainingCallback):
    """Export the adapter merged into dense weights; save the PEFT adapter in final/adapter/.

    Its only hook is the export, which needs the whole model: under FSDP the strategy unshards it first.
    Not with fully trained modules (peft's modules_to_save: train_embeddings_and_head), which peft
    exports through `state_dict()`; an FSDP2 module answers that by resharding (adapter_plan says so).
    """

    shard_aware = True
    exports_whole_model = True

    def __init__(self, base_model: str):
        local = Path(base_model).expanduser()
        self.base_model = str(local.resolve()) if local.exists() else base_model
        self.config = None
        self.state: dict = {}

    def export(self, model):
        import copy
        import warnings

        from peft import get_peft_model_state_dict

        from adaptkit.engine.shards import held_state_dict

        # get_peft_model_state_dict resizes AdaLoRA matrices to the allocated ranks (and records them in the
        # config); a matrix pruned to rank 0 is legitimate there, not the unsaved shard peft warns about
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*invalid shape.*")
            state = get_peft_model_state_dict(model, state_dict=held_state_dict(model))
        self.state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
        self.config = copy.deepcopy(model.peft_config["default"])
        self.config.inference_mode = True
        self.config.base_model_name_or_path = self.base_model
        return model.merge_and_unload()

    def save_extra(self, model, directory: Path) -> None:
        from safetensors.torch import save_file

        target = Path(directory) / ADAPTER_DIR
        target.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(target))
        save_file(self.state, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
