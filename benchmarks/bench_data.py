"""Data-path benchmark: tokenize + pack N MB of text with adaptkit's token store vs the Hugging Face recipe.

    python benchmarks/bench_data.py [--sizes 100 1000] [--num-proc 2] [--seq-len 512] [--steps 30]

For each size it generates Hausa-like text (words and sentence lengths drawn from the UDHR's Hausa
text, a document per line) and trains a byte-level BPE tokenizer on UDHR text (adaptkit.demo), then
runs, each in a fresh process with the same num_proc:
1. adaptkit: `load_blocks` building the token store (a fresh $ADAPTKIT_CACHE) and opening the block reader;
2. Hugging Face: `datasets.load_dataset("text")` + batched `map` (tokenize, EOS after each document) +
   `group_texts` into blocks of seq_len (a fresh datasets cache);
reporting wall time and peak RSS of the largest process and of the whole process tree (psutil polling).
Then training throughput (tokens/s) of a tiny model reading batches from the store reader vs from the
same blocks as an in-memory tensor (alternating rounds in one process). Timings on a shared machine are noisy.
Targets: adaptkit RSS <= HF's and flat in size (largest size within 1.2x of the smallest); time <= 1.0x HF's;
throughput >= 0.98x.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

ADAPTKIT_CHILD = """
import sys, time
from transformers import AutoTokenizer
from adaptkit.data.corpus import load_blocks
tok = AutoTokenizer.from_pretrained(sys.argv[1])
blocks = load_blocks([sys.argv[2]], tok, int(sys.argv[3]), num_proc=int(sys.argv[4]))
print(blocks.shape[0], blocks.numel())
"""

HF_CHILD = """
import sys
from itertools import chain
import datasets
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
seq_len, num_proc = int(sys.argv[3]), int(sys.argv[4])
raw = datasets.load_dataset("text", data_files=sys.argv[2], split="train", cache_dir=sys.argv[5])
def tokenize(batch):
    ids = tok(batch["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [x + [tok.eos_token_id] for x in ids]}
def group_texts(batch):
    flat = list(chain.from_iterable(batch["input_ids"]))
    n = len(flat) // seq_len * seq_len
    return {"input_ids": [flat[i:i + seq_len] for i in range(0, n, seq_len)]}
ids = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=["text"])
blocks = ids.map(group_texts, batched=True, num_proc=num_proc)
print(len(blocks), len(blocks) * seq_len)
"""


def generate_text(path: Path, megabytes: float, seed: int = 0) -> Path:
    """Documents of 1 to 6 sentences whose words and sentence lengths follow the UDHR's Hausa text."""
    from adaptkit import demo

    paragraphs = demo.udhr_paragraphs("ha")
    words = [w for p in paragraphs for w in p.split()]
    lengths = [len(s.split()) for p in paragraphs for s in p.split(".") if s.strip()]
    rng = random.Random(seed)
    pool = []
    for _ in range(20_000):
        sentences = [" ".join(rng.choices(words, k=rng.choice(lengths))).capitalize() + "." for _ in range(rng.randint(1, 6))]
        pool.append(" ".join(sentences))
    target = int(megabytes * 1_000_000)
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < target:
            chunk = "\n".join(rng.choices(pool, k=200)) + "\n"
            handle.write(chunk)
            written += len(chunk.encode("utf-8"))
    return path


def make_tokenizer(directory: Path) -> Path:
    from adaptkit import demo

    texts = list(demo.udhr_paragraphs("ha")) + list(demo.udhr_paragraphs("en"))
    demo.train_tokenizer(texts, vocab_size=2048).save_pretrained(str(directory))
    return directory


def measure(cmd: list[str], env: dict) -> dict:
    """Wall time and peak RSS (largest process, whole tree) of a command, polling its process tree."""
    start = time.perf_counter()
    # stderr goes to a file: a child's progress bars can fill a pipe that is read only at the end, and block it
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    root = psutil.Process(proc.pid)
    largest = total = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = []
            for p in tree:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            largest, total = max(largest, max(rss, default=0)), max(total, sum(rss))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    errors.seek(0)
    err = errors.read()
    errors.close()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed: {err[-2000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_largest_mib": round(largest / 2**20), "peak_rss_tree_mib": round(total / 2**20), "output": out.strip()}


def tokenize_pack(text: Path, tok_dir: Path, seq_len: int, num_proc: int, work: Path) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    results = {}
    for name, child in (("adaptkit", ADAPTKIT_CHILD), ("hf", HF_CHILD)):
        cache = work / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        run_env = dict(env, ADAPTKIT_CACHE=str(cache), HF_DATASETS_CACHE=str(cache))
        results[name] = measure([sys.executable, "-c", child, str(tok_dir), str(text), str(seq_len), str(num_proc), str(cache)], run_env)
        if name == "hf":
            shutil.rmtree(cache, ignore_errors=True)
    a, h = results["adaptkit"], results["hf"]
    # blocks and tokens of each (group_texts drops a remainder per map batch, the store one per source)
    results["time_ratio"] = round(a["wall_s"] / h["wall_s"], 3)
    results["rss_ratio_largest"] = round(a["peak_rss_largest_mib"] / h["peak_rss_largest_mib"], 3)
    return results


def throughput(text: Path, tok_dir: Path, work: Path, steps: int) -> dict:
    """tokens/s of a tiny model's training steps reading the store reader vs an in-memory tensor
    (the two interleaved step by step, alternating which goes first, so load on the machine hits both)."""
    import torch
    from transformers import AutoTokenizer

    from adaptkit import demo
    from adaptkit.data.corpus import load_blocks
    from adaptkit.engine.loop import Batches

    torch.set_num_threads(1)
    os.environ["ADAPTKIT_CACHE"] = str(work / "cache-adaptkit")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    reader = load_blocks([str(text)], tokenizer, 128)
    tensor = reader[:]
    model = demo.tiny_model("llama", len(tokenizer), seed=0, hidden=64, layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    feeds = {"store": Batches(reader, 8, 8, seed=0), "tensor": Batches(tensor, 8, 8, seed=0)}
    seconds = {"store": 0.0, "tensor": 0.0}
    for step in range(steps + 2):
        for name in (("store", "tensor") if step % 2 else ("tensor", "store")):
            start = time.perf_counter()
            ids = feeds[name].get(step, 0)
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 2:  # the first steps warm up
                seconds[name] += time.perf_counter() - start
    store, in_memory = (steps * 8 * 128 / seconds[k] for k in ("store", "tensor"))
    batch_cost = {k: statistics.median(_time(lambda: feeds[k].get(7, 0)) for _ in range(200)) for k in feeds}
    return {"store_tokens_per_s": round(store), "tensor_tokens_per_s": round(in_memory), "ratio": round(store / in_memory, 3),
            "batch_read_ms": {k: round(v * 1000, 3) for k, v in batch_cost.items()}}


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[100, 1000], help="MB of text per run")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="training steps per throughput round")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put text and caches (default: a temp dir, removed)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = make_tokenizer(work / "tokenizer")
    report: dict = {"num_proc": args.num_proc, "seq_len": args.seq_len, "runs": {}}
    try:
        for size in args.sizes:
            text = generate_text(work / f"text-{size:g}MB.txt", size)
            print(f"{size:g} MB: generated {text.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
            report["runs"][f"{size:g}MB"] = tokenize_pack(text, tok_dir, args.seq_len, args.num_proc, work)
            print(json.dumps(report["runs"][f"{size:g}MB"]), file=sys.stderr)
            if size == args.sizes[0]:
                report["throughput"] = throughput(text, tok_dir, work, args.steps)
            text.unlink()
            shutil.rmtree(work / "cache-adaptkit", ignore_errors=True)
        runs = list(report["runs"].values())
        if len(runs) > 1:
            report["adaptkit_rss_growth"] = round(runs[-1]["adaptkit"]["peak_rss_largest_mib"] / runs[0]["adaptkit"]["peak_rss_largest_mib"], 3)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    print(textwrap.dedent(f"""
        targets: adaptkit peak RSS <= HF's (ratio {[r['rss_ratio_largest'] for r in runs]}), time <= 1.0x HF's
        (ratio {[r['time_ratio'] for r in runs]}), RSS flat in size (growth {report.get('adaptkit_rss_growth', 'n/a')} <= 1.2),
        throughput store/tensor {report['throughput']['ratio']} >= 0.98""").strip())


if __name__ == "__main__":
    main()
