"""`sum`: summarization with the SSU paper's prompts, scored with chrF / chrF++.

Task spec: `sum:NAME=FILE.jsonl` or `sum:FILE.jsonl`; records hold `text`, `summary`
and `lang` (or `--set sum.lang=ha`). The paper evaluates summarization 0-shot.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.evals.generation import GenerationBackend, GenerationParams
from adaptkit.specs import EvalBackendSpec


class SumParams(GenerationParams):
    lang: str | None = None
    shots: int = Field(0, ge=0, description="in-context examples per prompt (paper: 0)")


class SumBackend(GenerationBackend):
    name = "sum"
    fields = ("text", "summary")
    language_keys = ("lang",)

    def prompt(self, languages, text, shots):
        from adaptkit.evals.templates import sum_prompt

        return sum_prompt(languages[0], text, shots)

    def describe(self, languages):
        return {"languages": sorted({l[0] for l in languages})}


SPEC = EvalBackendSpec(
    name="sum",
    factory="adaptkit.plugins.evals.sum:SumBackend",
    summary="Summarization with the SSU paper's per-language prompts, chrF/chrF++ via sacrebleu",
    reference="Yamaguchi et al. 2025 (SSU), arXiv:2512.04844",
    params=SumParams,
    extras=("sacrebleu",),
)
