"""A merge across vocabularies (`--tokenizer-source union`) against a same-vocabulary merge: time and peak RSS.

Builds, in a temporary directory, two byte-level BPE tokenizers of --vocab tokens trained on UDHR
text of two disjoint halves of the languages `notofonttools` ships (they share the bytes, English
and much of the Latin script), a random float32 Llama of SmolLM2-135M's shape (tied embeddings)
for each, and a perturbed copy of the first. Then, side by side in one run, each in a fresh child
process whose peak RSS comes from os.wait4 (wall time includes start-up):

    same vocabulary:  adaptkit merge linear -m A -m A2
    across:           adaptkit merge linear -m A -m B --tokenizer-source union

alternating the two, the fastest of --repeats runs reported (wall time, the child's CPU seconds,
which a busy machine inflates less, and peak RSS), with the ratios (goal: within 1.2x).
`--method slerp` (or another two-model method without a base) measures a method that sees whole
tensors (not row-separable): its inputs' vocabulary tensors are rebuilt whole on the union.
Nothing is downloaded.

    PYTHONPATH=. python benchmarks/bench_merge_vocab.py                  # 135M-shaped, 49152 tokens
    PYTHONPATH=. python benchmarks/bench_merge_vocab.py --method slerp --param t=0.3
    PYTHONPATH=. python benchmarks/bench_merge_vocab.py --layers 4 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, vocab: int, layers: int) -> None:
    """Tokenizers and models, in this (child) process."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from adaptkit import demo

    languages = demo.udhr_languages()
    halves = [languages[0::2], languages[1::2]]
    for name, part, seed in (("A", halves[0], 0), ("B", halves[1], 1)):
        texts = [p for language in part + ["eng"] for p in demo.udhr_paragraphs(language)]
        tokenizer = demo.train_tokenizer(texts, vocab_size=vocab)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                             num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        if name == "A":
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(torch.randn_like(param) * 0.01)
            model.save_pretrained(root / "A2")
            tokenizer.save_pretrained(root / "A2")
        print(name, len(tokenizer), sum(p.numel() for p in model.parameters()), file=sys.stderr)


def measure(command: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS bytes) of a child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{child.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--method", default="linear", help="a merge method of two models without a base (default linear)")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE, passed as --KEY VALUE to the method")
    parser.add_argument("--task", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task == "build":
        build(Path(args.root), args.vocab, args.layers)
        return
    env_python = [sys.executable, "-m", "adaptkit"]
    with tempfile.TemporaryDirectory(prefix="bench-merge-vocab-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--task", "build", "--root", str(root), "--vocab", str(args.vocab), "--layers", str(args.layers)], check=True)
        params = [part for item in args.param for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
        runs = {
            "same vocabulary": ["merge", args.method, *params, "-m", str(root / "A"), "-m", str(root / "A2")],
            "union": ["merge", args.method, *params, "-m", str(root / "A"), "-m", str(root / "B"), "--tokenizer-source", "union"],
        }
        best: dict[str, tuple[float, float, int]] = {}
        for _ in range(args.repeats):
            for name, command in runs.items():
                figures = measure(env_python + command + ["-o", str(root / "out"), "--overwrite", "-q"])
                best[name] = tuple(min(pair) for pair in zip(figures, best.get(name, figures)))
        union_size = json.loads((root / "out" / "config.json").read_text())["vocab_size"]
    same, union = best["same vocabulary"], best["union"]
    print(f"merge {args.method}\n{'run':<18} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13}")
    for name, (wall, cpu, rss) in best.items():
        print(f"{name:<18} {wall:>8.2f} {cpu:>8.2f} {rss / 2**20:>13.0f}")
    print(f"union vocabulary: {union_size} tokens; ratios union / same: time {union[0] / same[0]:.2f}x, CPU {union[1] / same[1]:.2f}x, "
          f"peak RSS {union[2] / same[2]:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
