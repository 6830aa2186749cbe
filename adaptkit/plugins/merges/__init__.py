"""Built-in merges: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl
from adaptkit.plugins.merges import (
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    karcher,
    layer_swap,
    layra_instruct,
    layra_merge,
    layra_series,
    lines,
    linear,
    model_stock,
    multislerp,
    nuslerp,
    revert,
    sce,
    slerp,
    task_arithmetic,
    ties,
)

MODULES: tuple = (
    linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, revert, lines, layer_swap, layra_merge, layra_series, layra_instruct,
    model_stock, della, della_linear, breadcrumbs, breadcrumbs_ties, nuslerp, karcher, sce, multislerp,
)


@hookimpl
def register_merge_methods(register):
    for module in MODULES:
        register(module.SPEC)
