"""Built-in embedding initializers for `vocab extend`: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl
from adaptkit.plugins.initializers import mean, random, subword_mean

MODULES: tuple = (subword_mean, mean, random)


@hookimpl
def register_initializers(register):
    for module in MODULES:
        register(module.SPEC)
