"""`adaptkit codemix`: which responses are not (only) in the expected language.

Input: JSONL with one generation per record (`--field`, default 'response'; 'id' and
'model' are kept, and results are summarized per model). Output directory: codemix.json
(per-response results and summaries), codemix.md and codemix.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adaptkit.commands.common import OutputOpt


def command(
    ctx: typer.Context,
    input: Annotated[Path, typer.Option("--input", "-i", help="JSONL with generations (e.g. from `adaptkit generate`).")],
    expected_lang: Annotated[str, typer.Option("--expected-lang", help="Language the responses should be in (ISO 639-1/3: en, eng, ha...).")],
    output: OutputOpt,
    threshold: Annotated[float, typer.Option("--threshold", help="Code-mixed when the expected language's confidence is below this (paper: 0.9).")] = 0.9,
    other_lang: Annotated[Optional[list[str]], typer.Option("--other-lang", help="Restrict identification to the expected language and these (paper: the target language; repeatable).", show_default="English")] = None,
    restrict: Annotated[bool, typer.Option("--restrict/--no-restrict", help="Restrict the identifier to the expected language and --other-lang, else English, before normalising, as the SSU paper restricts GlotLID (off: all its languages).")] = True,
    lid: Annotated[str, typer.Option("--lid", help="LID backend: py3langid, pycld2, fasttext (GlotLID; --set model_path=...).")] = "py3langid",
    field: Annotated[str, typer.Option("--field", help="Record field holding the response text.")] = "response",
    details: Annotated[bool, typer.Option("--details/--no-details", help="Per-sentence and per-word breakdown.")] = True,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write codemix.png.")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="An LID backend setting: --set model_path=glotlid.bin for fasttext (repeatable).")] = None,
) -> None:
    """Flag code-mixed responses with a language identifier (SSU paper: GlotLID, threshold 0.9)."""
    from adaptkit.commands.common import Console, shared
    from adaptkit.settings import parse_set_overrides
    from adaptkit.errors import InputError
    from adaptkit.evals.codemix import analyze, write_codemix_report
    from adaptkit.evals.data import read_jsonl
    from adaptkit.evals.langcodes import resolve_language
    from adaptkit.evals.lid import load_lid
    from adaptkit.io.atomic import atomic_dir, check_output
    from adaptkit.registry import warn

    console = Console.of(ctx)
    overwrite = shared(ctx).overwrite
    check_output(output, overwrite)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold: must be between 0 and 1, got {threshold}")
    params = {".".join(path): value for path, value in parse_set_overrides(set_)}
    rows = read_jsonl(input, "--input", (field,))
    backend = load_lid(lid, params, "--lid")
    known = backend.languages()
    expected = resolve_language(expected_lang, "--expected-lang", known)
    others = [resolve_language(code, "--other-lang", known) for code in (other_lang or [])]
    if restrict and expected == "en" and not others:
        warn("--expected-lang en without --other-lang: identifying over all languages; the SSU paper restricts to English plus the target language (--other-lang CODE)")
    report = analyze(rows, backend, expected, others, threshold, field=field, detail=details, restrict=restrict)
    with atomic_dir(output, overwrite) as tmp:
        files = write_codemix_report(report, tmp, plots)
    summary = report["summary"]
    rows_out = [[name, g["responses"], g["code_mixed"], g["pct_code_mixed"]] for name, g in report["groups"].items()]
    rows_out.append(["all", summary["responses"], summary["code_mixed"], summary["pct_code_mixed"]])
    console.table("adaptkit codemix", ["group", "responses", "code-mixed", "% code-mixed"], rows_out)
    console.result(
        {"output": str(output), "files": files, "summary": summary, "groups": report["groups"]},
        f"[green]wrote[/green] {output}: {summary['code_mixed']}/{summary['responses'] - summary['empty']} code-mixed ({summary['pct_code_mixed']:.1f}%)",
    )
