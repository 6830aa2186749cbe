"""The chunked LM loss against the model's own, and torch.compile against eager, on a large vocabulary.

    python benchmarks/bench_lm_loss.py [--vocab 128256] [--hidden 256] [--layers 2] [--batch 4] [--seq 1024] [--rounds 3]
                                       [--variants plain,chunked,plain+compile,chunked+compile]

A tiny-hidden Llama with Llama 3's vocabulary (the head and the logits dominate), CPU fp32, one thread,
a training step as the engine takes it (the engine's LMLoss on the model, backward, gradient clipping,
fused AdamW).

- Memory: each of plain and chunked in a fresh child process, one step: the process's peak RSS
  (ru_maxrss: weights, gradients, optimizer state and the step's transient tensors) and the peak over
  the RSS before the step.
- Time: one child process holds the model and takes the variants' steps in turn (round-robin, after
  one warm-up step each, which compiles for +compile), so that a busy machine slows them alike; the
  median step time of each.

Ratios chunked / plain and compile / eager, measured side by side in this one run. One JSON summary on
stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch, transformers
from adaptkit.engine.lm_loss import LMLoss

args = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
heads = max(4, args["hidden"] // 64)
config = transformers.LlamaConfig(vocab_size=args["vocab"], hidden_size=args["hidden"], intermediate_size=4 * args["hidden"],
                                  num_hidden_layers=args["layers"], num_attention_heads=heads, num_key_value_heads=heads,
                                  max_position_embeddings=args["seq"], tie_word_embeddings=False)
model = transformers.LlamaForCausalLM(config).train()
compiled = torch.compile(model) if any("compile" in v for v in args["variants"]) else None
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
ids = torch.randint(0, args["vocab"], (args["batch"], args["seq"]), generator=torch.Generator().manual_seed(1))
inputs = {"input_ids": ids, "labels": ids}

def step(variant):
    loss = LMLoss("chunked" in variant)(compiled if "compile" in variant else model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = {"first_step_s": {}, "first_loss": {}, "steps_s": {v: [] for v in args["variants"]}}
for variant in args["variants"]:
    began = time.perf_counter()
    result["first_loss"][variant] = step(variant)
    result["first_step_s"][variant] = time.perf_counter() - began
    print(f"[bench_lm_loss]   {variant}: first step {result['first_step_s'][variant]:.1f} s", file=sys.stderr, flush=True)
for _ in range(args["rounds"]):
    for variant in args["variants"]:
        began = time.perf_counter()
        step(variant)
        result["steps_s"][variant].append(time.perf_counter() - began)
result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result["rss_before_step_mib"] = before
print(json.dumps(result))
"""


def child(variants: list[str], rounds: int, args: argparse.Namespace) -> dict:
    settings = {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "batch": args.batch, "seq": args.seq,
                "rounds": rounds, "variants": variants}
    print(f"[bench_lm_loss] {', '.join(variants)} ({rounds} round(s) after the first step)", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], stdout=subprocess.PIPE, text=True, timeout=args.timeout)
    if done.returncode:
        raise SystemExit(f"bench_lm_loss: the child for {variants} exited {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="plain,chunked,plain+compile,chunked+compile")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per child process")
    args = parser.parse_args()
    memory = {}
    for variant in ("plain", "chunked"):
        one = child([variant], 0, args)
        memory[variant] = {"peak_rss_mib": round(one["peak_rss_mib"]), "step_peak_mib": round(one["peak_rss_mib"] - one["rss_before_step_mib"]),
                           "first_loss": one["first_loss"][variant]}
        print(f"[bench_lm_loss] {variant}: peak RSS {memory[variant]['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
    variants = args.variants.split(",")
    timed = child(variants, args.rounds, args)
    median = {v: statistics.median(timed["steps_s"][v]) for v in variants}
    ratio = lambda a, b: round(median[a] / median[b], 3) if a in median and b in median else None  # noqa: E731
    summary = {
        "setting": vars(args) | {"threads": 1, "device": "cpu", "dtype": "float32"},
        "memory": memory,
        "median_step_s": {v: round(t, 2) for v, t in median.items()},
        "steps_s": {v: [round(t, 2) for t in ts] for v, ts in timed["steps_s"].items()},
        "first_step_s": {v: round(t, 1) for v, t in timed["first_step_s"].items()},
        "chunked/plain": {"peak_rss": round(memory["chunked"]["peak_rss_mib"] / memory["plain"]["peak_rss_mib"], 3),
                          "step_peak": round(memory["chunked"]["step_peak_mib"] / memory["plain"]["step_peak_mib"], 3),
                          "step_time": ratio("chunked", "plain")},
        "compile/eager": {"plain": ratio("plain+compile", "plain"), "chunked": ratio("chunked+compile", "chunked")},
        "first_loss_difference": abs(memory["chunked"]["first_loss"] - memory["plain"]["first_loss"]),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
