"""Benchmark: step time and peak memory of every training method relative to FFT, and adaptkit's LoRA
against peft + a plain Hugging Face Trainer loop, on the same model and data in one run.

The parent process builds one small Llama (about 20M parameters by default) and one token-block
data set, then runs each method in its own worker process (so that peak memory is per method):

- step time: median CPU time (process time) between the ends of consecutive optimizer steps after
  `--warmup` steps, taken by a step-end callback (the engine's for adaptkit methods, a
  TrainerCallback for the HF Trainer). CPU time, not wall time, because a shared machine makes
  wall time swing by 2-3x; with one thread (`--threads 1`, default) it equals the wall time of an
  idle machine. Wall-time medians are reported too. Workers run in `--rounds` interleaved rounds
  and the lowest round median counts;
- memory, over what the worker holds before training (imports excluded, model load included), up
  to the end of the last optimizer step (saving the final model excluded): `peak` (CUDA: peak
  allocated; CPU: peak RSS, with a fixed glibc mmap threshold so that RSS follows live memory) and
  `state`, what is still held at the end of the last step (weights, gradients, optimizer state,
  method copies; no activations).

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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import peak_rss_mib

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


def current_memory_mb(device: str) -> float:
    """Memory in use now: CUDA allocated bytes, or the process's resident set."""
    import torch

    if device == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()  # VmHWM: a child's ru_maxrss would include this benchmark's own peak (rss.py)


def step_mark(device: str, baseline_mb: float) -> tuple[float, float, float, float]:
    """(CPU time, wall time, peak memory and memory in use over the baseline), at the end of an optimizer step."""
    return time.process_time(), time.perf_counter(), peak_memory_mb(device) - baseline_mb, current_memory_mb(device) - baseline_mb


def step_times(marks: list[tuple[float, float, float, float]], warmup: int) -> dict:
    """Median CPU and wall seconds per step from the marks taken at each step's end; memory at the last."""
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])][max(0, warmup - 1):]
    return {"step_s": statistics.median(c for c, _ in steps), "wall_step_s": statistics.median(w for _, w in steps),
            "memory_mb": marks[-1][2], "state_mb": marks[-1][3]}


def worker_adaptkit(args, method: str) -> dict:
    import torch

    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.engine.plan import TrainingCallback
    from adaptkit.registry import get_spec

    name = method.split("-output")[0]
    spec = get_spec("method", name)
    marks: list[tuple[float, float, float, float]] = []

    class StepClock(TrainingCallback):  # `baseline` is set below, before training starts
        def on_step_end(self, model, step):
            marks.append(step_mark(args.device, baseline))

    class Timed(spec.load()):  # the method itself, plus a clock at the end of every step
        def plan(self, model, ctx):
            plan = super().plan(model, ctx)
            plan.callbacks.append(StepClock())
            return plan
    import peft  # noqa: F401  (the same import cost for every worker)

    settings = [s.format(lota=args.lota_calibration, half=args.layers // 2 - 1) for s in METHODS[method]]
    config = TrainConfig(
        model=str(args.model), data={"paths": [str(args.data)], "seq_len": args.seq_len}, method=name,
        method_params=dict(item.split("=", 1) for item in settings), batch_size=args.batch_size, max_steps=args.steps,
        optimizer={"lr": 1e-4}, device="cpu" if args.device == "cpu" else "auto",
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = current_memory_mb(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, Timed(spec.validate_params(config.method_params)), Path(tmp) / "run", log=lambda m: None)
    return {**step_times(marks, args.warmup), "trainable_fraction": result.trainable / result.total}


def worker_hf_lora(args) -> dict:
    """peft LoRA (same config as adaptkit's default lora) trained by a plain transformers Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from adaptkit.data.corpus import load_blocks

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = current_memory_mb(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    blocks = load_blocks([str(args.data)], tokenizer, args.seq_len)
    dataset = [{"input_ids": row, "labels": row} for row in blocks]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets))

    marks: list[tuple[float, float, float, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append(step_mark(args.device, baseline))

    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-4,
            weight_decay=0.01, warmup_steps=0.05, lr_scheduler_type="cosine", max_grad_norm=1.0, optim="adamw_torch_fused",
            logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=args.device == "cpu",
            dataloader_num_workers=0, seed=42,
        )
        Trainer(model=model, args=training, train_dataset=dataset, callbacks=[StepClock()]).train()
    return step_times(marks, args.warmup)


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
    for key in ("steps", "warmup", "seq_len", "batch_size", "lota_calibration", "layers", "device", "threads"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    # a fixed glibc mmap threshold returns freed large blocks to the system, so that RSS follows live memory
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
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
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all workers; the best round counts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker (1: stable on a shared CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = worker_hf_lora(args) if args.worker == "hf-lora" else worker_adaptkit(args, args.worker)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        args.model, args.data = build_inputs(args, Path(tmp))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model)
        n_params = _parameter_count(args.model)
        kinds = ["fft"] + [m for m in args.methods.split(",") if m != "fft"] + ["hf-lora"]
        rounds: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for number in range(args.rounds):
            for kind in kinds:
                rounds[kind].append(run_worker(args, kind))
                print(f"  round {number + 1} {kind}: {rounds[kind][-1]}", file=sys.stderr)
        results = {kind: min(runs, key=lambda r: r["step_s"]) for kind, runs in rounds.items()}
        for kind, runs in rounds.items():
            results[kind]["memory_mb"] = min(r["memory_mb"] for r in runs)
            results[kind]["state_mb"] = min(r["state_mb"] for r in runs)
    fft, lora = results["fft"], results.get("lora")
    rows = []
    for kind, r in results.items():
        rows.append({
            "method": kind, "step_s": round(r["step_s"], 4), "step_vs_fft": round(r["step_s"] / fft["step_s"], 3),
            "wall_step_s": round(r["wall_step_s"], 4),
            "memory_mb": round(r["memory_mb"], 1), "memory_vs_fft": round(r["memory_mb"] / fft["memory_mb"], 3),
            "state_mb": round(r["state_mb"], 1), "state_vs_fft": round(r["state_mb"] / fft["state_mb"], 3),
            "trainable_fraction": round(r.get("trainable_fraction", float("nan")), 5),
        })
    summary = {
        "model": f"llama, {n_params / 1e6:.1f}M parameters, hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size}",
        "data": f"{args.steps} steps of {args.batch_size} x {args.seq_len} tokens (median of the last {args.steps - args.warmup}, best of {args.rounds} rounds)",
        "device": args.device, "threads": args.threads, "rows": rows,
    }
    if lora:
        hf = results["hf-lora"]
        summary["lora_vs_hf_trainer"] = {"step_time_ratio": round(lora["step_s"] / hf["step_s"], 3), "peak_memory_ratio": round(lora["memory_mb"] / hf["memory_mb"], 3),
                                         "state_memory_ratio": round(lora["state_mb"] / hf["state_mb"], 3)}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['model']}; {summary['data']}; device {args.device}, {args.threads} thread(s)")
    print(f"{'method':<16}{'cpu s/step':>11}{'x FFT':>7}{'wall s/step':>12}{'peak MB':>9}{'x FFT':>7}{'state MB':>10}{'x FFT':>7}{'trainable':>11}")
    for row in rows:
        print(f"{row['method']:<16}{row['step_s']:>11.4f}{row['step_vs_fft']:>7.2f}{row['wall_step_s']:>12.4f}{row['memory_mb']:>9.1f}{row['memory_vs_fft']:>7.2f}"
              f"{row['state_mb']:>10.1f}{row['state_vs_fft']:>7.2f}{row['trainable_fraction']:>11.4f}")
    if lora:
        ratio = summary["lora_vs_hf_trainer"]
        print(f"adaptkit lora vs peft + HF Trainer: step time x{ratio['step_time_ratio']:.2f}, peak memory x{ratio['peak_memory_ratio']:.2f}, state memory x{ratio['state_memory_ratio']:.2f}")


def _parameter_count(model_dir: Path) -> int:
    from adaptkit.io.tensors import check_safetensors

    header = check_safetensors(model_dir / "model.safetensors", "model")
    return sum(math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__")


if __name__ == "__main__":
    main()
