"""`judge-single`: MT-Bench style two-turn chat, each turn graded by an LLM judge.

Task spec: `judge-single:NAME=FILE` with MT-Bench's question file as published (JSONL records
with `question_id`, `category` and `turns`, two questions). The model answers the first
question, then the second with its own first answer in the conversation. The judge grades
each turn on the template's scale: the default `mt-bench` template asks for a 1-10
`[[rating]]` (Zheng et al. 2023, arXiv:2306.05685); `--set judge.template=likert` uses the
Likert 1-5 `<score>` rubric of LightEval's MT-Bench protocol, which the SSU paper used.
Scores: mean grade per turn (`turn_1`, `turn_2`), overall (`score`) and per category; replies
without a grade on the scale are counted (`unparsable`), never fatal. Raw replies go to the
task's records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit.errors import InputError
from adaptkit.evals.judging import JudgeBackend, JudgeParams
from adaptkit.evals.tasks import EvalTask, RunContext, TaskOutput, named_file
from adaptkit.specs import EvalBackendSpec

TURNS = 2


class SingleBackend(JudgeBackend):
    name = "judge-single"
    default_template = "mt-bench"
    template_kind = "single"

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.evals.judging import read_records

        name, path = named_file(spec)
        where = f"{flag} judge-single:{spec}"
        rows = read_records(path, where, ())[: self.params.limit]
        items = [_question(row, number, where, path) for number, row in enumerate(rows, start=1)]
        self.connect()
        info = {"file": path, "items": len(items), "judge": self.params.model, "template": self.template.name, "scale": list(self.template.scale)}
        return [EvalTask(name or Path(path).stem, self.name, spec, items, info)]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        answers = self.answerer(model, tokenizer, ctx.seed)
        results = {}
        for task in tasks:
            first = [[{"role": "user", "content": item["turns"][0]}] for item in task.payload]
            answers_1 = answers(first)
            second = [conv + [{"role": "assistant", "content": a}, {"role": "user", "content": item["turns"][1]}]
                      for conv, a, item in zip(first, answers_1, task.payload)]
            answers_2 = answers(second)
            results[task.name] = self._judge(task.payload, answers_1, answers_2)
        return results

    def _judge(self, items: list[dict[str, Any]], answers_1: list[str], answers_2: list[str]) -> TaskOutput:
        from adaptkit.evals.judge_stats import grade_summary
        from adaptkit.evals.judging import parse_grade

        requests = []
        for item, a1, a2 in zip(items, answers_1, answers_2):
            q1, q2 = item["turns"]
            requests.append(self.template.messages("turn 1", question_1=q1, answer_1=a1))
            requests.append(self.template.messages("turn 2", question_1=q1, answer_1=a1, question_2=q2, answer_2=a2))
        replies = self.ask(requests)
        grades = [parse_grade(r, self.template.scale) for r in replies]
        metrics = grade_summary([grades[0::2], grades[1::2]])
        metrics["items"] = float(len(items))
        for category in sorted({item["category"] for item in items if item["category"]}):
            parsed = [g for i, item in enumerate(items) if item["category"] == category for g in grades[2 * i : 2 * i + 2] if g is not None]
            metrics[f"category_{category}"] = sum(parsed) / len(parsed) if parsed else float("nan")
        records = [{"question_id": item["question_id"], "category": item["category"], "turns": item["turns"], "answers": [a1, a2],
                    "judgments": [{"turn": t + 1, "reply": replies[2 * i + t], "grade": grades[2 * i + t]} for t in range(TURNS)]}
                   for i, (item, a1, a2) in enumerate(zip(items, answers_1, answers_2))]
        return TaskOutput(metrics=metrics, primary="score", higher_is_better=True, records=records)


def _question(row: dict[str, Any], number: int, where: str, path: str) -> dict[str, Any]:
    """An MT-Bench question record, checked: two turns, each a string."""
    turns = row.get("turns")
    qid = row.get("question_id", number)
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise InputError(f"{where}: {path} record {number} (question_id {qid}) has no 'turns' list of strings (MT-Bench format: question_id, category, turns)")
    if len(turns) != TURNS:
        raise InputError(f"{where}: {path} record {number} (question_id {qid}) has {len(turns)} turn(s); judge-single needs {TURNS} (MT-Bench's two questions)")
    return {"question_id": qid, "category": str(row.get("category") or ""), "turns": turns}


SPEC = EvalBackendSpec(
    name="judge-single",
    factory="adaptkit.plugins.evals.judge_single:SingleBackend",
    summary="MT-Bench two-turn chat graded per turn by an OpenAI-compatible LLM judge (1-10 [[rating]] or LightEval's Likert 1-5)",
    reference="Zheng et al. 2023 (MT-Bench, LLM-as-a-judge), arXiv:2306.05685; LightEval MT-Bench judge prompts",
    params=JudgeParams,
    shared_params="judge",
)
