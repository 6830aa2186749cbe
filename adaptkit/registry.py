"""The plugin registry: a pluggy PluginManager, entry-point loading and typed lookups.

Built-in plugins and third-party plugins load the same way, from the `adaptkit`
entry-point group. `ADAPTKIT_DISABLE_PLUGINS=1` skips every third-party entry point
(the built-ins of the adaptkit distribution still load); a comma list skips the named
entry points or distributions only. A plugin that fails to import, or raises while
registering, is recorded as broken and reported; other plugins keep working. Two
plugins registering the same name make that name unusable until one is removed, and
the error names both.

The built-in specs are read from adaptkit/plugins/catalog.py (generated from the built-in plugin
modules by `python scripts/write_plugin_catalog.py`; a test fails when it is out of date), so
listing them imports no plugin module; a spec's module is imported when the spec is used.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from adaptkit import hookspecs
from adaptkit.entry_points import OWN_DISTRIBUTION, entry_points
from adaptkit.errors import InputError, PluginError, did_you_mean
from adaptkit.specs import SPEC_KINDS, CataloguedSpec, Spec, catalog_entry

CATALOG_MODULE = "adaptkit.plugins.catalog"
BUILTIN_MODULES = (
    "adaptkit.plugins.scorers",
    "adaptkit.plugins.methods",
    "adaptkit.plugins.merges",
    "adaptkit.plugins.evals",
    "adaptkit.plugins.lid",
    "adaptkit.plugins.initializers",
)
HOOK_FOR_KIND = {
    "scorer": "register_scorers",
    "method": "register_methods",
    "merge method": "register_merge_methods",
    "eval backend": "register_eval_backends",
    "lid backend": "register_lid_backends",
    "initializer": "register_initializers",
    "command": "register_commands",
}


@dataclass
class BrokenPlugin:
    name: str
    error: str


@dataclass
class Conflict:
    kind: str
    name: str
    plugins: list[str]


@dataclass
class Registry:
    """All registered specs by kind and name, plus what went wrong while loading."""

    plugin_manager: pluggy.PluginManager
    specs: dict[str, dict[str, Spec]] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)  # failed to load, or a registration hook raised
    load_failures: list[BrokenPlugin] = field(default_factory=list)  # failed to load (kept across `collect`)
    conflicts: dict[tuple[str, str], Conflict] = field(default_factory=dict)

    def get(self, kind: str, name: str, flag: str | None = None) -> Spec:
        """The spec of `kind` called `name`; unknown names get the closest suggestions."""
        if (kind, name) in self.conflicts:
            c = self.conflicts[(kind, name)]
            raise PluginError(
                f"{kind} '{name}' is registered by several plugins: {', '.join(c.plugins)}; "
                f"uninstall one or skip it with ADAPTKIT_DISABLE_PLUGINS={c.plugins[-1]}"
            )
        known = self.specs.get(kind, {})
        if name not in known:
            where = f"{flag}: " if flag else ""
            choices = ", ".join(sorted(known)) or "none registered"
            raise InputError(f"{where}unknown {kind} '{name}'{did_you_mean(name, known)} (available: {choices})")
        return known[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.specs.get(kind, {}))

    def all_specs(self) -> list[Spec]:
        return [spec for kind in self.specs.values() for spec in kind.values()]

    def collect(self) -> None:
        """(Re)run every registration hook and rebuild the spec tables."""
        self.specs = {kind: {} for kind in HOOK_FOR_KIND}
        self.conflicts = {}
        self.broken = list(self.load_failures)
        for kind, hook_name in HOOK_FOR_KIND.items():
            hook = getattr(self.plugin_manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                register = self._register_callback(kind, impl.plugin_name)
                try:
                    impl.function(register=register)
                except Exception as exc:  # a plugin bug must not break other plugins
                    self.broken.append(BrokenPlugin(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}"))

    def _register_callback(self, kind: str, plugin_name: str):
        expected = SPEC_KINDS[kind]

        def register(spec: Spec) -> None:
            if isinstance(spec, CataloguedSpec) and spec.kind == kind:
                pass
            elif not isinstance(spec, expected):
                raise TypeError(f"expected a {expected.__name__}, got {type(spec).__name__}")
            spec = _with_plugin(spec, plugin_name)
            table = self.specs[kind]
            if spec.name in table:
                first = table[spec.name].plugin
                conflict = self.conflicts.setdefault((kind, spec.name), Conflict(kind, spec.name, [first]))
                conflict.plugins.append(plugin_name)
                return
            table[spec.name] = spec

        return register

    def mark_load_failure(self, plugin_name: str, error: str) -> None:
        self.load_failures.append(BrokenPlugin(plugin_name, error))
        self.broken.append(self.load_failures[-1])


def _with_plugin(spec: Spec, plugin_name: str) -> Spec:
    from dataclasses import replace

    return spec if isinstance(spec, CataloguedSpec) else replace(spec, plugin=plugin_name)


def _disabled_plugins() -> tuple[bool, set[str]]:
    value = os.environ.get("ADAPTKIT_DISABLE_PLUGINS", "").strip()
    if value.lower() in ("1", "true", "yes", "all", "*"):
        return True, set()
    return False, {item.strip() for item in value.split(",") if item.strip()}


def build_registry(load_entry_points: bool = True, extra_plugins: Iterable[Any] = ()) -> Registry:
    """A fresh registry: built-ins (from the catalog), third-party entry points (unless disabled) and `extra_plugins`."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(plugin_manager=pm)
    for name, plugin in _catalog_plugins().items():
        pm.register(plugin, name=name)
    disable_all, disabled = _disabled_plugins()
    for ep in entry_points() if load_entry_points else []:
        dist = ep.dist.name if ep.dist else ""
        if dist == OWN_DISTRIBUTION or pm.has_plugin(ep.name):
            continue  # the built-ins are the catalog's
        if disable_all or ep.name in disabled or dist in disabled:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            registry.mark_load_failure(ep.name, f"failed to load ({ep.value}): {type(exc).__name__}: {exc}")
    for plugin in extra_plugins:
        pm.register(plugin, name=getattr(plugin, "__name__", None))
    registry.collect()
    return registry


def _catalog_plugins() -> dict[str, Any]:
    """One plugin per built-in plugin module, registering the catalog's specs of that module."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for entry in importlib.import_module(CATALOG_MODULE).ENTRIES:
        entries.setdefault(entry["plugin"], []).append(entry)
    plugins = {}
    for name, group in entries.items():
        def register_all(register, group=group):
            for entry in group:
                register(CataloguedSpec(entry))

        plugins[name] = types.SimpleNamespace(**{HOOK_FOR_KIND[group[0]["kind"]]: hookspecs.hookimpl(register_all)})
    return plugins


def builtin_catalog() -> list[dict[str, Any]]:
    """The catalog's entries as the built-in plugin modules register them today (imports every one)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(plugin_manager=pm)
    owner = {}
    for module_name in BUILTIN_MODULES:
        package = importlib.import_module(module_name)
        pm.register(package, name="builtin-" + module_name.rsplit(".", 1)[-1])
        for module in package.modules():
            for spec in getattr(module, "SPECS", None) or [module.SPEC]:
                owner[(spec.kind, spec.name)] = module.__name__
    registry.collect()
    if registry.broken:
        raise PluginError(f"built-in plugin broken: {registry.broken[0].name}: {registry.broken[0].error}")
    specs = sorted(registry.all_specs(), key=lambda s: (s.plugin, s.kind, s.name))
    return [catalog_entry(spec, owner[(spec.kind, spec.name)]) for spec in specs]


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use; broken plugins are warned about once."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
        for broken in _REGISTRY.broken:
            warn(f"plugin '{broken.name}' is broken and was skipped: {broken.error}")
    return _REGISTRY


def reset_registry() -> None:
    """Forget the process-wide registry (tests, or after installing a plugin in-process)."""
    global _REGISTRY
    _REGISTRY = None


def register_plugin(plugin: Any, name: str | None = None) -> Registry:
    """Register a plugin object in-process (as tests and notebooks do) and refresh the specs."""
    registry = get_registry()
    registry.plugin_manager.register(plugin, name=name)
    registry.collect()
    return registry


def unregister_plugin(name: str) -> None:
    registry = get_registry()
    registry.plugin_manager.unregister(name=name)
    registry.collect()


def get_spec(kind: str, name: str, flag: str | None = None) -> Spec:
    return get_registry().get(kind, name, flag)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
