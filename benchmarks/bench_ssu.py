"""SSU benchmark: scoring cost vs a forward pass, and SSU-Wanda training steps vs FFT, in one run.

    python benchmarks/bench_ssu.py [--hidden 256] [--layers 4] [--calib-blocks 32] [--steps 30] [--rounds 2]

Prints, on one model and one data set (ratios are measured side by side because the machine is noisy):
1. Wanda scoring time (the whole `compute_scores`: hooked forward over every calibration block, scores,
   reductions) vs a plain no-grad forward of the causal LM over the same blocks, median of interleaved
   repeats (target <= 1.25x). The decoder-only forward (no LM head, which Wanda skips when the head is
   not scored) and the other scorers are listed for reference.
2. Step time of SSU-Wanda (freeze ratio 0.5, with and without the compact linear backward) vs FFT:
   (a) steps interleaved one by one on three models built by the engine's own plan/optimizer code,
   each step doing what the engine loop does (forward, backward, compact gradients, clipping, AdamW,
   write-back), median over steps; (b) whole engine runs (`train()`), alternated `--rounds` times,
   median step time from metrics.jsonl. Target SSU / FFT <= 1.05.
3. Memory: the exactly counted gradient, compact-copy and AdamW-state bytes after one step, and the peak
   RSS of a whole training run in a fresh child process (VmHWM reset after imports, so it covers model
   loading, scoring and training only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import make_setup  # noqa: E402  (same model/data recipe as the engine benchmark)

METHODS = {"fft": {}, "ssu-wanda": {"fast_backward": True}, "ssu-wanda (plain backward)": {"fast_backward": False}}


def make_calibration(root: Path, model_dir: Path, blocks: int, block_size: int) -> Path:
    from adaptkit import demo
    from adaptkit.calibration import build_calibration
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(str(model_dir)))
    english = demo.write_lines(demo.split_corpus("en")[0] * 4, root / "en.txt")
    build_calibration(tokenizer, english, fmt="text", pool=10_000, num_samples=blocks, block_size=block_size, seed=0).save(root / "calib")
    return root / "calib"


def scoring_vs_forward(model_dir: Path, calib: Path, batch: int, repeats: int) -> dict:
    import torch

    from adaptkit.calibration import load_calibration
    from adaptkit.io.models import load_causal_lm, resolve_model_source
    from adaptkit.scoring.run import compute_scores

    model = load_causal_lm(resolve_model_source(str(model_dir))).eval()
    calibration = load_calibration(calib)

    def forward(target):
        with torch.no_grad():
            for block in calibration.blocks.split(batch):
                target(input_ids=block)

    runs = {
        "plain forward": lambda: forward(model),
        "decoder forward": lambda: forward(model.get_decoder()),
        "wanda": lambda: compute_scores(model, "wanda", calibration, batch_size=batch),
    }
    for name in ("magnitude", "sparsegpt", "fisher"):
        runs[name] = lambda name=name: compute_scores(model, name, calibration, batch_size=batch)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"tokens": calibration.num_tokens, "seconds": median, "ratio": {k: v / median["plain forward"] for k, v in median.items()}}


def train_config(method: str, model_dir: Path, text: Path, calib: Path, steps: int, batch: int, seq: int):
    from adaptkit.engine.config import TrainConfig

    values = {
        "model": str(model_dir), "data": {"paths": [str(text)], "seq_len": seq, "cache": False},
        "max_steps": steps, "batch_size": batch, "log_steps": 1, "seed": 0, "method": method.split(" ")[0],
    }
    if method != "fft":
        values["method_params"] = {**METHODS[method], "calib": str(calib), "freeze_ratio": 0.5, "calib_batch_size": 4}
    return TrainConfig.model_validate(values)


def planned(method: str, model_dir: Path, text: Path, calib: Path, batch: int, seq: int):
    """(model, trainable set, optimizer, blocks) built as the engine builds them for `method`."""
    import torch

    from adaptkit.data.corpus import load_blocks
    from adaptkit.engine.masked_linear import install_for_plan
    from adaptkit.engine.optim import apply_plan, build_optimizer
    from adaptkit.engine.plan import MethodContext
    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model_source
    from adaptkit.registry import get_spec

    config = train_config(method, model_dir, text, calib, 1, batch, seq)
    source = resolve_model_source(str(model_dir))
    tokenizer = load_tokenizer(source)
    blocks = load_blocks([str(text)], tokenizer, seq, use_cache=False)
    model = load_causal_lm(source)
    spec = get_spec("method", config.method)
    params = spec.validate_params(config.method_params)
    ctx = MethodContext(params, config, tokenizer, Path(tempfile.mkdtemp()), 1, torch.device("cpu"), blocks, log=lambda m: None)
    plan = spec.load()(params).plan(model, ctx)
    trainable = apply_plan(plan)
    install_for_plan(plan, trainable)
    return model, trainable, build_optimizer(trainable, config.optimizer, torch.device("cpu")), blocks


def one_step(model, trainable, optimizer, input_ids, max_grad_norm: float = 1.0) -> dict:
    """One optimizer step in the order of engine/loop.py; returns the exactly counted state bytes."""
    import torch

    model(input_ids=input_ids, labels=input_ids).loss.backward()
    tensors = list(model.parameters()) + [c.compact for c in trainable.compact.values()]
    gradients = sum(t.grad.numel() * t.grad.element_size() for t in tensors if t.grad is not None)
    trainable.pull_grads()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
    trainable.push()
    optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    compact = sum(c.compact.numel() * c.compact.element_size() for c in trainable.compact.values())
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim > 0)
    return {"gradients after backward": gradients, "compact fp32 copies": compact, "AdamW state": state}


def interleaved_steps(model_dir: Path, text: Path, calib: Path, steps: int, batch: int, seq: int) -> tuple[dict, dict]:
    """Median step time per method with steps interleaved one by one; and the counted bytes."""
    setups = {method: planned(method, model_dir, text, calib, batch, seq) for method in METHODS}
    times: dict[str, list[float]] = {k: [] for k in METHODS}
    counted = {}
    for step in range(steps + 2):
        for method, (model, trainable, optimizer, blocks) in setups.items():
            rows = [(step * batch + i) % blocks.shape[0] for i in range(batch)]
            start = time.perf_counter()
            counted[method] = one_step(model, trainable, optimizer, blocks[rows])
            if step >= 2:  # warm-up
                times[method].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, counted


def engine_step_times(method: str, model_dir: Path, text: Path, calib: Path, out: Path, steps: int, batch: int, seq: int) -> list[float]:
    from adaptkit.train_settings import build_method
    from adaptkit.engine.loop import train

    config = train_config(method, model_dir, text, calib, steps, batch, seq)
    train(config, build_method(config), out, overwrite=True, log=lambda m: None)
    elapsed = [json.loads(line)["elapsed_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [b - a for a, b in zip(elapsed, elapsed[1:])][2:]  # skip warm-up steps


def child_peak_rss(method: str, model_dir: Path, text: Path, calib: Path, out: Path, steps: int, batch: int, seq: int) -> float:
    """Peak RSS (MiB) of one whole training run in a fresh process, counted from after the imports."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import torch, transformers, accelerate\n"
        "from bench_ssu import engine_step_times\n"
        "from rss import peak_rss_mib, reset_peak_rss\n"
        "from pathlib import Path\n"
        "reset_peak_rss()  # counted from after the imports\n"
        "engine_step_times(%r, Path(%r), Path(%r), Path(%r), Path(%r), %d, %d, %d)\n"
        "print(peak_rss_mib())\n"
    ) % (str(HERE), method, str(model_dir), str(text), str(calib), str(out), steps, batch, seq)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--calib-blocks", type=int, default=32)
    parser.add_argument("--calib-len", type=int, default=256)
    parser.add_argument("--score-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 gives steadier ratios on a shared machine")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # child processes

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, text = make_setup(root, args.hidden, args.layers)
        calib = make_calibration(root, model_dir, args.calib_blocks, args.calib_len)
        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        print(f"model: Llama {n_params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers); torch {torch.__version__}, {torch.get_num_threads()} threads")

        result = scoring_vs_forward(model_dir, calib, args.score_batch, args.repeats)
        print(f"\n== Scoring {result['tokens']:,} calibration tokens ({args.calib_blocks} x {args.calib_len}, batch {args.score_batch}), median of {args.repeats}")
        for name, seconds in result["seconds"].items():
            print(f"{name:14s} {seconds * 1000:8.1f} ms   {result['ratio'][name]:.3f}x forward")
        print(f"wanda / plain forward: {result['ratio']['wanda']:.3f} (target <= 1.25)")

        print(f"\n== Training steps: batch {args.batch} x {args.seq} tokens, freeze ratio 0.5")
        interleaved, counted = interleaved_steps(model_dir, text, calib, args.steps, args.batch, args.seq)
        runs: dict[str, list[float]] = {k: [] for k in METHODS}
        for round_index in range(args.rounds):
            for method in (list(METHODS) if round_index % 2 == 0 else list(reversed(METHODS))):
                runs[method] += engine_step_times(method, model_dir, text, calib, root / "run", args.steps, args.batch, args.seq)
        engine = {k: statistics.median(v) for k, v in runs.items()}
        print(f"{'':28s} {'interleaved steps':>24s}   {'engine runs':>24s}")
        for method in METHODS:
            print(f"{method:28s} {interleaved[method] * 1000:9.1f} ms  {interleaved[method] / interleaved['fft']:.3f}x FFT"
                  f"   {engine[method] * 1000:9.1f} ms  {engine[method] / engine['fft']:.3f}x FFT")
        print(f"SSU-Wanda / FFT step time: {interleaved['ssu-wanda'] / interleaved['fft']:.3f} interleaved, "
              f"{engine['ssu-wanda'] / engine['fft']:.3f} engine runs (target <= 1.05)")

        print("\n== Memory (bytes counted after one step; peak RSS of a 5-step run in its own process)")
        for method in METHODS:
            peak = child_peak_rss(method, model_dir, text, calib, root / "rss", 5, args.batch, args.seq)
            parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in counted[method].items())
            print(f"{method:28s} {parts}; total {sum(counted[method].values()) / 2**20:.1f} MiB; peak RSS {peak:.0f} MiB")
        total = {k: sum(v.values()) for k, v in counted.items()}
        print(f"SSU-Wanda / FFT training-state bytes: {total['ssu-wanda'] / total['fft']:.3f}")


if __name__ == "__main__":
    main()
