"""`adaptkit train`: continual pre-training with any registered method on the one engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adaptkit.commands.common import ConfigOpt, Console, PrivateOpt, PushOpt, RevisionOpt, SetOpt, push_output, shared
from adaptkit.errors import InputError
from adaptkit.io.atomic import check_writable
from adaptkit.io.devices import DEVICE_HELP

def command(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model directory, .gguf file or Hub id.")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Training data: a .txt (a document per line), .jsonl, .parquet (also .gz/.zst), directory, glob, token store, saved HF dataset or hub:ID[:CONFIG][@SPLIT]. Repeatable: NAME=SPEC[:WEIGHT] mixes named sources by weight (e.g. --data ha=tokens/hau --data en=en.txt:0.05 replays 5% English).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Training method (see `adaptkit plugins --kind method`).", show_default="fft")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Run directory (checkpoints, metrics, final/ model); required unless --print-config.")] = None,
    mask: Annotated[Optional[str], typer.Option("--mask", help="Mask directory from `adaptkit mask`: the method's `mask` parameter (ssu-*).")] = None,
    calib: Annotated[Optional[str], typer.Option("--calib", help="Calibration directory from `adaptkit calibrate`: the method's `calib` parameter (ssu-*, soft-reg EWC).")] = None,
    freeze_ratio: Annotated[Optional[float], typer.Option("--freeze-ratio", help="Fraction to freeze, for methods that have this parameter (ssu-*).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps.", show_default="one epoch")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="Epochs when --max-steps is not given.", show_default="1.0")] = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per block (paper: 512).", show_default="512")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per optimizer step, all processes together (paper: 32).", show_default="32")] = None,
    micro_batch_size: Annotated[Optional[int], typer.Option("--micro-batch-size", help="Sequences per forward pass and process (gradient accumulation makes up the rest).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (paper: 5e-5).", show_default="5e-05")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay (paper: 0.01).", show_default="0.01")] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help="cosine, linear, constant, wsd (warmup-stable-decay: --set schedule.cooldown_ratio=0.2 schedule.cooldown_shape=linear|cosine|1-sqrt) or rewarm (from the floor schedule.min_lr_ratio up to --lr, cosine back to the floor).", show_default="cosine")] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option("--warmup-ratio", help="Warmup fraction of the steps (paper: 0.05).", show_default="0.05")] = None,
    ema_decay: Annotated[Optional[float], typer.Option("--ema-decay", help="Also write final-ema/: an exponential moving average of the weights with this decay, in (0, 1) (e.g. 0.99).")] = None,
    lawa_k: Annotated[Optional[int], typer.Option("--lawa-k", help="Also write final-lawa/: the mean of the last K snapshots of the weights (LAWA), one every --set averaging.lawa_interval steps and at the end; the interval defaults to the checkpoint interval.")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option("--max-grad-norm", help="Gradient clipping norm.", show_default="1.0")] = None,
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", help="Checkpoint every N steps (0: none); the newest 2 are kept.", show_default="every 10% of the steps, rounded up")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in -o (a finished run is left as it is).")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved settings (defaults and method parameters included) as YAML on stdout, usable as --config, and exit.")] = False,
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16 (autocast, fp32 master weights) or bf16-pure (bf16 weights and optimizer state, as the SSU reference).", show_default="auto")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help=f"Where to train: {DEVICE_HELP} Under torchrun / accelerate launch each process takes its own GPU.", show_default="auto")] = None,
    distributed: Annotated[Optional[str], typer.Option("--distributed", help="Under torchrun / accelerate launch: ddp or fsdp (shards parameters, gradients and optimizer state).", show_default="ddp")] = None,
    text_field: Annotated[Optional[list[str]], typer.Option("--text-field", help="JSONL / parquet / dataset text field: FIELD for all sources or NAME=FIELD for one. Repeatable.", show_default="text")] = None,
    max_tokens: Annotated[Optional[list[str]], typer.Option("--max-tokens", help="Token cap: COUNT for all sources together, NAME=COUNT for one (e.g. 200M, 1.5B, 50k). Repeatable.")] = None,
    num_proc: Annotated[Optional[int], typer.Option("--num-proc", help="Tokenizer processes when building the token store.", show_default="the available cores")] = None,
    packing: Annotated[Optional[str], typer.Option("--packing", help="concat (EOS-separated documents in blocks) or doc-mask (documents in a block do not attend to each other; positions restart).", show_default="concat")] = None,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Eval set NAME=SPEC[:ROLE] (ROLE source or target; text, JSONL or chat JSONL with 'messages'): perplexity and bits per byte at step 0, every --eval-steps and at the end, in metrics.jsonl and curves.png. Repeatable.")] = None,
    eval_steps: Annotated[Optional[int], typer.Option("--eval-steps", help="Evaluate the eval sets every N steps (also at step 0 and the end).")] = None,
    validation_fraction: Annotated[Optional[float], typer.Option("--validation-fraction", help="Hold out this fraction of the training blocks (seeded, not trained on) as the eval set 'validation'.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Activation checkpointing.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    trust_remote_code: Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Allow model code from the Hub.")] = None,
    report_to: Annotated[Optional[str], typer.Option("--report-to", help="Experiment trackers, comma-separated: tensorboard, mlflow, wandb, trackio (each an extra: pip install 'adaptkit[wandb]').")] = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="Run name in the trackers and the model card.", show_default="the -o directory's name")] = None,
    project: Annotated[Optional[str], typer.Option("--project", help="Tracker project (W&B, trackio, TensorBoard folder) or MLflow experiment.", show_default="adaptkit")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.", show_default="42")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    push_to_hub: PushOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build the model without weights, make the method's plan and print the memory per process (1 and --processes N under DDP / FSDP); train nothing.")] = False,
    processes: Annotated[int, typer.Option("--processes", min=1, help="With --dry-run: the number of processes to plan for.")] = 1,
) -> None:
    """Continually pre-train a model with a method (fft, ssu-*, lora, ...) and save runs/NAME/final."""
    from adaptkit.io.hub import check_target
    from adaptkit.threads import apply as apply_threads

    from adaptkit.train_settings import build_config, build_method

    options = {  # every option of OPTION_SETTINGS and DATA_OPTIONS, by name (tests/test_train_settings.py)
        "model": model, "method": method, "max_steps": max_steps, "epochs": epochs, "seq_len": seq_len, "num_proc": num_proc,
        "packing": packing, "batch_size": batch_size, "micro_batch_size": micro_batch_size, "lr": lr, "weight_decay": weight_decay,
        "schedule": schedule, "warmup_ratio": warmup_ratio, "ema_decay": ema_decay, "lawa_k": lawa_k, "max_grad_norm": max_grad_norm, "save_steps": save_steps,
        "precision": precision, "device": device, "distributed": distributed, "seed": seed,
        "gradient_checkpointing": gradient_checkpointing, "compile": compile, "trust_remote_code": trust_remote_code,
        "report_to": report_to, "run_name": run_name, "project": project, "eval_data": eval_data, "eval_steps": eval_steps,
        "validation_fraction": validation_fraction, "data": data, "text_field": text_field, "max_tokens": max_tokens,
    }
    method_options = {"mask": mask, "calib": calib, "freeze_ratio": freeze_ratio}
    train_config = build_config(config, options, set_, method_options, require_inputs=not print_config)
    training_method = build_method(train_config, method_options, require_inputs=not print_config)
    if print_config:
        return _print_config(train_config, training_method, Console.of(ctx).json_mode)
    if output is None:
        raise InputError("-o/--output: required (the run directory)")
    target = check_target(push_to_hub, private, revision)
    console = Console.of(ctx)
    if dry_run:
        return print_memory_plan(train_config, training_method, processes, console)
    use_device(train_config.device)
    apply_threads(train_config.threads)
    check_writable(output)  # the engine checks what is there (resume, overwrite); this, whether it can be written
    shared(ctx).on_interrupt = lambda: interrupted_note(output)
    if resume and _report_finished_run(output, train_config, shared(ctx).overwrite, console):
        return
    result = run_training(train_config, training_method, output, resume, shared(ctx).overwrite, console)
    if result.main_process:  # the other processes of a multi-process run stay silent
        _report(result, target, train_config, console)


def _report_finished_run(output: Path, train_config: Any, overwrite: bool, console: Console) -> bool:
    """With --resume on a finished run: check the settings against it, say so, and return True (nothing to train)."""
    if not ((output / "final").is_dir() and (output / "config.yaml").is_file()):
        return False
    from adaptkit.engine.rundir import RunDir

    RunDir.check(output, train_config, resume=True, overwrite=overwrite)  # changed settings are an error even on a finished run
    console.result({"run_dir": str(output), "final": str(output / "final"), "finished": True, "steps": 0},
                   f"{output} is a finished run (its model is in {output / 'final'}); nothing to resume. "
                   f"To train further, start a new run with --model {output / 'final'}")
    return True


def _report(result: Any, target: Any, train_config: Any, console: Console) -> None:
    """Push the run when asked (--push-to-hub) and print its result."""
    url = push_output(target, upload_files(result.run_dir), console, f"adaptkit train --method {train_config.method}")
    console.result({**result.as_dict(), **({"hub": url} if url else {})},
                   f"[green]done[/green]: {result.steps} steps, final loss {result.final_loss:.4f}, model in {result.final_dir}")


def print_memory_plan(config, method, processes: int, console: Console) -> None:
    """The --dry-run table: bytes per process for one process, and N under DDP and FSDP."""
    from adaptkit.engine.memory_plan import dry_run, human_bytes

    plan = dry_run(config, method, processes)
    table = plan["bytes_per_process"]
    keys = list(table["fsdp"])
    columns = ["per process", "1 process", f"{processes} x DDP", f"{processes} x FSDP"]
    rows = [[key, *(human_bytes(table[mode].get(key, 0)) for mode in ("single", "ddp", "fsdp"))] for key in keys]
    if processes == 1:
        rows = [row[:2] + ["-", "-"] for row in rows]
    counts = plan["counts"]
    title = (f"adaptkit train --dry-run: {config.method} on {config.model}: {counts['trainable']:,} of {counts['total']:,} entries train; "
             f"weights {plan['weights_dtype']}, precision {plan['precision']}, micro-batch {plan['micro_batch_size']} x {plan['seq_len']}")
    console.table(title, columns, rows)
    console.result(plan)


RUN_FILES = ("run_card.md", "config.yaml", "metrics.jsonl")


def upload_files(run_dir: Path) -> dict:
    """What --push-to-hub uploads from a run: final/ as the repository, the run's records under run/."""
    from adaptkit.io.hub import output_files

    files = output_files(run_dir / "final")
    files.update({f"run/{name}": run_dir / name for name in RUN_FILES if (run_dir / name).is_file()})
    return files


def _print_config(config, method, as_json: bool = False) -> None:
    """The resolved settings as config.yaml holds them, with every method parameter (defaults included), on stdout
    (with --json: the same settings as one JSON object)."""
    import sys

    from adaptkit.engine.rundir import config_yaml

    resolved = config.model_copy(update={"method_params": method.params.model_dump(mode="json")})
    sys.stdout.write(resolved.model_dump_json() + "\n" if as_json else config_yaml(resolved))
    sys.stdout.flush()


def use_device(device: str) -> None:
    """Refuse a device this machine lacks before the engine runs; `cuda:N` becomes the current CUDA device."""
    from adaptkit.io.devices import resolve_device

    resolved = resolve_device(device)
    if resolved.startswith("cuda:"):
        import torch

        torch.cuda.set_device(resolved)  # the engine (accelerate) trains one process on the current device


def interrupted_note(output: Path) -> str:
    """What an interrupted run kept and how to continue it."""
    from adaptkit.engine.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(output)
    if checkpoint is None:
        return f"no checkpoint was saved in {output} yet (the first comes after 10% of the steps, or --save-steps N), so there is nothing to resume"
    return f"kept {checkpoint}; continue with the same command and --resume"


def run_training(config, method, output: Path, resume: bool, overwrite: bool, console: Console):
    """Run the engine with a progress bar on a terminal, progress lines in a log, none with --quiet/--json."""
    from adaptkit.commands.progress import training_progress
    from adaptkit.engine.loop import train

    with training_progress(console, "train") as (progress, log):
        return train(config, method, output, resume, overwrite, log=log, progress=progress)
