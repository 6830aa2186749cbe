"""Two-process exits under torchrun, with and without the CLI's teardown of the gloo process group.

    python benchmarks/stress_pg_exit.py [--runs 12] [--load]

Each launch: two processes join the group as adaptkit does (engine.distributed.make_accelerator, which
registers `leave_process_group` to run at exit), take one broadcast (as BaM's on_main does when the main
process reports an error), and exit with 2, with that exit hook or without it (the group left to the
interpreter's exit). Counts the launches in which
a process ended in SIGABRT ("terminate called without an active exception"). `--load`: two busy
processes beside the launches. Every launch is bounded (120 s).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import atexit, os, sys
import torch.distributed as dist
from adaptkit.engine.distributed import leave_process_group, make_accelerator
make_accelerator("cpu")
if os.environ["TEARDOWN"] == "0":
    atexit.unregister(leave_process_group)
box = [("bad input", "message")]
dist.broadcast_object_list(box, src=0)
sys.exit(2)
"""


def aborts(runs: int, teardown: bool, program: Path) -> int:
    torchrun = Path(sys.executable).with_name("torchrun")
    count = 0
    for _ in range(runs):
        env = {**__import__("os").environ, "TEARDOWN": "1" if teardown else "0"}
        done = subprocess.run([str(torchrun), "--nproc-per-node", "2", str(program)], capture_output=True, text=True, env=env, timeout=120)
        count += "SIGABRT" in done.stderr or "terminate called" in done.stderr
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--load", action="store_true", help="two busy processes beside the launches")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if args.load else 0)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            program = Path(tmp) / "child.py"
            program.write_text(CHILD)
            for teardown in (False, True):
                print(f"teardown {'on ' if teardown else 'off'}: {aborts(args.runs, teardown, program)} of {args.runs} launches aborted", flush=True)
    finally:
        for process in busy:
            process.kill()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
