"""Scale benchmark on CPU: 1 process vs 2 processes (DDP, FSDP) on the same run, side by side.

    python benchmarks/bench_scale.py [--steps 20] [--hidden 256] [--layers 4] [--seq-len 128] [--batch-size 8]

Every configuration trains the same model on the same data with the same global batch
(`--batch-size` sequences per optimizer step), launched the way a user would: `python -m
adaptkit train`, and `torchrun --nproc_per_node 2 -m adaptkit train` with --distributed ddp
and fsdp (gloo; one thread per process). Prints, per configuration, training tokens/s
(loop time only, from the run's own summary), the bytes of parameters + AdamW state held by
one process (the engine's `state_bytes_per_process`), and the peak RSS of the processes
(ru_maxrss of the largest process). Ratios are against the 1-process run of the same
invocation. On a shared 2-core machine the throughput figures are noisy; run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import make_setup  # noqa: E402  (the same model and data as the engine benchmark)


MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
)


def run(kind: str, model: Path, text: Path, out: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), ADAPTKIT_CACHE=str(out.parent / "cache"))
    train = ["train", "--model", model, "--data", text, "-o", out, "--overwrite", "--max-steps", args.steps, "--seq-len", args.seq_len,
             "--batch-size", args.batch_size, "--lr", "1e-4", "--json", "--quiet"]
    if kind == "1 process":
        cmd = [sys.executable, "-m", "adaptkit", *train, "--micro-batch-size", args.batch_size // 2]
    else:
        mode = kind.split()[-1]
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "adaptkit", *train, "--distributed", mode]
    # a fresh wrapper per configuration: its children's ru_maxrss is this configuration's own high-water mark
    done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, cmd)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    peak = int(lines[-1])
    summary = json.loads(lines[-2])
    return {
        "tokens_per_s": summary["tokens"] / summary["seconds"],
        "state_mb_per_process": summary["state_bytes_per_process"] / 2**20,
        "peak_rss_mb_max_process": peak / 1024,
        "final_loss": summary["final_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="1 vs 2 processes (DDP, FSDP) on CPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    root = Path(tempfile.mkdtemp(prefix="adaptkit-bench-scale-"))
    model, text = make_setup(root, args.hidden, args.layers)
    kinds = ["1 process", "2 processes ddp", "2 processes fsdp"]
    results = {kind: run(kind, model, text, root / kind.replace(" ", "-"), args) for kind in kinds}
    base = results["1 process"]
    from safetensors.torch import load_file

    params = sum(t.numel() for t in load_file(str(model / "model.safetensors")).values())
    print(f"model: llama hidden {args.hidden}, {args.layers} layers, {params / 1e6:.2f}M parameters; "
          f"{args.steps} steps, global batch {args.batch_size} x {args.seq_len} tokens; torch threads per process: 1")
    print(f"{'configuration':<20}{'tokens/s':>10}{'vs 1 proc':>11}{'params+AdamW MB/proc':>22}{'vs 1 proc':>11}{'peak RSS MB':>13}{'final loss':>12}")
    for kind in kinds:
        r = results[kind]
        print(f"{kind:<20}{r['tokens_per_s']:>10.0f}{r['tokens_per_s'] / base['tokens_per_s']:>10.2f}x"
              f"{r['state_mb_per_process']:>22.2f}{r['state_mb_per_process'] / base['state_mb_per_process']:>10.2f}x"
              f"{r['peak_rss_mb_max_process']:>13.0f}{r['final_loss']:>12.4f}")
    print("peak RSS: the largest single process of the configuration (ru_maxrss; includes ~400 MB of torch/transformers).")


if __name__ == "__main__":
    main()
