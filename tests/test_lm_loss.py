"""The chunked linear cross-entropy (engine/lm_loss.py) against the plain computation: F.cross_entropy
over the full fp32 logits (written out here), and Hugging Face models' own loss."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from adaptkit.engine.lm_loss import Head, LMLoss, chunked_cross_entropy, select_loss
from adaptkit.engine.masks import UpdateMask
from adaptkit.engine.plan import TrainingMethod, TrainingPlan
from adaptkit.errors import InputError
from adaptkit.specs import NoParams

N, D, V = 37, 16, 53
CHUNKS = (1, 7, 16, N, N + 9)


def _inputs(seed: int = 0, bias: bool = False):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=generator, dtype=torch.float32).requires_grad_(True)
    weight = (torch.randn(V, D, generator=generator) * 0.5).requires_grad_(True)
    b = (torch.randn(V, generator=generator) * 0.1).requires_grad_(True) if bias else None
    targets = torch.randint(0, V, (N,), generator=generator)
    targets[[0, 5, 6, 20]] = -100  # doc-mask packing's ignored labels
    return hidden, weight, b, targets


def _plain(hidden, weight, bias, targets):
    """The reference: full fp32 logits, then F.cross_entropy (mean over the non-ignored tokens)."""
    logits = hidden @ weight.T + (0 if bias is None else bias)
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_gradients_match_full_fp32_logits(chunk, bias):
    hidden, weight, b, targets = _inputs(bias=bias)
    expected = _plain(hidden, weight, b, targets)
    expected_grads = _grads(expected, (hidden, weight, b))
    got = chunked_cross_entropy(hidden, Head(weight, b), targets, chunk)
    assert _close(got, expected), (got, expected)
    for g, e in zip(_grads(got, (hidden, weight, b)), expected_grads):
        assert _close(g, e)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_frozen_head_gives_the_hidden_gradient_and_none_for_the_head(chunk):
    hidden, weight, _, targets = _inputs(1)
    weight.requires_grad_(False)
    expected = _plain(hidden, weight, None, targets)
    (expected_hidden,) = _grads(expected, (hidden,))
    got = chunked_cross_entropy(hidden, Head(weight), targets, chunk)
    assert _close(got, expected)
    got.backward()
    assert _close(hidden.grad, expected_hidden) and weight.grad is None


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("dim", [0, 1])
def test_masked_head_gets_only_its_trainable_rows_or_columns(chunk, dim):
    """A masked head (engine/masked_linear.py's switched layer): the gradient of the trainable rows (dim 0)
    or columns (dim 1) goes into the compact copy, the dense weight gets none."""
    hidden, weight, _, targets = _inputs(2)
    (full,) = _grads(_plain(hidden, weight, None, targets), (weight,))
    weight.requires_grad_(False)
    selector = torch.tensor([0, 3, 4, 9, 15] if dim else [1, 2, 30, 52])
    compact = weight.detach().index_select(dim, selector).clone().requires_grad_(True)
    got = chunked_cross_entropy(hidden, Head(weight, compact=compact, selector=selector, dim=dim), targets, chunk)
    got.backward()
    assert _close(compact.grad, full.index_select(dim, selector)) and weight.grad is None


def test_scaled_and_soft_capped_logits():
    """Cohere-style scaling then Gemma-2-style soft-capping, as the reference writes them out."""
    hidden, weight, _, targets = _inputs(3)
    logits = (hidden @ weight.T) * 0.5
    expected = F.cross_entropy(3.0 * torch.tanh(logits / 3.0), targets, ignore_index=-100)
    expected_grads = _grads(expected, (hidden, weight))
    got = chunked_cross_entropy(hidden, Head(weight, scale=0.5, softcap=3.0), targets, 8)
    assert _close(got, expected)
    for g, e in zip(_grads(got, (hidden, weight)), expected_grads):
        assert _close(g, e)


def test_no_gradients_are_computed_without_grad_mode():
    hidden, weight, _, targets = _inputs(4)
    with torch.no_grad():
        got = chunked_cross_entropy(hidden, Head(weight), targets, 5)
    assert _close(got, _plain(hidden, weight, None, targets).detach()) and not got.requires_grad


def test_bf16_autocast_is_close_to_the_plain_autocast_loss():
    hidden, weight, _, targets = _inputs(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100)
        got = chunked_cross_entropy(hidden, Head(weight), targets, 8)
    expected_grads, got_grads = _grads(expected, (hidden, weight)), _grads(got, (hidden, weight))
    assert abs(got.item() - expected.item()) <= 1e-2 * expected.item()
    for g, e in zip(got_grads, expected_grads):
        assert g.dtype == torch.float32 and _close(g, e, 2e-2)


def test_bf16_weights_give_bf16_gradients_close_to_the_plain_bf16_loss():
    """bf16-pure precision: bf16 hidden states and head, no autocast; the head's gradient summed in fp32."""
    hidden, weight, _, targets = _inputs(6)
    hidden, weight = hidden.detach().bfloat16().requires_grad_(True), weight.detach().bfloat16().requires_grad_(True)
    expected = F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100)
    got = chunked_cross_entropy(hidden, Head(weight), targets, 8)
    assert abs(got.item() - expected.item()) <= 1e-2 * expected.item()
    for g, e in zip(_grads(got, (hidden, weight)), _grads(expected, (hidden, weight))):
        assert g.dtype == torch.bfloat16 and _close(g.float(), e.float(), 2e-2)

def _tiny(arch: str, **config):
    import transformers

    settings = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, **config)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(arch, **settings))


@pytest.mark.slow  # builds five tiny models
@pytest.mark.parametrize("arch, config", [("llama", {}), ("llama", {"tie_word_embeddings": True}), ("qwen2", {}), ("olmo2", {}),
                                          ("gemma2", {"final_logit_softcapping": 3.0}), ("cohere", {"logit_scale": 0.7})])
def test_the_model_loss_and_every_gradient_match_the_models_own(arch, config):
    """Through the HF model (hidden states via logits_to_keep), tied heads, soft-capping and scaling included."""
    model = _tiny(arch, **config)
    ids = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, 4:9] = -100
    expected = model(input_ids=ids, labels=labels).loss
    expected.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = LMLoss(True, chunk=5)(model, {"input_ids": ids, "labels": labels})
    got.backward()
    assert _close(got, expected)
    for name, p in model.named_parameters():
        assert _close(p.grad, reference[name], 2e-6), name  # (the plain path's own logits matmul rounds too)


class HeadRowsMethod(TrainingMethod):
    """Trains everything; the LM head's rows 0-39 frozen (a row mask, as SSU's special-token rows) and half the
    columns of layer 0's q_proj (a column mask, as SSU's), through the compact masked linear layers."""

    def plan(self, model, ctx):
        plan = TrainingPlan.full(model, "head rows masked")
        rows = torch.ones(model.lm_head.weight.shape[0], dtype=torch.bool)
        rows[:40] = False
        plan.trainable["lm_head.weight"] = UpdateMask("row", rows)
        q = model.model.layers[0].self_attn.q_proj.weight
        plan.trainable["model.layers.0.self_attn.q_proj.weight"] = UpdateMask("column", torch.arange(q.shape[1]) % 2 == 0)
        plan.compact_linear_grads = True
        return plan


def _train(tmp_path, name, model_dir, data, chunked: str, **settings):
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train

    config = TrainConfig(model=str(model_dir), data={"paths": [str(data)], "seq_len": 32, "packing": "doc-mask"}, batch_size=4,
                         micro_batch_size=2, optimizer={"lr": 1e-3, "weight_decay": 0.1}, schedule={"warmup_ratio": 0},
                         loss={"chunked": chunked, "chunk_tokens": 13}, **{"max_steps": 1, **settings})
    train(config, HeadRowsMethod(NoParams()), tmp_path / name, log=lambda message: None)
    return load_file(str(tmp_path / name / "final" / "model.safetensors"))


@pytest.mark.slow  # two trainings
def test_one_training_step_with_chunking_equals_one_without(tmp_path, llama_dir, corpora, monkeypatch):
    """doc-mask packing, two micro-batches accumulated, a row-masked head with compact gradients:
    the weights after one step agree within 1e-6, and the frozen head rows stay bit-identical. (AdamW's first
    step moves every entry by about lr x g / (|g| + eps): at lr 1e-2 the near-zero gradients of rare tokens'
    head rows turn their last-bit differences into 1.7e-6; at lr 1e-3, used here, 1.7e-7.)"""
    from adaptkit.engine import lm_loss

    compact_chunks = []
    original = lm_loss._compact_grad
    monkeypatch.setattr(lm_loss, "_compact_grad", lambda *args: compact_chunks.append(1) or original(*args))
    before = load_file(str(llama_dir / "model.safetensors"))
    plain = _train(tmp_path, "plain", llama_dir, corpora["ha"], "off")
    assert not compact_chunks
    chunked = _train(tmp_path, "chunked", llama_dir, corpora["ha"], "on")
    assert len(compact_chunks) == 2 * 5  # the head's gradient went into its compact copy: 2 micro-batches of 64 tokens, chunks of 13
    for name, tensor in plain.items():
        assert (chunked[name] - tensor).abs().max() <= 1e-6, name
    assert torch.equal(chunked["lm_head.weight"][:40], before["lm_head.weight"][:40])
    assert not torch.equal(chunked["lm_head.weight"][40:], before["lm_head.weight"][40:])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(chunked[q][:, 1::2], before[q][:, 1::2]) and not torch.equal(chunked[q][:, ::2], before[q][:, ::2])


class _Setting:
    def __init__(self, chunked="auto", kernel="torch", chunk_tokens=None):
        self.chunked, self.kernel, self.chunk_tokens = chunked, kernel, chunk_tokens


def test_auto_chunks_only_large_vocabulary_times_tokens():
    model, logs = _tiny("llama"), []
    assert not select_loss(_Setting(), model, torch.device("cpu"), 1024, logs.append).chunked
    assert select_loss(_Setting(), model, torch.device("cpu"), (1 << 26) // 97 + 1, logs.append).chunked
    assert select_loss(_Setting("on"), model, torch.device("cpu"), 16, logs.append).chunked
    assert not select_loss(_Setting("off"), model, torch.device("cpu"), 1 << 30, logs.append).chunked


def test_an_uncovered_head_is_refused_by_name_with_on_and_skipped_with_auto():
    model, logs = _tiny("llama"), []
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(InputError, match=r"--set loss.chunked=on: the LM head is a Sequential.*loss.chunked=off"):
        select_loss(_Setting("on"), model, torch.device("cpu"), 16, logs.append)
    assert not select_loss(_Setting(), model, torch.device("cpu"), 1 << 30, logs.append).chunked
    assert "Sequential" in logs[-1]


def test_liger_kernel_needs_cuda():
    with pytest.raises(InputError, match=r"--set loss.kernel=liger: needs a CUDA device"):
        select_loss(_Setting(kernel="liger"), _tiny("llama"), torch.device("cpu"), 16, lambda m: None)


@pytest.mark.slow  # imports peft
def test_a_lora_head_without_dropout_trains_its_adapter():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_tiny("llama"), peft.LoraConfig(r=4, target_modules=["lm_head"], lora_dropout=0.0, init_lora_weights=False))
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "labels": ids}
    expected = model(**inputs).loss
    trainable = [p for p in model.parameters() if p.requires_grad]
    reference = torch.autograd.grad(expected, trainable)
    got = LMLoss(True, chunk=4)(model, inputs)
    assert _close(got, expected)
    assert all(_close(g, e, 2e-6) for g, e in zip(torch.autograd.grad(got, trainable), reference))


@pytest.mark.slow  # torch.compile with inductor on CPU: minutes on a busy machine
def test_compile_with_the_chunked_loss_compiles_once(tmp_path, llama_dir, corpora, monkeypatch):
    """compile=true with the chunked loss, a masked (compact) head, doc-mask packing and two accumulated
    micro-batches: the graphs are compiled in the first step and none after (dynamo's counters), and the
    weights follow the eager run's."""
    from torch._dynamo.utils import counters

    from adaptkit.engine import loop

    graphs = []
    step = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda *args: (step(*args), graphs.append(counters["stats"]["unique_graphs"]))[0])
    before = load_file(str(llama_dir / "model.safetensors"))
    eager = _train(tmp_path, "eager", llama_dir, corpora["ha"], "on", max_steps=3)
    counters.clear()
    graphs.clear()
    compiled = _train(tmp_path, "compiled", llama_dir, corpora["ha"], "on", max_steps=3, compile=True)
    assert len(graphs) == 3 and graphs[0] >= 1 and graphs[-1] == graphs[0], graphs
    assert not counters["recompiles"], dict(counters["recompiles"])
    for name, tensor in eager.items():
        assert (compiled[name] - tensor).abs().max() <= 0.01 * (tensor - before[name]).abs().max() + 1e-7, name
    assert torch.equal(compiled["lm_head.weight"][:40], before["lm_head.weight"][:40])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(compiled[q][:, 1::2], before[q][:, 1::2])


@pytest.mark.slow  # runs the CLI up to the plan
@pytest.mark.parametrize("settings, fragments", [
    (["--set", "loss.chunked=maybe"], ["loss.chunked"]),
    (["--set", "loss.kernel=liger"], ["--set loss.kernel=liger: needs a CUDA device", "loss.kernel=torch"]),
    # refused once the plan exists (a LoRA adapter with dropout on the head): the run directory made by then goes again
    (["--set", "loss.chunked=on", "--method", "lora", "--set", "target_modules=q_proj,lm_head", "--set", "dropout=0.1"],
     ["--set loss.chunked=on: the LM head has LoRA dropout", "loss.chunked=off"]),
])
def test_a_bad_loss_setting_is_a_one_line_error_and_writes_nothing(tmp_path, llama_dir, corpora, invoke, settings, fragments):
    from conftest import assert_input_error

    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--seq-len", "32", "--batch-size", "4", "--max-steps", "1",
                    "--quiet", *settings, "-o", tmp_path / "run")
    assert_input_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def gloo_group():
    """A one-process gloo group (FSDP2 on CPU)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    yield
    dist.destroy_process_group()


@pytest.mark.slow  # a one-process gloo group and FSDP2
def test_an_fsdp_head_in_a_unit_of_its_own_is_refused_with_on_and_keeps_the_models_loss_with_auto(gloo_group):
    from torch.distributed.fsdp import fully_shard

    model, logs = _tiny("llama"), []
    fully_shard(model.lm_head)
    fully_shard(model)
    own_unit = "the LM head is an FSDP unit of its own (resharded after its forward); shard it with the root module"
    with pytest.raises(InputError, match=rf"--set loss.chunked=on: {re.escape(own_unit)}; use loss.chunked=off"):
        select_loss(_Setting("on"), model, torch.device("cpu"), 16, logs.append)
    assert not select_loss(_Setting(), model, torch.device("cpu"), 1 << 30, logs.append).chunked
    assert logs == [f"loss: the model's own ({own_unit})"]


@pytest.mark.slow  # a one-process gloo group and FSDP2
def test_a_root_resharded_after_forward_stops_the_step_with_a_runtime_error(gloo_group):
    """Not adaptkit's sharding (it leaves reshard_after_forward to torch, which keeps the root unsharded): a root told to
    reshard after forward leaves a sharded head to the loss, which stops with a one-line error (exit 1), not a wrong loss."""
    from torch.distributed.fsdp import fully_shard

    from adaptkit.errors import AdaptkitError

    model = _tiny("llama")
    fully_shard(model, reshard_after_forward=True)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    with pytest.raises(AdaptkitError, match=r"still sharded by FSDP after the model's forward; use --set loss.chunked=off") as caught:
        LMLoss(True)(model, {"input_ids": ids, "labels": ids})
    assert caught.value.exit_code == 1


@pytest.mark.slow  # a one-process gloo group and FSDP2
@pytest.mark.parametrize("tied", [False, True])
def test_an_fsdp_sharded_head_in_the_root_unit_gives_the_models_loss_and_gradients(gloo_group, tied):
    """adaptkit's sharding (the head in the root unit): the sharded model is accepted with loss.chunked=on, and its
    chunked loss and every gradient (read from the sharded gradients) equal the unsharded model's own loss within
    1e-6 relative and its gradients within 2e-6 (as the unsharded test above: the plain path's logits matmul rounds too); the head's weight is a sharded DTensor before the forward and after the backward."""
    from torch.distributed.tensor import DTensor

    from adaptkit.engine.distributed import fully_shard_model

    reference, model = _tiny("llama", tie_word_embeddings=tied), _tiny("llama", tie_word_embeddings=tied)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "labels": ids}
    expected = reference(**inputs).loss
    expected.backward()
    fully_shard_model(model)
    assert isinstance(model.lm_head.weight, DTensor)
    loss = select_loss(_Setting("on"), model, torch.device("cpu"), 16, lambda m: None)
    assert loss.chunked
    got = loss(model, inputs)
    got.backward()
    assert _close(got, expected)
    assert isinstance(model.lm_head.weight, DTensor) and (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    assert grads.keys() == dict(reference.named_parameters()).keys()
    for name, p in reference.named_parameters():
        assert _close(grads[name], p.grad, 2e-6), name


# --- several processes (gloo, CPU): the chunked loss under DDP and FSDP2 takes the one-process step

# 2 micro-batches per process and step, 5 chunks each. lr 1e-4: AdamW's first step moves an entry by about lr x g / (|g| + eps),
# so where |g| is near eps the chunked and the plain loss's last-bit gradient differences grow to about 2.5e4 x lr of them
# (at lr 1e-3 1.7e-6 untied and 3.6e-6 tied after one step; at 1e-4 ten times less), while each entry still moves by about lr
RUN = ["--seq-len", "32", "--batch-size", "8", "--micro-batch-size", "2", "--lr", "1e-4", "--warmup-ratio", "0",
       "--set", "loss.chunk_tokens=13", "--quiet", "--json"]


HEADS = {"untied": [], "tied": [], "masked": ["--set", "freeze_special_tokens=true"]}  # masked: the special tokens' head rows frozen (a row mask)


def _head_model(make_model_dir, head: str):
    return make_model_dir("llama", tie_word_embeddings=head == "tied")


def _run_args(model, corpora, head: str, steps: int, chunked: str, out) -> list:
    return ["train", "--model", model, "--data", corpora["ha"], *RUN, *HEADS[head], "--max-steps", str(steps),
            "--set", f"loss.chunked={chunked}", "-o", out]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, make_model_dir, corpora):
    """FFT of a llama with an untied, a tied and a row-masked head in 2 processes under DDP and FSDP, one torchrun
    launch: 2 steps with the chunked loss, and 1 step with it on and off."""
    from helpers import env_with, launch_runs

    root = tmp_path_factory.mktemp("lm-loss-2")
    runs = []
    for head in HEADS:
        model = _head_model(make_model_dir, head)
        for mode in ("ddp", "fsdp"):
            for steps, chunked in ((2, "on"), (1, "on"), (1, "off")):
                name = f"{head}/{mode}-{chunked}-{steps}"
                runs.append({"name": name, "args": [*_run_args(model, corpora, head, steps, chunked, root / name), "--distributed", mode]})
    summaries = launch_runs("torchrun", 2, runs, env_with(None, ADAPTKIT_CACHE=str(root / "cache")), root, timeout=600)
    return root, summaries


def _final(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def _max_difference(a: dict, b: dict, names) -> tuple[float, str]:
    return max(((a[n] - b[n]).abs().max().item(), n) for n in names)


@pytest.mark.slow  # one torchrun launch of 18 short trainings in 2 processes, 3 one-process trainings
@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_with_the_chunked_loss_take_the_one_process_steps(two_process_runs, make_model_dir, corpora, invoke, head, mode):
    """The same global batches. 2 processes with loss.chunked=on end 2 steps with the one-process chunked run's weights
    within 1e-6, tighter than tests/test_distributed.py's 2e-5 (measured: 1e-8, the micro-batch gradients summed in
    another order), every tensor moved: a head gradient that did not reach the parameter DDP and FSDP reduce (or were
    not reduced: each process's half-batch gradient) moves the head or the tied embedding by another step, about lr.
    After one step they equal the same mode's loss.chunked=off run within 1e-6 (measured 1.6e-7 untied, 3.6e-7 tied)."""
    root, summaries = two_process_runs
    model = _head_model(make_model_dir, head)
    one = root / head / "one-on-2"
    if not one.exists():
        result = invoke(*_run_args(model, corpora, head, 2, "on", one))
        assert result.returncode == 0, result.stderr
    assert all(summaries[f"{head}/{mode}-{run}"]["distributed"] == mode for run in ("on-2", "on-1", "off-1"))
    assert summaries[f"{head}/{mode}-on-2"]["processes"] == 2
    reference, chunked, before = _final(one), _final(root / head / f"{mode}-on-2"), load_file(str(model / "model.safetensors"))
    assert reference.keys() == chunked.keys()  # a tied head is saved once, as by one process
    assert _max_difference(chunked, reference, reference)[0] <= 1e-6, _max_difference(chunked, reference, reference)
    assert not any(torch.equal(chunked[name], before[name]) for name in reference)
    frozen = {name: reference[name] == before[name] for name in reference}  # entries the one-process run left as they were
    assert all(torch.equal(chunked[name][frozen[name]], before[name][frozen[name]]) for name in reference)
    if head != "tied":  # whole head rows stay as they were only where the special tokens' rows are frozen
        assert bool(frozen["lm_head.weight"].all(1).any()) == (head == "masked")
    on, off = _final(root / head / f"{mode}-on-1"), _final(root / head / f"{mode}-off-1")
    assert on.keys() == off.keys()
    assert _max_difference(on, off, on)[0] <= 1e-6, _max_difference(on, off, on)
