"""`mt`: machine translation with the SSU paper's prompts, scored with chrF / chrF++.

Task spec: `mt:NAME=FILE.jsonl` or `mt:FILE.jsonl`. Each record holds `src` and `tgt`
texts and the language codes `src_lang` / `tgt_lang` (or give them once with
`--set mt.src_lang=en --set mt.tgt_lang=ha`). Few-shot examples (paper: 3) are other
records of the same file and direction, drawn with a fixed seed per item.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.evals.generation import GenerationBackend, GenerationParams
from adaptkit.specs import EvalBackendSpec


class MTParams(GenerationParams):
    src_lang: str | None = None
    tgt_lang: str | None = None
    shots: int = Field(3, ge=0, description="in-context examples per prompt (paper: 3)")


class MTBackend(GenerationBackend):
    name = "mt"
    fields = ("src", "tgt")
    language_keys = ("src_lang", "tgt_lang")

    def prompt(self, languages, text, shots):
        from adaptkit.evals.templates import mt_prompt

        return mt_prompt(languages[0], languages[1], text, shots)

    def describe(self, languages):
        return {"directions": sorted({f"{s}->{t}" for s, t in languages})}


SPEC = EvalBackendSpec(
    name="mt",
    factory="adaptkit.plugins.evals.mt:MTBackend",
    summary="Machine translation with the SSU paper's per-language prompts, chrF/chrF++ via sacrebleu",
    reference="Yamaguchi et al. 2025 (SSU), arXiv:2512.04844; Popović 2015/2017 (chrF, chrF++)",
    params=MTParams,
    extras=("sacrebleu",),
)
