"""Built-in merges: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl
from adaptkit.plugins.merges import (
    dare_linear,
    dare_ties,
    layer_swap,
    layra_instruct,
    layra_merge,
    layra_series,
    lines,
    linear,
    revert,
    slerp,
    task_arithmetic,
    ties,
)

MODULES: tuple = (linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, revert, lines, layer_swap, layra_merge, layra_series, layra_instruct)


@hookimpl
def register_merge_methods(register):
    for module in MODULES:
        register(module.SPEC)
