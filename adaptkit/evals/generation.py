"""Generation for the `mt` / `sum` tasks and `adaptkit generate`, scored with chrF / chrF++.

Two protocols (`--set mt.protocol=...`, `--set sum.protocol=...`):

- `single-turn` (default): greedy decoding, one run, the shots written inline in one user
  turn (`instruction`, `source = target` blank-line separated, then `source =`).
- `ssu-paper`: the SSU paper's evaluation (Yamaguchi et al. 2025, arXiv:2512.04844, Sec. 4,
  Tables 7 and 9; LightEval with `--use-chat-template`): sampling (`decoding=paper`:
  temperature 0.8, top-p 0.9, top-k 40, repetition penalty 1.1), 128 new tokens, mean of
  three runs (seeds `seed`, `seed+1`, `seed+2`) reported with their spread, 500 items, and
  the shots as user/assistant turns (the instruction prefixed to the first user turn, as
  LightEval renders few-shot examples under a chat template), drawn from the data's dev
  split. Any setting given explicitly wins over the preset.

Prompts go under the tokenizer's chat template when it has one and `chat_template` is on
(the paper evaluates instruct models with their template); without a template, turns are
flattened into the single-turn text. Each output is cut at the first stop string (newline,
as in the paper) and stripped.

Scores: `chrf` and `chrf++` are means of sentence-level scores (sacrebleu
`sentence_chrf`, chrF++ = word_order 2), as in the paper; `corpus_chrf` and
`corpus_chrf++` are sacrebleu's corpus-level scores, for reference. Over several runs every
score is the mean of the runs; `chrf_std`/`chrf++_std` (sample standard deviation),
`_min` and `_max` give the spread of the sentence-level scores. Light at import.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Sequence

from pydantic import Field, model_validator

from adaptkit.errors import require
from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput, named_file
from adaptkit.specs import Params

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PAPER_SAMPLING: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}
GREEDY: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
# the named decodings (`decoding: NAME`) and their `generate` settings; "paper": the SSU paper's sampling
# the SSU reference's AlpacaEval responses (gucci-j/ssu evaluation/src/ae2.py), the generations its code-mixing analysis
# reads (Table 9's AE2 row): sampled at temperature 0.8, top-p 0.8, top-k 40, repetition penalty 1.1, no repeated
# 3-gram, 512 new tokens
AE2_SAMPLING: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.1, "no_repeat_ngram_size": 3}
DECODINGS: dict[str, dict[str, Any]] = {"greedy": GREEDY, "paper": PAPER_SAMPLING, "ae2": AE2_SAMPLING}
DECODING_MAX_NEW_TOKENS: dict[str, int] = {"ae2": 512}  # a decoding's own budget where --max-new-tokens is not given


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol (`protocol: NAME`): the settings it presets unless given explicitly,
    and whether its shots come only from a dataset's dev split (never from the evaluated file)."""

    presets: dict[str, Any]
    shots_from_dev_split: bool = False


PROTOCOLS: dict[str, Protocol] = {
    "single-turn": Protocol({}),  # the defaults: greedy, one run, the shots inline in one user turn
    # the SSU paper's evaluation (Sec. 4 and Tables 7, 9): sampled, 3 runs, 500 items, shots as chat turns
    "ssu-paper": Protocol({"decoding": "paper", "runs": 3, "limit": 500, "shot_turns": True}, shots_from_dev_split=True),
}
SPREAD_METRICS = ("chrf", "chrf++")


class GenerationParams(Params):
    """Settings shared by generation tasks; `protocol: ssu-paper` presets the paper's evaluation."""

    protocol: Literal[tuple(PROTOCOLS)] = Field(  # type: ignore[valid-type]
        "single-turn", description="single-turn: greedy, 1 run, inline shots; ssu-paper: sampled, 3 runs, 500 items, shots as chat turns from the dev split")
    max_new_tokens: int = Field(128, ge=1, description="generation budget (paper: 128)")
    decoding: Literal[tuple(DECODINGS)] = "greedy"  # type: ignore[valid-type]
    runs: int = Field(1, ge=1, description="generation runs averaged (the paper averages sampled runs)")
    batch_size: int = Field(8, ge=1)
    chat_template: bool = True
    shot_turns: bool = Field(False, description="shots as user/assistant turns (paper) instead of inline in one user turn")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items (paper: 500)")
    shot_seed: int = Field(0, description="seed of the shot draw (each item's shots are fixed for it and this seed)")
    selection: Literal["first", "reference"] = Field(
        "first", description="first: the items in file order; reference: the SSU reference's choice (mt: pandas' .sample(random_state=42) order; sum: shortest articles of test+validation first)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        protocol = PROTOCOLS.get(values.get("protocol", "")) if isinstance(values, dict) else None
        return {**protocol.presets, **values} if protocol is not None else values


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

    settings = dict(DECODINGS[decoding])
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


def generator_of(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", generator: "Callable[..., list[str]] | None" = None):
    """`generator` (e.g. a ServerGenerator) when given, else in-process `generate` on the loaded model."""
    from functools import partial

    return generator if generator is not None else partial(generate, model, tokenizer)


def uses_chat_template(tokenizer: "PreTrainedTokenizerBase | None", generator: Any = None) -> bool:
    """Whether prompts go under a chat template: the server's (`generator.has_chat_template`) or the tokenizer's."""
    if generator is not None and hasattr(generator, "has_chat_template"):
        return bool(generator.has_chat_template)
    return bool(getattr(tokenizer, "chat_template", None))


def run_metrics(per_run: list[dict[str, float]], spread: Sequence[str] = SPREAD_METRICS) -> dict[str, float]:
    """The mean of each score over runs and, over several runs, the spread (sample std, min, max) of the
    `spread` scores (by default the sentence-level chrF scores)."""
    import statistics

    metrics = {k: sum(r[k] for r in per_run) / len(per_run) for k in per_run[0]}
    for key in spread if len(per_run) > 1 else ():
        values = [r[key] for r in per_run]
        metrics[f"{key}_std"] = statistics.stdev(values)
        metrics[f"{key}_min"], metrics[f"{key}_max"] = min(values), max(values)
    return metrics


def run_generation_task(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    items: list[dict[str, Any]],
    params: GenerationParams,
    seed: int,
    generator: "Callable[..., list[str]] | None" = None,
) -> TaskOutput:
    """Generate for items ({'prompt', 'reference', ['messages'], ...}), score with chrF, keep per-item records.

    An item's `messages` (shots as turns) are sent under a chat template; without one, its
    `prompt` (the same conversation flattened into one text) is.
    """
    produce = generator_of(model, tokenizer, generator)
    runs = params.runs if DECODINGS[params.decoding]["do_sample"] else 1  # greedy runs are all the same
    turns = params.chat_template and uses_chat_template(tokenizer, generator)
    prompts = [item["messages"] if turns and "messages" in item else item["prompt"] for item in items]
    per_run: list[dict[str, float]] = []
    records: list[dict[str, Any]] = []
    for run in range(runs):
        hyps = produce(
            prompts,
            max_new_tokens=params.max_new_tokens,
            decoding=params.decoding,
            batch_size=params.batch_size,
            chat_template=params.chat_template,
            seed=seed + run,
        )
        per_run.append(chrf_scores(hyps, [item["reference"] for item in items]))
        records += [{**item, "run": run, "seed": seed + run, "response": h} for item, h in zip(items, hyps)]
    metrics = run_metrics(per_run)
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
    generator: "Callable[..., list[str]] | None" = None,
) -> list[dict[str, Any]]:
    """Free-form responses (stopped by EOS or the budget) as records for `adaptkit codemix`; `generator`
    (e.g. `--generation-server`) replaces in-process generation on `model`."""
    responses = generator_of(model, tokenizer, generator)(
        [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, decoding=decoding,
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


def pick_shots(languages: list[tuple[str, ...]], item: int, shots: int, seed: int = 0, pool: int | None = None) -> list[int]:
    """Indices of `shots` examples for `item`, fixed for (item, seed): from a separate pool of `pool` examples
    (a dev split), else other records with the same languages as `item`."""
    import random

    if pool is not None:
        others = list(range(pool))
    else:
        others = [i for i, langs in enumerate(languages) if langs == languages[item] and i != item]
    return random.Random(seed * 1_000_003 + item).sample(others, min(shots, len(others)))


@dataclass
class GenerationData:
    """What one task spec reads: evaluated (input, reference, id) rows, their languages, and the
    shot pool (a dev split; None: the other evaluated rows of the same languages)."""

    name: str
    rows: list[tuple[str, str, Any]]
    languages: list[tuple[str, ...]]
    pool: list[tuple[str, str, Any]] | None
    info: dict[str, Any]

    def reordered(self, order: Sequence[int]) -> "GenerationData":
        """The same data with its evaluated rows in `order` (a selection rule's order; `limit` then takes the first)."""
        return GenerationData(self.name, [self.rows[i] for i in order], [self.languages[i] for i in order], self.pool, self.info)


class GenerationBackend(EvalBackend):
    """A generation task family (`mt`, `sum`): records -> prompts with in-context shots ->
    generations scored with chrF / chrF++ against the references.

    A spec is `[NAME=]FILE.jsonl` (records with the `fields`: input text and reference; the
    language fields `language_keys`, else the backend's parameters of the same names; shots are
    other records of the same languages) or `[NAME=]DIR:LANGS`, a released dataset layout read by
    `read_layout` (shots from its dev split, never from the evaluated items). Subclasses give the
    instruction and the query of an input; `adaptkit.evals.templates` renders them inline or as turns.
    """

    fields: ClassVar[tuple[str, str]]
    language_keys: ClassVar[tuple[str, ...]]

    @abstractmethod
    def instruction(self, languages: tuple[str, ...]) -> str:
        """The task instruction that begins the prompt (may be empty)."""

    @abstractmethod
    def query(self, languages: tuple[str, ...], text: str) -> str:
        """One input as the model sees it, to be continued by its reference."""

    @abstractmethod
    def read_layout(self, root: "Path", languages: str, where: str) -> GenerationData:
        """The evaluated rows and the shot pool of a released dataset directory for `languages`."""

    def describe(self, languages: list[tuple[str, ...]]) -> dict[str, Any]:
        """Task info beyond the file and item count (e.g. the translation directions)."""
        return {}

    def reference_order(self, data: GenerationData, where: str) -> list[int]:
        """The SSU reference's order of the evaluated rows (`selection=reference`), best first."""
        from adaptkit.errors import InputError

        raise InputError(f"{where}: --set {self.name}.selection=reference: {self.name} has no reference selection")

    def read_jsonl(self, path: str, where: str) -> GenerationData:
        from pathlib import Path

        from adaptkit.errors import InputError
        from adaptkit.evals.data import read_jsonl

        if PROTOCOLS[self.params.protocol].shots_from_dev_split and self.params.shots:
            raise InputError(f"{where}: the {self.params.protocol} protocol draws its shots from a dev split, never from the evaluated items; "
                             f"give a dataset directory ({self.name}:DIR:LANGS) or --set {self.name}.shots=0")
        records = read_jsonl(Path(path), where, self.fields)
        text, reference = self.fields
        rows = [(r[text], r[reference], r.get("id", i)) for i, r in enumerate(records)]
        languages = record_languages(records, self.language_keys, self.params, where, self.name)
        return GenerationData(Path(path).stem, rows, languages, None, {"file": path})

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.evals.layouts import split_layout_spec
        from adaptkit.evals.templates import render_inline, render_turns

        name, path = named_file(spec)
        where = f"{flag} {self.name}:{spec}"
        layout = split_layout_spec(path, where)
        data = self.read_layout(*layout, where) if layout else self.read_jsonl(path, where)
        if self.params.selection == "reference":
            data = data.reordered(self.reference_order(data, where))
        count = min(len(data.rows), self.params.limit or len(data.rows))
        pool = data.pool if data.pool is not None else data.rows
        items = []
        for i, (text, reference, key) in enumerate(data.rows[:count]):
            langs = data.languages[i]
            picked = pick_shots(data.languages, i, self.params.shots, self.params.shot_seed, None if data.pool is None else len(pool))
            shots = [(self.query(langs, pool[j][0]), pool[j][1]) for j in picked]
            instruction, query = self.instruction(langs), self.query(langs, text)
            item = {"id": key, **dict(zip(self.language_keys, langs)), "prompt": render_inline(instruction, shots, query), "reference": reference}
            if self.params.shot_turns:
                item["messages"] = render_turns(instruction, shots, query)
            items.append(item)
        info = {**data.info, "items": len(items), "selection": self.params.selection, **self.describe(data.languages[:count])}
        return [EvalTask(name or data.name, self.name, spec, items, info)]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        return {t.name: run_generation_task(model, tokenizer, t.payload, self.params, ctx.seed, ctx.generator) for t in tasks}
