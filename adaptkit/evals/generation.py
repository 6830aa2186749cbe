"""Generation for the `mt` / `sum` tasks and `adaptkit generate`, scored with chrF / chrF++.

Decoding: `greedy` (default, deterministic) or `paper`: the sampling the SSU paper's
evaluation scripts pass to lm-eval (temperature 0.8, top-p 0.8, top-k 40, repetition
penalty 1.1); the paper repeats sampled generation runs and averages them (`runs`).
Prompts are wrapped as one user turn of the tokenizer's chat template when it has one
and `chat_template` is on (the paper evaluates instruct models with their template).
Each output is cut at the first stop string (newline, as in the paper) and stripped.

Scores: `chrf` and `chrf++` are means of sentence-level scores (sacrebleu
`sentence_chrf`, chrF++ = word_order 2), as in the paper; `corpus_chrf` and
`corpus_chrf++` are sacrebleu's corpus-level scores, for reference. Light at import.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

from pydantic import Field

from adaptkit.errors import require
from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput, named_file
from adaptkit.specs import Params

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PAPER_SAMPLING: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.1}
GREEDY: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


class GenerationParams(Params):
    """Settings shared by generation tasks."""

    max_new_tokens: int = Field(128, ge=1, description="generation budget (paper: 128)")
    decoding: Literal["greedy", "paper"] = "greedy"
    runs: int = Field(1, ge=1, description="generation runs averaged (the paper averages sampled runs)")
    batch_size: int = Field(8, ge=1)
    chat_template: bool = True
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items")


def format_prompt(tokenizer: "PreTrainedTokenizerBase", prompt: "str | list[dict[str, str]]", chat_template: bool) -> tuple[str, bool]:
    """(text to tokenize, whether special tokens still need adding); a list of role/content messages is a conversation."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, False
    return prompt, True


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        found = text.find(s)
        if found != -1:
            cut = min(cut, found)
    return text[:cut].strip()


def generate(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompts: "Sequence[str | list[dict[str, str]]]",
    max_new_tokens: int = 128,
    decoding: str = "greedy",
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    chat_template: bool = True,
    seed: int = 0,
) -> list[str]:
    """Continuations of `prompts` (left-padded batches), each cut at the first stop string.

    A prompt is a text (one user turn under the chat template) or, with a chat template, a
    conversation (a list of role/content messages ending with a user turn).
    """
    import torch

    from adaptkit.io.models import input_device

    settings = dict(PAPER_SAMPLING if decoding == "paper" else GREEDY)
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts: dict[int, str] = {}
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            formatted = [format_prompt(tokenizer, prompts[i], chat_template) for i in idx]
            add_special = formatted[0][1]
            enc = tokenizer([f for f, _ in formatted], return_tensors="pt", padding=True, add_special_tokens=add_special)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    stop_strings=list(stop) or None,
                    tokenizer=tokenizer,
                    **settings,
                )
            new = out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                texts[i] = cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop)
        outputs = [texts[i] for i in range(len(prompts))]
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    return outputs


def chrf_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean sentence chrF and chrF++ (the paper's metric) and corpus-level chrF / chrF++."""
    sacrebleu = require("sacrebleu", "metrics", "chrF scoring")
    n = len(hypotheses)
    chrf = sum(sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hypotheses, references)) / n
    chrfpp = sum(sacrebleu.sentence_chrf(h, [r], word_order=2).score for h, r in zip(hypotheses, references)) / n
    corpus = sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score
    corpus_pp = sacrebleu.corpus_chrf(list(hypotheses), [list(references)], word_order=2).score
    return {"chrf": chrf, "chrf++": chrfpp, "corpus_chrf": corpus, "corpus_chrf++": corpus_pp}


def run_generation_task(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    items: list[dict[str, Any]],
    params: GenerationParams,
    seed: int,
) -> TaskOutput:
    """Generate for items ({'prompt', 'reference', ...}), score with chrF, keep per-item records."""
    runs = params.runs if params.decoding == "paper" else 1
    per_run: list[dict[str, float]] = []
    records: list[dict[str, Any]] = []
    for run in range(runs):
        hyps = generate(
            model,
            tokenizer,
            [item["prompt"] for item in items],
            max_new_tokens=params.max_new_tokens,
            decoding=params.decoding,
            batch_size=params.batch_size,
            chat_template=params.chat_template,
            seed=seed + run,
        )
        per_run.append(chrf_scores(hyps, [item["reference"] for item in items]))
        records += [{**item, "run": run, "response": h} for item, h in zip(items, hyps)]
    metrics = {k: sum(r[k] for r in per_run) / runs for k in per_run[0]}
    metrics["items"] = float(len(items))
    metrics["runs"] = float(runs)
    return TaskOutput(metrics=metrics, primary="chrf++", higher_is_better=True, records=records)


def read_prompts(path, flag: str = "--prompts") -> list[dict[str, Any]]:
    """Prompt records of a JSONL file: each needs a 'prompt' string; 'id' is kept when present."""
    from pathlib import Path

    from adaptkit.evals.data import read_jsonl

    rows = read_jsonl(Path(path), flag, ("prompt",))
    return [{**row, "id": row.get("id", i)} for i, row in enumerate(rows)]


def generate_records(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    rows: list[dict[str, Any]],
    model_name: str,
    max_new_tokens: int = 256,
    decoding: str = "greedy",
    batch_size: int = 8,
    chat_template: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Free-form responses (stopped by EOS or the budget) as records for `adaptkit codemix`."""
    responses = generate(
        model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, decoding=decoding,
        stop=(), batch_size=batch_size, chat_template=chat_template, seed=seed,
    )
    return [{**row, "model": model_name, "response": response} for row, response in zip(rows, responses)]


def as_chat_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generated records as chat records {id, model, messages: [user prompt, assistant response]}: a model's own
    answers, whose perplexity during training (`train --eval-data chat=FILE:source`) tracks chat forgetting."""
    return [{"id": r["id"], "model": r["model"], "messages": [{"role": "user", "content": r["prompt"]},
                                                              {"role": "assistant", "content": r["response"]}]} for r in records]


def record_languages(rows: list[dict[str, Any]], keys: tuple[str, ...], params: Params, where: str, backend: str) -> list[tuple[str, ...]]:
    """Canonical language codes of each record for `keys`: the record's value, else the backend setting."""
    from adaptkit.errors import InputError
    from adaptkit.evals.langcodes import resolve_language

    result = []
    for number, row in enumerate(rows, start=1):
        codes = []
        for key in keys:
            code = row.get(key) or getattr(params, key)
            if not code:
                raise InputError(f"{where}: record {number} has no '{key}'; add it to the records or pass --set {backend}.{key}=CODE")
            codes.append(resolve_language(str(code), f"{where} record {number} {key}"))
        result.append(tuple(codes))
    return result


def pick_shots(languages: list[tuple[str, ...]], item: int, shots: int, seed: int = 0) -> list[int]:
    """`shots` other records with the same languages as `item`, fixed for (item, seed)."""
    import random

    others = [i for i, langs in enumerate(languages) if langs == languages[item] and i != item]
    return random.Random(seed * 1_000_003 + item).sample(others, min(shots, len(others)))


class GenerationBackend(EvalBackend):
    """A generation task family (`mt`, `sum`): JSONL records -> prompts with in-context shots ->
    generations scored with chrF / chrF++ against the references.

    Subclasses name the record fields (`fields`: the input text and the reference, then any
    other required field), the language fields of a record (`language_keys`, else taken from
    the backend's parameters of the same names), and build the prompt; shots are other records
    of the same languages (`pick_shots`).
    """

    fields: ClassVar[tuple[str, str]]
    language_keys: ClassVar[tuple[str, ...]]

    @abstractmethod
    def prompt(self, languages: tuple[str, ...], text: str, shots: list[tuple[str, str]]) -> str:
        """The prompt of one record in `languages`, with (input, reference) shots."""

    def describe(self, languages: list[tuple[str, ...]]) -> dict[str, Any]:
        """Task info beyond the file and item count (e.g. the translation directions)."""
        return {}

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from pathlib import Path

        from adaptkit.evals.data import read_jsonl

        name, path = named_file(spec)
        where = f"{flag} {self.name}:{spec}"
        rows = read_jsonl(Path(path), where, self.fields)
        languages = record_languages(rows, self.language_keys, self.params, where, self.name)
        text, reference = self.fields
        items = []
        for i, row in enumerate(rows):
            shots = [(rows[j][text], rows[j][reference]) for j in pick_shots(languages, i, self.params.shots)]
            items.append({"id": row.get("id", i), **dict(zip(self.language_keys, languages[i])),
                          "prompt": self.prompt(languages[i], row[text], shots), "reference": row[reference]})
        if self.params.limit:
            items = items[: self.params.limit]
        info = {"file": path, "items": len(items), **self.describe(languages)}
        return [EvalTask(name or Path(path).stem, self.name, spec, items, info)]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        return {t.name: run_generation_task(model, tokenizer, t.payload, self.params, ctx.seed) for t in tasks}
