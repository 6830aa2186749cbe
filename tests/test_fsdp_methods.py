"""Methods with training callbacks under FSDP2 (gloo, CPU): two sharded processes give the
one-process weights, to the tolerance of the DDP test (float summation order differs).
The FSDP runs of all methods share one torchrun launch.

GMT's per-tensor threshold is an exact order statistic of the whole (sharded) gradient; soft
regularization pulls each shard toward its rows of the source copy; LoTA calibrates its mask in
every process and trains it through compact shards, its frozen entries bit-identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import env_with, launch_runs

from adaptkit.engine.plan import TrainingCallback

STEPS = ["--max-steps", "4", "--save-steps", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2",
         "--warmup-ratio", "0", "--quiet", "--json"]
TOLERANCE = 2e-5  # as tests/test_distributed.py: float summation order differs between 1 and 2 processes
METHODS = {
    "gmt": ["--set", "keep_ratio=0.5"],
    "soft-reg": ["--set", "penalty=l2sp"],  # the default strength: the pull on rows absent from the batches sits near Adam's eps
    "lota": ["--set", "calibration_steps=2", "--set", "sparsity=0.5"],
    "lora": ["--set", "dropout=0", "--set", "r=4"],  # dropout masks depend on how the batch is split
    "layra": ["--set", "dropout=0", "--set", "first=1", "--set", "last=0", "--set", "train_embeddings_and_head=false"],
    # embeddings and head trained in full (peft's modules_to_save, trained in place)
    "lora-ends": ["--set", "dropout=0", "--set", "r=4", "--set", "train_embeddings_and_head=true"],
    # the allocator ranks whole matrices (all-gathered), the orthogonality penalty too; allocation every step,
    # the final ranks fixed for the last step; embeddings and head trained in full (the default)
    "adalora": ["--set", "dropout=0", "--set", "tinit=0", "--set", "tfinal=0.25", "--set", "delta_t=1", "--set", "init_r=4", "--set", "target_r=2"],
}


def _args(method, model, corpora):
    return ["train", "--model", model, "--data", corpora["ha"], "--method", method.removesuffix("-ends"), *METHODS[method], *STEPS]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, make_model_dir, corpora):
    """The 2-process FSDP run of every method, all in one torchrun launch (tests/helpers.py's driver)."""
    root = tmp_path_factory.mktemp("fsdp-methods")
    model = make_model_dir("llama")
    runs = [{"name": m, "args": [*_args(m, model, corpora), "--distributed", "fsdp", "-o", root / m / "fsdp"]} for m in sorted(METHODS)]
    summaries = launch_runs("torchrun", 2, runs, env_with(None, ADAPTKIT_CACHE=str(root / "cache")), root)
    return root, summaries


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")  # peft checks AdaLoRA rank patterns like LoRA ones
@pytest.mark.parametrize("method", sorted(METHODS))
def test_fsdp_matches_one_process(method, fsdp_runs, make_model_dir, corpora, invoke):
    model = make_model_dir("llama")
    root, summaries = fsdp_runs
    tmp_path = root / method
    one = invoke(*_args(method, model, corpora), "--micro-batch-size", "2", "-o", tmp_path / "one")
    assert one.returncode == 0, one
    assert summaries[method]["distributed"] == "fsdp" and summaries[method]["processes"] == 2
    reference = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    sharded = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    before = load_file(str(model / "model.safetensors"))
    assert reference.keys() == sharded.keys()
    moved = 0
    for name, tensor in reference.items():
        assert torch.allclose(sharded[name], tensor, atol=TOLERANCE, rtol=0), (name, (sharded[name] - tensor).abs().max())
        if method == "soft-reg":  # the clipping coefficient is the same float in both runs: agreement to rounding
            assert (sharded[name] - tensor).abs().max() <= 1e-6 * tensor.abs().max(), (name, (sharded[name] - tensor).abs().max())
        frozen = tensor == before[name]  # entries the one-process run left untouched stay bit-identical
        assert torch.equal(sharded[name][frozen], before[name][frozen]), name
        moved += int((~frozen).sum())
    assert moved > 0
    adapter = tmp_path / "one" / "final" / "adapter"
    if adapter.exists():  # the PEFT adapter exported from rank 0 matches the one-process adapter
        ours, theirs = (load_file(str(run / "final" / "adapter" / "adapter_model.safetensors")) for run in (tmp_path / "fsdp", tmp_path / "one"))
        assert ours.keys() == theirs.keys() and ours
        assert all(torch.allclose(ours[k], theirs[k], atol=TOLERANCE, rtol=0) for k in ours)
        configs = [json.loads((run / "final" / "adapter" / "adapter_config.json").read_text()) for run in (tmp_path / "fsdp", tmp_path / "one")]
        for config in configs:  # peft keeps target_modules as a set: its order follows the process's hash seed
            config["target_modules"] = sorted(config["target_modules"])
        assert configs[0] == configs[1]
    if method == "lota":  # half the entries frozen by the calibrated mask, the same mask in both runs
        masks = load_file(str(tmp_path / "fsdp" / "lota" / "masks.safetensors"))
        alone = load_file(str(tmp_path / "one" / "lota" / "masks.safetensors"))
        assert masks.keys() == alone.keys() and all(torch.equal(masks[k], alone[k]) for k in masks)


def test_clipping_of_shards_takes_the_coefficient_of_the_whole_tensors():
    """One process's clip and two processes' (each its half of every gradient, the squares summed across)
    scale by the same float: row norms in float32 (a row is whole in one shard), their squares summed in
    float64, so the two summation orders round alike. The norm is within 1e-6 of the float64 norm written out
    (torch's own clip sums in float32)."""
    from adaptkit.engine.distributed import clip_grad_norm_

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(1001, 64, generator=generator) * 0.3, torch.randn(64, generator=generator), torch.randn(7, 3, generator=generator)]
    whole = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for param, grad in zip(whole, grads):
        param.grad = grad.clone()
    norm = clip_grad_norm_(whole, 1.0, torch.device("cpu"))
    expected = torch.cat([g.double().reshape(-1) for g in grads]).pow(2).sum().sqrt()  # written out, independently
    assert norm == pytest.approx(float(expected), rel=1e-6) and norm > 1
    for param, grad in zip(whole, grads):
        assert torch.allclose(param.grad, grad * (1.0 / (float(expected) + 1e-6)), rtol=1e-6, atol=0)
    halves = [[], []]  # rows [0, ceil(n/2)) and the rest, as FSDP2 shards dim 0
    for grad in grads:
        cut = -(-grad.shape[0] // 2)
        for half, part in zip(halves, (grad[:cut], grad[cut:])):
            param = torch.nn.Parameter(torch.zeros_like(part))
            param.grad = part.clone()
            half.append(param)
    other = [sum(p.grad.double().pow(2).sum() for p in halves[1 - r]) for r in (0, 1)]
    for rank in (0, 1):
        clip_grad_norm_(halves[rank], 1.0, torch.device("cpu"), lambda total, r=rank: total.add_(other[r]))
    for i, param in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][i].grad, halves[1][i].grad]), param.grad), i


class _WholeTensorCallback(TrainingCallback):
    """A plugin's callback that does not say it works on shards."""


@pytest.mark.parametrize("method, settings", [
    ("lora", {}), ("lora", {"train_embeddings_and_head": True}), ("adalora", {}), ("adalora", {"train_embeddings_and_head": False}),
    ("layra", {}), ("gmt", {}), ("soft-reg", {}),
])
def test_fsdp_admits_exactly_the_shard_aware_callbacks(method, settings, make_model_dir, tmp_path, monkeypatch):
    """The sharded strategy checks the callbacks' capability (no method names): every built-in plan passes;
    one callback that is not shard-aware is refused by its name, before anything is sharded."""
    from transformers import AutoModelForCausalLM

    from adaptkit.engine import distributed
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.plan import MethodContext
    from adaptkit.errors import InputError
    from adaptkit.registry import get_spec

    model = AutoModelForCausalLM.from_pretrained(make_model_dir("llama"))
    config = TrainConfig(model="m", data={"paths": ["d"]}, method=method, max_steps=3)
    ctx = MethodContext(None, config, None, tmp_path, 3, torch.device("cpu"), None, log=lambda m: None)
    plan = get_spec("method", method, "--method").build(settings, "--set", {}).plan(model, ctx)
    sharded = []
    monkeypatch.setattr(distributed, "fully_shard_model", sharded.append)  # no process group here
    strategy = distributed.ShardedStrategy(None, "fsdp")
    strategy.shard(plan, method)
    assert sharded == [plan.model]
    plan.callbacks.append(_WholeTensorCallback())
    with pytest.raises(InputError, match=f"--distributed fsdp: method '{method}' uses training callbacks \\(_WholeTensorCallback\\)"):
        strategy.shard(plan, method)
    assert sharded == [plan.model]


def test_orthogonality_penalty_is_the_one_peft_adds_in_its_forward(make_model_dir):
    """AdaLoRA's penalty as the engine's loss term: bit-identical to what peft's AdaLoraModel.forward adds."""
    import peft
    from transformers import AutoModelForCausalLM

    from adaptkit.plugins.methods.adalora import OrthogonalityPenalty

    model = AutoModelForCausalLM.from_pretrained(make_model_dir("llama"))
    config = peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=4, target_r=2, target_modules=["q_proj", "down_proj"], total_step=10,
                                tinit=1, tfinal=2, orth_reg_weight=0.5)
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():  # far from orthogonal, so that the penalty is large
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.normal_(generator=torch.Generator().manual_seed(len(name)))
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with_penalty = wrapped(input_ids=ids, labels=ids).loss  # peft's forward
    plain = wrapped.base_model.model(input_ids=ids, labels=ids).loss
    ours = OrthogonalityPenalty(0.5).extra_loss(wrapped)
    assert float(with_penalty - plain) > 1.0
    assert torch.equal(plain + ours, with_penalty)


@pytest.mark.parametrize("tied", [False, True])
def test_held_state_dict_is_the_state_dict_of_a_plain_model(tied, make_model_dir):
    """What the export reads instead of state_dict() (which an FSDP2 model answers by resharding)."""
    import peft
    from transformers import AutoModelForCausalLM

    from adaptkit.engine.shards import held_state_dict

    model = AutoModelForCausalLM.from_pretrained(make_model_dir("llama", tie_word_embeddings=tied))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"]))
    expected, held = wrapped.state_dict(), held_state_dict(wrapped)
    assert held.keys() == expected.keys()
    assert all(held[k] is not None and torch.equal(held[k], expected[k]) for k in expected)
