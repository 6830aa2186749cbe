"""The model card of a training run's `final/` (adaptkit.io.model_card renders it)."""

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
    from adaptkit.engine.evaluation import read_metrics

    if not metrics.is_file():
        return []
    keys = ("step", "eval", "role", "ppl", "bits_per_byte", "tokens")
    return [{k: row[k] for k in keys if k in row} for row in read_metrics(metrics)[1]]
