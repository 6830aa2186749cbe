"""Built-in merges: one module each; this entry point registers their specs.
The registry reads them from adaptkit/plugins/catalog.py, which is generated from this hook."""

import importlib

from adaptkit.hookspecs import hookimpl

MODULE_NAMES: tuple = (
    "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "revert", "lines", "layer_swap", "layra_merge", "layra_series", "layra_instruct",
    "model_stock", "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "nuslerp", "karcher", "sce", "multislerp",
)


def modules() -> tuple:
    """The plugin modules, imported on first call (not at the import of this package)."""
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in MODULE_NAMES)


@hookimpl
def register_merge_methods(register):
    for module in modules():
        register(module.SPEC)
