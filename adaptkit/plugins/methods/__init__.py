"""Built-in methods: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl

from adaptkit.plugins.methods import fft

MODULES: tuple = (fft,)


@hookimpl
def register_methods(register):
    for module in MODULES:
        register(module.SPEC)
