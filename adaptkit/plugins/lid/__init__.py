"""Built-in lid: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl

MODULES: tuple = ()


@hookimpl
def register_lid_backends(register):
    for module in MODULES:
        register(module.SPEC)
