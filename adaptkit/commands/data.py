"""`adaptkit data`: tokenize corpora once into a token store, and look inside one.

    adaptkit data prepare --model ./instruct --data 'hausa/*.jsonl.gz' --seq-len 512 --num-proc 16 -o tokens/hau
    adaptkit data inspect tokens/hau

`train --data tokens/hau` then reads the store (any --seq-len); given raw sources, `train` builds
(or reuses) a cached store on its own, so `prepare` is an optional explicit step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adaptkit.commands.common import Console, OutputOpt, shared

app = typer.Typer(help="Token stores: tokenize corpora once (data prepare), look inside one (data inspect).", no_args_is_help=True)


@app.command("prepare")
def prepare(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model directory or Hub id whose tokenizer is used.")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Source: .txt/.jsonl/.parquet (also .gz/.zst), a directory, a glob, a saved HF dataset or hub:ID[:CONFIG][@SPLIT]. Repeatable.")],
    output: OutputOpt,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Block length to report blocks for (the store itself serves any length).")] = 512,
    num_proc: Annotated[Optional[int], typer.Option("--num-proc", help="Tokenizer processes [default: the available cores].")] = None,
    max_tokens: Annotated[Optional[list[str]], typer.Option("--max-tokens", help="Token cap: COUNT for all sources together, SPEC=COUNT for one (e.g. 200M, 1.5B, 50k). Repeatable.")] = None,
    text_field: Annotated[Optional[list[str]], typer.Option("--text-field", help="JSONL / parquet / dataset text field: one for all sources or one per --data [default: text].")] = None,
) -> None:
    """Tokenize sources into a token store directory (memory-mapped shards + index)."""
    from adaptkit.data.corpus import per_source
    from adaptkit.data.sources import resolve
    from adaptkit.data.store import parse_max_tokens, write_store
    from adaptkit.errors import InputError
    from adaptkit.io.atomic import atomic_dir, check_output
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    for value, name in ((seq_len, "--seq-len"), (num_proc or 1, "--num-proc")):
        if value < 1:
            raise InputError(f"{name}: must be at least 1 (got {value})")
    check_output(output, overwrite)
    sources = [resolve(spec, "--data") for spec in data]
    for source in sources:
        if source.kind == "store":
            raise InputError(f"--data: '{source.spec}' is already a token store")
    fields = per_source(text_field or ["text"], len(sources), "--text-field")
    caps, total = parse_max_tokens(max_tokens, data)
    tokenizer = load_tokenizer(resolve_model_source(model, "--model"))
    with atomic_dir(output, overwrite) as tmp:
        index = write_store(tmp, sources, tokenizer, fields, num_proc, caps, total, console.print)
    summary = _summary(index, output, seq_len)
    for row in summary["sources"]:
        if row["blocks"] == 0:
            console.print(f"warning: '{row['spec']}' gives {row['tokens']} tokens, fewer than one block of {seq_len} (--seq-len)")
    console.result(summary, f"[green]done[/green]: {index['documents']:,} documents, {index['tokens']:,} tokens "
                            f"({summary['blocks']:,} blocks of {seq_len}) -> {output}")


@app.command("inspect")
def inspect(
    ctx: typer.Context,
    store: Annotated[Path, typer.Argument(metavar="STORE", help="A token store directory (from `adaptkit data prepare`).")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Block length to count blocks for.")] = 512,
) -> None:
    """Documents, tokens and bytes per token of each source; the tokenizer."""
    from adaptkit.data.store import TokenStore
    from adaptkit.errors import InputError

    if seq_len < 1:
        raise InputError(f"--seq-len: must be at least 1 (got {seq_len})")
    if not Path(store).is_dir():
        raise InputError(f"STORE: '{store}' is not a directory (expected a token store from `adaptkit data prepare`)")
    index = TokenStore(store, "STORE").index
    summary = _summary(index, store, seq_len)
    console = Console.of(ctx)
    header = ["source", "documents", "tokens", "bytes", "bytes/token", f"blocks of {seq_len}"]
    rows = [[r["spec"], r["documents"], r["tokens"], r["bytes"], r["bytes_per_token"], r["blocks"]] for r in summary["sources"]]
    rows.append(["total", summary["documents"], summary["tokens"], summary["bytes"], summary["bytes_per_token"], summary["blocks"]])
    tok = summary["tokenizer"]
    console.table(f"token store {store}: tokenizer {tok['name'] or '?'} (fingerprint {tok['fingerprint']}, "
                  f"vocabulary {tok['vocab_size']}, ids {summary['dtype']})", header, rows)
    console.result(summary)


def _summary(index: dict[str, Any], path: Path, seq_len: int) -> dict[str, Any]:
    def per(entry: dict[str, Any]) -> dict[str, Any]:
        return {"documents": entry["documents"], "tokens": entry["tokens"], "bytes": entry["bytes"],
                "bytes_per_token": entry["bytes"] / max(1, entry["tokens"])}

    sources = [{"spec": e["spec"], "text_field": e["text_field"], **per(e), "blocks": e["tokens"] // seq_len,
                "max_tokens": e["max_tokens"], "capped": e["capped"], "sha256": e["hash"]} for e in index["sources"]]
    return {"store": str(path), **per(index), "blocks": sum(s["blocks"] for s in sources), "seq_len": seq_len,
            "dtype": index["dtype"], "tokenizer": index["tokenizer"], "sources": sources}
