"""Outputs get the mode a plain open() would give (0666 & ~umask): temporary siblings renamed into place
must not keep mkstemp's 0600 / mkdtemp's 0700, or a serving process or another user cannot read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adaptkit.io.atomic import atomic_dir, atomic_file, current_umask


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in [root, *root.rglob("*")]}


def test_current_umask_reads_the_process_umask_without_changing_it():
    previous = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_outputs_take_the_mode_of_a_plain_open(tmp_path, mask):
    previous = os.umask(mask)
    try:
        with atomic_file(tmp_path / "out.jsonl") as tmp:
            tmp.write_text("{}\n")
        with atomic_dir(tmp_path / "outdir") as tmp:
            (tmp / "inner.txt").write_text("x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what the user's own open() gives, written out as the reference
        (tmp_path / "plaindir").mkdir()
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "out.jsonl") == _mode(plain) == 0o666 & ~mask
    assert _mode(tmp_path / "outdir") == _mode(tmp_path / "plaindir") == 0o777 & ~mask
    assert _mode(tmp_path / "outdir" / "inner.txt") == 0o666 & ~mask


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_trained_model_calibration_and_generations_are_readable_by_others_under_umask_022(tmp_path, llama_dir, corpora, invoke, umask_022):
    run, gens = tmp_path / "run", tmp_path / "gens.jsonl"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--max-steps", "1", "--seq-len", "32",
                    "--batch-size", "2", "-o", run, "--quiet")
    assert result.returncode == 0, result
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Everyone has"}\n')
    result = invoke("generate", "--model", f"tiny={run / 'final'}", "--prompts", prompts, "--max-new-tokens", "2", "-o", gens, "-q")
    assert result.returncode == 0, result
    calib = tmp_path / "calib"
    result = invoke("calibrate", "--model", llama_dir, "--data", corpora["en"], "--block-size", "16", "--num-samples", "4", "-o", calib, "-q")
    assert result.returncode == 0, result
    modes = _modes(run) | {"gens.jsonl": _mode(gens)} | {f"calib/{k}": v for k, v in _modes(calib).items()}
    assert modes["final/model.safetensors"] == 0o644 and any(name.endswith(".safetensors") for name in modes if name.startswith("calib/"))
    assert {name: mode for name, mode in modes.items() if mode not in (0o644, 0o755)} == {}
