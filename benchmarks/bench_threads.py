"""CPU threads under load: adaptkit's default thread choice against one thread and torch's own default.

    python benchmarks/bench_threads.py [--steps 300] [--rounds 1] [--busy 2]

Runs the same tiny training (`adaptkit train`, a 4-layer 64-wide Llama, batch 8 x 128, the
quickstart's shape) as a subprocess under each setting, side by side in one run, with the cores
idle and with `--busy` spinning processes (one per core by default), and prints the wall times and
their ratios to one thread:

- `adaptkit default`: no OpenMP variable set; adaptkit chooses (adaptkit/threads.py);
- `one thread`: OMP_NUM_THREADS=1;
- `torch default`: OMP_NUM_THREADS=<usable cores> and no OMP_WAIT_POLICY, i.e. what torch does
  unconfigured (adaptkit keeps a user's OMP_NUM_THREADS and leaves OpenMP's wait policy alone then);
- `all cores, passive`: OMP_NUM_THREADS=<usable cores> OMP_WAIT_POLICY=PASSIVE.

"Idle" is only as idle as the machine is: other work running on it counts as load, so the
script also prints the run queue it saw (/proc/loadavg) before each round.
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_setup(root: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from adaptkit import demo
    from adaptkit.io.models import save_model

    train, _ = demo.split_corpus("ha")
    text = demo.write_lines(train * 4, root / "ha.txt")
    tokenizer = demo.train_tokenizer(train + demo.split_corpus("en")[0], vocab_size=512)
    model = demo.tiny_model("llama", len(tokenizer), seed=0)
    save_model(model, tokenizer, root / "base")
    return root / "base", text


def settings(cores: int) -> dict[str, dict[str, str]]:
    return {
        "one thread": {"OMP_NUM_THREADS": "1"},
        "adaptkit default": {},
        "torch default": {"OMP_NUM_THREADS": str(cores)},
        "all cores, passive": {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"},
    }


def run_training(model: Path, text: Path, out: Path, steps: int, extra_env: dict[str, str], limit: float) -> float:
    """Wall seconds of the training; a run past `limit` seconds is stopped and counts as `limit` (a lower bound)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_", "MKL_NUM", "GOMP_"))}
    env.update(extra_env, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "adaptkit", "train", "--model", str(model), "--data", str(text), "--max-steps", str(steps),
               "--seq-len", "128", "--batch-size", "8", "--lr", "1e-3", "--save-steps", "0", "-o", str(out), "--overwrite", "--quiet"]
    start = time.perf_counter()
    try:
        subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return limit
    except subprocess.CalledProcessError as exc:
        sys.exit(f"the training failed ({' '.join(extra_env) or 'no OpenMP variable'}): {exc.stderr[-2000:]}")
    return time.perf_counter() - start


@contextmanager
def busy_cores(count: int):
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def run_queue() -> str:
    return Path("/proc/loadavg").read_text().split()[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--limit", type=float, default=300, help="Seconds a run may take; a slower one is stopped and shown as '>= LIMIT'.")
    parser.add_argument("--rounds", type=int, default=1, help="Repeats of every setting (medians reported).")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="Spinning processes in the loaded case.")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from adaptkit.threads import default_threads, usable_cores

    cores = usable_cores()
    chosen = settings(cores)
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        model, text = make_setup(Path(tmp))
        for round_ in range(args.rounds):
            for load in ("idle", "loaded"):
                with busy_cores(args.busy if load == "loaded" else 0):
                    time.sleep(1.0)
                    print(f"round {round_ + 1}, {load}: run queue {run_queue()}, adaptkit would choose {default_threads()} thread(s)", file=sys.stderr)
                    for name, env in chosen.items():
                        seconds = run_training(model, text, Path(tmp) / "run", args.steps, env, args.limit)
                        times.setdefault((load, name), []).append(seconds)
                        print(f"  {name:20s} {'>=' if seconds >= args.limit else '  '}{seconds:7.1f} s", file=sys.stderr)
    rows = {}
    for load in ("idle", "loaded"):
        one = statistics.median(times[(load, "one thread")])
        for name in chosen:
            median = statistics.median(times[(load, name)])
            bound = ">=" if median >= args.limit else ""
            rows[f"{load}: {name}"] = {"seconds": f"{bound}{median:.1f}", "vs one thread": f"{bound}{median / one:.2f}"}
    print(json.dumps({"steps": args.steps, "usable cores": cores, "busy processes when loaded": args.busy, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
