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
    with pytest.raises(InputError, match=r"--model: 'nobody/nothing' is not a local path and not in the Hugging Face cache"):
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


def test_mistyped_relative_model_path_is_bad_input_at_once(tmp_path, monkeypatch, invoke, corpora):
    """`models/instrcut` when ./models exists is a local path, not a Hub id to retry for a minute."""
    from conftest import assert_input_error

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "instruct").mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: only the local check can stop it at once
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(InputError, match="'models/instrcut' does not exist"):
        resolve_model_source("models/instrcut")
    assert resolve_model_source("some-org/some-model").kind == "hub"  # no ./some-org: a Hub id
    assert_input_error(invoke("train", "-m", "models/instrcut", "-d", corpora["ha"], "-o", tmp_path / "run"), "--model", "models/instrcut", "does not exist")
    assert not (tmp_path / "run").exists()


def test_hub_id_not_in_cache_offline_fails_before_loading(tmp_path, monkeypatch, llama_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InputError, match="'nobody/nothing' is not a local path and not in the Hugging Face cache.*offline"):
        resolve_model_source("nobody/nothing")
    _fake_hub_cache(tmp_path, "tiny-org/tiny-llama", llama_dir)
    assert resolve_model_source("tiny-org/tiny-llama").kind == "hub"  # cached: fine offline


def test_model_directory_without_tokenizer_files_is_named(tmp_path, llama_dir):
    from adaptkit.io.models import load_tokenizer

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llama_dir / name, bare / name)
    with pytest.raises(InputError, match=r"--model: '.*bare' has no tokenizer files"):
        load_tokenizer(resolve_model_source(str(bare)))
