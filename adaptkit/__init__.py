"""adaptkit: language adaptation of large language models.

Continual pre-training on a new language without destroying what the source model
knows (Source-Shielded Updates and baselines), model composition (merges, language
vectors, instruction residuals) and evaluation (perplexity, lm-eval, chrF, code-mixing).
"""

__version__ = "0.1.0"
