"""Built-in scorers: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl

from adaptkit.plugins.scorers import fisher, magnitude, random, sparsegpt, spectrum, wanda

MODULES: tuple = (wanda, magnitude, random, sparsegpt, fisher, spectrum)


@hookimpl
def register_scorers(register):
    for module in MODULES:
        register(module.SPEC)
