"""Specs: what a plugin registers. Light objects; the implementation is imported on use.

Every spec has a name, a one-line summary, a reference (paper or URL), a factory given
as "package.module:Attribute" (or the object itself) and optionally a pydantic model of
its parameters (`extra="forbid"`, so a misspelled option is an error). Parameter models
must live in modules that do not import torch, so `adaptkit plugins` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from adaptkit.errors import InputError, PluginError


class Params(BaseModel):
    """Base class for parameter models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoParams(Params):
    """A component without parameters."""


def resolve(target: Any) -> Any:
    """Import "package.module:Attribute" lazily; objects are returned as they are."""
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attribute.split(".") if attribute else []:
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Spec:
    """Common fields of every registered component."""

    kind: ClassVar[str] = "component"
    name: str
    factory: Any
    summary: str = ""
    reference: str = ""
    params: type[Params] = NoParams
    extras: tuple[str, ...] = ()  # optional packages it needs, e.g. ("peft",)
    plugin: str = field(default="", compare=False)  # filled in by the registry

    def load(self) -> Any:
        """The implementation (class or function) behind this spec."""
        try:
            return resolve(self.factory)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            if self.extras:
                extra = self.extras[0]
                raise InputError(
                    f"{self.kind} '{self.name}' needs the optional package '{missing}': "
                    f"install it with `pip install 'adaptkit[{extra}]'`"
                ) from exc
            raise PluginError(f"{self.kind} '{self.name}' (plugin {self.plugin}) failed to import: {exc}") from exc

    def validate_params(self, values: dict[str, Any] | None, where: str = "parameters") -> Params:
        """Validate user parameters against this spec's model; unknown keys get suggestions."""
        values = dict(values or {})
        known = list(self.params.model_fields)
        for key in values:
            if key not in known:
                from adaptkit.registry import did_you_mean

                hint = did_you_mean(key, known)
                allowed = ", ".join(known) if known else "none"
                raise InputError(
                    f"{where}: {self.kind} '{self.name}' has no parameter '{key}'{hint} (parameters: {allowed})"
                )
        try:
            return self.params(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise InputError(f"{where}: {self.kind} '{self.name}' parameter '{loc}': {err['msg']}") from None

    def param_summary(self) -> str:
        """Parameter names with defaults, for listings."""
        parts = []
        for name, info in self.params.model_fields.items():
            default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
            parts.append(f"{name}={default}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ScorerSpec(Spec):
    """An importance scorer: (model, calibration set) -> per-parameter scores."""

    kind: ClassVar[str] = "scorer"
    needs_calibration: bool = True


@dataclass(frozen=True)
class MethodSpec(Spec):
    """A training method: turns (model, context) into a TrainingPlan for the one engine.

    `needs` names what the run must provide before planning: "calibration" (a
    calibration set), "mask" (a mask set or calibration to make one), "source_weights"
    (a frozen copy of the starting weights), "target_data" (access to the training data).
    """

    kind: ClassVar[str] = "method"
    needs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MergeMethodSpec(Spec):
    """A merge method: a per-tensor function over aligned tensors of several models."""

    kind: ClassVar[str] = "merge method"
    needs_base: bool = False


@dataclass(frozen=True)
class EvalBackendSpec(Spec):
    """An evaluation backend: runs tasks of one family (ppl, lm-eval, mt ...) on a loaded model.

    `shared_params` names a settings section several backends read (e.g. "judge": `--set
    judge.model=X` reaches every judge-* backend whose parameters have that key); the
    backend's own section (`--set judge-single.model=Y`) wins over it.
    """

    kind: ClassVar[str] = "eval backend"
    shared_params: str = ""


@dataclass(frozen=True)
class LIDBackendSpec(Spec):
    """A language-identification backend: text -> ranked (language, probability)."""

    kind: ClassVar[str] = "lid backend"


@dataclass(frozen=True)
class CommandSpec(Spec):
    """A CLI subcommand added by a plugin: factory is a Typer app or a command function."""

    kind: ClassVar[str] = "command"


SPEC_KINDS: dict[str, type[Spec]] = {
    cls.kind: cls
    for cls in (ScorerSpec, MethodSpec, MergeMethodSpec, EvalBackendSpec, LIDBackendSpec, CommandSpec)
}
