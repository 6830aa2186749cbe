"""`merge()`: run a registered merge method by name (used by the CLI, configs and notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from adaptkit.errors import InputError
from adaptkit.merge.base import option_name, validate_params
from adaptkit.merge.executor import Input, MergeOptions, run_merge
from adaptkit.registry import get_spec
from adaptkit.specs import Params


def merge(
    method: str,
    models: Sequence[str | Path],
    output: str | Path,
    base: str | Path | None = None,
    params: dict[str, Any] | None = None,
    options: MergeOptions | None = None,
    tensor_params: Callable[[str, float], Params] | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """Merge `models` (and `base`) with the merge method called `method` into `output`.

    `params` are validated by the method's parameter model (errors name the CLI option,
    or the parameter of the config file `where`); parameters naming extra model
    directories or mask/score files become aligned inputs. Returns the merge summary.
    """
    spec = get_spec("merge method", method, flag="merge method")
    implementation = spec.load()()
    validated = validate_params(spec, dict(params or {}), where)
    if not models:
        raise InputError(f"--model: {method} needs at least one --model")
    if base is not None and implementation.base == "none":
        raise InputError(f"--base: {method} does not use a base model")
    aux = []
    for role in implementation.model_params:
        value = getattr(validated, role)
        if value:
            aux.append(Input(role, Path(value), f"--{option_name(role)}"))
    for role, filename in implementation.tensor_params.items():
        value = getattr(validated, role)
        if value:
            aux.append(Input(role, Path(value), f"--{option_name(role)}", kind="tensors", filename=filename))
    return run_merge(
        implementation,
        validated,
        [Input("model", Path(model), "--model") for model in models],
        Path(output),
        base=Input("base", Path(base), "--base") if base is not None else None,
        aux=aux,
        options=options,
        tensor_params=tensor_params,
    )
