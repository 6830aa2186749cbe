"""`sum`: summarization with the SSU paper's prompts, scored with chrF / chrF++.

Task spec: `sum:NAME=FILE.jsonl` or `sum:FILE.jsonl`; records hold `text`, `summary`
and `lang` (or `--set sum.lang=ha`). The paper evaluates summarization 0-shot.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from adaptkit.evals.generation import GenerationParams
from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput, named_file
from adaptkit.specs import EvalBackendSpec


class SumParams(GenerationParams):
    lang: str | None = None
    shots: int = Field(0, ge=0, description="in-context examples per prompt (paper: 0)")


class SumBackend(EvalBackend):
    name = "sum"

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.evals.data import read_jsonl
        from adaptkit.evals.generation import pick_shots, record_languages
        from adaptkit.evals.templates import sum_prompt

        name, path = named_file(spec)
        where = f"{flag} sum:{spec}"
        rows = read_jsonl(Path(path), where, ("text", "summary"))
        langs = record_languages(rows, ("lang",), self.params, where, "sum")
        items = []
        for i, row in enumerate(rows):
            shots = [(rows[j]["text"], rows[j]["summary"]) for j in pick_shots(langs, i, self.params.shots)]
            items.append({"id": row.get("id", i), "lang": langs[i][0], "prompt": sum_prompt(langs[i][0], row["text"], shots),
                          "reference": row["summary"]})
        if self.params.limit:
            items = items[: self.params.limit]
        return [EvalTask(name or Path(path).stem, "sum", spec, items,
                         {"file": path, "items": len(items), "languages": sorted({l[0] for l in langs})})]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        from adaptkit.evals.generation import run_generation_task

        return {t.name: run_generation_task(model, tokenizer, t.payload, self.params, ctx.seed) for t in tasks}


SPEC = EvalBackendSpec(
    name="sum",
    factory="adaptkit.plugins.evals.sum:SumBackend",
    summary="Summarization with the SSU paper's per-language prompts, chrF/chrF++ via sacrebleu",
    reference="Yamaguchi et al. 2025 (SSU), arXiv:2512.04844",
    params=SumParams,
    extras=("sacrebleu",),
)
