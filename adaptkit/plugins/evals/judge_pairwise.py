"""`judge-pairwise`: AlpacaEval-style win rate of each model's answers against reference answers.

Task spec: `judge-pairwise:NAME=FILE` with AlpacaEval's instructions (a JSON array or JSONL of
records with `instruction`). The reference (`--set judge.reference=...`) is either a file of
reference answers (`instruction`, `output`, e.g. AlpacaEval's own baseline outputs) or a model
(directory or Hub id) whose answers are generated once, with the same decoding, and reused for
every evaluated model. Each pair is judged twice with the answers swapped (position bias);
scores: win rate with a 95% interval and the length-controlled win rate (`lc_win_rate`,
Dubois et al. 2024, arXiv:2404.04475; see adaptkit.evals.judge_stats). Raw judge replies go
to the task's records (details/ of `adaptkit evaluate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.evals.judging import JudgeBackend, JudgeParams
from adaptkit.evals.tasks import EvalTask, RunContext, TaskOutput, named_file
from adaptkit.specs import EvalBackendSpec

REFERENCE_FILES = (".json", ".jsonl")


class PairwiseParams(JudgeParams):
    reference: str | None = Field(None, description="reference answers: a model (dir or Hub id) or a .json/.jsonl file with instruction/output")
    lc_ridge: float = Field(1e-3, ge=0, description="L2 penalty of the length-controlled fit (keeps it finite under separation)")


class PairwiseBackend(JudgeBackend):
    name = "judge-pairwise"
    default_template = template_kind = "pairwise"

    def __init__(self, params: PairwiseParams):
        super().__init__(params)
        self.generated: dict[str, list[str]] = {}  # task -> reference model's answers, computed once

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.evals.judging import read_records

        name, path = named_file(spec)
        where = f"{flag} judge-pairwise:{spec}"
        rows = read_records(path, where, ("instruction",))[: self.params.limit]
        references = self._reference_file(rows)
        self.connect()
        items = [{"id": row.get("id", i), "instruction": row["instruction"], "reference_output": ref}
                 for i, (row, ref) in enumerate(zip(rows, references))]
        info = {"file": path, "items": len(items), "reference": self.params.reference, "judge": self.params.model, "template": self.template.name}
        return [EvalTask(name or Path(path).stem, self.name, spec, items, info)]

    def _reference_file(self, rows: list[dict[str, Any]]) -> list[str | None]:
        """Reference answers matched by instruction (from a file), or None each (from a model, later)."""
        from adaptkit.evals.judging import read_records

        reference = self.params.reference
        flag = "--set judge.reference"
        if not reference:
            raise InputError(f"{flag}: judge-pairwise needs reference answers: a model (--set judge.reference=./instruct) or a .json/.jsonl file with 'instruction' and 'output'")
        if Path(reference).suffix not in REFERENCE_FILES:
            from adaptkit.evals.runner import check_model_config

            check_model_config(reference, flag)
            return [None] * len(rows)
        by_instruction = {r["instruction"]: r["output"] for r in read_records(reference, flag, ("instruction", "output"))}
        for row in rows:
            if row["instruction"] not in by_instruction:
                raise InputError(f"{flag}: {reference} has no output for the instruction '{row['instruction'][:60]}'")
        return [by_instruction[row["instruction"]] for row in rows]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        answers = self.answerer(model, tokenizer, ctx.seed)
        results = {}
        for task in tasks:
            conversations = [[{"role": "user", "content": item["instruction"]}] for item in task.payload]
            outputs = answers(conversations)
            references = self._references(task, conversations, model, ctx)
            results[task.name] = self._judge(task.payload, outputs, references)
        return results

    def _references(self, task: EvalTask, conversations: list, model: Any, ctx: RunContext) -> list[str]:
        """The file's reference answers, or the reference model's (generated at the first call only)."""
        if task.payload[0]["reference_output"] is not None:
            return [item["reference_output"] for item in task.payload]
        if task.name not in self.generated:
            from adaptkit.evals.runner import ModelRef, load_model_ref

            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            ref_model, ref_tokenizer = load_model_ref(ModelRef("reference", self.params.reference), dtype, ctx.device)
            self.generated[task.name] = self.answerer(ref_model, ref_tokenizer, ctx.seed)(conversations)
            del ref_model
        return self.generated[task.name]

    def _judge(self, items: list[dict[str, Any]], outputs: list[str], references: list[str]) -> TaskOutput:
        from adaptkit.evals.judge_stats import lc_win_rate, swapped_preference, win_rate
        from adaptkit.evals.judging import parse_verdict

        requests = []
        for item, out, ref in zip(items, outputs, references):
            requests.append(self.template.messages("user", instruction=item["instruction"], output_a=out, output_b=ref))
            requests.append(self.template.messages("user", instruction=item["instruction"], output_a=ref, output_b=out))
        replies = self.ask(requests)
        verdicts = [parse_verdict(r) for r in replies]
        records, kept = [], []
        for i, (item, out, ref) in enumerate(zip(items, outputs, references)):
            first, second = verdicts[2 * i], verdicts[2 * i + 1]
            preference = swapped_preference(first, second)
            records.append({"id": item["id"], "instruction": item["instruction"], "output": out, "reference_output": ref, "preference": preference,
                            "judgments": [{"model_is": "A", "reply": replies[2 * i], "verdict": first},
                                          {"model_is": "B", "reply": replies[2 * i + 1], "verdict": second}]})
            if preference is not None:
                kept.append((preference, len(out), len(ref)))
        prefs = [p for p, _, _ in kept]
        metrics = {**win_rate(prefs), "lc_win_rate": lc_win_rate(prefs, [a for _, a, _ in kept], [b for _, _, b in kept], self.params.lc_ridge),
                   "items": float(len(items)), "judged_items": float(len(kept)), "unparsable": float(verdicts.count(None)),
                   "avg_length": sum(map(len, outputs)) / len(outputs), "avg_length_reference": sum(map(len, references)) / len(references)}
        return TaskOutput(metrics=metrics, primary="lc_win_rate", higher_is_better=True, records=records)


SPEC = EvalBackendSpec(
    name="judge-pairwise",
    factory="adaptkit.plugins.evals.judge_pairwise:PairwiseBackend",
    summary="AlpacaEval-style win rate and length-controlled win rate against reference answers, judged by an OpenAI-compatible LLM",
    reference="Dubois et al. 2024 (length-controlled AlpacaEval), arXiv:2404.04475; Zheng et al. 2023 (MT-Bench pairwise judge), arXiv:2306.05685",
    params=PairwiseParams,
    shared_params="judge",
)
