"""Built-in methods: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl

MODULES: tuple = ()


@hookimpl
def register_methods(register):
    for module in MODULES:
        register(module.SPEC)
