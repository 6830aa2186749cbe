"""Layer-by-layer vs whole-model scoring and perplexity on CPU: peak memory and time, side by side.

    python benchmarks/bench_layerwise.py [--hidden 1024] [--layers 16] [--blocks 16] [--block-size 128]

Builds one Llama (float32, saved as safetensors), a calibration set of `--blocks` x
`--block-size` English tokens and a Hausa text file, then runs, each in a fresh process
the way a user would (`python -m adaptkit ...`):

- `score --scorer wanda` with and without `--layer-by-layer`,
- `evaluate --task ppl:...` with and without `--layer-by-layer`,
- `python -c "import torch, transformers, adaptkit..."`: the memory every process pays
  before any weight is read (the import floor).

Prints wall time, peak RSS, peak RSS above the import floor, and the layer-by-layer /
whole ratios, and checks that both paths give the same scores and perplexity. Then, in this
process, layer-by-layer scoring with and without prefetch (reading layer i + 1 while layer i
runs), interleaved over two rounds; the model files are in the OS page cache here, so this
shows the cost of reading and converting weights, not of a cold disk, where prefetch gains more. The figure
that matters for a model larger than memory is the RSS above the floor: whole-model runs
hold every weight; layer-by-layer runs hold the embeddings, head and one layer, plus the
hidden states of the calibration (or evaluation) tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
)
IMPORTS = "import torch, transformers, adaptkit.scoring.run, adaptkit.streamed_model, adaptkit.evals.perplexity, accelerate"


def measured(cmd: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a command run in a fresh wrapper process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, cmd)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{done.stderr[-3000:]}")
    return seconds, int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()

    import torch

    from adaptkit import demo
    from adaptkit.io.models import save_model
    from adaptkit.scoring.score_set import load_scores

    root = Path(tempfile.mkdtemp(prefix="bench-layerwise-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), ADAPTKIT_CACHE=str(root / "cache"))
    en, _ = demo.split_corpus("en")
    _, ha_test = demo.split_corpus("ha")
    tokenizer = demo.train_tokenizer(en + demo.split_corpus("ha")[0], vocab_size=2048)
    model = demo.tiny_model("llama", len(tokenizer), seed=0, hidden=args.hidden, layers=args.layers, heads=max(4, args.hidden // 64))
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    save_model(model, tokenizer, root / "model")
    del model
    demo.write_lines(en, root / "en.txt")
    demo.write_lines(ha_test, root / "ha-test.txt")
    cli = [sys.executable, "-m", "adaptkit"]
    subprocess.run([*cli, "calibrate", "-m", root / "model", "-d", root / "en.txt", "--format", "text", "--num-samples", str(args.blocks),
                    "--block-size", str(args.block_size), "-o", root / "calib", "--quiet"], check=True, env=env)
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {weights_mb:.0f} MiB of float32 weights; "
          f"calibration {args.blocks} x {args.block_size} tokens; torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread")

    floor_s, floor = measured([sys.executable, "-c", IMPORTS], env)
    rows = {}
    for name, extra in (("whole", []), ("layer-by-layer", ["--layer-by-layer"])):
        rows[f"score {name}"] = measured([*cli, "score", "-m", root / "model", "--calib", root / "calib", "-o", root / f"scores-{name}", "--quiet", *extra], env)
        rows[f"ppl {name}"] = measured([*cli, "evaluate", "-m", f"m={root / 'model'}", "--task", f"ppl:ha={root / 'ha-test.txt'}", "--set", "ppl.block_size=256",
                                        "--no-plots", "-o", root / f"eval-{name}", "--quiet", *extra], env)
    print(f"\nimport floor: {floor:.0f} MiB peak RSS ({floor_s:.1f} s)\n")
    print(f"{'run':<22}{'seconds':>9}{'peak RSS MiB':>14}{'above floor':>13}")
    for name, (seconds, peak) in rows.items():
        print(f"{name:<22}{seconds:>9.1f}{peak:>14.0f}{peak - floor:>13.0f}")
    for task in ("score", "ppl"):
        (ws, wp), (ls, lp) = rows[f"{task} whole"], rows[f"{task} layer-by-layer"]
        print(f"{task}: layer-by-layer / whole: time {ls / ws:.2f}x, peak RSS {lp / wp:.2f}x, above the import floor {(lp - floor) / max(wp - floor, 1):.2f}x")

    whole, layered = load_scores(root / "scores-whole"), load_scores(root / "scores-layer-by-layer")
    worst = max(float(((layered.scores[n][g] - t).abs().max() / t.abs().max().clamp_min(1e-30))) for n, by in whole.scores.items() for g, t in by.items())
    ppl = [json.loads((root / f"eval-{n}" / "results.json").read_text())["results"]["m"]["ha"]["ppl"] for n in ("whole", "layer-by-layer")]
    print(f"\nsame results: scores max relative difference {worst:.2e}; ppl {ppl[0]:.4f} vs {ppl[1]:.4f}")

    from adaptkit.calibration import load_calibration
    from adaptkit.io.models import resolve_model_source
    from adaptkit.streamed_model import LayerwiseModel
    from adaptkit.scoring.run import compute_scores

    torch.set_num_threads(1)
    calibration = load_calibration(root / "calib")
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(2):
        for prefetch in (False, True):
            stream = LayerwiseModel.open(resolve_model_source(str(root / "model")))
            stream.prefetch = prefetch
            start = time.perf_counter()
            compute_scores(stream, "wanda", calibration)
            seconds[prefetch].append(time.perf_counter() - start)
    off, on = min(seconds[False]), min(seconds[True])
    print(f"layer-by-layer wanda in-process, best of 2: prefetch off {off:.1f} s, on {on:.1f} s ({on / off:.2f}x)")


if __name__ == "__main__":
    main()
