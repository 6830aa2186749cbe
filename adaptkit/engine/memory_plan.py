"""`adaptkit train --dry-run`: the memory a run needs per process, before any weight is read.

The model is built on the meta device (accelerate's `init_empty_weights`, as in
adaptkit/streamed_model.py) from its config.json, the method makes its plan on it, and the
plan's counts give, in bytes per process (P all entries, G entries of parameters that get a
gradient, T trainable entries, M trainable entries of masked parameters, N processes):

    weights        4 P      the engine keeps fp32 weights; bf16 autocast computes in bf16, so
                            the fp32 weights are the master weights (no second copy); with
                            --precision bf16-pure every 4 in this table is 2 (bf16 weights,
                            gradients, copies and AdamW moments, no master copy)
    compact copies 4 M      fp32 copies of the trainable entries of masked parameters (fp32 in every
                            mode where the plan asks for it: S2FT; their AdamW moments too)
    gradients      4 G      dense fp32 .grad during backward (compact for row/column-masked
                            Linear weights when the plan asks for compact gradients)
    optimizer      8 T + 4 k  AdamW's two fp32 moments, only for trainable entries (k tensors' step)
    averages       4 A c    fp32 copies kept by weight averaging (A entries of the trained
                            parameters, c = 1 for the EMA plus K for LAWA's last K snapshots);
                            under FSDP each process averages its own shards: divided by N
    activations    estimate for micro-batch b and sequence length s (below)

Under DDP every process holds all of it; under FSDP weights, compact copies, gradients,
optimizer state and averages are divided by N and one layer's weights and gradients are
gathered at a time (at the end the main process gathers the whole model and averages to write them).
Activations per layer of a Llama-style block (hidden h, KV width h_kv, MLP width i, bytes e:
4 in fp32, 2 under bf16 autocast), as autograd saves them with SDPA attention:
    b s (8 h + 2 h_kv + 4 i) e      without gradient checkpointing (x L layers)
    b s h e per layer + one layer's full set                with gradient checkpointing
plus the fp32 logits and their log-softmax, 2 x 4 b s V. The activation figure is an
estimate (it ignores allocator slack and temporaries); the state figures are exact counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import InputError, first_line

GiB = 1024**3


def human_bytes(count: int) -> str:
    """1.50 GiB, 12.0 MiB, 512 B."""
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


@dataclass
class PlanCounts:
    """Entry counts of a training plan (see the module doc for the letters)."""

    total: int  # P
    with_grad: int  # G (entries that get a dense or compact gradient)
    trainable: int  # T
    masked_trainable: int  # M
    optimizer_tensors: int  # k
    largest_layer: int  # entries of the largest decoder layer (FSDP gathers one at a time)
    averaged: int = 0  # A: entries of the parameters that train (whole tensors: what an average copies)
    masked_width: int = 0  # bytes per entry of the compact copies when the plan fixes their dtype (S2FT: fp32); 0: the weights'


def plan_counts(plan: Any) -> PlanCounts:
    """The counts of a TrainingPlan on any device (meta included)."""
    from adaptkit.layers import find_layers

    trainable, total = plan.counts()
    with_grad = masked = 0
    params = dict(plan.model.named_parameters())
    for name, mask in plan.trainable.items():
        count = params[name].numel() if mask is None else mask.trainable_count(tuple(params[name].shape))
        masked += 0 if mask is None else count
        compact = mask is not None and plan.compact_linear_grads and mask.granularity in ("row", "column")
        with_grad += count if compact else params[name].numel()
    _, layers = find_layers(plan.model)
    largest = max((sum(p.numel() for p in layer.parameters()) for layer in layers), default=0)
    averaged = sum(params[name].numel() for name in plan.trainable)
    width = getattr(torch, plan.masked_dtype).itemsize if plan.masked_dtype else 0
    return PlanCounts(total, with_grad, trainable, masked, len(plan.trainable), largest, averaged, width)


def held_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """What a run really holds (reported beside the plan): bytes of the parameters this process holds
    (its shards under FSDP) and of its optimizer state."""
    from adaptkit.engine.shards import local_shard

    params = sum(local_shard(p)[0].nbytes for p in model.parameters())
    state = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return params + state


def activation_bytes(config: Any, micro_batch: int, seq_len: int, precision: str, checkpointing: bool) -> int:
    """The activation estimate of the module doc for one micro-batch."""
    text = getattr(config, "text_config", None) or config
    h, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    h_kv = getattr(text, "num_key_value_heads", heads) * (getattr(text, "head_dim", None) or h // heads)
    i = getattr(text, "intermediate_size", 4 * h)
    e = 2 if precision.startswith("bf16") else 4
    tokens = micro_batch * seq_len
    per_layer = tokens * (8 * h + 2 * h_kv + 4 * i) * e
    body = (layers * tokens * h * e + per_layer) if checkpointing else layers * per_layer
    return int(body + 2 * 4 * tokens * vocab)


def memory_table(counts: PlanCounts, activations: dict[str, int], processes: int, w: int = 4, averages: int = 0) -> dict[str, dict[str, int]]:
    """Bytes per process under 'single', 'ddp' and 'fsdp' for `processes` processes; `w` bytes per
    weight entry (4, or 2 under bf16-pure, where gradients, copies and AdamW moments are bf16 too);
    `averages` fp32 copies of the trained parameters kept by weight averaging (a row only when > 0)."""
    m = counts.masked_width or w  # the compact copies' width, and of their AdamW moments
    state = {
        "weights": w * counts.total,
        "compact_copies": m * counts.masked_trainable,
        "gradients": w * counts.with_grad,
        "optimizer": 2 * w * (counts.trainable - counts.masked_trainable) + 2 * m * counts.masked_trainable + 4 * counts.optimizer_tensors,
    }
    if averages:
        state["averages"] = 4 * averages * counts.averaged
    n = max(1, processes)
    fsdp = {key: -(-value // n) for key, value in state.items()}
    fsdp["gathered_layer"] = 2 * w * counts.largest_layer if n > 1 else 0  # one layer's full weights + gradients
    table = {"single": dict(state), "ddp": dict(state), "fsdp": fsdp}
    for row in table.values():
        row.update({f"activations_{k}": v for k, v in activations.items()})
        held = sum(v for k, v in row.items() if not k.startswith("activations"))
        row["total"] = held + activations["no_checkpointing"]
        row["total_with_checkpointing"] = held + activations["checkpointing"]
    return table


def meta_model(config: Any) -> tuple[torch.nn.Module, Any, Any]:
    """The configured model on the meta device (config.json only), its tokenizer, and the rows it had
    before `vocab extend` where train_embeddings=new-only needs them."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from adaptkit.engine.embedding_rows import recorded_new_rows
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    source = resolve_model_source(config.model, "--model")
    if source.kind == "gguf":
        raise InputError("--dry-run: needs a model directory or Hub id with a config.json (a GGUF file holds its config in the weights file)")
    try:
        model_config = AutoConfig.from_pretrained(source.location, trust_remote_code=config.trust_remote_code)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"--model: '{source.location}' does not build as a causal LM ({first_line(exc)})") from None
    return model, load_tokenizer(source, config.trust_remote_code), recorded_new_rows(config.train_embeddings, source)


def dry_run(config: Any, method: Any, processes: int = 1) -> dict[str, Any]:
    """The memory plan of a run: counts, bytes per process and the settings they depend on. The plan
    is the run's own (engine/planner.py's build_plan, on the meta device)."""
    from adaptkit.engine.plan import MethodContext
    from adaptkit.engine.planner import build_plan
    from adaptkit.engine.precision import micro_batch_size, resolve_precision, weight_dtype

    model, tokenizer, new_rows = meta_model(config)
    micro = micro_batch_size(config, processes)
    ctx = MethodContext(method.params, config, tokenizer, Path("."), config.max_steps or 1, torch.device("meta"),
                        torch.zeros((0, config.data.seq_len), dtype=torch.long), log=lambda message: None, dry_run=True)
    try:
        plan = build_plan(method, model, ctx, new_rows)
    except InputError:
        raise
    except Exception as exc:  # the method needed weights or data: on the meta device there are none
        raise InputError(f"--dry-run: method '{config.method}' cannot make its plan without weights ({first_line(exc)}); give it its inputs (e.g. --mask) or plan a method that needs none") from None
    counts = plan_counts(plan)
    precision = resolve_precision(config, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = weight_dtype(precision)
    activations = {
        "no_checkpointing": activation_bytes(model.config, micro, config.data.seq_len, precision, False),
        "checkpointing": activation_bytes(model.config, micro, config.data.seq_len, precision, True),
    }
    return {
        "model": config.model, "method": config.method, "plan": plan.summary, "precision": precision,
        "weights_dtype": str(dtype).removeprefix("torch."), "micro_batch_size": micro, "seq_len": config.data.seq_len, "processes": processes,
        "counts": counts.__dict__, "bytes_per_process": memory_table(counts, activations, processes, dtype.itemsize, average_copies(config.averaging)),
    }


def average_copies(averaging: Any) -> int:
    """The fp32 copies of the trained parameters that the averaging settings keep (engine/averaging.py)."""
    return (averaging.ema_decay is not None) + (averaging.lawa_k or 0)


def available_bytes(device: torch.device) -> int | None:
    """Memory a run may still take on `device`: free GPU memory, or on a CPU the kernel's MemAvailable
    (less where a cgroup limit is lower); None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def needed_bytes(plan: dict[str, Any], mode: str, checkpointing: bool) -> int:
    """The plan's total per process for a distributed mode ('none' or 'single', 'ddp', 'fsdp')."""
    row = plan["bytes_per_process"]["single" if mode == "none" else mode]
    return row["total_with_checkpointing"] if checkpointing else row["total"]


def check_fits(config: Any, method: Any, processes: int, mode: str, device: torch.device) -> None:
    """Before anything loads: refuse a run whose memory plan (per process) exceeds what `device` has
    free, naming --batch-size and the largest --micro-batch-size that fits. `--set memory_check=false`
    skips it; so does a method that cannot plan without weights (then nothing is known)."""
    free = available_bytes(device)
    if not config.memory_check or free is None:
        return
    try:
        plan = dry_run(config, method, processes)
    except Exception:  # noqa: BLE001 (a plan the dry run cannot make is no reason to refuse the run)
        return
    needed = needed_bytes(plan, mode, config.gradient_checkpointing)
    if needed <= free:
        return
    micro = plan["micro_batch_size"]
    fits = None
    for smaller in range(micro - 1, 0, -1):
        if config.batch_size % (smaller * max(1, processes)) == 0:
            trial = config.model_copy(update={"micro_batch_size": smaller})
            if needed_bytes(dry_run(trial, method, processes), mode, config.gradient_checkpointing) <= free:
                fits = smaller
                break
    where = f"{human_bytes(needed)} per process are planned (train --dry-run) but {human_bytes(free)} is free on {device.type}"
    advice = (f"--micro-batch-size {fits} fits (gradient accumulation keeps --batch-size {config.batch_size})" if fits else
              "even a micro-batch of 1 does not fit: try --gradient-checkpointing, --distributed fsdp, a smaller --seq-len or another method")
    raise InputError(f"--batch-size {config.batch_size} (micro-batch {micro} x {config.data.seq_len} tokens): {where}; {advice}; "
                     "--set memory_check=false runs it anyway")
