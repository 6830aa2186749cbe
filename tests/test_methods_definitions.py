"""Method definitions checked against independent computations on tiny models: layer selections, HFT's
seeded rule, GMT's masked-then-clipped accumulated gradient, LoTA's calibrated mask, S2FT's LoRA-rank
budget, the soft-regularization gradient and the EWC Fisher."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _methods_helpers import TRAIN, weights
from conftest import assert_input_error
from safetensors.torch import load_file

from adaptkit.errors import InputError


def _model(make_model_dir, arch="llama", **config):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(make_model_dir(arch, **config))


def _context(tmp_path, **config):
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.plan import MethodContext

    return MethodContext(None, TrainConfig(**config), None, tmp_path, 3, torch.device("cpu"), None, log=lambda m: None)


def test_layer_selections_parse_validate_and_format():
    from adaptkit.layers import format_layers, parse_layers

    assert parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    assert parse_layers(3, 8) == [3] and parse_layers([1, 0, 1], 8) == [0, 1]
    assert format_layers([0, 1, 2, 5, 7]) == "0-2,5,7"
    for bad, fragment in (("0-8", "outside the model"), ("a-b", "expected layer indices"), ("5-3", "backwards"), ("", "expected")):
        with pytest.raises(InputError, match=fragment):
            parse_layers(bad, 8, "--set layers")


@pytest.mark.parametrize("arch", ["llama", "olmo2", "qwen2"])
def test_find_layers_is_structural(make_model_dir, arch):
    from adaptkit.layers import block_linears, find_layers, parameter_layers

    model = _model(make_model_dir, arch)
    prefix, blocks = find_layers(model)
    assert prefix == "model.layers" and len(blocks) == model.config.num_hidden_layers
    roles = block_linears(blocks[0])
    assert sorted(n.split(".")[-1] for n in roles["attention"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert sorted(n.split(".")[-1] for n in roles["mlp"]) == ["down_proj", "gate_proj", "up_proj"]
    where = parameter_layers(model)
    assert where["model.layers.1.mlp.up_proj.weight"] == 1 and where["model.embed_tokens.weight"] is None


def test_hft_selection_is_reproducible_by_seed(make_model_dir):
    from adaptkit.plugins.methods.hft import hft_selection

    model = _model(make_model_dir, layers=4)
    first = hft_selection(model, seed=7)
    assert hft_selection(model, seed=7) == first
    assert any(hft_selection(model, seed=s) != first for s in range(8, 12))
    assert sorted(sum(m.startswith("mlp.") for m in v) for v in first.values()) == [1, 1, 2, 2]
    assert all(sum(m.startswith("self_attn.") for m in v) == 2 for v in first.values())


def _reference_hft_counts(att, ffn, norm, layer_total, freeze_ratio):
    """The SSU code's _freeze_hft_parameters count rule for freeze_ratio != 0.5, transcribed (lists of parameter counts)."""
    target = int(round(freeze_ratio * layer_total))
    ascending = freeze_ratio <= 0.5
    att_sorted, ffn_sorted, norm_sorted = (sorted(c, reverse=not ascending) for c in (att, ffn, norm))
    att_sel = att_sorted[:min(len(att), int(round(freeze_ratio * len(att))))]
    ffn_sel = ffn_sorted[:min(len(ffn), int(round(freeze_ratio * len(ffn))))]
    norm_sel = norm_sorted[:min(len(norm), int(round(freeze_ratio * len(norm))))]
    selected = [("att", pc) for pc in att_sel] + [("ffn", pc) for pc in ffn_sel] + [("norm", pc) for pc in norm_sel]
    cum = sum(pc for _, pc in selected)
    rem_all = ([("att", pc) for pc in att_sorted[len(att_sel):]] + [("ffn", pc) for pc in ffn_sorted[len(ffn_sel):]]
               + [("norm", pc) for pc in norm_sorted[len(norm_sel):]])
    rem_all = sorted(rem_all, key=lambda x: x[1], reverse=not ascending)
    i = 0
    while cum < target and i < len(rem_all):
        if abs(target - (cum + rem_all[i][1])) <= abs(target - cum):
            selected.append(rem_all[i])
            cum += rem_all[i][1]
        i += 1
    if cum > target and selected:
        best_idx, best_delta = None, abs(cum - target)
        for idx, s in enumerate(selected):
            if abs((cum - s[1]) - target) < best_delta:
                best_delta, best_idx = abs((cum - s[1]) - target), idx
        if best_idx is not None:
            cum -= selected.pop(best_idx)[1]
    return tuple(sum(1 for g, _ in selected if g == group) for group in ("att", "ffn", "norm"))


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.3, 0.6, 0.75, 0.9])
def test_hft_freeze_ratio_follows_the_reference_rule(make_model_dir, arch, ratio):
    """Counts per group by the reference's size-guided rule; modules drawn with random.seed(seed) as the reference draws."""
    import random

    from _methods_helpers import block_modules

    from adaptkit.plugins.methods.hft import hft_selection

    model = _model(make_model_dir, arch=arch, layers=3)
    selection = hft_selection(model, seed=5, freeze_ratio=ratio)
    random.seed(5)
    for index, block in enumerate(model.model.layers):
        groups = block_modules(block)
        modules = dict(block.named_modules())
        size = {n: sum(p.numel() for p in modules[n].parameters(recurse=False)) for g in groups.values() for n in g}
        counts = _reference_hft_counts(*([size[n] for n in groups[g]] for g in ("attention", "mlp", "norms")),
                                       sum(p.numel() for p in block.parameters()), ratio)
        expected = [n for g, c in zip(("attention", "mlp", "norms"), counts) if c for n in random.sample(groups[g], c)]
        assert selection[index] == sorted(expected), (index, ratio)


def _micro_grads(model_dir, data, seq_len, batch, micro, seed=42):
    """Per-micro-batch gradients (each of loss / accumulation) of the engine's first optimizer step, computed here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptkit.data.corpus import load_blocks
    from adaptkit.engine.batches import Batches

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    blocks = load_blocks([str(data)], AutoTokenizer.from_pretrained(model_dir), seq_len)
    batches = Batches(blocks, batch, micro, seed)
    grads = []
    for m in range(batches.accumulation):
        model.zero_grad(set_to_none=True)
        ids = batches.get(0, m)
        (model(input_ids=ids, labels=ids).loss / batches.accumulation).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return grads


def _keep_largest(grad, ratio):
    k = int(grad.numel() * ratio)
    threshold = grad.abs().flatten().sort().values[k - 1]
    return grad.abs() > threshold


ENDS = ("model.embed_tokens.weight", "lm_head.weight")


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_gmt_masks_the_accumulated_gradient_then_clips(tmp_path, llama_dir, corpora, invoke, skip):  # every_micro_batch=false
    """skip (the default, as the SSU repository): embeddings and LM head unmasked; otherwise masked like the rest."""
    out = tmp_path / "gmt"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--method", "gmt", "-o", out, "--max-steps", "1",
                    "--batch-size", "4", "--micro-batch-size", "2", "--seq-len", "32", "--lr", "1e-3", "--weight-decay", "0",
                    "--warmup-ratio", "0", "--max-grad-norm", "0.01", "--set", "log_steps=1", "--set", f"skip_embeddings_and_head={str(skip).lower()}", "--quiet")
    assert result.returncode == 0, result
    micro = _micro_grads(llama_dir, corpora["ha"], 32, 4, 2)
    accumulated = {n: micro[0][n] + micro[1][n] for n in micro[0]}
    keep = {n: (g != 0) if skip and n in ENDS else _keep_largest(g, 0.5) for n, g in accumulated.items()}
    # clipping sees the masked gradient: the logged (pre-clip) norm is the masked gradient's norm
    masked_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g * keep[n]) for n, g in accumulated.items()]))
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["grad_norm"]
    assert logged == pytest.approx(float(masked_norm), rel=1e-4)
    # first AdamW step without weight decay: exactly the unmasked entries move
    before, after = weights(llama_dir), weights(out / "final")
    for name, kept in keep.items():
        assert torch.equal(before[name] != after[name], kept), name
    for name in ENDS:  # unmasked: every entry with a gradient moves (the head has a gradient everywhere)
        moved = float((before[name] != after[name]).float().mean())
        assert (moved > 0.9) if skip and name == "lm_head.weight" else (moved <= 0.5), (name, moved)
    # masking each micro-batch separately (the peer implementation) would have kept other entries
    per_micro = {n: _keep_largest(micro[0][n], 0.5) | _keep_largest(micro[1][n], 0.5) for n in keep}
    assert any(not torch.equal(per_micro[n], keep[n]) for n in keep)


def _reference_keep(grad, ratio):
    """The SSU repository's GMTTrainer.apply_mask_to_gradient, transcribed: keep |g| >= the k-th largest, k = int(n * ratio)."""
    flat = grad.abs().reshape(-1)
    threshold = torch.topk(flat, int(len(flat) * ratio), largest=True).values[-1]
    return grad * (grad.abs() >= threshold)


def test_gmt_keep_ratio_counts_and_ties():
    from adaptkit.plugins.methods.gmt import keep_largest

    for grad, ratio in ((torch.tensor([[0.5, -0.1, 0.0], [0.0, 2.0, -0.3]]), 0.5), (torch.tensor([1.0, -1.0, 1.0, 0.5]), 0.5),
                        (torch.randn(7, 9, generator=torch.Generator().manual_seed(3)), 0.3), (torch.randn(50), 0.9)):
        expected = _reference_keep(grad, ratio)
        keep_largest(grad, ratio)
        assert torch.equal(grad, expected)
    tied = torch.tensor([1.0, -1.0, 1.0, 0.5])
    keep_largest(tied, 0.5)  # k = 2, but all three entries tied at the threshold survive, as in the reference
    assert torch.equal(tied, torch.tensor([1.0, -1.0, 1.0, 0.0]))


def test_gmt_refuses_the_ambiguous_mask_ratio():
    from adaptkit.errors import InputError
    from adaptkit.registry import get_spec

    with pytest.raises(InputError, match="keep_ratio"):
        get_spec("method", "gmt").validate_params({"mask_ratio": 0.5})
    assert get_spec("method", "gmt").validate_params({"keep_ratio": 0.2}).keep_ratio == 0.2


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_gmt_every_micro_batch_masks_the_running_sum_as_the_reference(tmp_path, llama_dir, corpora, invoke):
    """every_micro_batch=true: G <- keep(G + g_m) after each micro-batch (GMTTrainer.training_step), no clipping."""
    out = tmp_path / "gmt"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "--method", "gmt", "-o", out, "--max-steps", "1",
                    "--batch-size", "4", "--micro-batch-size", "2", "--seq-len", "32", "--lr", "1e-3", "--weight-decay", "0",
                    "--warmup-ratio", "0", "--max-grad-norm", "1e9", "--set", "every_micro_batch=true", "--set", "keep_ratio=0.3", "--quiet")
    assert result.returncode == 0, result
    micro = _micro_grads(llama_dir, corpora["ha"], 32, 4, 2)
    running = {}
    for grads in micro:
        for name, g in grads.items():
            total = g if name not in running else running[name] + g
            running[name] = total if name in ENDS else _reference_keep(total, 0.3)
    before, after = weights(llama_dir), weights(out / "final")
    for name, g in running.items():
        if name not in ENDS:
            assert torch.equal(before[name] != after[name], g != 0), name
    once = {n: _reference_keep(micro[0][n] + micro[1][n], 0.3) != 0 for n in running if n not in ENDS}
    assert any(not torch.equal(once[n], running[n] != 0) for n in once)  # differs from masking the sum once


def test_kth_order_statistics_span_tensors_exactly():
    from adaptkit.engine.select import kth_largest, kth_smallest

    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=generator).abs() for shape in ((17, 5), (300,), (4, 4, 4))]
    tensors.append(torch.tensor([0.0, 0.0, 1.5, 1.5, float("inf")]))  # ties, zeros, inf
    ordered = torch.cat([t.flatten() for t in tensors]).sort().values
    for k in (1, 2, 3, 7, 100, 250, ordered.numel() - 1, ordered.numel()):
        assert kth_smallest(tensors, k) == ordered[k - 1].item()
        assert kth_largest(tensors, k) == ordered[-k].item()
    with pytest.raises(ValueError):
        kth_smallest(tensors, 0)


def _plain_finetune(model_dir, data, steps: int, lr: float, weight_decay: float, seq_len: int = 32, batch: int = 4, seed: int = 42):
    """theta_T of a plain fine-tune written here with torch and transformers: AdamW (decay on matrices only),
    cosine schedule without warmup, gradient clipping at 1.0, on the run's batches (steps 0..T-1)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from adaptkit.data.corpus import load_blocks
    from adaptkit.engine.batches import Batches

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    batches = Batches(load_blocks([str(data)], AutoTokenizer.from_pretrained(model_dir), seq_len), batch, batch, seed)
    params = [p for _, p in model.named_parameters()]
    matrices, vectors = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}], lr=lr, fused=True)
    schedule = get_cosine_schedule_with_warmup(optimizer, 0, steps)
    model.train()
    for step in range(steps):
        ids = batches.get(step, 0)
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(matrices + vectors, 1.0)
        optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_lota_mask_is_the_top_delta_of_the_calibration_finetune(tmp_path, llama_dir, corpora, invoke, skip):
    """Panda et al. 2024: calibrate with T fine-tuning steps, keep the top (1 - sparsity) of |theta_T - theta_0|
    ranked over all entries, reset to theta_0 and train only those entries. skip (the default, as the SSU
    repository): embeddings and LM head outside the ranking, trained in full."""
    lota = invoke("train", "--model", llama_dir, "--data", corpora["ha"], *TRAIN, "--method", "lota", "-o", tmp_path / "lota",
                  "--set", "calibration_steps=3", "--set", f"skip_embeddings_and_head={str(skip).lower()}")
    assert lota.returncode == 0, lota
    before = weights(llama_dir)
    tuned = _plain_finetune(llama_dir, corpora["ha"], steps=3, lr=1e-2, weight_decay=0.1)  # TRAIN's settings
    delta = {n: (tuned[n] - before[n]).abs() for n in before}
    ranked = {n: d for n, d in delta.items() if not (skip and n in ENDS)}
    k = int(0.1 * sum(d.numel() for d in ranked.values()))
    threshold = torch.cat([d.flatten() for d in ranked.values()]).topk(k).values.min()
    masks = {n: m.bool() for n, m in load_file(str(tmp_path / "lota" / "lota" / "masks.safetensors")).items()}
    assert set(masks) == set(delta)
    after = weights(tmp_path / "lota" / "final")
    disagree = 0
    for name, d in delta.items():
        if name not in ranked:  # trained in full, outside the ranking
            assert bool(masks[name].all()) and (after[name] != before[name]).float().mean() > 0.9, name
            continue
        expected = d >= threshold
        # another summation order may move an entry across the threshold only if it lies right at it
        near = (d - threshold).abs() <= 1e-4 * threshold
        assert torch.equal(masks[name][~near], expected[~near]), name
        disagree += int((masks[name] != expected).sum())
        frozen, trainable = ~expected & ~near, expected & ~near
        assert torch.equal(after[name][frozen], before[name][frozen]), name  # reset to theta_0, bit for bit
        if trainable.any():
            assert (after[name][trainable] != before[name][trainable]).float().mean() > 0.5, name
    assert disagree <= 0.001 * k, disagree


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_lota_selection_is_reproducible_by_seed(tmp_path, llama_dir, corpora, invoke):
    settings = ["--model", llama_dir, "--data", corpora["ha"], "--method", "lota", "--set", "calibration_steps=2", *TRAIN]
    masks = {}
    for label, seed in (("a", "42"), ("b", "42"), ("c", "7")):
        assert invoke("train", *settings, "--seed", seed, "-o", tmp_path / label).returncode == 0
        masks[label] = load_file(str(tmp_path / label / "lota" / "masks.safetensors"))
    assert all(torch.equal(masks["a"][n], masks["b"][n]) for n in masks["a"])
    assert any(not torch.equal(masks["a"][n], masks["c"][n]) for n in masks["a"])


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_lota_resume_reuses_the_saved_mask(tmp_path, llama_dir, corpora, invoke, monkeypatch):
    args = ["--model", llama_dir, "--data", corpora["ha"], "--method", "lota", "--set", "calibration_steps=2",
            "--seq-len", "32", "--batch-size", "4", "--max-steps", "4", "--save-steps", "2", "--lr", "1e-2", "--quiet"]
    assert invoke("train", *args, "-o", tmp_path / "straight").returncode == 0
    stopped = tmp_path / "stopped"
    assert invoke("train", *args, "-o", stopped).returncode == 0
    shutil.rmtree(stopped / "final")  # as if killed after the checkpoint at step 2

    def no_pilot(*a, **k):
        raise AssertionError("the calibration fine-tune ran again on --resume")

    monkeypatch.setattr("adaptkit.engine.pilot.pilot_finetune", no_pilot)
    resumed = invoke("train", *args, "-o", stopped, "--resume")
    assert resumed.returncode == 0, resumed
    a, b = weights(tmp_path / "straight" / "final"), weights(stopped / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _reference_s2ft_draw(layers, units, ratio, seed):
    """s2ft_select_ffn_up_down / s2ft_select_mha_heads (SSU code), transcribed: a fresh random.Random(seed) per pool,
    k = int(total * ratio) (1 if that is 0), sorted global indices split into (layer, unit)."""
    import random

    total = layers * units
    k = int(total * ratio) or 1
    chosen = {i: [] for i in range(layers)}
    for index in sorted(random.Random(seed).sample(list(range(total)), k)):
        chosen[index // units].append(index % units)
    return chosen


@pytest.mark.parametrize("variant", ["down", "down+output"])
def test_s2ft_selection_is_the_reference_draw(tmp_path, make_model_dir, variant):
    from adaptkit.plugins.methods.s2ft import StructuredSparseFineTuning, StructuredSparseParams

    model = _model(make_model_dir, layers=3)
    plan = StructuredSparseFineTuning(StructuredSparseParams(ratio=0.07, variant=variant)).plan(model, _context(tmp_path, seed=7))
    config = model.config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    pools = [("mlp.down_proj", config.intermediate_size, 1)] + ([("self_attn.o_proj", heads, head_dim)] if variant == "down+output" else [])
    for module, units, width in pools:
        for layer, chosen in _reference_s2ft_draw(3, units, 0.07, 7).items():
            expected = torch.zeros(units * width, dtype=torch.bool)
            for unit in chosen:
                expected[unit * width:(unit + 1) * width] = True
            mask = plan.trainable.get(f"model.layers.{layer}.{module}.weight")
            got = mask.trainable if mask is not None else torch.zeros_like(expected)
            assert torch.equal(got, expected), (module, layer)


def test_reference_head_permutation_changes_olmo2_but_not_llama(make_model_dir):
    """What the reference's convert_mha_layer_to_s2 does to the model before training, transcribed: q/k/v rows and o
    columns permuted by head, q_norm/k_norm left alone. Function-preserving for Llama, not for OLMo-2 (why adaptkit
    does not permute, and why the reference's down+output OLMo-2 runs start from a changed model)."""
    ids = torch.arange(1, 17).reshape(1, -1)
    for arch, preserved in (("llama", True), ("olmo2", False)):
        model = _model(make_model_dir, arch, layers=2, num_key_value_heads=4)
        config = model.config
        with torch.no_grad():  # a trained model's norm scales are not all ones (the tiny model's are)
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
        before = model(input_ids=ids).logits
        order = [2, 0] + [h for h in range(config.num_attention_heads) if h not in (2, 0)]  # selected heads first
        with torch.no_grad():
            for layer in model.model.layers:
                attn = layer.self_attn
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    w = proj.weight.data.reshape(config.num_key_value_heads, -1, proj.weight.shape[-1])
                    proj.weight.data = w[order, :, :].reshape(-1, proj.weight.shape[-1])
                o = attn.o_proj.weight.data.reshape(attn.o_proj.weight.shape[0], config.num_attention_heads, -1)
                attn.o_proj.weight.data = o[:, order, :].reshape(attn.o_proj.weight.shape[0], -1)
        after = model(input_ids=ids).logits
        assert torch.allclose(before, after, atol=1e-5) is preserved, arch


def test_s2ft_lora_rank_budget_matches_lora(tmp_path, make_model_dir):
    from adaptkit.plugins.methods.s2ft import StructuredSparseFineTuning, StructuredSparseParams

    model = _model(make_model_dir, layers=3)
    lora = 0
    for name, module in model.named_modules():  # rank-2 LoRA on every linear projection of the blocks
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            lora += 2 * (module.in_features + module.out_features)
    for variant in ("down", "down+output"):
        plan = StructuredSparseFineTuning(StructuredSparseParams(lora_rank=2, variant=variant, train_embeddings_and_head=False)).plan(model, _context(tmp_path))
        trainable, _ = plan.counts()
        assert lora - 64 * 16 <= trainable <= lora, (variant, trainable, lora)
    with pytest.raises(InputError, match="lora_rank"):
        StructuredSparseFineTuning(StructuredSparseParams(lora_rank=64)).plan(model, _context(tmp_path))


def test_soft_reg_gradient_is_the_gradient_of_the_penalty(make_model_dir):
    from adaptkit.plugins.methods.soft_reg import SourcePull

    model = _model(make_model_dir)
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(1)
    source = {n: p.detach().clone() for n, p in params.items()}
    fisher = {n: torch.rand(p.shape, generator=generator) for n, p in params.items()}
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)
    for weighted in (False, True):
        model.zero_grad(set_to_none=True)
        penalty = sum(((fisher[n] if weighted else 1) * (p - source[n]) ** 2).sum() for n, p in params.items()) * 0.3
        expected = torch.autograd.grad(penalty, list(params.values()))
        terms = {n: (source[n], fisher[n] if weighted else None) for n in params}
        SourcePull(terms, 0.3).transform_gradients(model, 0)
        for (name, p), grad in zip(params.items(), expected):
            torch.testing.assert_close(p.grad, grad, rtol=1e-5, atol=1e-8, msg=name)


def test_ewc_fisher_is_the_mean_squared_per_block_gradient(make_model_dir):
    from adaptkit.plugins.methods.soft_reg import diagonal_fisher

    model = _model(make_model_dir)
    blocks = torch.randint(4, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    names = {"model.layers.0.mlp.down_proj.weight", "model.norm.weight"}
    fisher = diagonal_fisher(model, names, blocks, 1, torch.device("cpu"))
    params = dict(model.named_parameters())
    for name in names:
        squares = []
        for block in blocks:
            ids = block[None]
            (grad,) = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, [params[name]])
            squares.append(grad**2)
        torch.testing.assert_close(fisher[name], torch.stack(squares).mean(0))


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_ewc_trains_with_a_calibration_set_and_pulls_toward_the_source(tmp_path, llama_dir, corpora, invoke):
    from adaptkit.calibration import CalibrationSet

    calib = CalibrationSet(torch.randint(4, 300, (4, 32), generator=torch.Generator().manual_seed(0)), {"source": "test"}).save(tmp_path / "calib")
    base = ["--model", llama_dir, "--data", corpora["ha"], *TRAIN]
    ewc = invoke("train", *base, "--method", "soft-reg", "--set", "penalty=ewc", "--set", "strength=1000", "--calib", calib, "-o", tmp_path / "ewc")
    assert ewc.returncode == 0, ewc
    fft = invoke("train", *base, "-o", tmp_path / "fft")
    assert fft.returncode == 0, fft
    source = weights(llama_dir)
    distance = {run: sum(float((w - source[n]).norm() ** 2) for n, w in weights(tmp_path / run / "final").items()) for run in ("ewc", "fft")}
    assert 0 < distance["ewc"] < distance["fft"]
    missing = invoke("train", *base, "--method", "soft-reg", "--set", "penalty=ewc", "-o", tmp_path / "no-calib")
    assert_input_error(missing, "--calib")
    assert not (tmp_path / "no-calib").exists()
