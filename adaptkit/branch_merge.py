"""Branch-and-Merge (BaM: Alexandrov et al., "Mitigating Catastrophic Forgetting in Language Transfer via
Model Merging", Findings of EMNLP 2024, arXiv 2407.08699), built from the engine and the merge toolbox.

The training data is cut into N = rounds x branches slices (engine/slices.py). In round r, `branches` runs
start from the current model, branch b training on slice r * branches + b with the one engine (any method),
and their final models are merged by a registered merge method (default SLERP at t=0.5 for two branches,
or any other, e.g. linear) into the model the next round starts from; the last merge is OUT/final.

    OUT/bam.json            the settings; a rerun with other settings is refused
    OUT/round-R/branch-B/   each branch: a run directory of the engine (checkpoints, metrics.jsonl, final/)
    OUT/round-R/merged/     the merge of round R's branches (the last round's is OUT/final)
    OUT/metrics.jsonl       every branch's metrics rows with round, branch and the step counted across rounds
    OUT/curves.png          training loss and eval perplexity across the rounds, one line per branch

Killed at any point, the same command continues: finished branches and merges are kept, an interrupted
branch resumes from its newest checkpoint.

Under a launcher (torchrun, accelerate launch; `--distributed ddp|fsdp`) every process trains each branch
with the engine; the main process alone writes bam.json, the merges and the curves while the others wait
for its outcome (`on_main`), then all start the next round from the merged model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from adaptkit.bam_plan import BamPlan, check_plan
from adaptkit.errors import InputError

if TYPE_CHECKING:
    from adaptkit.engine.config import TrainConfig


def run_bam(config: "TrainConfig", plan: BamPlan, output: Path, overwrite: bool = False,
            log: Callable[[str], None] = print) -> Optional[dict[str, Any]]:
    """Train and merge round after round (continuing what a killed run left); returns the summary (None on
    the other processes of a launched run)."""
    from adaptkit.engine.distributed import make_accelerator

    check_plan(plan)
    processes = make_accelerator(config.device)  # joins a launcher's process group (alone: this process)
    main = processes.is_main_process
    log = log if main else (lambda message: None)
    check_data(config, plan)
    on_main(processes, lambda: _open(output, config, plan, overwrite))
    model, done, results = config.model, [], []
    for r in range(plan.rounds):
        results += [_branch(config, plan, r, b, model, output, log, main) for b in range(plan.branches)]
        finals = [Path(result["final"]) for result in results[-plan.branches:]]
        target = output / "final" if r == plan.rounds - 1 else output / f"round-{r}" / "merged"
        on_main(processes, lambda: _merge_once(plan, finals, target, f"bam: round {r + 1}/{plan.rounds} merged into {target}", log))
        model, done = str(target), done + [str(target)]
    rows: list[dict[str, Any]] = []
    on_main(processes, lambda: rows.extend(write_curves(output, plan)))
    if not main:
        return None
    return {"final": str(output / "final"), "rounds": plan.rounds, "branches": plan.branches, "merge": plan.merge,
            "merged": done, "steps": max((row["step"] for row in rows), default=0),
            "trainable_fraction": max(result["trainable_fraction"] for result in results),
            "seconds": sum(result["seconds"] for result in results)}  # of the branches' last sessions


def on_main(processes: Any, work: Callable[[], None]) -> None:
    """Run `work` on the main process while the others wait for its outcome (a broadcast from it, bounded by the
    process group's timeout; a launcher ends them when it dies); an AdaptkitError there is raised on every process."""
    from adaptkit.errors import AdaptkitError

    error = None
    if processes.is_main_process:
        try:
            work()
        except AdaptkitError as exc:
            error = exc
    if processes.num_processes > 1:
        import torch.distributed as dist

        box = [None if error is None else (isinstance(error, InputError), str(error))]
        dist.broadcast_object_list(box, src=0)  # two plain values: whether it was bad input, and the message
        if box[0] is not None and error is None:
            error = (InputError if box[0][0] else AdaptkitError)(box[0][1])
    if error is not None:
        raise error


def _merge_once(plan: BamPlan, finals: list[Path], target: Path, done: str, log: Callable[[str], None]) -> None:
    """Merge a round's branches into `target`, unless a previous session did."""
    if not target.is_dir():
        _merge(plan, finals, target)
        log(done)


def check_data(config: "TrainConfig", plan: BamPlan) -> None:
    """Every source has at least one block per slice (tokenized once here; the branches reuse the token store)."""
    from adaptkit.engine.evaluation import hold_out_validation
    from adaptkit.engine.training_data import load_data
    from adaptkit.engine.slices import check_slices
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    if config.data.slice is not None:
        raise InputError("--set data.slice: BaM cuts the data into its own slices; leave data.slice unset")
    tokenizer = load_tokenizer(resolve_model_source(config.model, "--model"), config.trust_remote_code)
    sources, blocks = load_data(config, tokenizer, lambda message: None)
    sources = hold_out_validation(sources, blocks, config.data.validation_fraction, config.seed)[0]
    check_slices(sources, plan.slices, f"--rounds {plan.rounds} x --branches {plan.branches}", config.data.seq_len)


def _open(output: Path, config: "TrainConfig", plan: BamPlan, overwrite: bool) -> None:
    """Create OUT, or continue the same BaM run in it (its bam.json must match)."""
    from adaptkit.io.atomic import write_text_atomic

    record = json.loads(json.dumps({"rounds": plan.rounds, "branches": plan.branches, "merge": plan.merge,
                                    "merge_params": plan.merge_params, "train": json.loads(config.model_dump_json())}))
    path = output / "bam.json"
    if output.exists() and overwrite:
        shutil.rmtree(output)
    if path.is_file():
        if json.loads(path.read_text(encoding="utf-8")) != record:
            raise InputError(f"-o/--output: '{output}' holds a BaM run with other settings; rerun with them, pass --overwrite, or choose another directory")
    elif output.exists() and any(output.iterdir()):
        raise InputError(f"-o/--output: '{output}' exists and is not a BaM run directory; pass --overwrite or choose another path")
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def _branch(config: "TrainConfig", plan: BamPlan, r: int, b: int, model: str, output: Path, log: Callable[[str], None],
            main: bool = True) -> dict[str, Any]:
    """Branch b of round r from `model` on its slice: kept when finished, resumed when interrupted. Returns
    what the engine said of it (also in the branch's result.json, which the main process writes)."""
    from adaptkit.engine.loop import train
    from adaptkit.io.atomic import write_text_atomic
    from adaptkit.registry import get_spec

    run_dir = output / f"round-{r}" / f"branch-{b}"
    if (run_dir / "final").is_dir() and (run_dir / "result.json").is_file():
        return json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    branch = config.model_copy(deep=True)
    branch.model = model
    branch.data.slice = f"{r * plan.branches + b}/{plan.slices}"
    resume = (run_dir / "config.yaml").is_file()
    log(f"bam: round {r + 1}/{plan.rounds}, branch {b + 1}/{plan.branches} (data slice {branch.data.slice})" + (", resumed" if resume else ""))
    method = get_spec("method", branch.method, "--method").build(branch.method_params)
    result = train(branch, method, run_dir, resume=resume, overwrite=not resume, log=log).as_dict()
    if main:
        write_text_atomic(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def _merge(plan: BamPlan, finals: list[Path], target: Path) -> None:
    from adaptkit.merge.api import merge
    from adaptkit.merge.executor import MergeOptions

    merge(plan.merge, [str(f) for f in finals], target, params=dict(plan.merge_params),
          options=MergeOptions(overwrite=True, title="BaM merge card"), where="--merge-set")


def write_curves(output: Path, plan: BamPlan) -> list[dict[str, Any]]:
    """OUT/metrics.jsonl (each branch's rows, step counted across rounds) and OUT/curves.png (one line per branch)."""
    from adaptkit.engine.metrics import read_metrics
    from adaptkit.io.atomic import write_text_atomic
    from adaptkit.study.report import plot_all_curves

    rows, offset, lines = [], 0, {}
    for r in range(plan.rounds):
        longest = 0
        for b in range(plan.branches):
            path = output / f"round-{r}" / f"branch-{b}" / "metrics.jsonl"
            train_rows, eval_rows = read_metrics(path) if path.is_file() else ([], [])
            for row in train_rows + eval_rows:
                rows.append({**row, "round": r, "branch": b, "step": row["step"] + offset})
                longest = max(longest, row["step"])
        offset += longest
    for b in range(plan.branches):
        lines[f"branch {b}"] = output / "curves" / f"branch-{b}.jsonl"
        lines[f"branch {b}"].parent.mkdir(exist_ok=True)
        write_text_atomic(lines[f"branch {b}"], "".join(json.dumps(row) + "\n" for row in rows if row["branch"] == b))
    write_text_atomic(output / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    plot_all_curves(lines, output / "curves.png")
    return rows
