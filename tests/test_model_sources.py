"""Model sources: local directories, Hub ids through the local Hub cache (offline), bad paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from adaptkit.errors import InputError
from adaptkit.io.models import load_causal_lm, resolve_model_source


def _fake_hub_cache(root, repo_id: str, model_dir):
    """Lay out `model_dir` as the Hugging Face cache does for a downloaded repo."""
    org, name = repo_id.split("/")
    repo = root / "hub" / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")


@pytest.mark.slow
def test_hub_id_loads_from_the_cache_offline(tmp_path, llama_dir):
    _fake_hub_cache(tmp_path, "tiny-org/tiny-llama", llama_dir)
    code = (
        "from adaptkit.io.models import resolve_model_source, load_causal_lm, load_tokenizer\n"
        "s = resolve_model_source('tiny-org/tiny-llama'); assert s.kind == 'hub'\n"
        "print(load_causal_lm(s).config.model_type, len(load_tokenizer(s)))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "llama"


def test_hub_id_not_in_cache_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(InputError, match=r"--model: could not load 'nobody/nothing'"):
        load_causal_lm(resolve_model_source("nobody/nothing"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "x.bin").write_bytes(b"1") and d / "x.bin", "is a file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "has no config.json"),
    ],
)
def test_bad_local_paths(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        resolve_model_source(str(make(tmp_path)))


def test_corrupt_safetensors_is_named(tmp_path, llama_dir):
    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="model.safetensors"):
        resolve_model_source(str(broken))
