"""`ppl`: per-token perplexity and bits per byte on text or JSONL files (sliding window).

Task spec: `ppl:NAME=FILE` or `ppl:FILE` (name = file stem). A .jsonl file is read
record by record (`text_field`, default "text"; records with `messages` are chat
conversations, scored over their assistant turns only), a saved HF dataset directory by
column, any other file line by line. The exact
definition is in `adaptkit.evals.perplexity`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput, named_file
from adaptkit.specs import EvalBackendSpec, Params

if TYPE_CHECKING:
    from adaptkit.evals.runner import PreparedTasks


class PplParams(Params):
    block_size: int | None = Field(None, ge=2, description="window of model inputs (default: the model's max positions, at most 2048)")
    stride: int | None = Field(None, ge=1, description="new tokens predicted per later window (default: block_size)")
    batch_size: int = Field(8, ge=1)
    prefix: Literal["bos", "none"] = "bos"
    text_field: str = "text"
    max_documents: int | None = Field(None, ge=1)


class PplBackend(EvalBackend):
    name = "ppl"
    layer_by_layer = True

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.evals.data import read_eval_items

        name, path = named_file(spec)
        documents = read_eval_items(Path(path), f"{flag} ppl:{spec}", self.params.text_field)
        if self.params.max_documents:
            documents = documents[: self.params.max_documents]
        info = {"file": str(path), "documents": len(documents), "bytes": _text_bytes(documents)}
        return [EvalTask(name or Path(path).stem, "ppl", spec, documents, info)]

    def check_model(self, config) -> None:
        from adaptkit.evals.perplexity import check_windows

        check_windows(config, self.params.block_size, self.params.stride)

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        from adaptkit.evals.perplexity import perplexity

        outputs = {}
        for task in tasks:
            result = perplexity(
                model,
                tokenizer,
                task.payload,
                block_size=self.params.block_size,
                stride=self.params.stride,
                batch_size=self.params.batch_size,
                prefix=self.params.prefix,
            )
            outputs[task.name] = TaskOutput(result.metrics(), primary="ppl", higher_is_better=False)
        return outputs


def _text_bytes(documents: list) -> int:
    """UTF-8 bytes of the documents (of a conversation: of all its messages)."""
    texts = [d if isinstance(d, str) else "".join(m["content"] for m in d) for d in documents]
    return sum(len(t.encode("utf-8")) for t in texts)


SPEC = EvalBackendSpec(
    name="ppl",
    factory="adaptkit.plugins.evals.ppl:PplBackend",
    summary="Perplexity and bits per byte on text/JSONL files (sliding window, exact token accounting)",
    reference="lm-eval loglikelihood_rolling (word/byte perplexity); Press et al. 2021 sliding-window evaluation",
    params=PplParams,
)


def perplexity_tasks(texts: dict[str, list[str]], **params) -> "PreparedTasks":
    """Perplexity tasks over in-memory documents (for the quickstart and notebooks), ready for `run_evaluation`.

        tasks = perplexity_tasks({"eng": en_docs, "hau": ha_docs}, block_size=128)
        run = run_evaluation([ModelRef("base", model=m, tokenizer=t), ...], tasks)
    """
    from adaptkit.errors import InputError
    from adaptkit.evals.runner import PreparedTasks

    validated = SPEC.validate_params(params, where="ppl")
    tasks = []
    for name, documents in texts.items():
        documents = [d for d in documents if d.strip()][: validated.max_documents]
        if not documents:
            raise InputError(f"ppl: task '{name}' has no documents")
        info = {"documents": len(documents), "bytes": sum(len(d.encode("utf-8")) for d in documents)}
        tasks.append(EvalTask(name, "ppl", f"{name}=<in memory>", documents, info))
    return PreparedTasks(tasks, {"ppl": PplBackend(validated)}, {"ppl": validated.model_dump()})
