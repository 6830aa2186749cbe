"""The whole plugin API of adaptkit at a glance.

A plugin is a module (or object) with functions marked `@hookimpl` whose names match
the hooks below. Each hook receives a `register` callback; call it with a spec (see
`adaptkit.specs`) for every component the plugin provides. Specs name their
implementation lazily ("package.module:Attribute"), so listing plugins never imports
torch or an optional extra.

Third-party packages expose their plugin module through the `adaptkit` entry-point
group in their pyproject.toml; the built-in plugins are registered the same way:

    [project.entry-points.adaptkit]
    my-plugin = "my_package.adaptkit_plugin"
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "adaptkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_scorers(register: Callable) -> None:
    """Register importance scorers with `register(ScorerSpec(...))` (used by `score` and ssu-* methods)."""


@hookspec
def register_methods(register: Callable) -> None:
    """Register training methods with `register(MethodSpec(...))` (used by `train`)."""


@hookspec
def register_merge_methods(register: Callable) -> None:
    """Register merge methods with `register(MergeMethodSpec(...))` (used by `merge`)."""


@hookspec
def register_eval_backends(register: Callable) -> None:
    """Register evaluation backends with `register(EvalBackendSpec(...))` (used by `evaluate`)."""


@hookspec
def register_lid_backends(register: Callable) -> None:
    """Register language-identification backends with `register(LIDBackendSpec(...))` (used by `codemix`)."""


@hookspec
def register_initializers(register: Callable) -> None:
    """Register embedding initializers with `register(InitializerSpec(...))` (used by `vocab extend`)."""


@hookspec
def register_commands(register: Callable) -> None:
    """Add CLI subcommands with `register(CommandSpec(name=..., factory="pkg.mod:typer_app_or_function"))`."""
