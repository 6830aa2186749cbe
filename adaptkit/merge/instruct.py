"""Instruction residuals (chat vectors): theta_instruct - theta_base, applied to adapted models.

Huang et al. 2024, "Chat Vector" (arXiv 2310.04799); LayRA-instruct in "Continually Adding New Languages
to Multilingual Language Models" (arXiv 2509.11414). Two forms:

- two steps: `extract` writes v = theta_instruct - theta_base once (an instruction-vector
  directory: sharded `vector*.safetensors` + `instruct_vector.json` with the architecture
  and input hashes; base and instruct must have identical shapes); `apply` computes
  theta_model + alpha * v for any model of the same architecture;
- one step: theta_instruct + alpha (theta_adapted - theta_base). Both are the same model
  at alpha = 1; otherwise alpha scales the instruction residual (two steps) or the
  language vector (one step).

Vocabulary rule: when adaptation extended the vocabulary (the model has more embedding /
LM-head rows than the vector or the base), the shared rows are combined as above and the
rows of the added tokens are copied unchanged from the adapted model: no instruction
residual exists for them. A vector with more rows than the model is refused. The
instruct model's chat template travels with the vector and is added to outputs whose
tokenizer has none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.merge.base import Coefficient, MergeMethod
from adaptkit.merge.executor import VECTOR_INFO, Input, MergeOptions, copy_tokenizer_files, run_merge
from adaptkit.merge.ops import instruct_plus_language_
from adaptkit.specs import NoParams, Params

REFERENCE = "Huang et al. 2024, Chat Vector, arXiv 2310.04799; LayRA-instruct, arXiv 2509.11414"
CHAT_TEMPLATE = "chat_template.jinja"


class AlphaParams(Params):
    alpha: Coefficient = Field(1.0, description="Scale in [-10, 10].")


class Extract(MergeMethod):
    name = "instruct-vector-extract"
    summary = "theta_instruct - theta_base"
    reference = REFERENCE
    Params = NoParams
    base = "required"
    max_models = 1
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params, ctx):
        return tensors[0].sub_(base)


class ApplyVector(MergeMethod):
    name = "instruct-vector-apply"
    summary = "theta_model + alpha * v"
    reference = REFERENCE
    Params = AlphaParams
    max_models = 1
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: AlphaParams, ctx):
        return tensors[0].add_(ctx.aux["vector"], alpha=params.alpha)


class ApplyOneStep(MergeMethod):
    name = "instruct-residual"
    summary = "theta_instruct + alpha (theta_adapted - theta_base)"
    reference = REFERENCE
    Params = AlphaParams
    base = "required"
    max_models = 1
    row_separable = True  # elementwise

    def merge_tensor(self, tensors, base, params: AlphaParams, ctx):
        return instruct_plus_language_(tensors[0], ctx.aux["instruct"], base, params.alpha)


def extract(base: Path, instruct: Path, output: Path, options: MergeOptions) -> dict[str, Any]:
    """Write the instruction vector theta_instruct - theta_base as an instruction-vector directory."""
    options.prefix = "vector"
    options.write_config = False
    options.copy_tokenizer = False
    options.vocab_rule = False
    options.title = "Instruction vector card"

    def finalize(directory: Path, summary: dict[str, Any]) -> list[str]:
        from adaptkit.io.models import read_config

        config = read_config(instruct)
        info = {
            "format": "adaptkit-instruct-vector",
            "version": 1,
            "model_type": config.get("model_type", ""),
            "architectures": config.get("architectures", []),
            "vocab_size": config.get("vocab_size"),
            "num_hidden_layers": config.get("num_hidden_layers"),
            "inputs": {item["role"]: item for item in summary["inputs"]},
        }
        (directory / VECTOR_INFO).write_text(json.dumps(info, indent=2) + "\n")
        notes = ["the vector is theta_instruct - theta_base; apply it with `adaptkit instruct-vector apply --vector`"]
        copy_tokenizer_files(instruct, directory)  # its rows' tokens: `apply --tokenizer-source` maps them by string
        if copy_chat_template(instruct, directory, force=True):
            notes.append("the instruct model's chat template is stored with the vector")
        return notes

    options.finalize = finalize
    return run_merge(Extract(), NoParams(), [Input("instruct", instruct, "--instruct")], output, base=Input("base", base, "--base"), options=options)


def apply_vector(model: Path, vector: Path, alpha: float, output: Path, options: MergeOptions) -> dict[str, Any]:
    """theta_model + alpha * v, with v from `extract`."""
    params = _alpha(alpha)
    options.finalize = _chat_template_from(vector)
    return run_merge(ApplyVector(), params, [Input("model", model, "--model")], output, aux=[Input("vector", vector, "--vector", kind="vector")], options=options)


def apply_one_step(model: Path, base: Path, instruct: Path, alpha: float, output: Path, options: MergeOptions) -> dict[str, Any]:
    """theta_instruct + alpha (theta_model - theta_base), without writing the vector."""
    params = _alpha(alpha)
    options.finalize = _chat_template_from(instruct)
    return run_merge(
        ApplyOneStep(), params, [Input("model", model, "--model")], output,
        base=Input("base", base, "--base"), aux=[Input("instruct", instruct, "--instruct")], options=options,
    )


def _alpha(alpha: float) -> AlphaParams:
    from adaptkit.params import validate

    return validate(AlphaParams, {"alpha": alpha}, lambda error: f"--alpha: {error.msg} (got {alpha})")


def _chat_template_from(source: Path):
    def finalize(directory: Path, summary: dict[str, Any]) -> list[str]:
        if copy_chat_template(Path(source), directory, force=False):
            return [f"chat template added from '{source}' (the model's tokenizer had none)"]
        return []

    return finalize


def directory_has_chat_template(directory: Path) -> bool:
    if (directory / CHAT_TEMPLATE).is_file():
        return True
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text()).get("chat_template"))
        except ValueError:
            return False
    return False


def copy_chat_template(source: Path, target: Path, force: bool) -> bool:
    """Give `target` the chat template of `source` (as chat_template.jinja) unless it has one."""
    if not force and directory_has_chat_template(target):
        return False
    if (source / CHAT_TEMPLATE).is_file():
        shutil.copyfile(source / CHAT_TEMPLATE, target / CHAT_TEMPLATE)
        return True
    config = source / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text()).get("chat_template")
        except ValueError:
            template = None
        if isinstance(template, str) and template:
            (target / CHAT_TEMPLATE).write_text(template, encoding="utf-8")
            return True
    return False
