"""Built-in scorers: one module each; this entry point registers their specs.
The registry reads them from adaptkit/plugins/catalog.py, which is generated from this hook."""

import importlib

from adaptkit.hookspecs import hookimpl

MODULE_NAMES: tuple = ("wanda", "magnitude", "random", "sparsegpt", "fisher", "spectrum")


def modules() -> tuple:
    """The plugin modules, imported on first call (not at the import of this package)."""
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in MODULE_NAMES)


@hookimpl
def register_scorers(register):
    for module in modules():
        register(module.SPEC)
