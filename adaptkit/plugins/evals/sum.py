"""`sum`: summarization with the SSU paper's prompts, scored with chrF / chrF++.

Task spec: `sum:[NAME=]XLSUM_DIR:LANG` reads the XL-SUM layout (`<language>_<split>.jsonl`;
`adaptkit.evals.layouts`): the test split is evaluated, shots (if any) come from val (e.g.
`sum:xlsum:ha`). Or `sum:[NAME=]FILE.jsonl`: records hold `text`, `summary` and `lang` (or
`--set sum.lang=ha`). The paper evaluates summarization 0-shot; `--set sum.protocol=ssu-paper`
is its evaluation (adaptkit.evals.generation). `--set sum.selection=reference --set
sum.length_tokenizer=allenai/OLMo-2-1124-7B-Instruct` evaluates the SSU reference's items: the
shortest articles (token counts under that tokenizer) of test and val together, the first `limit`
(500) of them (adaptkit.evals.layouts); it is 0-shot (val articles are among the items).
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.evals.generation import GenerationBackend, GenerationData, GenerationParams
from adaptkit.specs import EvalBackendSpec


class SumParams(GenerationParams):
    lang: str | None = None
    shots: int = Field(0, ge=0, description="in-context examples per prompt (paper: 0)")
    length_tokenizer: str | None = Field(None, description="with selection=reference: the tokenizer (directory or Hub id) whose token counts rank the articles (the reference: allenai/OLMo-2-1124-7B-Instruct)")


class SumBackend(GenerationBackend):
    name = "sum"
    fields = ("text", "summary")
    language_keys = ("lang",)

    def instruction(self, languages):
        return ""  # the instruction is part of each query

    def query(self, languages, text):
        from adaptkit.evals.templates import sum_query

        return sum_query(languages[0], text)

    def read_layout(self, root, languages, where) -> GenerationData:
        from adaptkit.errors import InputError
        from adaptkit.evals.langcodes import resolve_language
        from adaptkit.evals.layouts import read_xlsum

        lang = resolve_language(languages, where)
        rows = read_xlsum(root, lang, "test", where)
        if self.params.selection == "reference":  # the reference ranks test+validation together, 0-shot
            if self.params.shots:
                raise InputError(f"{where}: --set sum.selection=reference evaluates val articles too; shots would come from them (--set sum.shots=0)")
            rows += read_xlsum(root, lang, "val", where)
            return GenerationData(f"xlsum-{lang}", rows, [(lang,)] * len(rows), [], {"dataset": "xl-sum", "dir": str(root), "split": "test+val"})
        pool = read_xlsum(root, lang, "val", where) if self.params.shots else []
        info = {"dataset": "xl-sum", "dir": str(root), "split": "test", **({"shots_from": "val"} if self.params.shots else {})}
        return GenerationData(f"xlsum-{lang}", rows, [(lang,)] * len(rows), pool, info)

    def describe(self, languages):
        return {"languages": sorted({l[0] for l in languages})}

    def reference_order(self, data, where):
        from adaptkit.errors import InputError
        from adaptkit.evals.layouts import shortest_first
        from adaptkit.io.models import load_tokenizer, resolve_model_source

        if not self.params.length_tokenizer:
            raise InputError(f"{where}: --set sum.selection=reference needs --set sum.length_tokenizer=TOKENIZER (the reference: allenai/OLMo-2-1124-7B-Instruct)")
        tokenizer = load_tokenizer(resolve_model_source(self.params.length_tokenizer, "--set sum.length_tokenizer"))
        return shortest_first([text for text, _, _ in data.rows], tokenizer)


SPEC = EvalBackendSpec(
    name="sum",
    factory="adaptkit.plugins.evals.sum:SumBackend",
    summary="Summarization with the SSU paper's per-language prompts, chrF/chrF++ via sacrebleu",
    reference="Yamaguchi et al. 2025 (SSU), arXiv:2512.04844; Hasan et al. 2021 (XL-SUM)",
    params=SumParams,
    extras=("sacrebleu",),
)
