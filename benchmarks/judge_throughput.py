"""How long judging N two-turn MT-Bench items takes with a local judge, and what limits it.

    python benchmarks/judge_throughput.py MODEL_DIR [--items 80] [--max-tokens 64]

Starts `transformers serve MODEL_DIR` on 127.0.0.1, sends the 2N judge requests of N two-turn
items (the mt-bench template, fixed answers) at concurrency 1 and 4 without a cache, then once
more from the cache (client cost only). Prints seconds and requests/s for each.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from adaptkit.evals.judging import load_template
from adaptkit.io.openai_client import OpenAIClient, ReplyCache


def start(model: str, port: int) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "transformers"
    proc = subprocess.Popen([str(exe), "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(180):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--items", type=int, default=80)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    template = load_template(None, "mt-bench", "single", "bench")
    requests = []
    for i in range(args.items):
        q1, q2, a1, a2 = f"Question {i}?", f"Follow-up {i}?", f"An answer to question {i}. " * 8, f"A second answer {i}. " * 8
        requests += [template.messages("turn 1", question_1=q1, answer_1=a1),
                     template.messages("turn 2", question_1=q1, answer_1=a1, question_2=q2, answer_2=a2)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = start(args.model, port)
    settings = {"temperature": 0.0, "max_tokens": args.max_tokens}
    try:
        cache_file = Path(tempfile.mkdtemp()) / "c.sqlite"
        for concurrency, cache in ((1, None), (4, None), (4, ReplyCache(cache_file)), (4, ReplyCache(cache_file))):
            client = OpenAIClient(f"http://127.0.0.1:{port}/v1", concurrency=concurrency, cache=cache)
            start_time = time.perf_counter()
            client.map(lambda m: client.chat(args.model, m, settings), requests)
            seconds = time.perf_counter() - start_time
            label = f"concurrency {concurrency}" + (" cached" if cache is not None and client.requests_sent == 0 else "")
            print(f"{label}: {len(requests)} requests ({client.requests_sent} sent) in {seconds:.1f} s = {len(requests) / seconds:.1f} req/s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
