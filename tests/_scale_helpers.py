"""Helpers for the multi-process, crash and bad-input tests: a mask-file method plugin that
subprocesses find through an entry point, mask sets with every granularity, and launchers.

Run as a script under a launcher (`launch_runs`), this file is a driver that makes several
`adaptkit` runs in one launch (one torch import and one process group for all of them):
    torchrun --nproc_per_node=N tests/_scale_helpers.py RUNS.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

PLUGIN_SOURCE = '''
from adaptkit.engine.plan import TrainingMethod, TrainingPlan
from adaptkit.hookspecs import hookimpl
from typing import Optional

from adaptkit.specs import MethodSpec, Need, Params


class MaskFileParams(Params):
    mask: Optional[str] = None  # set by --mask


class MaskFile(TrainingMethod):
    """Train what the --mask set allows (parameters without a mask train whole)."""

    def plan(self, model, ctx):
        masks = ctx.mask_set()
        masks.check_fits(model)
        return TrainingPlan.from_masks(model, masks, summary="mask file")


@hookimpl
def register_methods(register):
    register(MethodSpec(name="mask-file", factory="adaptkit_test_maskfile:MaskFile", params=MaskFileParams,
                        summary="test: train through --mask", needs=(Need(("mask",), "--mask DIR"),)))
'''


def install_mask_file_plugin(site: Path) -> Path:
    """Write an importable plugin + dist-info with an `adaptkit` entry point under `site`."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "adaptkit_test_maskfile.py").write_text(PLUGIN_SOURCE)
    info = site / "adaptkit_test_maskfile-0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: adaptkit-test-maskfile\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[adaptkit]\nmask-file = adaptkit_test_maskfile\n")
    return site


def write_mask_set(model_dir: Path, out: Path, seed: int = 0) -> dict:
    """Column, row and element masks (True = trainable) on a few parameters; one parameter frozen whole."""
    from safetensors.torch import load_file

    from adaptkit.engine.masks import MaskSet, UpdateMask

    weights = load_file(str(model_dir / "model.safetensors"))
    generator = torch.Generator().manual_seed(seed)

    def coin(n):
        return torch.rand(n, generator=generator) > 0.5

    q, down = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"
    up, norm = "model.layers.0.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight"
    k1 = "model.layers.1.self_attn.k_proj.weight"
    masks = {
        q: UpdateMask("column", coin(weights[q].shape[1])),
        down: UpdateMask("row", coin(weights[down].shape[0])),
        up: UpdateMask("element", coin(tuple(weights[up].shape))),
        norm: UpdateMask("element", coin(tuple(weights[norm].shape))),
        k1: UpdateMask("row", torch.zeros(weights[k1].shape[0], dtype=torch.bool)),
    }
    out.mkdir(parents=True, exist_ok=True)
    MaskSet(masks, {"source": "test"}).save(out)
    return masks


def env_with(site: Path | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    parts = [str(site)] if site else []
    env["PYTHONPATH"] = os.pathsep.join(parts + [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra})
    return env


def launch(launcher: str, nproc: int, args: list, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `adaptkit ARGS` in a plain process ("python") or under torchrun / accelerate launch with `nproc` CPU processes (gloo)."""
    bindir = Path(sys.executable).parent
    if launcher == "python":
        cmd = [sys.executable, "-m", "adaptkit"]
    elif launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "adaptkit"]
    else:
        # accelerate's --cpu starts a single process; --multi_gpu starts N (gloo when there is no GPU)
        cmd = [str(bindir / "accelerate"), "launch", "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", "-m", "adaptkit"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


def frozen_entries(masks: dict, name: str, shape: tuple) -> torch.Tensor:
    """Bool tensor of the entries of `name` that must not change."""
    return ~masks[name].expand(shape)


def stop_copy(run: Path, into: Path, at: int) -> Path:
    """A copy of `run` as if killed while it saved checkpoint-<at>: it resumes from the checkpoint before."""
    shutil.copytree(run, into)
    shutil.rmtree(into / "final")
    shutil.rmtree(into / f"checkpoint-{at}")
    (into / f".checkpoint-{at}.partial").mkdir()
    return into


def launch_runs(launcher: str, nproc: int, runs: list[dict], env: dict, workdir: Path, timeout: int = 900) -> dict[str, dict]:
    """Several `adaptkit` runs in one launch, in order; each run is {"name", "args", and optionally
    "stop": [run dir, copy, step]} (stop_copy made by the main process before the run).
    Returns each run's JSON summary (the --json line rank 0 printed); a failed run fails the launch."""
    plan = workdir / f"runs-{launcher}-{nproc}.json"
    plan.write_text(json.dumps(runs, default=str))
    bindir = Path(sys.executable).parent
    script = str(Path(__file__).resolve())
    if launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", script, str(plan)]
    else:
        cmd = [str(bindir / "accelerate"), "launch", "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", script, str(plan)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    summaries: dict[str, list] = {}
    name = None
    for line in done.stdout.splitlines():
        if line.startswith("@@run "):
            name = line.split(" ", 1)[1]
            summaries[name] = []
        elif line.startswith("{") and name is not None:
            summaries[name].append(json.loads(line))
    assert list(summaries) == [r["name"] for r in runs], done.stdout[-3000:]
    assert all(len(lines) == 1 for lines in summaries.values()), summaries  # rank 0 alone reports
    return {k: v[0] for k, v in summaries.items()}


def _drive(plan_file: str) -> None:
    """The driver: every process makes the runs of `plan_file` one after the other."""
    import torch.distributed as dist

    from adaptkit.cli import main

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for run in json.loads(Path(plan_file).read_text()):
        if run.get("stop") and rank == 0:
            source, into, at = run["stop"]
            stop_copy(Path(source), Path(into), int(at))
        dist.barrier()
        if rank == 0:
            print(f"@@run {run['name']}", flush=True)
        try:
            main(run["args"])
        except SystemExit as exc:
            if exc.code:
                print(f"run {run['name']} failed on rank {rank} (exit {exc.code})", file=sys.stderr, flush=True)
                raise
        sys.stdout.flush()
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _drive(sys.argv[1])
