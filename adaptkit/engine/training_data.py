"""A run's training data: the blocks of each source (the token store, built once per node), the
eval sets, the number of steps, and the warnings about data that trains on less than it seems."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from adaptkit.errors import InputError

if TYPE_CHECKING:
    from adaptkit.engine.config import TrainConfig


@dataclass
class TrainingData:
    sources: dict[str, Any]  # the blocks of each named source (the mixture)
    blocks: Any  # the blocks of all sources, one after the other (what methods see as the training data)
    evals: list[Any] = field(default_factory=list)  # the eval sets scored during training (engine/evaluation.py)


def total_steps(config: "TrainConfig", num_blocks: int) -> int:
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(config.epochs * num_blocks / config.batch_size))


def load_training_data(config: "TrainConfig", tokenizer: Any, log: Callable[[str], None]) -> TrainingData:
    """The sources' blocks, less the held-out validation blocks (and cut to `data.slice`), and the eval sets."""
    from adaptkit.engine.evaluation import hold_out_validation, load_eval_sets
    from adaptkit.engine.slices import slice_sources

    sources, blocks = load_data(config, tokenizer, log)
    sources, blocks, held_out = hold_out_validation(sources, blocks, config.data.validation_fraction, config.seed)
    sources, blocks = slice_sources(sources, blocks, config.data.slice, config.data.seq_len)  # data.slice I/N (Branch-and-Merge)
    return TrainingData(sources, blocks, load_eval_sets(config, tokenizer, held_out))


def load_data(config: "TrainConfig", tokenizer: Any, log: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """The blocks of each named source (from the token store, built once per node) and of all together."""
    from adaptkit.data.corpus import load_mixture
    from adaptkit.data.store import StoreBlocks

    data = config.data
    mixture = data.mixture()
    if not mixture:
        raise InputError("--data: no training data given")
    groups = [s.spec for s in mixture]
    fields = [s.text_field or data.text_field for s in mixture]
    blocks = load_mixture(groups, tokenizer, data.seq_len, fields, [s.max_tokens for s in mixture], data.max_tokens,
                          data.format, data.cache, "--data", data.num_proc, log)
    together = StoreBlocks([segment for b in blocks for segment in b.segments], data.seq_len)
    return {s.name: b for s, b in zip(mixture, blocks)}, together


def data_warnings(config: "TrainConfig", num_blocks: int, steps: int) -> list[str]:
    """What makes a run train on less than it seems: data smaller than one batch, a learning rate that
    never leaves 0 (warmup longer than the run) or never reaches its peak. Each says what to change."""
    from adaptkit.engine.optim import lr_factor

    warnings, seq_len, batch = [], config.data.seq_len, config.batch_size
    if num_blocks < batch:
        warnings.append(f"--data gives {num_blocks} block(s) of {seq_len} tokens ({num_blocks * seq_len:,} tokens), fewer than one batch of "
                        f"{batch} x {seq_len} tokens: every step repeats them; give more text, or a smaller --batch-size or --seq-len")
    warmup = math.ceil(steps * config.schedule.warmup_ratio)
    if not any(lr_factor(step, steps, config.schedule) > 0 for step in range(steps)):
        warnings.append(f"the learning rate stays 0 for all {steps} optimizer step(s) (warmup takes {warmup}), so the weights will not change; "
                        "give more data, --max-steps or --epochs, or --warmup-ratio 0")
    elif warmup >= steps:
        warnings.append(f"warmup takes {warmup} of the {steps} optimizer steps, so the learning rate never reaches --lr {config.optimizer.lr:g}; "
                        "give more data, --max-steps or --epochs, or a smaller --warmup-ratio")
    return warnings
