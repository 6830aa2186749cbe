"""`vocab extend` as a library call: learn tokens, extend tokenizer and embeddings, write a model dir.

The output is a normal Hugging Face model directory (written atomically): the tokenizer with
new vocabulary entries and merges appended (existing ids, special tokens and the chat template
unchanged; it reloads with AutoTokenizer, which is checked), the model with appended embedding /
LM-head rows in its own dtype, and `adaptkit_vocab.json` (see `adaptkit.io.vocab_record`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from adaptkit.errors import InputError
from adaptkit.vocab import tokenizer as tok
from adaptkit.vocab.learn import Learned, learn_tokens


@dataclass
class ExtendOptions:
    model: str
    data: list[Path]
    add: int
    output: Path
    min_frequency: int = 2
    init: str = "subword-mean"
    init_params: dict[str, Any] = field(default_factory=dict)
    pad_to: Optional[int] = None
    source_data: Optional[Path] = None
    seed: int = 0
    overwrite: bool = False


def check_options(opts: ExtendOptions) -> None:
    if opts.add < 1:
        raise InputError(f"--add: expected a positive number of new tokens, got {opts.add}")
    if opts.min_frequency < 1:
        raise InputError(f"--min-frequency: expected a positive integer, got {opts.min_frequency}")
    if opts.pad_to is not None and opts.pad_to < 1:
        raise InputError(f"--pad-to-multiple-of: expected a positive integer, got {opts.pad_to}")
    if not opts.data:
        raise InputError("--data: give at least one target-language text file")


def read_texts(path: Path, flag: str) -> list[str]:
    """The documents of a text / JSONL file; empty or non-UTF-8 text is an InputError."""
    from adaptkit.data.corpus import iter_documents

    texts = list(iter_documents(Path(path), flag=flag))
    if not texts:
        raise InputError(f"{flag}: '{path}' has no text")
    return texts


def model_dtype(source: Any) -> Any:
    """The dtype the model is stored in (dequantized GGUF: float32), so that old rows keep their bits."""
    import torch

    if source.kind != "dir":
        return torch.float32
    from adaptkit.io.models import read_config

    config = read_config(Path(source.location))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def write_tokenizer(tokenizer: Any, learned: Learned, start: int, directory: Path) -> Any:
    """Save `tokenizer` with the new entries and merges appended; return it reloaded with AutoTokenizer."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(directory)
    path = Path(directory) / "tokenizer.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    model = saved["model"]
    model["vocab"].update({token: start + i for i, token in enumerate(learned.tokens)})
    old = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    model["merges"] = old + [list(m) for m in learned.merges]
    path.write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
    extended = AutoTokenizer.from_pretrained(directory)
    vocab = extended.get_vocab()
    wrong = [t for t, i in tokenizer.get_vocab().items() if vocab.get(t) != i]
    wrong += [t for i, t in enumerate(learned.tokens) if vocab.get(t) != start + i]
    if wrong:
        raise RuntimeError(f"the extended tokenizer reloads with a different id for {wrong[0]!r}")
    return extended


def fertility_report(files: list[tuple[str, Path, list[str]]], old: Any, new: Any) -> list[dict[str, Any]]:
    """Stats before and after for each (role, path, texts)."""
    from adaptkit.vocab.stats import text_stats

    return [{"path": str(p), "role": role, "before": text_stats(t, old), "after": text_stats(t, new)} for role, p, t in files]


def extend(opts: ExtendOptions, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the whole extension; returns the record written to `adaptkit_vocab.json`."""
    from adaptkit.data.corpus import file_hash
    from adaptkit.io.atomic import atomic_dir, check_output
    from adaptkit.io.models import resolve_model_source

    check_options(opts)
    check_output(opts.output, opts.overwrite)
    source = resolve_model_source(opts.model)
    tokenizer = tok.load_tokenizer_as_is(source)
    spec = tok.tokenizer_spec(tokenizer)
    kind = tok.tokenizer_kind(spec)
    files = [("target", Path(p), read_texts(p, "--data")) for p in opts.data]
    if opts.source_data is not None:
        files.append(("source", Path(opts.source_data), read_texts(opts.source_data, "--source-data")))
    from adaptkit.vocab.initializers import load_initializer

    initializer = load_initializer(opts.init, opts.init_params)
    segmenter = tok.Segmenter(tokenizer.backend_tokenizer, kind)
    words = tok.word_counts((t for role, _, texts in files if role == "target" for t in texts), segmenter)
    learned = learn_tokens(words, spec, opts.add, opts.min_frequency, kind == tok.BYTE_FALLBACK)
    log(f"learned {len(learned.tokens)} tokens and {len(learned.merges)} merges ({kind}) from {sum(words.values())} words")
    with atomic_dir(opts.output, opts.overwrite) as tmp:
        record, extended = _write_extension(opts, source, tokenizer, learned, kind, initializer, tmp, log)
        record["report"] = fertility_report(files, tokenizer, extended)
        if opts.source_data is not None:
            from adaptkit.vocab.stats import changed_share

            record["source_changed_share"] = changed_share(files[-1][2], tokenizer.backend_tokenizer, extended.backend_tokenizer)
        record["data"] = [{"path": str(p), "role": role, "sha256": file_hash(p)} for role, p, _ in files]
        from adaptkit.io.vocab_record import write_record

        write_record(tmp, record)
        from adaptkit.io.model_card import write_model_card

        write_model_card(tmp, extension_card(opts, source.location, record))
    return record


def extension_card(opts: ExtendOptions, model_location: str, record: dict[str, Any]) -> Any:
    """The Hub model card of an extended model: tokens added, initializer, fertility before and after."""
    from adaptkit.io.model_card import CardInfo, merged_languages

    text = (f"The vocabulary of `{model_location}` extended by {record['added']} BPE tokens learned from the target data "
            f"(embedding rows {record['old_vocab_size']} -> {record['new_vocab_size']}), new rows initialized with `{opts.init}`; "
            "not trained further. `adaptkit_vocab.json` lists the new token ids.")
    results = [{"file": r["path"], "role": r["role"], "tokens/word before": r["before"]["tokens_per_word"],
                "tokens/word after": r["after"]["tokens_per_word"]} for r in record["report"]]
    facts = {"tokenizer kind": record["tokenizer_kind"], "merges added": record["merges_added"]}
    if record.get("source_changed_share") is not None:
        facts["source tokens changed"] = f"{record['source_changed_share']:.2%}"
    hyper = {"added tokens": opts.add, "min frequency": opts.min_frequency, "initializer": opts.init,
             "initializer parameters": opts.init_params, "pad to multiple of": opts.pad_to, "seed": opts.seed}
    return CardInfo(title=f"{Path(str(opts.output)).name}: vocabulary extension", method="vocab-extend", relation="finetune",
                    summary=text, bases=[model_location], data=[str(p) for p in opts.data],
                    languages=merged_languages([model_location] if Path(model_location).is_dir() else []),
                    facts=facts, hyperparameters=hyper, results=results)


def _write_extension(opts: ExtendOptions, source: Any, tokenizer: Any, learned: Learned, kind: str, initializer: Any, tmp: Path, log: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """Tokenizer and model into `tmp`; (the record without the report, the reloaded tokenizer)."""
    from adaptkit.io.models import load_causal_lm, save_model
    from adaptkit.vocab.embeddings import grow_embeddings

    spec = tok.tokenizer_spec(tokenizer)
    log(f"loading {source.location}")
    model = load_causal_lm(source, dtype=model_dtype(source))
    start = max(tok.next_free_id(spec), model.get_input_embeddings().weight.shape[0])
    extended = write_tokenizer(tokenizer, learned, start, tmp)
    pieces = tok.old_pieces(tokenizer.backend_tokenizer, learned.tokens)
    growth = grow_embeddings(model, pieces, start, initializer, opts.seed, opts.pad_to)
    log(f"writing {opts.output} ({growth.old_rows} -> {growth.new_rows} rows, init {opts.init})")
    save_model(model, None, tmp)
    record = {
        "tokenizer_kind": kind,
        "old_vocab_size": growth.old_rows,
        "new_vocab_size": growth.new_rows,
        "added": len(learned.tokens),
        "new_token_ids": growth.token_ids,
        "filler_ids": growth.filler_ids,
        "tied_embeddings": growth.tied,
        "merges_added": len(learned.merges),
        "merges_to_existing_tokens": learned.reused,
        "initializer": {"name": opts.init, "params": opts.init_params, "seed": opts.seed},
        "min_frequency": opts.min_frequency,
        "pad_to_multiple_of": opts.pad_to,
        "new_tokens": learned.tokens,
    }
    return record, extended
