"""No pickle: nothing in adaptkit imports pickle or calls torch.load without weights_only=True;
remote model code runs only when asked, and a pickled checkpoint's payload never runs."""

from __future__ import annotations

import pytest
import ast
import json
import pickle
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adaptkit"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_no_pickle_and_safe_torch_load():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names):
                    problems.append(f"{path.name}:{node.lineno} imports pickle")
        for call in _calls(tree):
            func = ast.unparse(call.func)
            if func.endswith("torch.load"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)
                if not safe:
                    problems.append(f"{path.name}:{call.lineno} torch.load without weights_only=True")
            for keyword in call.keywords:
                if keyword.arg == "trust_remote_code" and isinstance(keyword.value, ast.Constant) and keyword.value.value is True:
                    problems.append(f"{path.name}:{call.lineno} trust_remote_code=True")
    assert problems == []


SENTINEL_CODE = """
from pathlib import Path
Path({sentinel!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = "evil-llama"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


def _remote_code_model(model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a tiny model whose config asks for custom code that, once imported, writes a sentinel file."""
    directory, sentinel = tmp_path / "remote-code-model", tmp_path / "sentinel"
    shutil.copytree(model_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="evil-llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_evil.py").write_text(SENTINEL_CODE.format(sentinel=str(sentinel)))
    return directory, sentinel


def test_remote_model_code_runs_only_with_trust_remote_code(tmp_path, llama_dir, corpora, invoke):
    directory, sentinel = _remote_code_model(llama_dir, tmp_path)
    out = tmp_path / "run"
    for command in (["train", "--data", corpora["ha"], "--max-steps", "1", "--seq-len", "16", "--batch-size", "2"],
                    ["evaluate", "--task", f"ppl:{corpora['ha-test']}"]):
        result = invoke(*command, "--model", directory, "-o", out)
        assert result.returncode != 0, (command[0], result)
        assert "Traceback" not in result.stderr and result.stdout == "", (command[0], result)  # no interactive prompt either
        assert not sentinel.exists(), f"{command[0]} imported the model's own code without --trust-remote-code"
        assert not out.exists()
    # the trap is real: with the flag the custom code is imported (and writes the sentinel)
    from adaptkit.io.models import load_causal_lm, resolve_model_source

    load_causal_lm(resolve_model_source(str(directory)), trust_remote_code=True)
    assert sentinel.read_text() == "remote code ran"


class _Payload:
    """Unpickling this object calls Path.write_text: what a malicious checkpoint would do."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.write_text, (self.sentinel, "pickle payload ran"))


def test_a_pickled_checkpoint_is_refused_without_running_its_payload(tmp_path, llama_dir, corpora, invoke):
    from safetensors.torch import load_file

    directory, sentinel = tmp_path / "pickled-model", tmp_path / "sentinel"
    shutil.copytree(llama_dir, directory)
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    with open(directory / "pytorch_model.bin", "wb") as handle:  # torch.save's format is a zip; a bare pickle is what old .bin files may be
        pickle.dump({"payload": _Payload(sentinel), **{k: v.numpy() for k, v in state.items()}}, handle)
    out = tmp_path / "run"
    result = invoke("train", "--model", directory, "--data", corpora["ha"], "--max-steps", "1", "--seq-len", "16", "--batch-size", "2", "-o", out)
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    assert not sentinel.exists(), "the pickle's payload ran"
    assert not out.exists()
    # the trap is real: plain unpickling runs the payload
    pickle.loads((directory / "pytorch_model.bin").read_bytes())
    assert sentinel.read_text() == "pickle payload ran"
