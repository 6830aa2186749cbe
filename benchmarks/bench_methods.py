"""Benchmark: step time and peak memory of every training method relative to FFT, and adaptkit's LoRA
against peft + a plain Hugging Face Trainer loop, on the same model and data in one run.

The parent process builds one small Llama (about 20M parameters by default) and one token-block
data set, then runs each method in its own worker process (so that peak memory is per method):

- step time: median wall time of the optimizer steps after `--warmup` steps (from the engine's
  per-step metrics; for the HF Trainer, from step-begin/step-end callbacks);
- memory: on CUDA, torch's peak allocated memory; on CPU, the growth of the worker's peak RSS over
  its RSS before training (model load included; imports excluded).

LoTA's step time is that of its sparse training; its peak memory includes the calibration
fine-tune (`--lota-calibration` steps). Ratios are against FFT measured in the same run.

    python benchmarks/bench_methods.py [--steps 12] [--warmup 2] [--seq-len 128] [--batch-size 4]
                                       [--hidden 512] [--layers 6] [--methods fft,lora,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = {
    "fft": [],
    "hft": [],
    "gmt": [],
    "lota": ["calibration_steps={lota}"],
    "s2ft": [],
    "s2ft-output": ["variant=down+output"],
    "lora": [],
    "adalora": [],
    "layra": ["first=2", "last=1"],
    "layer-selective": [],
    "layer-freeze": ["layers=0-{half}"],
    "soft-reg": [],
}


def peak_memory_mb(device: str, baseline_kb: int) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024


def worker_adaptkit(args, method: str) -> dict:
    import torch

    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.registry import get_spec

    get_spec("method", method.split("-output")[0]).load()  # imports (peft for the adapters) before the baseline
    import peft  # noqa: F401  (same import cost for every worker)

    settings = [s.format(lota=args.lota_calibration, half=args.layers // 2 - 1) for s in METHODS[method]]
    params = dict(item.split("=", 1) for item in settings)
    config = TrainConfig(
        model=str(args.model), data={"paths": [str(args.data)], "seq_len": args.seq_len}, method=method.split("-output")[0],
        method_params=params, batch_size=args.batch_size, max_steps=args.steps, log_steps=1, optimizer={"lr": 1e-4},
        device="cpu" if args.device == "cpu" else "auto",
    )
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, Path(tmp) / "run", log=lambda m: None)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    elapsed = [0.0] + [r["elapsed_s"] for r in rows]
    step_times = [b - a for a, b in zip(elapsed, elapsed[1:])][args.warmup:]
    return {"step_s": statistics.median(step_times), "memory_mb": peak_memory_mb(args.device, baseline),
            "trainable_fraction": result.trainable / result.total}


def worker_hf_lora(args) -> dict:
    """peft LoRA (same config as adaptkit's default lora) trained by a plain transformers Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from adaptkit.data.corpus import load_blocks

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    blocks = load_blocks([str(args.data)], tokenizer, args.seq_len)
    dataset = [{"input_ids": row, "labels": row} for row in blocks]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets))

    class Timer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            Timer.times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-4,
            weight_decay=0.01, warmup_steps=0.05, lr_scheduler_type="cosine", max_grad_norm=1.0, optim="adamw_torch_fused",
            logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=args.device == "cpu",
            dataloader_num_workers=0, seed=42,
        )
        Trainer(model=model, args=training, train_dataset=dataset, callbacks=[Timer()]).train()
    return {"step_s": statistics.median(Timer.times[args.warmup:]), "memory_mb": peak_memory_mb(args.device, baseline)}


def build_inputs(args, directory: Path) -> tuple[Path, Path]:
    """A ~20M-parameter Llama with a BPE tokenizer trained on UDHR, and Hausa + English training text."""
    from adaptkit import demo

    texts = []
    for lang in ("ha", "en"):
        texts += demo.split_corpus(lang)[0]
    data = demo.write_lines(texts * 4, directory / "train.txt")
    tokenizer = demo.train_tokenizer(texts, vocab_size=args.vocab)
    model = demo.tiny_model("llama", len(tokenizer), seed=0, hidden=args.hidden, layers=args.layers, heads=8,
                            intermediate_size=args.hidden * 8 // 3)
    model_dir = directory / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, data


def run_worker(args, kind: str) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--model", str(args.model), "--data", str(args.data)]
    for key in ("steps", "warmup", "seq_len", "batch_size", "lota_calibration", "layers", "device"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--lota-calibration", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        result = worker_hf_lora(args) if args.worker == "hf-lora" else worker_adaptkit(args, args.worker)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        args.model, args.data = build_inputs(args, Path(tmp))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model)
        n_params = _parameter_count(args.model)
        results = {}
        for kind in ["fft"] + [m for m in args.methods.split(",") if m != "fft"] + ["hf-lora"]:
            results[kind] = run_worker(args, kind)
            print(f"  {kind}: {results[kind]}", file=sys.stderr)
    fft, lora = results["fft"], results.get("lora")
    rows = []
    for kind, r in results.items():
        rows.append({
            "method": kind, "step_s": round(r["step_s"], 4), "step_vs_fft": round(r["step_s"] / fft["step_s"], 3),
            "memory_mb": round(r["memory_mb"], 1), "memory_vs_fft": round(r["memory_mb"] / fft["memory_mb"], 3),
            "trainable_fraction": round(r.get("trainable_fraction", float("nan")), 5),
        })
    summary = {
        "model": f"llama, {n_params / 1e6:.1f}M parameters, hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size}",
        "data": f"{args.steps} steps of {args.batch_size} x {args.seq_len} tokens (median of the last {args.steps - args.warmup})",
        "device": args.device, "rows": rows,
    }
    if lora:
        summary["lora_vs_hf_trainer"] = {"step_time_ratio": round(lora["step_s"] / results["hf-lora"]["step_s"], 3),
                                         "memory_ratio": round(lora["memory_mb"] / results["hf-lora"]["memory_mb"], 3)}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['model']}; {summary['data']}; device {args.device}")
    print(f"{'method':<16}{'step s':>9}{'x FFT':>8}{'memory MB':>11}{'x FFT':>8}{'trainable':>11}")
    for row in rows:
        print(f"{row['method']:<16}{row['step_s']:>9.4f}{row['step_vs_fft']:>8.2f}{row['memory_mb']:>11.1f}{row['memory_vs_fft']:>8.2f}{row['trainable_fraction']:>11.4f}")
    if lora:
        ratio = summary["lora_vs_hf_trainer"]
        print(f"adaptkit lora vs peft + HF Trainer: step time x{ratio['step_time_ratio']:.2f}, memory x{ratio['memory_ratio']:.2f}")


def _parameter_count(model_dir: Path) -> int:
    from adaptkit.io.tensors import check_safetensors

    header = check_safetensors(model_dir / "model.safetensors", "model")
    return sum(math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__")


if __name__ == "__main__":
    main()
