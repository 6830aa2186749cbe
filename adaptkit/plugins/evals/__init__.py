"""Built-in eval backends: one module each; this entry point registers their specs."""

from adaptkit.hookspecs import hookimpl
from adaptkit.plugins.evals import judge_pairwise, judge_single, lighteval, lm_eval, mt, ppl, sum

MODULES: tuple = (ppl, lm_eval, lighteval, mt, sum, judge_pairwise, judge_single)


@hookimpl
def register_eval_backends(register):
    for module in MODULES:
        register(module.SPEC)
