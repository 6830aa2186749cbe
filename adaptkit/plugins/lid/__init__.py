"""Built-in LID backends: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl
from adaptkit.plugins.lid import fasttext, py3langid, pycld2

MODULES: tuple = (py3langid, pycld2, fasttext)


@hookimpl
def register_lid_backends(register):
    for module in MODULES:
        register(module.SPEC)
