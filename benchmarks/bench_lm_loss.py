"""The chunked LM loss against the model's own, and torch.compile against eager, on a large vocabulary.

    python benchmarks/bench_lm_loss.py [--vocab 128256] [--hidden 256] [--layers 2] [--batch 4] [--seq 1024] [--steps 3]
                                       [--variants plain,chunked,plain+compile,chunked+compile]

A tiny-hidden Llama with Llama 3's vocabulary (the head and the logits dominate), CPU fp32, one thread.
Each variant runs in a fresh child process: a training step as the engine takes it (the engine's
LMLoss on the model, backward, gradient clipping, fused AdamW), one warm-up step (compiling, for
+compile), then `--steps` timed steps. Printed per variant: the median step time, the process's peak
RSS (ru_maxrss: weights, gradients, optimizer state and the step's transient tensors) and the peak
over the RSS before the first step; then the ratios chunked / plain and compile / eager, measured
side by side in this one run. One JSON summary on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, resource, statistics, sys, time
import torch, transformers
from adaptkit.engine.lm_loss import LMLoss

args = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=args["vocab"], hidden_size=args["hidden"], intermediate_size=4 * args["hidden"],
                                  num_hidden_layers=args["layers"], num_attention_heads=max(4, args["hidden"] // 64), num_key_value_heads=max(4, args["hidden"] // 64),
                                  max_position_embeddings=args["seq"], tie_word_embeddings=False)
model = transformers.LlamaForCausalLM(config).train()
forward = torch.compile(model) if args["compile"] else model
loss_fn = LMLoss(args["chunked"])
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
ids = torch.randint(0, args["vocab"], (args["batch"], args["seq"]), generator=torch.Generator().manual_seed(1))
inputs = {"input_ids": ids, "labels": ids}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def step():
    loss = loss_fn(forward, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)

began = time.perf_counter()
first_loss = step()
warmup = time.perf_counter() - began
times = []
for _ in range(args["steps"]):
    began = time.perf_counter()
    step()
    times.append(time.perf_counter() - began)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"step_s": statistics.median(times), "steps_s": times, "first_step_s": warmup, "first_loss": first_loss,
                  "peak_rss_mib": peak, "rss_before_step_mib": before, "step_peak_mib": peak - before}))
"""


def run_variant(name: str, args: argparse.Namespace) -> dict:
    settings = {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "batch": args.batch, "seq": args.seq,
                "steps": args.steps, "chunked": "chunked" in name, "compile": "compile" in name}
    print(f"[bench_lm_loss] {name} ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True, timeout=args.timeout)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"[bench_lm_loss] {name}: step {result['step_s']:.2f} s, peak RSS {result['peak_rss_mib']:.0f} MiB "
          f"({result['step_peak_mib']:.0f} MiB over the model and data)", file=sys.stderr, flush=True)
    return result


def ratio(results: dict, a: str, b: str, key: str) -> float | None:
    if key in results.get(a, {}) and key in results.get(b, {}):
        return round(results[a][key] / results[b][key], 3)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default="plain,chunked,plain+compile,chunked+compile")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per variant")
    args = parser.parse_args()
    results = {name: run_variant(name, args) for name in args.variants.split(",")}
    summary = {
        "setting": vars(args) | {"threads": 1, "device": "cpu", "dtype": "float32"},
        "variants": results,
        "chunked/plain": {"peak_rss": ratio(results, "chunked", "plain", "peak_rss_mib"),
                          "step_peak": ratio(results, "chunked", "plain", "step_peak_mib"),
                          "step_time": ratio(results, "chunked", "plain", "step_s")},
        "compile/eager": {"plain": ratio(results, "plain+compile", "plain", "step_s"),
                          "chunked": ratio(results, "chunked+compile", "chunked", "step_s")},
        "loss_difference": None if "first_loss" not in results.get("chunked", {}) or "first_loss" not in results.get("plain", {})
        else abs(results["chunked"]["first_loss"] - results["plain"]["first_loss"]),
        "peak_rss_this_process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
