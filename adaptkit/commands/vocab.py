"""`adaptkit vocab`: how a tokenizer cuts target-language text, and extending it for that language.

`inspect` prints, per file, tokens per word (fertility), bytes per token and the share of
unknown / partial-character (byte) tokens. `extend` learns `--add N` new BPE tokens from
target text, appends them (entries and merges) to the tokenizer, gives them embedding and LM
head rows with an initializer plugin (`--init`: subword-mean, mean, random, or a plugin's) and
writes a normal model directory plus `adaptkit_vocab.json` (old vocabulary size, new ids).
`transplant` gives a model another tokenizer: shared tokens keep their rows, the others are
initialised by an initializer plugin or by OMP over a donor model's embeddings (`adaptkit.vocab.transplant`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import Console, OutputOpt, PrivateOpt, PushOpt, RevisionOpt, SeedOpt, push_output, shared

app = typer.Typer(help="Vocabulary: measure a tokenizer on target text (inspect), extend it with new tokens (extend), or give a model another tokenizer (transplant).", no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model directory, .gguf file or Hub id.")]
DataOpt = Annotated[list[Path], typer.Option("--data", help="Text or JSONL file (repeatable).")]


def _stats_row(path: str, stats: dict) -> list:
    return [path, stats["tokens"], stats["tokens_per_word"], stats["bytes_per_token"], stats["unknown_share"], stats["byte_share"]]


@app.command()
def inspect(
    ctx: typer.Context,
    model: ModelOpt,
    data: DataOpt,
) -> None:
    """Tokens per word, bytes per token, unknown and byte-token shares of each --data file."""
    from adaptkit.io.models import resolve_model_source
    from adaptkit.vocab.extend import read_texts
    from adaptkit.vocab.stats import text_stats
    from adaptkit.vocab.tokenizer import load_tokenizer_as_is

    console = Console.of(ctx)
    texts = {str(p): read_texts(p, "--data") for p in data}
    tokenizer = load_tokenizer_as_is(resolve_model_source(model))
    files = [{"path": path, **text_stats(t, tokenizer)} for path, t in texts.items()]
    console.table(
        f"adaptkit vocab inspect ({len(tokenizer)} tokens)",
        ["file", "tokens", "tokens/word", "bytes/token", "unknown", "byte tokens"],
        [_stats_row(f["path"], f) for f in files],
    )
    console.result({"model": model, "vocab_size": len(tokenizer), "files": files})


@app.command()
def extend(
    ctx: typer.Context,
    model: ModelOpt,
    data: DataOpt,
    add: Annotated[int, typer.Option("--add", help="Exact number of new tokens (tokens the vocabulary has are skipped).")],
    output: OutputOpt,
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="A new token's pair must occur at least this often.")] = 2,
    init: Annotated[str, typer.Option("--init", help="Initializer of the new rows: subword-mean (FVT), mean, random, or a plugin's.")] = "subword-mean",
    pad_to_multiple_of: Annotated[Optional[int], typer.Option("--pad-to-multiple-of", help="Pad the embedding rows to a multiple (e.g. 64).")] = None,
    source_data: Annotated[Optional[Path], typer.Option("--source-data", help="Source-language text: report fertility and the share of its tokens that changed.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="An initializer parameter: --set KEY=VALUE (repeatable; see `adaptkit plugins --kind initializer`).")] = None,
    seed: SeedOpt = None,
    push_to_hub: PushOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
) -> None:
    """Learn --add new tokens from --data, append them to tokenizer and embeddings, write a model dir."""
    from adaptkit.settings import parse_set_overrides
    from adaptkit.io.hub import check_target, output_files
    from adaptkit.vocab.extend import ExtendOptions, extend as run_extend

    target = check_target(push_to_hub, private, revision)
    console = Console.of(ctx)
    params = {".".join(path): value for path, value in parse_set_overrides(set_)}
    opts = ExtendOptions(
        model=model, data=list(data), add=add, output=output, min_frequency=min_frequency, init=init,
        init_params=params, pad_to=pad_to_multiple_of, source_data=source_data, seed=0 if seed is None else seed,
        overwrite=shared(ctx).overwrite,
    )
    record = run_extend(opts, log=lambda message: console.print(message))
    rows = [[r["path"], r["role"], r["before"]["tokens_per_word"], r["after"]["tokens_per_word"],
             1 - r["after"]["tokens"] / r["before"]["tokens"]] for r in record["report"]]
    console.table("adaptkit vocab extend: tokens per word", ["file", "role", "before", "after", "fewer tokens"], rows)
    changed = record.get("source_changed_share")
    summary = f"[green]wrote[/green] {output}: {record['added']} new tokens, rows {record['old_vocab_size']} -> {record['new_vocab_size']}"
    if changed is not None:
        summary += f"; source tokens changed: {changed:.2%}"
    result = {k: v for k, v in record.items() if k != "new_tokens"}
    url = push_output(target, output_files(output), console, f"adaptkit vocab extend --add {add} --init {init}")
    console.result({"output": str(output), **result, **({"hub": url} if url else {})}, summary)


@app.command()
def transplant(
    ctx: typer.Context,
    model: ModelOpt,
    tokenizer: Annotated[Path, typer.Option("--tokenizer", help="Directory of the new tokenizer (a model directory for --init omp: its embeddings are the donor's).")],
    output: OutputOpt,
    init: Annotated[str, typer.Option("--init", help="Rows of tokens the model lacks: subword-mean (FVT), mean, random, a plugin's, or omp (a donor model's embeddings).")] = "subword-mean",
    k: Annotated[int, typer.Option("--k", help="With --init omp: shared tokens combined per new token.")] = 8,
    seed: SeedOpt = None,
) -> None:
    """Give --model the tokenizer in --tokenizer: shared tokens keep their rows, new ones are initialised; write a model dir."""
    from adaptkit.vocab.transplant import TransplantOptions, transplant as run_transplant

    console = Console.of(ctx)
    opts = TransplantOptions(model=model, tokenizer=tokenizer, output=output, init=init, k=k, seed=0 if seed is None else seed, overwrite=shared(ctx).overwrite)
    record = run_transplant(opts, log=lambda message: console.print(message))
    counts = record["transplant"]
    console.table("adaptkit vocab transplant: rows of the new vocabulary", ["rows", "from", "count"], [
        ["tokens both vocabularies have", "their old rows, exactly", counts["kept"]],
        ["tokens the model lacked", init + (f" (k={k})" if init == "omp" else ""), counts["initialized"]],
        ["ids without a token", "the old mean row", counts["without_token"]],
    ])
    summary = f"[green]wrote[/green] {output}: rows {record['old_vocab_size']} -> {record['new_vocab_size']}, {counts['initialized']} new tokens by {init}"
    console.result({"output": str(output), **record}, summary)
