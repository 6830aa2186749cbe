"""No pickle: nothing in adaptkit imports pickle or calls torch.load without weights_only=True,
and remote model code runs only when asked."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adaptkit"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


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


def test_trust_remote_code_is_off_by_default():
    from adaptkit.engine.config import TrainConfig

    assert TrainConfig().trust_remote_code is False
