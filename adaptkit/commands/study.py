"""`adaptkit study`: a grid of runs (methods x parameters x seeds) on one model and one data mixture,
sharing one token store and one calibration set; finished runs are skipped and an interrupted one
resumes, so rerunning the same command after a crash continues where it stopped. Then one evaluation
of every final model and the base, and one report (table, forgetting-vs-learning frontier, curves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptkit.commands.common import Console, shared


def command(
    ctx: typer.Context,
    study_file: Annotated[Path, typer.Argument(help="The study YAML (model, sources, mixture, train, calibration, seeds, grid).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Study directory (token stores, calibration, runs, eval, report); rerun with the same one to continue.")] = Path("study"),
    print_commands: Annotated[bool, typer.Option("--print-commands", help="Write the run configs and print the shell commands of the whole study (for a scheduler) instead of running them.")] = False,
) -> None:
    """Run a grid of trainings (skipping finished runs, resuming interrupted ones), evaluate them all and write the report."""
    import sys

    from adaptkit.io.atomic import check_writable
    from adaptkit.study import report, state
    from adaptkit.study.spec import check_inputs, load_study

    console = Console.of(ctx)
    study = load_study(study_file)  # every grid entry checked before anything is written
    check_inputs(study)  # the model, sources, calibration and eval files, each method's extras
    check_writable(output, "-o/--output")
    state.open_study_dir(study, output, shared(ctx).overwrite)
    shared(ctx).on_interrupt = lambda: f"finished runs and the checkpoints of the interrupted one are kept in {output}; run the same command again to continue"
    state.write_configs(study, output)
    if print_commands:
        sys.stdout.write(state.print_commands(study, output, study_file))
        return
    say = lambda message: console.print(message)  # noqa: E731
    state.execute(study, output, say, progress=not console.silent)
    say(f"study: evaluating {len(study.runs)} runs and the base on {len(study.evaluate)} sets")
    rows = report.study_rows(study, output, report.evaluate_study(study, output, console))
    result = report.write_study_report(study, output, rows)
    sets = [s.split("=", 1)[0] for s in study.evaluate]
    console.table("study: held-out perplexity; gain = bits per byte saved vs the base model (source: forgetting, target: learning), positive = better",
                  *report.table(rows, sets))
    console.result(result, f"[green]done[/green]: {len(study.runs)} runs; {report.report_summary(result)}; report in {output / 'report'}")
