"""Soak of the token store's worker pool: N builds in a row under load, each bounded in time.

    python benchmarks/stress_store.py [--builds 20] [--megabytes 100] [--busy 4] [--num-proc 2]
                                      [--timeout 1800] [--stop-at HH:MM] [--out report.json]

Generates a corpus of S MB (Hausa-like text, as bench_data.py) and a tiny model with a byte-level
BPE tokenizer, starts K busy processes (`while 1: pass`) to load the cores, then runs
`adaptkit data prepare --num-proc P` N times in a row, each in its own process group with a fresh
output. A build that has not ended after --timeout seconds counts as a hang (its stack is dumped
with py-spy when installed, then its group is killed). After each build it checks that no process
of the build is left. Reports (JSON, rewritten after every build): builds, hangs, failures, stray
processes, seconds per MB (mean, max), peak RSS of the largest process and peak PSS of the whole
process tree (forked workers share the parent's pages: PSS counts them once; psutil polling), and the machine's load average. --stop-at starts no build that
would end (at the slowest build's pace so far) after that time of day; the busy processes end
on their own 5 minutes after it, even when this script is killed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import generate_text, make_tokenizer  # noqa: E402


def make_model(directory: Path) -> Path:
    from transformers import AutoTokenizer

    from adaptkit import demo

    make_tokenizer(directory)
    demo.tiny_model("llama", len(AutoTokenizer.from_pretrained(str(directory)))).save_pretrained(str(directory))
    return directory


def build(model: Path, corpus: Path, output: Path, num_proc: int, timeout: float) -> dict:
    """One `data prepare` run: its outcome, wall time, peak RSS and the processes it left."""
    errors = tempfile.TemporaryFile(mode="w+")
    command = [sys.executable, "-m", "adaptkit", "data", "prepare", "--model", str(model), "--data", str(corpus),
               "--num-proc", str(num_proc), "-o", str(output)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True)
    root, seen = psutil.Process(proc.pid), set()
    try:
        largest, total, outcome = _watch(proc, root, seen, start, timeout)
    except BaseException:  # the soak itself stopped: the build goes with it
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    wall = time.perf_counter() - start
    errors.seek(0)
    message = errors.read().strip().splitlines()
    if outcome is None:
        outcome = "ok" if proc.returncode == 0 and (output / "index.json").is_file() else "failed"
    time.sleep(0.5)
    strays = [pid for pid in seen - {proc.pid} if _running(pid)]
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    return {"outcome": outcome, "exit": proc.returncode, "wall_s": round(wall, 1), "peak_rss_largest_mib": round(largest / 2**20),
            "peak_pss_tree_mib": round(total / 2**20), "strays": strays, "last_line": message[-1] if message else ""}


def _watch(proc, root, seen: set, start: float, timeout: float) -> tuple[int, int, str | None]:
    """Poll the build's process tree until it ends or times out: (largest RSS, tree PSS, 'hang' or None)."""
    largest = total = 0
    while proc.poll() is None:
        if time.perf_counter() - start > timeout:
            dump_stacks([proc.pid, *seen])
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return largest, total, "hang"
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        rss, pss = [], []
        for p in tree:
            try:
                info = p.memory_full_info()  # pss: shared (forked) pages counted once across the tree
                rss.append(info.rss)
                pss.append(info.pss)
                seen.add(p.pid)
            except psutil.Error:
                pass
        largest, total = max(largest, max(rss, default=0)), max(total, sum(pss))
        time.sleep(0.1)
    return largest, total, None


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def dump_stacks(pids: list[int]) -> None:
    spy = shutil.which("py-spy")
    for pid in pids:
        if spy and _running(pid):
            subprocess.run([spy, "dump", "--pid", str(pid)], stdout=sys.stderr, stderr=subprocess.STDOUT, timeout=60)


def summary(args, runs: list[dict], started: float) -> dict:
    ok = [r for r in runs if r["outcome"] == "ok"]
    per_mb = [r["wall_s"] / args.megabytes for r in ok]
    return {
        "builds": len(runs), "ok": len(ok), "hangs": sum(r["outcome"] == "hang" for r in runs),
        "failures": sum(r["outcome"] == "failed" for r in runs), "strays": sum(len(r["strays"]) for r in runs),
        "megabytes": args.megabytes, "num_proc": args.num_proc, "busy_processes": args.busy, "timeout_s": args.timeout,
        "s_per_mb_mean": round(statistics.mean(per_mb), 3) if per_mb else None, "s_per_mb_max": round(max(per_mb), 3) if per_mb else None,
        "peak_rss_largest_mib": max((r["peak_rss_largest_mib"] for r in ok), default=None),
        "peak_pss_tree_mib": max((r["peak_pss_tree_mib"] for r in ok), default=None),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "elapsed_s": round(time.perf_counter() - started), "runs": runs,
    }


def _end_of(stop_at: str) -> float:
    """The next HH:MM of today, as a time.time() value."""
    hour, minute = map(int, stop_at.split(":"))
    return datetime.datetime.now().replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()


def fits(stop_at: str | None, runs: list[dict]) -> bool:
    if not stop_at:
        return True
    slowest = max((r["wall_s"] for r in runs), default=0)
    return time.time() + slowest <= _end_of(stop_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--busy", type=int, default=4)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds after which a build counts as a hang")
    parser.add_argument("--stop-at", help="HH:MM: start no build that would end after this time of day")
    parser.add_argument("--out", type=Path, help="report file (JSON; also printed at the end)")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="stress-store-"))
    work.mkdir(parents=True, exist_ok=True)
    env_cache = work / "cache"
    os.environ.update(ADAPTKIT_CACHE=str(env_cache), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    corpus = work / f"corpus-{args.megabytes:g}mb.txt"
    if not corpus.is_file():
        generate_text(corpus, args.megabytes)
    model = work / "model"
    if not (model / "config.json").is_file():
        make_model(model)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # `timeout`: still end the busy processes
    until = _end_of(args.stop_at) + 300 if args.stop_at else time.time() + 7 * 86400  # busy processes end themselves too
    spin = f"import time\nwhile time.time() < {until}: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.busy)]
    print(json.dumps({"pid": os.getpid(), "busy": [p.pid for p in busy]}), file=sys.stderr, flush=True)
    runs: list[dict] = []
    started = time.perf_counter()
    try:
        for i in range(args.builds):
            if not fits(args.stop_at, runs):
                break
            output = work / f"store-{i}"
            runs.append(build(model, corpus, output, args.num_proc, args.timeout))
            shutil.rmtree(output, ignore_errors=True)
            print(json.dumps({"build": i, **runs[-1]}), file=sys.stderr, flush=True)
            if args.out:
                args.out.write_text(json.dumps(summary(args, runs, started), indent=1))
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report = summary(args, runs, started)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
