"""The cards of a training run: the model card of `final/` (adaptkit.io.model_card renders it) and
the run card `run_card.md` (what was run, versions, data hashes, results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit.io.model_card import CardInfo


def train_card(config: Any, plan: Any, result: Any, model_location: str) -> CardInfo:
    """CardInfo of a finished run: method, data and tokens, hyperparameters, evaluation rows of metrics.jsonl."""
    from adaptkit.registry import get_spec

    reference = get_spec("method", config.method, "--method").reference
    params = f" with {config.method_params}" if config.method_params else ""
    summary = (f"Continued pre-training of `{model_location}` with adaptkit's `{config.method}` method{params} "
               f"for {result.steps} steps ({result.tokens:,} tokens this session); {plan.summary or 'see the method'}.")
    facts = {
        "trainable parameters": f"{result.trainable:,} of {result.total:,} ({100 * result.trainable / max(1, result.total):.2f}%)",
        "steps": result.steps,
        "tokens (this session)": result.tokens,
        "final training loss": result.final_loss,
        "processes": f"{result.processes} ({result.distributed})",
    }
    hyper = {
        "method": config.method, **{f"method.{k}": v for k, v in config.method_params.items()},
        "optimizer": "AdamW", "learning rate": config.optimizer.lr, "weight decay": config.optimizer.weight_decay,
        "betas": list(config.optimizer.betas), "schedule": config.schedule.name, "warmup ratio": config.schedule.warmup_ratio,
        "batch size (sequences)": config.batch_size, "sequence length": config.data.seq_len,
        "max grad norm": config.max_grad_norm, "precision": config.precision, "seed": config.seed,
    }
    return CardInfo(title=f"{config.run_name or result.run_dir.name}: {config.method} on {model_location}", method=config.method,
                    relation="finetune", summary=summary, bases=[model_location], data=_data_specs(config),
                    languages=list(config.language), facts=facts, hyperparameters=hyper,
                    results=evaluation_rows(result.run_dir / "metrics.jsonl"), reference=reference)


def _data_specs(config: Any) -> list[str]:
    """Every source's specs, in mixture order (a plain --data is the one source 'data')."""
    specs: list[str] = []
    for source in config.data.mixture():
        specs += [source.spec] if isinstance(source.spec, str) else list(source.spec)
    return specs


def evaluation_rows(metrics: Path) -> list[dict[str, Any]]:
    """The evaluation-during-training rows of metrics.jsonl (engine/evaluation.py), for the results table."""
    from adaptkit.engine.metrics import read_metrics

    if not metrics.is_file():
        return []
    keys = ("step", "eval", "role", "ppl", "bits_per_byte", "tokens")
    return [{k: row[k] for k in keys if k in row} for row in read_metrics(metrics)[1]]


def data_lines(config: Any, batches: Any, steps: int) -> list[str]:
    """The run card's data section: each source's specs (with content hashes), weight, tokens and epochs seen."""
    from adaptkit.data.corpus import file_hash

    seen = batches.seen(steps * config.batch_size)
    total = sum(s.weight for s in config.data.mixture())
    lines = ["", "| source | data | weight (share) | tokens seen | epochs seen |", "|---|---|---|---|---|"]
    for source in config.data.mixture():
        specs = "<br>".join(f"`{p}` sha256 `{file_hash(Path(p))[:16]}`" for p in source.spec)
        row = seen[source.name]
        lines.append(f"| {source.name} | {specs} | {source.weight:g} ({source.weight / total:.1%}) | {row['tokens']:,} | {row['epochs']:.3f} |")
    packing = f"; packing {config.data.packing}" if config.data.packing != "concat" else ""
    caps = f"; at most {config.data.max_tokens:,} tokens in all" if config.data.max_tokens else ""
    return lines + ["", f"Blocks of {config.data.seq_len} tokens{packing}{caps}; a source that runs out is re-shuffled (epochs above 1)."]


def _throughput_line(history: list[dict[str, Any]]) -> str:
    """tokens/s per device (and MFU where known) of the last logging window."""
    if not history:
        return "n/a"
    last = history[-1]
    line = f"{last['tokens_per_s_per_device']:,.0f} tokens/s per device (last logging window)"
    return line + (f", MFU {100 * last['mfu']:.1f}%" if last.get("mfu") is not None else "")


def write_run_card(run_dir: Path, config: Any, plan: Any, result: Any, model_location: str, data: list[str]) -> None:
    """run_card.md of a finished run."""
    import json
    import platform

    import torch
    import transformers

    import adaptkit
    from adaptkit.io.atomic import write_text_atomic

    lines = [
        f"# Run card: {run_dir.name}",
        "",
        f"- method: `{config.method}` {json.dumps(config.method_params) if config.method_params else ''}",
        f"- plan: {plan.summary or 'n/a'}",
        f"- model: `{model_location}`",
        f"- trainable parameters: {result.trainable:,} of {result.total:,} ({100 * result.trainable / max(1, result.total):.2f}%)",
        f"- steps: {result.steps} (batch {config.batch_size} x {config.data.seq_len} tokens), lr {config.optimizer.lr} {config.schedule.name}, warmup {config.schedule.warmup_ratio}",
        f"- final loss: {result.final_loss:.4f}; time this session: {result.seconds:.1f} s" + (f" (resumed from step {result.resumed_from})" if result.resumed_from else ""),
        f"- throughput: {_throughput_line(result.metrics)}",
        f"- versions: adaptkit {adaptkit.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        "",
        "## Data",
        *data,
        "",
        "The resolved configuration is in `config.yaml`; metrics per logging step in `metrics.jsonl`.",
        "",
    ]
    write_text_atomic(run_dir / "run_card.md", "\n".join(lines))
