"""Multi-process training on CPU with gloo: DDP and FSDP2 give the one-process weights, and a
checkpoint resumes with another process count or between DDP and FSDP.

Every run uses the same global batch of 12 sequences in micro-batches of 2: one process
accumulates six, two processes three each, three processes two each (the data order is a pure
function of the step, whatever the process count; the micro-batch size is the same everywhere
because a forward pass over another number of sequences rounds differently). A mask set with column, row and element masks
(and one parameter frozen whole) is trained through the entry-point test plugin `mask-file`;
frozen entries must stay bit-identical everywhere. A resume with the same layout is bit-identical
to the uninterrupted run; a resume with another process count or another strategy sums the
gradients in another order, so it matches within TOLERANCE.

The runs of one launcher and process count share one launch (tests/helpers.py's driver):
the module-scoped fixtures make them once, the tests check them.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from helpers import weights
from helpers import env_with, install_mask_file_plugin, launch_runs, stop_copy, write_mask_set

STEPS = ["--max-steps", "6", "--save-steps", "2", "--seq-len", "32", "--batch-size", "12", "--micro-batch-size", "2", "--lr", "1e-2",
         "--weight-decay", "0.5", "--warmup-ratio", "0", "--quiet", "--json"]
TOLERANCE = 2e-5  # float summation order differs between process counts (and between DDP and FSDP)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_model_dir, corpora):
    root = tmp_path_factory.mktemp("dist")
    model = make_model_dir("llama")
    masks = write_mask_set(model, root / "mask")
    site = install_mask_file_plugin(root / "site")
    env = env_with(site, ADAPTKIT_CACHE=str(root / "cache"))
    args = ["train", "--model", model, "--data", corpora["ha"], "--method", "mask-file", "--mask", root / "mask", *STEPS]
    return {"root": root, "model": model, "masks": masks, "env": env, "args": args, "site": site}


@pytest.fixture(scope="module")
def plugin_here(setup):
    """The `mask-file` plugin visible to in-process invocations too."""
    import sys

    from adaptkit.registry import reset_registry

    sys.path.insert(0, str(setup["site"]))
    reset_registry()
    yield
    sys.path.remove(str(setup["site"]))
    reset_registry()


def _main(*args) -> None:
    from adaptkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, exc.code


@pytest.fixture(scope="module")
def reference(setup, plugin_here):
    """The one-process run (in this process), with its checkpoints."""
    _main(*setup["args"], "-o", setup["root"] / "one")
    return weights(setup["root"] / "one" / "final")


@pytest.fixture(scope="module")
def two(setup, reference):
    """One torchrun launch of 2 processes: DDP and FSDP runs, and resumes across layouts."""
    root, args = setup["root"], setup["args"]
    runs = [
        {"name": "ddp", "args": [*args, "-o", root / "ddp"]},
        {"name": "fsdp", "args": [*args, "--distributed", "fsdp", "-o", root / "fsdp"]},
        {"name": "fsdp-again", "stop": [root / "fsdp", root / "fsdp-again", 4],
         "args": [*args, "--distributed", "fsdp", "-o", root / "fsdp-again", "--resume"]},
        {"name": "one-to-fsdp", "stop": [root / "one", root / "one-to-fsdp", 4],
         "args": [*args, "--distributed", "fsdp", "-o", root / "one-to-fsdp", "--resume"]},
        {"name": "ddp-to-fsdp", "stop": [root / "ddp", root / "ddp-to-fsdp", 4],
         "args": [*args, "--distributed", "fsdp", "-o", root / "ddp-to-fsdp", "--resume"]},
        {"name": "fsdp-to-ddp", "stop": [root / "fsdp", root / "fsdp-to-ddp", 4],
         "args": [*args, "--distributed", "ddp", "-o", root / "fsdp-to-ddp", "--resume"]},
    ]
    return launch_runs("torchrun", 2, runs, setup["env"], root)


def _check_against(reference, weights, setup):
    before = load_file(str(setup["model"] / "model.safetensors"))
    for name, tensor in reference.items():
        assert torch.allclose(weights[name], tensor, atol=TOLERANCE, rtol=0), (name, (weights[name] - tensor).abs().max())
        if name in setup["masks"]:
            frozen = ~setup["masks"][name].expand(tuple(tensor.shape))
            assert torch.equal(weights[name][frozen], before[name][frozen]), name
    assert torch.equal(weights["model.layers.1.self_attn.k_proj.weight"], before["model.layers.1.self_attn.k_proj.weight"])
    assert any(not torch.equal(weights[name], before[name]) for name in reference)


def _identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_matches_one_process_and_resumes_across_launchers(setup, reference, two, invoke, plugin_here):
    root = setup["root"]
    assert two["ddp"]["processes"] == 2 and two["ddp"]["distributed"] == "ddp"
    ddp = weights(root / "ddp" / "final")
    _check_against(reference, ddp, setup)

    # resume the same run with `accelerate launch` (2 processes): bit-identical to the uninterrupted run
    resumed = launch_runs("accelerate", 2, [{"name": "again", "stop": [root / "ddp", root / "ddp-again", 4],
                                             "args": [*setup["args"], "-o", root / "ddp-again", "--resume"]}], setup["env"], root)
    assert resumed["again"]["resumed_from"] == 2 and resumed["again"]["processes"] == 2
    assert _identical(weights(root / "ddp-again" / "final"), ddp)
    assert not (root / "ddp-again" / ".checkpoint-4.partial").exists()

    # a DDP checkpoint resumes in one process too (same global batch: to float tolerance)
    alone = stop_copy(root / "ddp", root / "ddp-alone", 4)
    result = invoke(*setup["args"], "-o", alone, "--resume")
    assert result.returncode == 0, result
    _check_against(reference, weights(alone / "final"), setup)


def test_fsdp_matches_one_process_and_resumes_bit_identically(setup, reference, two):
    root = setup["root"]
    assert two["fsdp"]["distributed"] == "fsdp"
    fsdp = weights(root / "fsdp" / "final")
    _check_against(reference, fsdp, setup)
    # each process wrote its own part of the tensors (DCP safetensors), the main process the rest
    checkpoint = root / "fsdp" / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["callbacks.safetensors", "rng.safetensors", "state.json", "tensors"]
    assert len(list((checkpoint / "tensors").glob("*.safetensors"))) == 2
    assert two["fsdp-again"]["resumed_from"] == 2
    assert _identical(weights(root / "fsdp-again" / "final"), fsdp)


def _saved_parts(run_dir, step, name):
    """The pieces of tensor `name` in a checkpoint's DCP files: (file, first row, rows)."""
    import json

    from safetensors import safe_open

    parts = []
    for path in sorted((run_dir / f"checkpoint-{step}" / "tensors").glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            offsets = json.loads(handle.metadata()["DCP_SHARDING_INFO"])
            if name in handle.keys():
                parts.append((path.name, offsets[name]["saved_offsets"][0], handle.get_slice(name).get_shape()[0]))
    return parts


def test_checkpoints_reshard_between_process_counts_and_strategies(setup, reference, two, invoke, plugin_here):
    """1 -> 2 (FSDP), 2 -> 3 (FSDP), 2 (FSDP) -> 1, DDP -> FSDP and FSDP -> DDP, each to the uninterrupted weights."""
    root, args = setup["root"], setup["args"]
    # the compact state stays compact: a row mask's optimizer state holds its trainable rows only, split over the processes
    down = "model.layers.1.mlp.down_proj.weight"
    rows = int(setup["masks"][down].trainable.sum())
    parts = _saved_parts(root / "fsdp", 4, f"optimizer/{down}/exp_avg")
    assert len(parts) == 2 and parts[0][1] == 0 and parts[1][1] == parts[0][2] and parts[0][2] + parts[1][2] == rows
    assert [p[1:] for p in _saved_parts(root / "one", 4, f"optimizer/{down}/exp_avg")] == [(0, rows)]

    for name in ("one-to-fsdp", "ddp-to-fsdp", "fsdp-to-ddp"):
        assert two[name]["resumed_from"] == 2, name
        _check_against(reference, weights(root / name / "final"), setup)
    assert two["fsdp-to-ddp"]["distributed"] == "ddp" and two["ddp-to-fsdp"]["distributed"] == "fsdp"

    three = launch_runs("torchrun", 3, [{"name": "fsdp-3", "stop": [root / "fsdp", root / "fsdp-3", 4],
                                         "args": [*args, "--distributed", "fsdp", "-o", root / "fsdp-3", "--resume"]}], setup["env"], root)
    assert three["fsdp-3"]["processes"] == 3 and three["fsdp-3"]["resumed_from"] == 2
    _check_against(reference, weights(root / "fsdp-3" / "final"), setup)
    assert len(_saved_parts(root / "fsdp-3", 4, f"optimizer/{down}/exp_avg")) == 3  # saved again by 3 processes

    alone = stop_copy(root / "fsdp", root / "fsdp-alone", 4)
    result = invoke(*args, "--distributed", "fsdp", "-o", alone, "--resume", "--json")
    assert result.returncode == 0, result
    _check_against(reference, weights(alone / "final"), setup)


def test_resume_into_another_training_plan_is_refused(setup, two, invoke, plugin_here, tmp_path):
    """A checkpoint whose trainable tensors do not fit this run's plan: one line, exit 2."""
    import json

    from conftest import assert_input_error

    other = stop_copy(setup["root"] / "fsdp", tmp_path / "other", 4)
    state_file = other / "checkpoint-2" / "state.json"
    state = json.loads(state_file.read_text())
    state["optimizer"]["state"]["model.extra.weight"] = state["optimizer"]["state"].pop("model.norm.weight")
    state_file.write_text(json.dumps(state))
    assert_input_error(invoke(*setup["args"], "-o", other, "--resume"), "--resume", "other trainable parameters")


@pytest.mark.slow
def test_a_rank_killed_mid_training_ends_the_whole_launch_in_seconds(tmp_path, make_model_dir, corpora):
    """One of 2 ranks SIGKILLed mid-run (DDP, gloo): the other does not wait at the next collective
    for its peer (gloo sees the closed connection, torchrun stops the launch); all end within 60 s."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from helpers import assert_ended, children, end_group, wait_for

    out = tmp_path / "run"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    args = ["train", "-m", make_model_dir("llama"), "-d", corpora["ha"], "-o", out, "--max-steps", "100000", "--save-steps", "2",
            "--seq-len", "16", "--batch-size", "2", "--distributed", "ddp", "--quiet"]
    launch = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", "-m", "adaptkit", *map(str, args)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: list(out.glob("checkpoint-*/state.json")), 600, "a checkpoint", launch)
        ranks = [p for p in children(launch.pid) if "adaptkit" in " ".join(p.cmdline())]
        assert len(ranks) == 2, ranks
        everything = [p.pid for p in children(launch.pid)]
        os.kill(ranks[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        launch.wait(60)
        assert time.monotonic() - killed < 60
    finally:
        end_group(launch)
    assert launch.returncode != 0
    assert_ended(everything)


@pytest.mark.parametrize("code", [0, 2])
def test_a_joined_gloo_process_group_is_torn_down_when_the_process_exits(tmp_path, code):
    """make_accelerator, having joined a process group, tears it down at the process's exit (after a
    result and after an error: left to the interpreter, gloo's threads may abort the process when a peer
    has gone) and not before: the group serves every run the process makes. An exit hook registered
    first runs last and sees it."""
    import subprocess
    import sys

    program = (
        "import atexit, sys, torch.distributed as dist\n"
        "atexit.register(lambda: print('initialized at exit', dist.is_initialized(), flush=True))\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "from adaptkit.engine.distributed import make_accelerator\n"
        "make_accelerator('cpu'); make_accelerator('cpu')\n"
        "print('initialized after joining', dist.is_initialized(), flush=True)\n"
        f"sys.exit({code})\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["initialized after joining True", "initialized at exit False"], done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("argv, code", [(["--version"], 0), (["merge", "linear", "--no-such-flag"], 2)])
def test_a_launched_process_ends_with_its_exit_code_after_its_exit_hooks(tmp_path, argv, code):
    """The `adaptkit` program, in a process that joined a process group, ends with the command's exit code
    once every exit hook has run (the group's teardown among them), skipping the interpreter's own teardown
    of the group's threads; the bad input's one line is on stderr."""
    import subprocess
    import sys

    program = (
        "import atexit, sys, torch.distributed as dist\n"
        "atexit.register(lambda: print('hooks ran; group initialized', dist.is_initialized(), flush=True))\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "from adaptkit.engine.distributed import make_accelerator\n"
        "make_accelerator('cpu')\n"
        f"sys.argv = ['adaptkit', *{argv!r}]\n"
        "from adaptkit.cli import run\n"
        "run()\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "hooks ran; group initialized False" and "not reached" not in done.stdout, done.stdout
    assert (done.stderr.count("adaptkit: error:") == 1) == (code == 2) and "Traceback" not in done.stderr, done.stderr
