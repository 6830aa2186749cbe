"""Built-in methods: one module each; this entry point registers their specs (SPEC, or a list SPECS)."""

from adaptkit.hookspecs import hookimpl

from adaptkit.plugins.methods import adalora, block_expansion, fft, gmt, hft, layer_freeze, layer_selective, layra, lora, lota, s2ft, soft_reg, spectrum, ssu

MODULES: tuple = (fft, ssu, hft, gmt, lota, s2ft, lora, adalora, layra, layer_selective, layer_freeze, soft_reg, spectrum, block_expansion)


@hookimpl
def register_methods(register):
    for module in MODULES:
        for spec in getattr(module, "SPECS", None) or [module.SPEC]:
            register(spec)
