"""Built-in merges: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl

MODULES: tuple = ()


@hookimpl
def register_merge_methods(register):
    for module in MODULES:
        register(module.SPEC)
