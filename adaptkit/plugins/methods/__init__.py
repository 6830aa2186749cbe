"""Built-in methods: one module each; this entry point registers their specs (SPEC, or a list SPECS)."""

from adaptkit.hookspecs import hookimpl

from adaptkit.plugins.methods import fft, ssu

MODULES: tuple = (fft, ssu)


@hookimpl
def register_methods(register):
    for module in MODULES:
        for spec in getattr(module, "SPECS", None) or [module.SPEC]:
            register(spec)
