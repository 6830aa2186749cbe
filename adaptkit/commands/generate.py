"""`adaptkit generate`: responses of a model to a JSONL of prompts (input of `adaptkit codemix`).

With --generation-server URL the responses come from that OpenAI-compatible server (serving the
one --model, whose tokenizer alone is loaded here for the chat-template handling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptkit.commands.common import (ComputeDtypeOpt, DeviceMapOpt, DeviceOpt, GenerationServerModelOpt, GenerationServerOpt, MaxMemoryOpt,
                                     OutputOpt, SeedOpt)


def command(
    ctx: typer.Context,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model directory, .gguf or Hub id; NAME=PATH to name it (repeatable: responses of every model, tagged by name).")],
    prompts: Annotated[Path, typer.Option("--prompts", "-p", help="JSONL with a 'prompt' field per record ('id' is kept).")],
    output: OutputOpt,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation budget per response.")] = 256,
    decoding: Annotated[str, typer.Option("--decoding", help="greedy; paper (SSU MT/SUM: temperature 0.8, top-p 0.9, top-k 40, repetition penalty 1.1); ae2 (the SSU reference's AlpacaEval responses, whose code-mixing it measures: temperature 0.8, top-p 0.8, top-k 40, repetition penalty 1.1, no repeated 3-gram, 512 tokens unless --max-new-tokens).")] = "greedy",
    chat_template: Annotated[bool, typer.Option("--chat-template/--no-chat-template", help="Wrap each prompt as a user turn when the tokenizer has a chat template.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per generation batch.")] = 8,
    format: Annotated[str, typer.Option("--format", help="records ({id, prompt, model, response}, for `adaptkit codemix`) or chat ({id, model, messages}: a user and an assistant turn, for `train --eval-data` and `evaluate`'s ppl task).")] = "records",
    device: DeviceOpt = "auto",
    dtype: ComputeDtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    generation_server: GenerationServerOpt = None,
    generation_server_model: GenerationServerModelOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Generate one response per prompt and model; writes JSONL records {id, prompt, model, response} (or chat records)."""
    import json

    from adaptkit.commands.common import Console, check_device_or_map, check_compute_dtype, generation_server as server_of, offload_folder, shared
    from adaptkit.io.models import Placement
    from adaptkit.errors import InputError
    from adaptkit.evals.generation import DECODING_MAX_NEW_TOKENS, DECODINGS, as_chat_records, generate_records, read_prompts
    from adaptkit.evals.runner import check_model_config, load_model_ref, model_names
    from adaptkit.io.atomic import atomic_file, check_output

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_output(output, overwrite, is_dir=False)
    if decoding not in DECODINGS:
        raise InputError(f"--decoding: expected {', '.join(DECODINGS)}, got '{decoding}'")
    if ctx.get_parameter_source("max_new_tokens").name == "DEFAULT":
        max_new_tokens = DECODING_MAX_NEW_TOKENS.get(decoding, max_new_tokens)
    if format not in ("records", "chat"):
        raise InputError(f"--format: expected records or chat, got '{format}'")
    check_compute_dtype(dtype)
    placement = Placement.from_options(device_map, max_memory)
    device = check_device_or_map(ctx, device, placement)
    refs = model_names(list(model))
    for ref in refs:
        check_model_config(ref.location)
    rows = read_prompts(prompts)
    server = server_of(generation_server, generation_server_model, refs)
    records = []
    if server is not None:
        records += generate_records(None, None, rows, refs[0].name, max_new_tokens, decoding, batch_size, chat_template, seed or 0, server)
    for ref in refs if server is None else []:  # one model in memory at a time
        if len(refs) > 1:
            console.print(f"[dim]{ref.name}: generating {len(rows)} responses[/dim]")
        with offload_folder(placement) as placed:
            loaded, tokenizer = load_model_ref(ref, dtype, device, placement=placed)
            records += generate_records(loaded, tokenizer, rows, ref.name, max_new_tokens, decoding, batch_size, chat_template, seed or 0)
        del loaded
    if format == "chat":
        records = as_chat_records(records)
    with atomic_file(output, overwrite) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    names = [ref.name for ref in refs]
    console.result({"output": str(output), "responses": len(records), "model": names[0], "models": names},
                   f"[green]wrote[/green] {len(records)} responses of {', '.join(names)} to {output}")
