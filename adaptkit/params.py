"""Parameter models: the pydantic base every component's parameters derive from.

Kept apart from specs.py so that reading specs (the registry, `adaptkit plugins`, `merge --help`)
does not import pydantic; `adaptkit.specs.Params` and `NoParams` are these. Also the one home of
turning a pydantic validation error into a one-line InputError (`validate`, `first_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from adaptkit.errors import InputError

M = TypeVar("M", bound=BaseModel)


class Params(BaseModel):
    """Base class for parameter models: unknown keys and non-finite numbers (inf, nan) are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class NoParams(Params):
    """A component without parameters."""


@dataclass(frozen=True)
class FieldError:
    """The first error of a pydantic validation, as a one-line message needs it."""

    loc: str  # dotted location, "" for the model itself
    msg: str
    type: str
    input: Any

    def got(self) -> str:
        """' (got VALUE)', or nothing for a missing value."""
        return "" if self.type == "missing" else f" (got {self.input!r})"


def first_error(model: type[BaseModel], data: dict[str, Any]) -> FieldError | None:
    """The first error of validating `data` with `model`, or None when it is valid."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return _field_error(exc)
    return None


def validate(model: type[M], data: dict[str, Any], describe: Callable[[FieldError], str]) -> M:
    """`data` validated by `model`; the first error becomes one InputError line, `describe(error)`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe(_field_error(exc))) from None


def _field_error(exc: ValidationError) -> FieldError:
    error = exc.errors()[0]
    return FieldError(".".join(str(p) for p in error["loc"]), error["msg"], error["type"], error.get("input"))
