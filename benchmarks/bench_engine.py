"""Foundation benchmark: CLI cold start, and the engine's FFT step vs a plain HF Trainer.

    python benchmarks/bench_engine.py [--steps 40] [--hidden 256] [--layers 4] [--rounds 2] [--lockstep-steps 100]

Prints (ratios are measured side by side in one run, since the machine is noisy):
1. `adaptkit --help` cold start vs `python -c "import typer, rich"` (median of runs, interleaved);
2. median FFT step time and tokens/s of adaptkit's engine vs transformers' Trainer on the same model,
   data, batch, schedule and steps, timed in one process (alternating which goes first), both logging
   every 5 steps and neither saving checkpoints, every step a full batch on both sides: the step time of a
   window of 5 steps between two logs;
3. the same two trainings in lockstep: one process, two threads, the engine's step and the Trainer's step
   taken in turn (never both at once: a side keeps its turn through its logging after the step), so that
   both see the same moments of a noisy machine; run twice, each side first once. A step's time is the
   engine's `train_step` and the Trainer's fetch of the step's batches to its on_step_end (both with the
   batch fetch, neither with the logging): the ratio of the medians and the median of the paired ratios;
4. peak RSS of each, measured in separate child processes (VmHWM: see rss.py for why not ru_maxrss).
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
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOG_STEPS = 5  # both log every 5 steps (the engine reads the device only then); step time = a window / 5
TURN_TIMEOUT_S = 600  # lockstep: the longest wait for the other side's step (a failed side stops the other)


def cold_start(runs: int = 7) -> dict:
    commands = {
        "adaptkit --help": [sys.executable, "-m", "adaptkit", "--help"],
        "import typer, rich": [sys.executable, "-c", "import typer, rich"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {**{f"{k} (s)": round(v, 4) for k, v in medians.items()}, "ratio": round(medians["adaptkit --help"] / medians["import typer, rich"], 3)}


def make_setup(root: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    from adaptkit import demo
    from adaptkit.io.models import save_model

    train, _ = demo.split_corpus("ha")
    text = demo.write_lines(train * 4, root / "ha.txt")
    tokenizer = demo.train_tokenizer(train + demo.split_corpus("en")[0], vocab_size=2048)
    model = demo.tiny_model("llama", len(tokenizer), seed=0, hidden=hidden, layers=layers, heads=max(4, hidden // 64))
    save_model(model, tokenizer, root / "base")
    return root / "base", text


class Lockstep:
    """Two trainings in one process taking one step each in turn, `first` first. A side holds its turn from
    the start of its step through its work after the step (logging), and hands it over when its next step
    starts; only the step itself is timed. A side whose training ended (or failed) is waited for no more."""

    SIDES = ("adaptkit", "trainer")

    def __init__(self, first: str = "adaptkit") -> None:
        self.turn = {side: threading.Semaphore(1 if side == first else 0) for side in self.SIDES}
        self.holding = {side: False for side in self.SIDES}
        self.finished = {side: False for side in self.SIDES}
        self.times: dict[str, list[float]] = {side: [] for side in self.SIDES}
        self.started: dict[str, float] = {}

    def other(self, side: str) -> str:
        return self.SIDES[1 - self.SIDES.index(side)]

    def begin(self, side: str) -> None:
        self.hand_over(side)
        if not self.finished[self.other(side)] and not self.turn[side].acquire(timeout=TURN_TIMEOUT_S):
            raise RuntimeError(f"lockstep: {side} waited {TURN_TIMEOUT_S} s for the other side's step")
        self.holding[side] = True
        self.started[side] = time.perf_counter()

    def end(self, side: str) -> None:
        self.times[side].append(time.perf_counter() - self.started[side])

    def hand_over(self, side: str) -> None:
        if self.holding[side]:
            self.holding[side] = False
            self.turn[self.other(side)].release()

    def finish(self, side: str) -> None:
        """`side`'s training ended or failed: the other side goes on without waiting."""
        self.finished[side], self.holding[side] = True, False
        self.turn[self.other(side)].release()


@contextmanager
def engine_steps_in(lockstep: "Lockstep | None"):
    """The engine's train_step taking its turns in `lockstep` (None: as it is)."""
    from adaptkit.engine import loop

    original = loop.train_step

    def in_turn(*args, **kwargs):
        lockstep.begin("adaptkit")
        result = original(*args, **kwargs)
        lockstep.end("adaptkit")
        return result

    if lockstep is not None:
        loop.train_step = in_turn
    try:
        yield
    finally:
        loop.train_step = original
        if lockstep is not None:
            lockstep.finish("adaptkit")


def run_engine(model_dir: Path, text: Path, out: Path, steps: int, batch: int, seq: int, lockstep: "Lockstep | None" = None) -> list[float]:
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.plugins.methods.fft import FullFineTuning, FullFineTuningParams

    config = TrainConfig.model_validate({
        "model": str(model_dir), "data": {"paths": [str(text)], "seq_len": seq, "cache": False},
        "max_steps": steps, "batch_size": batch, "log_steps": LOG_STEPS, "seed": 0,
        "save_steps": 0,  # no checkpoints during the run, as the Trainer's save_strategy="no" below
    })
    with engine_steps_in(lockstep):
        train(config, FullFineTuning(FullFineTuningParams()), out, overwrite=True, log=lambda m: None)
    elapsed = [json.loads(line)["elapsed_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(b - a) / LOG_STEPS for a, b in zip(elapsed, elapsed[1:])]


def run_trainer(model_dir: Path, text: Path, out: Path, steps: int, batch: int, seq: int, lockstep: "Lockstep | None" = None) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from adaptkit.data.corpus import load_blocks

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    blocks = load_blocks([str(text)], tokenizer, seq, use_cache=False)
    dataset = [{"input_ids": b, "labels": b} for b in blocks]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())
            if lockstep is not None:
                lockstep.end("trainer")

    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=5e-5,
        lr_scheduler_type="cosine", warmup_steps=math.ceil(0.05 * steps), weight_decay=0.01, max_grad_norm=1.0, logging_steps=LOG_STEPS,
        save_strategy="no", report_to=[], seed=0, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        dataloader_drop_last=True,  # every step a full batch, as the engine's (an epoch's short last batch made a Trainer step cheaper)
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Stamp()])
    if lockstep is not None:  # a turn starts where the step's batches are fetched, as the engine's train_step does
        fetch = trainer.get_batch_samples

        def fetch_in_turn(*a, **k):
            lockstep.begin("trainer")
            return fetch(*a, **k)

        trainer.get_batch_samples = fetch_in_turn
    try:
        trainer.train()
    finally:
        if lockstep is not None:
            lockstep.finish("trainer")
    ends = stamps[LOG_STEPS - 1::LOG_STEPS]  # the ends of steps 5, 10, ...: the windows the engine's metrics rows give
    return [(b - a) / LOG_STEPS for a, b in zip(ends, ends[1:])]


def lockstep_ratio(model_dir: Path, text: Path, root: Path, steps: int, batch: int, seq: int, first: str, skip: int = 3) -> dict:
    """Both trainings in lockstep (see the module's docstring), `first` taking the first step; the first
    `skip` steps of each are warm-up."""
    lockstep, failed = Lockstep(first), []

    def trainer_side() -> None:
        try:
            run_trainer(model_dir, text, root / "lock-trainer", steps, batch, seq, lockstep)
        except BaseException as exc:  # reported below (run_trainer's finish lets the engine go on)
            failed.append(exc)

    thread = threading.Thread(target=trainer_side, daemon=True)
    thread.start()
    run_engine(model_dir, text, root / "lock-adaptkit", steps, batch, seq, lockstep)
    thread.join(TURN_TIMEOUT_S)
    if failed or thread.is_alive():
        raise RuntimeError(f"lockstep: the Trainer's side failed: {failed[0] if failed else 'still running'}")
    engine, trainer = (lockstep.times[side][skip:] for side in Lockstep.SIDES)
    return {"first": first, "steps": len(engine), "adaptkit median step (ms)": round(statistics.median(engine) * 1000, 1),
            "trainer median step (ms)": round(statistics.median(trainer) * 1000, 1),
            "ratio of the medians": round(statistics.median(engine) / statistics.median(trainer), 3),
            "median of the paired ratios": round(statistics.median(e / t for e, t in zip(engine, trainer)), 3)}


def child_peak_rss(which: str, model_dir: Path, text: Path, out: Path, steps: int, batch: int, seq: int) -> float:
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from bench_engine import run_engine, run_trainer\n"
        "from rss import peak_rss_mib\n"
        "from pathlib import Path\n"
        "run_%s(Path(%r), Path(%r), Path(%r), %d, %d, %d)\n"
        "print(peak_rss_mib())\n"
    ) % (str(HERE), which, str(model_dir), str(text), str(out), steps, batch, seq)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])  # MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating which goes first")
    parser.add_argument("--lockstep-steps", type=int, default=100, help="steps of each side in the lockstep measurement")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print("== CLI cold start (median of 7, interleaved)")
    print(json.dumps(cold_start(), indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, text = make_setup(root, args.hidden, args.layers)
        import torch

        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        print(f"== FFT: Llama {n_params / 1e6:.1f}M params, batch {args.batch} x {args.seq} tokens, {args.steps} steps, torch threads {torch.get_num_threads()}")
        times: dict[str, list[float]] = {"adaptkit": [], "trainer": []}
        for round_ in range(args.rounds):
            for which in (("adaptkit", "trainer"), ("trainer", "adaptkit"))[round_ % 2]:
                fn = run_engine if which == "adaptkit" else run_trainer
                times[which] += fn(model_dir, text, root / f"out-{which}", args.steps, args.batch, args.seq)[1:]  # after the first window
        tokens = args.batch * args.seq
        median = {k: statistics.median(v) for k, v in times.items()}
        for k, v in median.items():
            print(f"{k:9s} median step {v * 1000:.1f} ms  ({tokens / v:,.0f} tokens/s)")
        print(f"step-time ratio adaptkit / Trainer: {median['adaptkit'] / median['trainer']:.3f} (target <= 1.0)")
        per_run = len(times["adaptkit"]) // args.rounds
        ratios = [statistics.median(times["adaptkit"][i * per_run:(i + 1) * per_run]) / statistics.median(times["trainer"][i * per_run:(i + 1) * per_run])
                  for i in range(args.rounds)]
        print(f"ratio of each round (the two runs side by side): {', '.join(f'{r:.3f}' for r in ratios)}")
        print("== the same, in lockstep (one process, the two steps in turn)")
        for first in Lockstep.SIDES:  # each side first once: the order within a pair cancels out
            print(json.dumps(lockstep_ratio(model_dir, text, root, args.lockstep_steps, args.batch, args.seq, first)))
        rss = {k: child_peak_rss("engine" if k == "adaptkit" else "trainer", model_dir, text, root / f"rss-{k}", args.steps, args.batch, args.seq) for k in times}
        for k, v in rss.items():
            print(f"{k:9s} peak RSS {v:.0f} MiB")
        print(f"peak RSS ratio adaptkit / Trainer: {rss['adaptkit'] / rss['trainer']:.3f}")


if __name__ == "__main__":
    main()
