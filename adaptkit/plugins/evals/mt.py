"""`mt`: machine translation with the SSU paper's prompts, scored with chrF / chrF++.

Task spec: `mt:NAME=FILE.jsonl` or `mt:FILE.jsonl`. Each record holds `src` and `tgt`
texts and the language codes `src_lang` / `tgt_lang` (or give them once with
`--set mt.src_lang=en --set mt.tgt_lang=ha`). Few-shot examples (paper: 3) are other
records of the same file and direction, drawn with a fixed seed per item.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from adaptkit.evals.generation import GenerationParams
from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput, named_file
from adaptkit.specs import EvalBackendSpec


class MTParams(GenerationParams):
    src_lang: str | None = None
    tgt_lang: str | None = None
    shots: int = Field(3, ge=0, description="in-context examples per prompt (paper: 3)")


class MTBackend(EvalBackend):
    name = "mt"

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.evals.data import read_jsonl
        from adaptkit.evals.generation import pick_shots, record_languages
        from adaptkit.evals.templates import mt_prompt

        name, path = named_file(spec)
        where = f"{flag} mt:{spec}"
        rows = read_jsonl(Path(path), where, ("src", "tgt"))
        pairs = record_languages(rows, ("src_lang", "tgt_lang"), self.params, where, "mt")
        items = []
        for i, row in enumerate(rows):
            shots = [(rows[j]["src"], rows[j]["tgt"]) for j in pick_shots(pairs, i, self.params.shots)]
            items.append({"id": row.get("id", i), "src_lang": pairs[i][0], "tgt_lang": pairs[i][1],
                          "prompt": mt_prompt(pairs[i][0], pairs[i][1], row["src"], shots), "reference": row["tgt"]})
        if self.params.limit:
            items = items[: self.params.limit]
        directions = sorted({f"{s}->{t}" for s, t in pairs})
        return [EvalTask(name or Path(path).stem, "mt", spec, items, {"file": path, "items": len(items), "directions": directions})]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        from adaptkit.evals.generation import run_generation_task

        return {t.name: run_generation_task(model, tokenizer, t.payload, self.params, ctx.seed) for t in tasks}


SPEC = EvalBackendSpec(
    name="mt",
    factory="adaptkit.plugins.evals.mt:MTBackend",
    summary="Machine translation with the SSU paper's per-language prompts, chrF/chrF++ via sacrebleu",
    reference="Yamaguchi et al. 2025 (SSU), arXiv:2512.04844; Popović 2015/2017 (chrF, chrF++)",
    params=MTParams,
    extras=("sacrebleu",),
)
