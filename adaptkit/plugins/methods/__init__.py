"""Built-in methods: one module each; this entry point registers their specs (SPEC, or a list SPECS). The registry
reads them from adaptkit/plugins/catalog.py, which is generated from this hook."""

import importlib

from adaptkit.hookspecs import hookimpl

MODULE_NAMES: tuple = ("fft", "ssu", "hft", "gmt", "lota", "s2ft", "lora", "adalora", "layra", "layer_selective", "layer_freeze", "soft_reg", "spectrum", "block_expansion")


def modules() -> tuple:
    """The plugin modules, imported on first call (not at the import of this package)."""
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in MODULE_NAMES)


@hookimpl
def register_methods(register):
    for module in modules():
        for spec in getattr(module, "SPECS", None) or [module.SPEC]:
            register(spec)
