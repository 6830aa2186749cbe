"""Specs: what a plugin registers. Light objects; the implementation is imported on use.

Every spec has a name, a one-line summary, a reference (paper or URL), a factory given
as "package.module:Attribute" (or the object itself) and optionally a pydantic model of
its parameters (`extra="forbid"`, so a misspelled option is an error). Parameter models
must live in modules that do not import torch. Reading a spec imports neither pydantic nor its
plugin module: built-in specs come from the generated catalog (`CataloguedSpec`), and the pydantic
base `Params` lives in adaptkit/params.py (`adaptkit.specs.Params` is it, imported on first use).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Optional, TypeVar

from adaptkit.errors import InputError, PluginError, did_you_mean

if TYPE_CHECKING:
    from adaptkit.params import NoParams, Params


def __getattr__(name: str) -> Any:
    """`Params` and `NoParams` (adaptkit/params.py), imported with pydantic on first use."""
    if name in ("Params", "NoParams"):
        from adaptkit import params

        return getattr(params, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def missing_package(extra: str) -> Optional[str]:
    """The first distribution of adaptkit's optional extra `extra` that is not installed, None if all are;
    an extra adaptkit does not define (a plugin's) is taken as the name of an importable module."""
    import importlib.util
    from importlib import metadata

    try:
        requirements = metadata.requires("adaptkit") or []
    except metadata.PackageNotFoundError:
        requirements = []
    marker = re.compile(r"""extra\s*==\s*['"]%s['"]""" % re.escape(extra))
    packages = [re.match(r"[A-Za-z0-9_.\-]+", r).group(0) for r in requirements if marker.search(r)]
    for package in packages:
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            return package
    if not packages and importlib.util.find_spec(extra.replace("-", "_")) is None:
        return extra
    return None


@dataclass(frozen=True)
class Spec:
    """Common fields of every registered component."""

    kind: ClassVar[str] = "component"
    name: str
    factory: Any
    summary: str = ""
    reference: str = ""
    params: type[Params] = None  # type: ignore[assignment]  # None: NoParams
    extras: tuple[str, ...] = ()  # optional packages it needs, e.g. ("peft",)
    plugin: str = field(default="", compare=False)  # filled in by the registry

    def __post_init__(self) -> None:
        if self.params is None:
            from adaptkit.params import NoParams

            object.__setattr__(self, "params", NoParams)

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

    def check_extras(self, where: str) -> None:
        """Every optional extra it declares is installed (checked without importing it): a missing one is bad input."""
        for extra in self.extras:
            missing = missing_package(extra)
            if missing:
                raise InputError(f"{where}: {self.kind} '{self.name}' needs the optional package '{missing}': "
                                 f"install it with `pip install 'adaptkit[{extra}]'`")

    def validate_params(self, values: dict[str, Any] | None, where: str = "parameters") -> Params:
        """Validate user parameters against this spec's model; unknown keys get suggestions."""
        from adaptkit.params import validate

        values = dict(values or {})
        known = list(self.params.model_fields)
        for key in values:
            if key not in known:
                hint = did_you_mean(key, known)
                allowed = ", ".join(known) if known else "none"
                raise InputError(
                    f"{where}: {self.kind} '{self.name}' has no parameter '{key}'{hint} (parameters: {allowed})"
                )
        return validate(self.params, values, lambda error: f"{where}: {self.kind} '{self.name}' parameter '{error.loc}': {error.msg}")

    def param_name(self, field_name: str) -> str:
        """A parameter's name as users write it (`--set KEY=V`): the field's name."""
        return field_name

    def parameters(self) -> list[dict[str, Any]]:
        """One record per parameter: name (as users write it), type, default (None when required), required, description."""
        return [
            {
                "name": self.param_name(name),
                "type": type_name(info.annotation),
                "default": None if info.is_required() else info.get_default(call_default_factory=True),
                "required": info.is_required(),
                "description": info.description or "",
            }
            for name, info in self.params.model_fields.items()
        ]

    def param_summary(self) -> str:
        """Parameter names with defaults, for listings."""
        return ", ".join(f"{p['name']}={'required' if p['required'] else repr(p['default'])}" for p in self.parameters())


def type_name(annotation: Any) -> str:
    """A parameter type as people write it: float, list[int], 'a' | 'b', str | None."""
    from typing import Annotated, Literal, Union, get_args, get_origin

    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is Union or type(annotation).__name__ == "UnionType":
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


@dataclass(frozen=True)
class ScorerSpec(Spec):
    """An importance scorer: (model, calibration set) -> per-parameter scores."""

    kind: ClassVar[str] = "scorer"
    needs_calibration: bool = True


@dataclass(frozen=True)
class Need:
    """What a run of a method must provide before the model loads: one of the method's parameters
    `one_of` set; `how` tells the user how (it completes "--method NAME: needs ...")."""

    one_of: tuple[str, ...]
    how: str


@dataclass(frozen=True)
class MethodSpec(Spec):
    """A training method: turns (model, context) into a TrainingPlan for the one engine.

    `needs` (each a `Need`) says what the run must provide before the model is loaded: one of some
    of the method's parameters set (ssu-*: `mask` or `calib`).
    """

    kind: ClassVar[str] = "method"
    needs: tuple[Need, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for need in self.needs:
            if not any(f in self.params.model_fields for f in need.one_of):
                raise PluginError(f"method '{self.name}': declares a need of {', '.join(need.one_of)} but has none of the parameters {', '.join(need.one_of)}")

    def validate_params(self, values: dict[str, Any] | None, where: str = "parameters", flags: dict[str, str] | None = None) -> Params:
        """As Spec.validate_params; `flags` maps a parameter to the option that set it (freeze_ratio:
        --freeze-ratio), which then names the error: an option for a parameter the method lacks, or a bad value."""
        from adaptkit.params import first_error

        values, flags = dict(values or {}), {k: f for k, f in (flags or {}).items() if k in (values or {})}
        for key, flag in flags.items():
            if key not in self.params.model_fields:
                raise InputError(f"{flag}: method '{self.name}' has no parameter '{key}' (parameters: {', '.join(self.params.model_fields) or 'none'})")
        error = first_error(self.params, values)
        if error is not None and error.loc:
            where = flags.get(error.loc.split(".")[0], where)
        return super().validate_params(values, where)

    def check_needs(self, params: Params) -> None:
        """Every declared need is met by the validated parameters (before anything heavy is loaded)."""
        for need in self.needs:
            if not any(getattr(params, f, None) for f in need.one_of):
                raise InputError(f"--method {self.name}: needs {need.how}")

    def build(self, values: dict[str, Any] | None, where: str = "--set", flags: dict[str, str] | None = None, check_needs: bool = True) -> Any:
        """The method instance for these parameters: validated, needs checked (unless `check_needs` is false:
        a resolved configuration is only shown), implementation loaded."""
        params = self.validate_params(values, where, flags)
        if check_needs:
            self.check_needs(params)
        return self.load()(params)


def method_spec(method: type) -> MethodSpec:
    """The registry spec of a training method class (adaptkit.engine.plan.TrainingMethod), from its
    class attributes: name, summary, reference, Params, needs, extras. Its factory is the class itself."""
    return class_spec(MethodSpec, method, needs=tuple(method.needs), extras=tuple(method.extras))


def option_name(field_name: str) -> str:
    """The public name of a parameter: `lambda_` -> `lambda`, `lambda_prime` -> `lambda-prime`."""
    return field_name.rstrip("_").replace("_", "-")


@dataclass(frozen=True)
class MergeMethodSpec(Spec):
    """A merge method: a per-tensor function over aligned tensors of several models (whether it
    needs a base is the method class's `base`)."""

    kind: ClassVar[str] = "merge method"

    def param_name(self, field_name: str) -> str:
        """Its option's name without the dashes: `lambda_` -> `lambda` (--lambda), `lambda_prime` -> `lambda-prime`."""
        return option_name(field_name)


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
class InitializerSpec(Spec):
    """An embedding initializer: rows for tokens appended to a vocabulary (used by `vocab extend`)."""

    kind: ClassVar[str] = "initializer"


@dataclass(frozen=True)
class CommandSpec(Spec):
    """A CLI subcommand added by a plugin: factory is a Typer app or a command function."""

    kind: ClassVar[str] = "command"


SpecT = TypeVar("SpecT", bound=Spec)


def class_spec(spec_type: type[SpecT], implementation: type, **fields: Any) -> SpecT:
    """The spec of a class that declares `name`, `summary`, `reference` and `Params` as class
    attributes (scorers, merge methods); its factory is "module:Class", imported lazily."""
    return spec_type(
        name=implementation.name,
        factory=f"{implementation.__module__}:{implementation.__qualname__}",
        summary=implementation.summary,
        reference=implementation.reference,
        params=implementation.Params,
        **fields,
    )


SPEC_KINDS: dict[str, type[Spec]] = {
    cls.kind: cls
    for cls in (ScorerSpec, MethodSpec, MergeMethodSpec, EvalBackendSpec, LIDBackendSpec, InitializerSpec, CommandSpec)
}


class CataloguedSpec:
    """A built-in spec as adaptkit/plugins/catalog.py records it: its kind, name, summary, reference,
    plain fields (extras, needs, ...) and parameter listing are known without importing anything; the
    first use of anything else (params, load, validate_params, build) imports its plugin module and
    answers from the spec that module registers."""

    def __init__(self, entry: dict[str, Any]):
        entry = dict(entry)
        self._parameters = entry.pop("parameters")
        self._real: Spec | None = None
        if "extras" in entry:
            entry["extras"] = tuple(entry["extras"])
        self.__dict__.update(entry)  # kind, name, module, plugin, summary, reference, extras, ...

    def real(self) -> Spec:
        """The spec its module registers (the module is imported once)."""
        if self._real is None:
            module = importlib.import_module(self.module)
            specs = getattr(module, "SPECS", None) or [module.SPEC]
            spec = next((s for s in specs if s.name == self.name), None)
            if spec is None:
                raise PluginError(f"{self.kind} '{self.name}': {self.module} registers no such spec; regenerate the plugin catalog")
            self._real = replace(spec, plugin=self.plugin)
        return self._real

    def __getattr__(self, name: str) -> Any:  # only for what the catalog does not record
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.real(), name)

    def parameters(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self._parameters]

    param_summary = Spec.param_summary
    check_extras = Spec.check_extras  # from the recorded extras: nothing imported

    def __repr__(self) -> str:
        return f"CataloguedSpec({self.kind!r}, {self.name!r}, module={self.module!r})"


def catalog_entry(spec: Spec, module: str) -> dict[str, Any]:
    """What the catalog records of a spec registered by `module`: its plain fields (text, flags, lists of
    names) and the parameters; anything else (params, needs) is read from the spec itself when used."""
    from dataclasses import fields

    entry: dict[str, Any] = {"kind": spec.kind, "name": spec.name, "module": module, "plugin": spec.plugin}
    for f in fields(spec):
        value = getattr(spec, f.name)
        if f.name in ("name", "factory", "params", "plugin", "needs"):
            continue
        entry[f.name] = list(value) if isinstance(value, tuple) else value
    entry["parameters"] = spec.parameters()
    return entry
