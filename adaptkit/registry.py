"""The plugin registry: a pluggy PluginManager, entry-point loading and typed lookups.

Built-in plugins and third-party plugins load the same way, from the `adaptkit`
entry-point group. `ADAPTKIT_DISABLE_PLUGINS=1` skips every third-party entry point
(the built-ins of the adaptkit distribution still load); a comma list skips the named
entry points or distributions only. A plugin that fails to import, or raises while
registering, is recorded as broken and reported; other plugins keep working. Two
plugins registering the same name make that name unusable until one is removed, and
the error names both.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from adaptkit import hookspecs
from adaptkit.errors import InputError, PluginError, did_you_mean
from adaptkit.specs import SPEC_KINDS, Spec

ENTRY_POINT_GROUP = "adaptkit"
BUILTIN_DISTRIBUTION = "adaptkit"
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
            if not isinstance(spec, expected):
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

    return replace(spec, plugin=plugin_name)


def _disabled_plugins() -> tuple[bool, set[str]]:
    value = os.environ.get("ADAPTKIT_DISABLE_PLUGINS", "").strip()
    if value.lower() in ("1", "true", "yes", "all", "*"):
        return True, set()
    return False, {item.strip() for item in value.split(",") if item.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def build_registry(load_entry_points: bool = True, extra_plugins: Iterable[Any] = ()) -> Registry:
    """A fresh registry: built-ins, third-party entry points (unless disabled) and `extra_plugins`."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(plugin_manager=pm)
    disable_all, disabled = _disabled_plugins()
    builtin_loaded = set()
    if load_entry_points:
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist else ""
            is_builtin = dist == BUILTIN_DISTRIBUTION
            if not is_builtin and (disable_all or ep.name in disabled or dist in disabled):
                continue
            if ep.value in builtin_loaded or pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                registry.mark_load_failure(ep.name, f"failed to load ({ep.value}): {type(exc).__name__}: {exc}")
                continue
            if is_builtin:
                builtin_loaded.add(ep.value)
    # Running from a source tree without an install: register the built-ins directly.
    for module_name in BUILTIN_MODULES:
        if module_name not in builtin_loaded:
            import importlib

            name = "builtin-" + module_name.rsplit(".", 1)[-1]
            if not pm.has_plugin(name):
                pm.register(importlib.import_module(module_name), name=name)
    for plugin in extra_plugins:
        pm.register(plugin, name=getattr(plugin, "__name__", None))
    registry.collect()
    return registry


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
