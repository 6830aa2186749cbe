"""`train --dry-run`: the memory plan from a meta-device model, checked against the tensors of real tiny runs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_input_error
from helpers import MaskedTestMethod

COMMON = ["--seq-len", "32", "--batch-size", "4", "--quiet"]


def _measure(monkeypatch):
    """Wrap the engine so a run records the bytes of its real tensors: weights, compact copies,
    gradients at the accumulation boundary (before they move to the compact copies), optimizer state."""
    import adaptkit.engine.loop as loop
    from adaptkit.engine.optim import TrainableSet

    seen: dict = {"gradients": 0}
    pull = TrainableSet.pull_grads

    def pull_and_count(self):
        grads = [p.grad for p in seen["model"].parameters() if p.grad is not None]
        grads += [c.compact.grad for c in self.compact.values() if c.compact.grad is not None]
        seen["gradients"] = max(seen["gradients"], sum(g.nbytes for g in grads))
        return pull(self)

    export = loop.export

    def export_and_count(run, t, meter, start, resumed):
        seen["weights"] = sum(p.nbytes for p in t.plan.model.parameters())
        seen["compact_copies"] = sum(c.compact.nbytes for c in t.trainable.compact.values() if not c.shares_storage)
        seen["optimizer"] = sum(v.nbytes for s in t.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
        return export(run, t, meter, start, resumed)

    make_training = loop.make_training

    def remember(run, plan, trainable):
        seen["model"] = plan.model
        return make_training(run, plan, trainable)

    monkeypatch.setattr(TrainableSet, "pull_grads", pull_and_count)
    monkeypatch.setattr(loop, "export", export_and_count)
    monkeypatch.setattr(loop, "make_training", remember)
    return seen


@pytest.mark.parametrize("method_name,precision", [("fft", "fp32"), ("masked", "fp32"), ("lora", "fp32"), ("masked", "bf16-pure"), ("hft", "fp32")])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_plan_matches_the_tensors_of_a_real_run(tmp_path, llama_dir, corpora, monkeypatch, method_name, precision):
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.engine.memory_plan import dry_run
    from adaptkit.registry import get_spec

    config = TrainConfig(model=str(llama_dir), data={"paths": [str(corpora["ha"])], "seq_len": 32}, batch_size=4, max_steps=2,
                         method="fft" if method_name == "masked" else method_name, precision=precision)
    method = MaskedTestMethod(None) if method_name == "masked" else get_spec("method", method_name).build({})
    plan = dry_run(config, method, processes=1)["bytes_per_process"]["single"]
    seen = _measure(monkeypatch)
    train(config, method, tmp_path / "run", log=lambda message: None)

    assert plan["weights"] == seen["weights"]
    assert plan["compact_copies"] == seen["compact_copies"]
    assert plan["optimizer"] == seen["optimizer"]
    assert seen["gradients"] > 0 and abs(plan["gradients"] - seen["gradients"]) <= 0.15 * seen["gradients"], (plan, seen)
    if method_name == "masked":
        assert 0 < plan["compact_copies"] and plan["optimizer"] < 2 * plan["weights"]


def test_processes_divide_what_fsdp_shards_and_checkpointing_cuts_activations(llama_dir, corpora):
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.memory_plan import dry_run
    from adaptkit.registry import get_spec

    config = TrainConfig(model=str(llama_dir), data={"paths": [str(corpora["ha"])], "seq_len": 256}, batch_size=8)
    plan = dry_run(config, get_spec("method", "fft").build({}), processes=4)
    one, ddp, fsdp = (plan["bytes_per_process"][k] for k in ("single", "ddp", "fsdp"))
    assert one["weights"] == ddp["weights"] == 4 * plan["counts"]["total"]
    assert fsdp["weights"] == -(-one["weights"] // 4) and fsdp["optimizer"] == -(-one["optimizer"] // 4)
    assert one["optimizer"] == 8 * plan["counts"]["trainable"] + 4 * plan["counts"]["optimizer_tensors"]
    assert one["activations_checkpointing"] < one["activations_no_checkpointing"]
    assert plan["micro_batch_size"] == 2


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_cli_dry_run_reads_no_weights_and_writes_nothing(tmp_path, llama_dir, corpora, invoke, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(llama_dir, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()  # nothing to read: the plan comes from config.json
    out = tmp_path / "run"
    result = invoke("train", "--model", model, "--data", corpora["ha"], "-o", out, "--dry-run", "--processes", "2", "--json", *COMMON[:-1])
    assert result.returncode == 0, result
    plan = json.loads(result.stdout)
    assert plan["method"] == "fft" and plan["processes"] == 2 and plan["counts"]["trainable"] == plan["counts"]["total"]
    assert set(plan["bytes_per_process"]) == {"single", "ddp", "fsdp"}
    assert not out.exists()
    text = invoke("train", "--model", model, "--data", corpora["ha"], "-o", out, "--dry-run", "--seq-len", "32")
    assert text.returncode == 0 and "optimizer" in text.stdout and "1 process" in text.stdout


def test_a_method_that_needs_weights_is_one_line(tmp_path, llama_dir, corpora, invoke):
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", tmp_path / "r", "--dry-run", "--method", "ssu-wanda", *COMMON)
    assert_input_error(result, "ssu-wanda")
