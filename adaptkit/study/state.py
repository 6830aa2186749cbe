"""The study directory and its runs: what is done, what to resume, the commands that do the rest.

    STUDY/plan.json          the expanded grid (a rerun must find the same plan)
    STUDY/tokens/NAME/       one token store per source (`adaptkit data prepare`), shared by all runs
    STUDY/calib/             one calibration set (`adaptkit calibrate`), for the methods that need it
    STUDY/configs/RUN.yaml   each run's `adaptkit train --config`
    STUDY/runs/RUN/          each run (`adaptkit train`; checkpoints, metrics.jsonl, final/)
    STUDY/results/RUN.json   what `adaptkit train --json` said when the run finished

Every step is a command of the adaptkit CLI (a subprocess; the quickstart runs them in its own process),
so each can be resumed by itself: a finished step is skipped, an interrupted run continues from its
newest checkpoint (`train --resume`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from adaptkit.errors import AdaptkitError, InputError
from adaptkit.io.atomic import write_text_atomic
from adaptkit.study.spec import Run, Study, train_values


def cli() -> list[str]:
    return [sys.executable, "-m", "adaptkit"]


def plan_record(study: Study) -> dict[str, Any]:
    """What a study directory was made for; a rerun with another plan is refused."""
    return {
        "model": study.model,
        "sources": study.sources,
        "calibration": study.calibration,
        "evaluate": study.evaluate,
        "runs": {run.name: train_values(study, run, Path("tokens")) for run in study.runs},
        **({"bam": {run.name: run.bam for run in study.runs if run.bam}} if any(run.bam for run in study.runs) else {}),
    }


def open_study_dir(study: Study, output: Path, overwrite: bool) -> None:
    """Create the directory, or continue the same study in it; another study there is bad input."""
    plan = plan_record(study)
    path = output / "plan.json"
    if output.exists() and overwrite:
        shutil.rmtree(output)
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(plan)) and started(output):  # with no work made yet, the new plan replaces it
            changed = sorted(k for k in plan if saved.get(k) != json.loads(json.dumps(plan[k])))
            raise InputError(f"-o/--output: '{output}' holds another study (its {', '.join(changed)} differ); "
                             f"rerun with that study's file, pass --overwrite to start again, or choose another directory")
    elif output.exists() and any(output.iterdir()):
        raise InputError(f"-o/--output: '{output}' exists and is not a study directory; pass --overwrite or choose another path")
    output.mkdir(parents=True, exist_ok=True)
    write_plan(study, output)


def started(output: Path) -> bool:
    """Whether a study directory holds any of its work: a token store, the calibration set, a run or a result."""
    return any((output / part).is_dir() and any((output / part).iterdir()) for part in ("tokens", "calib", "runs", "results"))


def write_plan(study: Study, output: Path) -> None:
    """STUDY/plan.json, against which open_study_dir checks a rerun."""
    write_text_atomic(output / "plan.json", json.dumps(plan_record(study), indent=2) + "\n")


def prepare_commands(study: Study, output: Path) -> list[tuple[Path, list[str]]]:
    """(what it makes, command) for the shared token stores and calibration set."""
    seq_len = str(study.train.get("data", {}).get("seq_len", 512))
    steps = []
    for name in study.used_sources():
        source = study.sources[name]
        command = [*cli(), "data", "prepare", "--model", study.model, "--data", source["spec"], "--seq-len", seq_len, "-o", str(output / "tokens" / name)]
        command += ["--max-tokens", str(source["max_tokens"])] if source.get("max_tokens") else []
        command += ["--text-field", source["text_field"]] if source.get("text_field") else []
        steps.append((output / "tokens" / name, command))
    if study.needs_calibration:
        calibration = study.calibration or {}
        command = [*cli(), "calibrate", "--model", study.model, "-o", str(output / "calib")]
        for key, value in calibration.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        steps.append((output / "calib", command))
    return steps


def write_configs(study: Study, output: Path, root: Optional[Path] = None) -> None:
    """Each run's train config, naming the shared stores and calibration set under `root`: by default
    the study directory as an absolute path; `Path(".")` keeps them relative, for a study run from inside
    its directory that may be moved (the quickstart's)."""
    from adaptkit.settings import dump_yaml

    root = output.resolve() if root is None else root
    configs = output / "configs"
    configs.mkdir(exist_ok=True)
    for run in study.runs:
        values = train_values(study, run, root / "tokens", root / "calib")
        write_text_atomic(configs / f"{run.name}.yaml", dump_yaml(values))


def run_state(output: Path, run: Run) -> str:
    """finished (final/ and a result), resume (config.yaml written: train --resume), fresh or restart."""
    run_dir = output / "runs" / run.name
    if (run_dir / "final").is_dir() and (output / "results" / f"{run.name}.json").is_file():
        return "finished"
    if (run_dir / ("bam.json" if run.bam else "config.yaml")).is_file():
        return "resume"
    return "restart" if run_dir.exists() else "fresh"


def train_command(output: Path, run: Run, state: str, progress: bool = True) -> list[str]:
    """The run's `adaptkit train`: its result as JSON on stdout, its progress lines on stderr (`progress`) or none;
    `adaptkit bam` for a Branch-and-Merge entry (which continues a killed run by itself)."""
    config, run_dir = str(output / "configs" / f"{run.name}.yaml"), str(output / "runs" / run.name)
    if run.bam:
        merge_set = [item for key, value in run.bam["merge_params"].items() for item in ("--merge-set", f"{key}={json.dumps(value)}")]
        command = [*cli(), "bam", "--config", config, "--rounds", str(run.bam["rounds"]), "--branches", str(run.bam["branches"]),
                   "--merge", run.bam["merge"], *merge_set, "-o", run_dir, "--json"]
        return command + (["--overwrite"] if state == "restart" else [])
    command = [*cli(), "train", "--config", config, "-o", run_dir, "--json"]
    return command + ["--progress" if progress else "--quiet"] + {"resume": ["--resume"], "restart": ["--overwrite"]}.get(state, [])


def print_commands(study: Study, output: Path, study_file: Path) -> str:
    """The whole study as shell lines: preparation, then the runs (independent of each other), then the report."""
    lines = ["# shared data (run first)"]
    lines += [shlex.join(command) for _, command in prepare_commands(study, output)]
    lines.append("# the runs (any order, in parallel; rerun a line with --resume after a crash)")
    lines.append(shlex.join(["mkdir", "-p", str(output / "results")]))
    for run in study.runs:
        command = train_command(output, run, "fresh")
        lines.append(shlex.join(command) + f" > {shlex.quote(str(output / 'results' / (run.name + '.json')))}")
    lines.append("# evaluation and report, when all runs are done")
    lines.append(shlex.join([*cli(), "study", str(study_file), "-o", str(output)]))
    return "\n".join(lines) + "\n"


def execute(study: Study, output: Path, say: Callable[[str], None], call: Optional[Callable[[list[str], str], str]] = None,
            progress: bool = True) -> None:
    """Prepare what is missing, then train each run that is not finished, one after another. Each step is an
    adaptkit command, run by `call(command, what)`, which returns its stdout: by default a subprocess (run_command).
    Each step reports its progress on stderr, or nothing (`progress` False: the study's --quiet / --json)."""
    call = call or run_command
    for made, command in prepare_commands(study, output):
        if made.is_dir():
            continue
        say(f"study: preparing {made.relative_to(output)}")
        call(command + ([] if progress else ["--quiet"]), f"preparing {made.name}")
    (output / "results").mkdir(exist_ok=True)
    for i, run in enumerate(study.runs, 1):
        state = run_state(output, run)
        if state == "finished":
            say(f"study: run {i}/{len(study.runs)} {run.name}: finished, skipped")
            continue
        say(f"study: run {i}/{len(study.runs)} {run.name}: {'resuming' if state == 'resume' else 'training'} ({run.method})")
        stdout = call(train_command(output, run, state, progress), f"run {run.name}")
        record = json.loads(stdout.strip().splitlines()[-1])
        write_text_atomic(output / "results" / f"{run.name}.json", json.dumps(record, indent=2) + "\n")


STOP_GRACE_S = 120.0  # how long an interrupted step may take to stop (a training saves its checkpoint)


def run_command(command: list[str], what: str) -> str:
    """Run one adaptkit command in a subprocess (stderr passes through); its stdout. When the study
    is interrupted, the step is sent SIGTERM (it stops as it would by itself: a training checkpoints;
    a repeat of a signal it already got is ignored) and waited for at most STOP_GRACE_S, then killed."""
    from adaptkit.io.workers import end_process

    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = process.communicate()
    except BaseException:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        end_process(process, STOP_GRACE_S)
        raise
    if process.returncode != 0:
        raise step_failed(command, what, 128 - process.returncode if process.returncode < 0 else process.returncode)  # a signal: 128 + its number
    return stdout


def step_failed(command: list[str], what: str, code: int) -> AdaptkitError:
    """A failed step stops the study with the step's exit code; its bad input (2) is the study's runtime failure."""
    error = AdaptkitError(f"study: {what} failed (exit {code}): {shlex.join(command)}")
    error.exit_code = 1 if code == 2 else code
    return error


def result_record(output: Path, run: Run) -> Optional[dict[str, Any]]:
    path = output / "results" / f"{run.name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
