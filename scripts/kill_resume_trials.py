"""Kill -9 trials: SIGKILL `adaptkit train` at random moments, `--resume`, compare bit for bit.

    python scripts/kill_resume_trials.py [--trials 6] [--jobs 2] [--seed 0] [--workdir DIR]

One uninterrupted reference run, then per trial: a fresh run is killed with SIGKILL at a
random moment after it starts training (checkpoint saves are slowed down so that many
kills land inside a save), then resumed — killed again at random in half of the trials —
and finally resumed to the end. Checks after every kill: no `checkpoint-N/` directory is
incomplete; after the last resume: no half-written sibling is left and final/ is
bit-identical to the reference. Prints one JSON line per trial and exits 1 on a mismatch.
`--jobs N` runs N trials at a time (each in its own directory, with its own random draws from
the seed and the trial's index, so the draws do not depend on N).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_FILES = {"tensors", "rng.safetensors", "callbacks.safetensors", "state.json"}  # tensors/: the DCP files
SAVE_DELAY_S = 0.04  # per file written by a checkpoint save in the child


def child_main(argv: list[str]) -> None:
    """Run the CLI with slowed-down checkpoint writes (so that kills land inside saves)."""
    from adaptkit.engine import checkpoint, chunked

    original, original_chunks = checkpoint.save_tensors, chunked.save_chunks

    def slow_save(*args, **kwargs):
        time.sleep(SAVE_DELAY_S)
        return original(*args, **kwargs)

    def slow_chunks(*args, **kwargs):
        time.sleep(SAVE_DELAY_S)
        return original_chunks(*args, **kwargs)

    checkpoint.save_tensors, checkpoint.save_chunks = slow_save, slow_chunks
    from adaptkit.cli import main

    main(argv)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


def _command(args: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *map(str, args)]


def train_args(model: Path, data: Path, out: Path, steps: int) -> list[str]:
    return ["train", "--model", model, "--data", data, "-o", out, "--max-steps", str(steps), "--save-steps", "2",
            "--seq-len", "32", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-2", "--quiet"]


def run_to_end(args: list[str]) -> None:
    done = subprocess.run(_command(args), capture_output=True, text=True, env=_env(), timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"train failed: {done.stderr[-2000:]}")


def kill_at_random(args: list[str], out: Path, rng: random.Random, window_s: float) -> dict:
    """Start a run, wait until it trains (config.yaml written), SIGKILL it after a random delay."""
    started = out / "config.yaml"
    if started.exists():
        started_mtime = started.stat().st_mtime
    else:
        started_mtime = None
    proc = subprocess.Popen(_command(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if started.exists() and started.stat().st_mtime != started_mtime:
            break
        time.sleep(0.01)
    delay = rng.uniform(0, window_s)
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = sorted(p.name for p in out.glob(".checkpoint-*.partial")) if out.exists() else []
    broken = [p.name for p in out.glob("checkpoint-*")
              if {f.name for f in p.iterdir()} != CHECKPOINT_FILES or not any((p / "tensors").glob("*.safetensors"))]
    if broken:
        raise AssertionError(f"incomplete checkpoint directories after the kill: {broken}")
    return {"delay_s": round(delay, 3), "finished_before_kill": finished, "killed_during_save": bool(partial and not finished),
            "checkpoints": sorted(p.name for p in out.glob("checkpoint-*"))}


def trial(index: int, model: Path, data: Path, workdir: Path, reference: dict, rng: random.Random, steps: int, window_s: float) -> dict:
    from safetensors.torch import load_file

    out = workdir / f"trial-{index}"
    args = train_args(model, data, out, steps)
    kills = [kill_at_random([*args, "--overwrite"], out, rng, window_s)]
    if rng.random() < 0.5 and (out / "config.yaml").exists():
        kills.append(kill_at_random([*args, "--resume"], out, rng, window_s))
    run_to_end([*args, "--resume"] if (out / "config.yaml").exists() else [*args, "--overwrite"])
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    final = load_file(str(out / "final" / "model.safetensors"))
    identical = all(final[k].equal(reference[k]) for k in reference) and final.keys() == reference.keys()
    return {"trial": index, "kills": kills, "leftovers": leftovers, "bit_identical": identical}


def make_setup(workdir: Path) -> tuple[Path, Path]:
    from adaptkit import demo
    from adaptkit.io.models import save_model

    train, _ = demo.split_corpus("ha")
    data = demo.write_lines(train, workdir / "ha.txt")
    tokenizer = demo.train_tokenizer(train + demo.split_corpus("en")[0], vocab_size=384)
    save_model(demo.tiny_model("llama", len(tokenizer), seed=0), tokenizer, workdir / "model")
    return workdir / "model", data


def run_trials(trials: int, seed: int, workdir: Path, steps: int = 16, window_s: float = 1.5, setup: tuple[Path, Path] | None = None,
               jobs: int = 1) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    os.environ.setdefault("ADAPTKIT_CACHE", str(workdir / "cache"))
    model, data = setup or make_setup(workdir)
    run_to_end([*train_args(model, data, workdir / "reference", steps)])
    reference = load_file(str(workdir / "reference" / "final" / "model.safetensors"))

    def one(index: int) -> dict:
        return trial(index, model, data, workdir, reference, random.Random(f"{seed}:{index}"), steps, window_s)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # the trials are child processes: threads only wait
        return list(pool.map(one, range(trials)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=1, help="trials at a time")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adaptkit-kill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = run_trials(args.trials, args.seed, workdir, args.steps, jobs=args.jobs)
    for result in results:
        print(json.dumps(result))
    ok = all(r["bit_identical"] and not r["leftovers"] for r in results)
    during_save = sum(k["killed_during_save"] for r in results for k in r["kills"])
    kills = sum(len(r["kills"]) for r in results)
    print(json.dumps({"seed": args.seed, "trials": len(results), "kills": kills, "kills_during_save": during_save, "all_bit_identical": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
