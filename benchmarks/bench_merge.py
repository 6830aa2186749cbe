"""adaptkit merge vs mergekit: wall time and peak RSS of the same merges, side by side in one run.

Builds a random Llama of a few hundred MB (float32, saved sharded) and two perturbed
copies in a temporary directory, then runs the same mergekit YAML (linear and TIES) with
`adaptkit merge --config` and with `mergekit-yaml`, each in a fresh child process whose
peak RSS comes from os.wait4 (wall time includes each tool's start-up), and once more
through each tool's Python API in a child process that times only the merge call. Checks
that both tools wrote the same weights and prints adaptkit's peak RSS against the model
size. Runs alternate between the tools; the fastest of --repeats runs is reported.

The parent process stays light (standard library only; building models and comparing
outputs run in child processes): a forked child's peak RSS includes the parent's pages
until it execs, so a parent holding torch and a model would inflate every measurement.

    PYTHONPATH=. python benchmarks/bench_merge.py            # ~440 MB per model
    PYTHONPATH=. python benchmarks/bench_merge.py --layers 2 --vocab 8000 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_models(root: Path, hidden: int, layers: int, vocab: int, shard: str) -> list[Path]:
    """A random float32 Llama and two copies with small random updates, saved sharded."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75), num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    paths = []
    for index in range(3):
        if index:
            generator = torch.Generator().manual_seed(index)
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(torch.randn(param.shape, generator=generator) * 0.01)
        path = root / ("base", "model-a", "model-b")[index]
        model.save_pretrained(path, max_shard_size=shard)
        paths.append(path)
    return paths


def measure(command: list[str], log: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    with open(log, "w") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{log.read_text()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def helper(task: str, *args: str) -> str:
    """Run a heavy step of this script in a child process; its last stdout line is the answer."""
    done = subprocess.run([sys.executable, __file__, "--task", task, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{task} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def max_difference(left: Path, right: Path) -> float:
    from safetensors.torch import load_file

    def load(directory: Path) -> dict:
        tensors = {}
        for file in sorted(directory.glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        return tensors

    a, b = load(left), load(right)
    assert a.keys() == b.keys(), "the tools wrote different tensor names"
    differing = sum(int((a[n] != b[n]).sum()) for n in a)
    total = sum(a[n].numel() for n in a)
    largest = max((a[n].double() - b[n].double()).abs().max().item() for n in a)
    return f"{largest:.1e} {differing} {total}"


def time_api(tool: str, config: Path, out: Path) -> float:
    """Seconds of one merge through the tool's Python API, imports excluded."""
    import yaml

    data = yaml.safe_load(config.read_text())
    if tool == "mergekit":
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge

        start = time.perf_counter()
        run_merge(MergeConfiguration.model_validate(data), str(out), options=MergeOptions(quiet=True))
        return time.perf_counter() - start
    from adaptkit.merge.api import merge
    from adaptkit.merge.executor import MergeOptions as AdaptkitOptions
    from adaptkit.merge.mergekit_config import plan_config

    start = time.perf_counter()
    plan = plan_config(data, str(config), config.parent)
    merge(plan.method, plan.models, out, plan.base, plan.params.model_dump(), options=AdaptkitOptions(dtype=plan.dtype))
    return time.perf_counter() - start


def size_of(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def largest_tensor(directory: Path) -> int:
    from adaptkit.merge.stream import TensorSource

    source = TensorSource(directory, "--model")
    return max(info.nbytes for info in source.tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--shard", default="50MB")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool and method; the fastest is reported")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.task == "build":
        print(" ".join(str(p) for p in build_models(Path(rest[0]), args.hidden, args.layers, args.vocab, args.shard)))
        return
    if args.task == "compare":
        print(max_difference(Path(rest[0]), Path(rest[1])))
        return
    if args.task == "largest":
        print(largest_tensor(Path(rest[0])))
        return
    if args.task in ("api-adaptkit", "api-mergekit"):
        print(time_api(args.task.split("-")[1], Path(rest[0]), Path(rest[1])))
        return

    mergekit_yaml = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")
    if not Path(mergekit_yaml).exists():
        raise SystemExit("mergekit-yaml not found: install the optional extra, pip install 'adaptkit[mergekit]'")
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.workdir))
    try:
        shape = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab), "--shard", args.shard]
        base, a, b = (Path(p) for p in helper("build", *shape, str(root)).split())
        largest = int(helper("largest", str(a)))
        configs = {
            "linear": f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n  - model: {b}\n    parameters: {{weight: 0.5}}\ndtype: float32\n",
            "ties": (
                f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {a}\n    parameters: {{weight: 1.0, density: {args.density}}}\n"
                f"  - model: {b}\n    parameters: {{weight: 1.0, density: {args.density}}}\nparameters: {{normalize: true}}\ndtype: float32\n"
            ),
        }
        python = sys.executable
        env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)"
        print(f"# adaptkit merge vs mergekit ({env_note})")
        model_bytes = size_of(a)
        print(f"model: Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab}: {model_bytes / 1e6:.0f} MB float32 per model, "
              f"largest tensor {largest / 1e6:.1f} MB, shards of {args.shard}")

        imports = {}
        for tool, code in (("adaptkit", "import adaptkit.merge.api, adaptkit.cli"), ("mergekit", "import mergekit.merge, mergekit.config")):
            runs = [measure([python, "-c", code], root / f"import-{tool}.log") for _ in range(args.repeats)]
            imports[tool] = (min(wall for wall, _ in runs), max(rss for _, rss in runs))
        print(f"import only: adaptkit {imports['adaptkit'][0]:.2f} s / {imports['adaptkit'][1] / 1e6:.0f} MB, "
              f"mergekit {imports['mergekit'][0]:.2f} s / {imports['mergekit'][1] / 1e6:.0f} MB")
        print()
        print("| merge | tool | CLI wall s | CLI peak RSS MB | API merge s |")
        print("| --- | --- | ---: | ---: | ---: |")
        results = {}
        for method, text in configs.items():
            config = root / f"{method}.yaml"
            config.write_text(text)
            for repeat in range(args.repeats):
                for tool in ("adaptkit", "mergekit"):
                    out = root / f"{tool}-{method}"
                    shutil.rmtree(out, ignore_errors=True)
                    if tool == "adaptkit":
                        command = [python, "-m", "adaptkit", "merge", "--config", str(config), "-o", str(out), "-q"]
                    else:
                        command = [mergekit_yaml, str(config), str(out), "--quiet"]
                    wall, rss = measure(command, root / f"{tool}-{method}.log")
                    api_out = root / f"api-{tool}-{method}"
                    shutil.rmtree(api_out, ignore_errors=True)
                    api = float(helper(f"api-{tool}", str(config), str(api_out)))
                    shutil.rmtree(api_out, ignore_errors=True)
                    best = results.get((method, tool), (float("inf"), 0, float("inf")))
                    results[(method, tool)] = (min(best[0], wall), max(best[1], rss), min(best[2], api))
            for tool in ("adaptkit", "mergekit"):
                wall, rss, api = results[(method, tool)]
                print(f"| {method} | {tool} | {wall:.2f} | {rss / 1e6:.0f} | {api:.2f} |")
        print()
        for method in configs:
            (wa, ra, aa), (wm, rm, am) = results[(method, "adaptkit")], results[(method, "mergekit")]
            gap, differing, total = helper("compare", str(root / f"adaptkit-{method}"), str(root / f"mergekit-{method}")).split()
            print(f"{method}: adaptkit/mergekit CLI wall {wa / wm:.2f}x, peak RSS {ra / rm:.2f}x, "
                  f"API merge time {aa / am:.2f}x; weights: {differing} of {total} entries differ, by at most {gap}")
        print("(TIES entries may differ where equal magnitudes tie at the trim threshold: either choice is TIES)")
        print()
        for method in configs:
            rss = results[(method, "adaptkit")][1]  # the largest over the repeats
            working = rss - imports["adaptkit"][1]
            inputs = 3 if method == "ties" else 2
            print(f"adaptkit {method}: peak RSS {rss / 1e6:.0f} MB = {rss / model_bytes:.2f}x one model "
                  f"({inputs} inputs, {inputs * model_bytes / 1e6:.0f} MB read); above the import baseline: {working / 1e6:.0f} MB "
                  f"= {working / largest:.1f}x the largest tensor")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
