"""`mt`: machine translation with the SSU paper's prompts, scored with chrF / chrF++.

Task spec: `mt:[NAME=]FLORES_DIR:SRC-TGT` reads the FLORES-200 layout (`dev/`, `devtest/`;
`adaptkit.evals.layouts`): the devtest sentences are evaluated, shots are drawn from dev
(e.g. `mt:flores200_dataset:ha-en`, or explicit FLORES codes `hau_Latn-eng_Latn`). Or
`mt:[NAME=]FILE.jsonl`: records holding `src` and `tgt` texts and the language codes
`src_lang` / `tgt_lang` (or give them once with `--set mt.src_lang=en --set mt.tgt_lang=ha`),
whose shots are other records of the same file and direction. Few-shot examples (paper: 3)
are drawn with a fixed seed per item. `--set mt.protocol=ssu-paper` is the paper's
evaluation (adaptkit.evals.generation). `--set mt.selection=reference` evaluates the items the SSU
reference evaluates: the devtest rows in the order pandas' `.sample(random_state=42)` draws them,
the first `limit` (500) of them (adaptkit.evals.layouts).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.evals.generation import GenerationBackend, GenerationData, GenerationParams
from adaptkit.specs import EvalBackendSpec


class MTParams(GenerationParams):
    src_lang: str | None = None
    tgt_lang: str | None = None
    shots: int = Field(3, ge=0, description="in-context examples per prompt (paper: 3)")


class MTBackend(GenerationBackend):
    name = "mt"
    fields = ("src", "tgt")
    language_keys = ("src_lang", "tgt_lang")

    def instruction(self, languages):
        from adaptkit.evals.templates import mt_instruction

        return mt_instruction(languages[0], languages[1])

    def query(self, languages, text):
        from adaptkit.evals.templates import mt_query

        return mt_query(text)

    def read_layout(self, root, languages, where) -> GenerationData:
        from adaptkit.errors import InputError
        from adaptkit.evals.langcodes import resolve_language
        from adaptkit.evals.layouts import read_flores

        src_text, sep, tgt_text = languages.partition("-")
        if not sep or not src_text or not tgt_text:
            raise InputError(f"{where}: expected FLORES_DIR:SRC-TGT (e.g. :ha-en or :hau_Latn-eng_Latn), got ':{languages}'")
        src, tgt = (resolve_language(code, where) for code in (src_text, tgt_text))
        files = [code if "_" in code else canonical for code, canonical in ((src_text, src), (tgt_text, tgt))]
        rows = read_flores(root, files[0], files[1], "devtest", where)
        pool = read_flores(root, files[0], files[1], "dev", where)
        info = {"dataset": "flores-200", "dir": str(root), "split": "devtest", "shots_from": "dev"}
        return GenerationData(f"flores-{src}-{tgt}", rows, [(src, tgt)] * len(rows), pool, info)

    def describe(self, languages):
        return {"directions": sorted({f"{s}->{t}" for s, t in languages})}

    def reference_order(self, data, where):
        from adaptkit.evals.layouts import sampled_order

        return sampled_order(len(data.rows))


SPEC = EvalBackendSpec(
    name="mt",
    factory="adaptkit.plugins.evals.mt:MTBackend",
    summary="Machine translation with the SSU paper's per-language prompts, chrF/chrF++ via sacrebleu",
    reference="Yamaguchi et al. 2025 (SSU), arXiv:2512.04844; Popović 2015/2017 (chrF, chrF++)",
    params=MTParams,
    extras=("sacrebleu",),
)
