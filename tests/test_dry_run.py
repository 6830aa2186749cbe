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
        if "model" not in seen:  # a pilot fine-tune while planning (LoTA): not the run's tensors
            return pull(self)
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


@pytest.mark.parametrize("method_name,precision", [("fft", "fp32"), ("masked", "fp32"), ("lora", "fp32"), ("masked", "bf16-pure"), ("hft", "fp32"),
                                                    ("s2ft", "bf16-pure")])  # fp32 compact copies in bf16-pure
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_plan_matches_the_tensors_of_a_real_run(tmp_path, llama_dir, corpora, monkeypatch, method_name, precision):
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.engine.memory_plan import dry_run
    from adaptkit.registry import get_spec

    config = TrainConfig(model=str(llama_dir), data={"paths": [str(corpora["ha"])], "seq_len": 32}, batch_size=4, max_steps=2,
                         method="fft" if method_name == "masked" else method_name, precision=precision)
    method = MaskedTestMethod(None) if method_name == "masked" else get_spec("method", method_name).build(AGREEMENT_METHODS[method_name])
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


# every built-in method with settings that make one step cheap (as test_methods.py runs them)
AGREEMENT_METHODS = {
    "fft": {}, "hft": {}, "gmt": {}, "lota": {"calibration_steps": 3}, "s2ft": {"ratio": 0.05}, "lora": {},
    "adalora": {"tinit": 0, "tfinal": 0, "delta_t": 1, "init_r": 4, "target_r": 2}, "layra": {"first": 1, "last": 1},
    "layer-selective": {}, "layer-freeze": {"layers": "1"}, "soft-reg": {"layers": "0-1", "strength": 0.5},
    "ssu-wanda": {"calib": True}, "ssu-mag": {"calib": True}, "ssu-rand": {"calib": True}, "ssu-sparsegpt": {"calib": True},
    "ssu-fisher": {"calib": True}, "spectrum": {"fraction": 0.5}, "block-expansion": {"every": 1},
}


@pytest.fixture(scope="module")
def extended_model(make_model_dir, corpora, tmp_path_factory):
    """A tiny Llama extended by `vocab extend --add 40` (so that train_embeddings=new-only has new rows),
    and a calibration set made with its tokenizer."""
    from adaptkit.calibration import build_calibration
    from adaptkit.cli import main
    from adaptkit.io.models import load_tokenizer, resolve_model_source

    out = tmp_path_factory.mktemp("extended") / "model"
    try:
        main(["vocab", "extend", "--model", str(make_model_dir("llama")), "--data", str(corpora["ha"]), "--add", "40", "-o", str(out), "-q"])
    except SystemExit as done:
        assert done.code in (0, None)
    tokenizer = load_tokenizer(resolve_model_source(str(out), "--model"), False)
    build_calibration(tokenizer, corpora["en"], fmt="text", pool=500, num_samples=12, block_size=32, seed=0).save(out.parent / "calib")
    return out


def test_every_built_in_method_is_in_the_agreement_table():
    from adaptkit.registry import build_registry

    assert set(build_registry(load_entry_points=False).names("method")) == set(AGREEMENT_METHODS)


@pytest.mark.slow  # one real step per case
@pytest.mark.parametrize("embeddings", ["all", "new-only", "none"])
@pytest.mark.parametrize("name", list(AGREEMENT_METHODS))
def test_dry_run_counts_are_the_counts_of_a_one_step_run(tmp_path, extended_model, corpora, monkeypatch, name, embeddings):
    """The dry run (meta device, no weights, no scores, no calibration fine-tune) plans what a real run trains:
    the same trainable count and exactly the optimizer state the run holds after one step."""
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.engine.memory_plan import dry_run
    from adaptkit.registry import get_spec

    params = {k: (str(extended_model.parent / "calib") if v is True else v) for k, v in AGREEMENT_METHODS[name].items()}
    config = TrainConfig(model=str(extended_model), data={"paths": [str(corpora["ha"])], "seq_len": 32}, batch_size=4, max_steps=1,
                         method=name, method_params=params, train_embeddings=embeddings, save_steps=0)
    method = get_spec("method", name).build(params)
    planned = dry_run(config, method, processes=1)
    seen = _measure(monkeypatch)
    result = train(config, get_spec("method", name).build(params), tmp_path / "run", log=lambda message: None)
    assert (planned["counts"]["trainable"], planned["counts"]["total"]) == (result.trainable, result.total)
    assert planned["bytes_per_process"]["single"]["optimizer"] == seen["optimizer"]
    assert planned["bytes_per_process"]["single"]["weights"] == seen["weights"]


@pytest.mark.slow  # the CLI in process
def test_dry_run_of_ssu_with_calibration_plans_from_the_ratio(tmp_path, llama_dir, corpora, calib_dir, invoke):
    """--calib without scoring: as many columns frozen as the ratio says, from config.json alone."""
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", tmp_path / "r", "--dry-run", "--method", "ssu-wanda",
                    "--calib", calib_dir, "--freeze-ratio", "0.25", "--json", *COMMON[:-1])
    assert result.returncode == 0, result
    plan = json.loads(result.stdout)
    assert "freeze ratio 0.25" in plan["plan"] and plan["counts"]["trainable"] < plan["counts"]["total"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # dry runs and a short training
def test_a_batch_that_does_not_fit_is_refused_before_loading_naming_a_micro_batch_that_fits(tmp_path, llama_dir, corpora, invoke, monkeypatch):
    from adaptkit.engine import memory_plan
    from adaptkit.engine.config import TrainConfig
    from adaptkit.io import models
    from adaptkit.registry import get_spec

    def needs(micro):
        config = TrainConfig(model=str(llama_dir), data={"paths": [str(corpora["ha"])], "seq_len": 32}, batch_size=4, micro_batch_size=micro)
        return memory_plan.dry_run(config, get_spec("method", "fft").build({}))["bytes_per_process"]["single"]["total"]

    assert needs(4) > needs(2) > needs(1)
    monkeypatch.setattr(memory_plan, "available_bytes", lambda device: (needs(4) + needs(2)) // 2)
    load = models.load_causal_lm
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("weights loaded before the check"))
    out = tmp_path / "run"
    args = ["train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, "--max-steps", "1", *COMMON]
    assert_input_error(invoke(*args), "--batch-size 4 (micro-batch 4 x 32 tokens)", "--micro-batch-size 2 fits", "memory_check=false")
    assert not out.exists()
    monkeypatch.setattr(memory_plan, "available_bytes", lambda device: needs(1) - 1)
    assert_input_error(invoke(*args), "even a micro-batch of 1 does not fit", "--gradient-checkpointing")
    monkeypatch.setattr(models, "load_causal_lm", load)
    assert invoke(*args, "--set", "memory_check=false").returncode == 0
    monkeypatch.setattr(memory_plan, "available_bytes", lambda device: (needs(4) + needs(2)) // 2)
    assert invoke(*args[:-len(COMMON)], "-o", tmp_path / "micro", "--micro-batch-size", "2", *COMMON).returncode == 0


@pytest.mark.slow  # a two-step run
def test_plan_counts_the_copies_that_weight_averaging_keeps(tmp_path, llama_dir, corpora, monkeypatch):
    """EMA (one fp32 copy) and LAWA (K snapshots) of the trained parameters: the plan's `averages`
    row is the bytes of the tensors the run's averaging callbacks really hold, and is in the total."""
    from adaptkit.engine.averaging import WeightAverage
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train
    from adaptkit.engine.memory_plan import dry_run
    from adaptkit.registry import get_spec

    config = TrainConfig(model=str(llama_dir), data={"paths": [str(corpora["ha"])], "seq_len": 32}, batch_size=4, max_steps=2,
                         method="fft", averaging={"ema_decay": 0.9, "lawa_k": 3, "lawa_interval": 1})
    method = get_spec("method", "fft").build({})
    plan = dry_run(config, method, processes=1)["bytes_per_process"]["single"]
    plain = dry_run(config.model_copy(update={"averaging": type(config.averaging)()}), method, processes=1)["bytes_per_process"]["single"]
    held = {}
    save_extra = WeightAverage.save_extra

    def count(self, model, directory, state=None):
        tensors = getattr(self, "ema", None) or getattr(self, "slots", {})
        held[type(self).__name__] = sum(t.nbytes for t in tensors.values())
        return save_extra(self, model, directory, state)

    monkeypatch.setattr(WeightAverage, "save_extra", count)
    train(config, method, tmp_path / "run", log=lambda message: None)
    weights = plan["weights"]  # fft trains every entry, and the weights are fp32 as the copies
    assert held == {"EMA": weights, "LAWA": 3 * weights}
    assert plan["averages"] == held["EMA"] + held["LAWA"] == 4 * weights
    assert "averages" not in plain and plan["total"] - plain["total"] == plan["averages"]
    # under FSDP each process averages its own shards (tests/test_fsdp_averaging.py: each saves only its rows)
    sharded = dry_run(config, method, processes=2)["bytes_per_process"]
    assert sharded["fsdp"]["averages"] == -(-plan["averages"] // 2) and sharded["ddp"]["averages"] == plan["averages"]
