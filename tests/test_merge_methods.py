"""Every merge method on tiny Llama / OLMo-2 models, checked against independent computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from _merge_helpers import close, disjoint_merge, run_ok, trim, weights

from adaptkit.hookspecs import hookimpl
from adaptkit.merge.base import MergeMethod
from adaptkit.specs import MergeMethodSpec


@pytest.fixture(scope="module")
def trio(make_model_dir):
    """A base and two 'adapted' Llama models (different random seeds stand in for training)."""
    return make_model_dir("llama", 0), make_model_dir("llama", 1), make_model_dir("llama", 2)


def test_linear_sharded_output_loads_in_transformers(invoke, trio, tmp_path):
    base, a, b = trio
    out = tmp_path / "linear"
    result = run_ok(invoke, "merge", "linear", "--model", a, "--model", b, "--weight", "0.3", "--weight", "0.9", "--shard-size", "200KB", "-o", out, "--json")
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and summary["shards"] > 1
    assert (out / "model.safetensors.index.json").is_file()
    wa, wb = weights(a), weights(b)
    close(weights(out), {n: (0.3 * wa[n] + 0.9 * wb[n]) / 1.2 for n in wa})

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Everyone has the right to life", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    assert torch.equal(model.state_dict()["lm_head.weight"], weights(out)["lm_head.weight"])

    card = (out / "merge_card.md").read_text()
    for path in (a, b):
        assert str(path) in card
    hashes = [item["weights_hash"] for item in summary["inputs"]]
    assert len(set(hashes)) == 2 and all(len(h.split(":")[1]) == 64 for h in hashes)
    assert '"weight": [\n    0.3,\n    0.9\n  ]' in card


def test_linear_unnormalized(invoke, trio, tmp_path):
    _, a, b = trio
    run_ok(invoke, "merge", "linear", "-m", a, "-m", b, "--weight", "1", "--weight", "-0.5", "--no-normalize", "-o", tmp_path / "o", "-q")
    wa, wb = weights(a), weights(b)
    close(weights(tmp_path / "o"), {n: wa[n] - 0.5 * wb[n] for n in wa})


def test_task_arithmetic_scales_a_language_vector_on_olmo2(invoke, make_model_dir, tmp_path):
    base, adapted = make_model_dir("olmo2", 0), make_model_dir("olmo2", 1)
    run_ok(invoke, "merge", "task-arithmetic", "--base", base, "--model", adapted, "--lambda", "0.7", "-o", tmp_path / "scaled", "-q")
    wb, wa = weights(base), weights(adapted)
    close(weights(tmp_path / "scaled"), {n: wb[n] + 0.7 * (wa[n] - wb[n]) for n in wb})


def test_ties_against_sort_based_trimming(invoke, trio, tmp_path):
    base, a, b = trio
    run_ok(invoke, "merge", "ties", "--base", base, "-m", a, "-m", b, "--density", "0.3", "--density", "0.6",
           "--weight", "0.5", "--weight", "1.5", "-o", tmp_path / "ties", "-q")
    w0, wa, wb = weights(base), weights(a), weights(b)
    expected = {}
    for n in w0:
        deltas = [trim(wa[n] - w0[n], 0.3), trim(wb[n] - w0[n], 0.6)]
        expected[n] = w0[n] + disjoint_merge(deltas, [0.5, 1.5])
    close(weights(tmp_path / "ties"), expected, atol=1e-5)


def dare_keep_masks(name: str, seed: int, shape, densities: list[float]) -> list[torch.Tensor]:
    """DARE's Bernoulli(density) keep masks for one tensor, one per --model in order, drawn here from the
    documented seeding: one generator per tensor, seeded by sha256('SEED:NAME') (first 8 bytes, little
    endian, >> 1), uniform draws in the tensor's flat order, an entry kept where its draw is < density."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return [torch.rand(shape, generator=generator) < density for density in densities]


def test_dare_is_seeded_and_is_drop_rescale_then_combine(invoke, trio, tmp_path):
    """Yu et al. 2024: each task-vector entry kept with probability p and divided by p; dare-linear adds the
    dropped vectors to the base, dare-ties merges them with TIES's sign election (no trimming)."""
    base, a, b = trio
    common = ["--base", base, "-m", a, "-m", b, "--density", "0.4", "--density", "0.7", "-q"]
    run_ok(invoke, "merge", "dare-ties", *common, "--seed", "7", "-o", tmp_path / "t7")
    run_ok(invoke, "merge", "dare-ties", *common, "--seed", "7", "-o", tmp_path / "t7b")
    run_ok(invoke, "merge", "dare-ties", *common, "--seed", "8", "-o", tmp_path / "t8")
    run_ok(invoke, "merge", "dare-linear", *common, "--seed", "7", "--weight", "0.5", "--weight", "1.5", "-o", tmp_path / "lin")
    t7, t7b, t8, lin = (weights(tmp_path / n) for n in ("t7", "t7b", "t8", "lin"))
    w0, wa, wb = weights(base), weights(a), weights(b)
    assert all(torch.equal(t7[n], t7b[n]) for n in t7)
    assert not torch.equal(t7["model.layers.1.mlp.up_proj.weight"], t8["model.layers.1.mlp.up_proj.weight"])
    for n in w0:
        keep_a, keep_b = dare_keep_masks(n, 7, w0[n].shape, [0.4, 0.7])
        da, db = (wa[n] - w0[n]) * keep_a / 0.4, (wb[n] - w0[n]) * keep_b / 0.7
        if w0[n].numel() > 1000:  # the drop rate is the one asked for
            assert abs(keep_a.float().mean().item() - 0.4) < 0.05 and abs(keep_b.float().mean().item() - 0.7) < 0.05, n
        assert torch.allclose(lin[n], w0[n] + 0.5 * da + 1.5 * db, rtol=0, atol=1e-6), (n, (lin[n] - w0[n] - 0.5 * da - 1.5 * db).abs().max())
        # TIES's elect + disjoint sum, written elementwise: sign of the summed vectors (0 counts as +), agreeing entries summed
        total = da + db
        sign = torch.where(total >= 0, 1.0, -1.0)
        expected = w0[n] + da * (torch.sign(da) == sign) + db * (torch.sign(db) == sign)
        assert torch.allclose(t7[n], expected, rtol=0, atol=1e-6), (n, (t7[n] - expected).abs().max())


def test_slerp_endpoints_and_midpoint(invoke, trio, tmp_path):
    _, a, b = trio
    for t in ("0", "1", "0.3"):
        run_ok(invoke, "merge", "slerp", "-m", a, "-m", b, "--t", t, "-o", tmp_path / t, "-q")
    wa, wb = weights(a), weights(b)
    close(weights(tmp_path / "0"), wa)
    close(weights(tmp_path / "1"), wb)
    mid = weights(tmp_path / "0.3")
    name = "model.layers.0.self_attn.q_proj.weight"
    x, y = wa[name].double().flatten(), wb[name].double().flatten()
    omega = math.acos((x @ y / (x.norm() * y.norm())).item())
    expected = (math.sin(0.7 * omega) * x + math.sin(0.3 * omega) * y) / math.sin(omega)
    assert torch.allclose(mid[name].double().flatten(), expected, atol=1e-6)
    norm = "model.norm.weight"  # all-ones in both: collinear, linear interpolation
    assert torch.allclose(mid[norm], 0.7 * wa[norm] + 0.3 * wb[norm])


def test_revert_layers_modules_and_fractions_on_olmo2(invoke, make_model_dir, tmp_path):
    base, adapted = make_model_dir("olmo2", 0), make_model_dir("olmo2", 1)
    run_ok(invoke, "merge", "revert", "--base", base, "--model", adapted, "--layers", "embed,1", "-o", tmp_path / "layers", "-q")
    run_ok(invoke, "merge", "revert", "--base", base, "--model", adapted, "--modules", "mlp,q_proj", "-o", tmp_path / "modules", "-q")
    run_ok(invoke, "merge", "revert", "--base", base, "--model", adapted, "--layers", "0", "--fraction", "0.25", "-o", tmp_path / "small", "-q")
    run_ok(invoke, "merge", "revert", "--base", base, "--model", adapted, "--fraction", "0.1", "--select", "largest", "-o", tmp_path / "large", "-q")
    w0, w1 = weights(base), weights(adapted)
    layers, modules, small, large = (weights(tmp_path / d) for d in ("layers", "modules", "small", "large"))
    for n in w0:
        in_layer = ".layers.1." in n or "embed" in n
        assert torch.equal(layers[n], w0[n] if in_layer else w1[n]), n
        assert torch.equal(modules[n], w0[n] if ("mlp" in n or "q_proj" in n) else w1[n]), n
    n = "model.layers.0.mlp.down_proj.weight"
    change = (w1[n] - w0[n]).abs()
    k = math.floor(0.25 * change.numel() + 0.5)
    reverted = small[n] == w0[n]
    assert reverted.sum().item() == k
    assert change[reverted].max() <= change[~reverted].min()
    assert torch.equal(small["model.layers.1.mlp.down_proj.weight"], w1["model.layers.1.mlp.down_proj.weight"])
    reverted = large[n] == w0[n]
    assert reverted.sum().item() == math.floor(0.1 * change.numel() + 0.5)
    assert change[reverted].min() >= change[~reverted].max()


def test_revert_by_ssu_mask_and_scores(invoke, trio, tmp_path):
    """Mask and score files in the formats `adaptkit mask` / `adaptkit score` write."""
    base, adapted, _ = trio
    w0, w1 = weights(base), weights(adapted)
    q, down = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"
    gen = torch.Generator().manual_seed(0)
    masks = {q: (torch.rand(w0[q].shape[1], generator=gen) < 0.5).to(torch.uint8),  # column mask of a square matrix
             down: (torch.rand(w0[down].shape[0], generator=gen) < 0.5).to(torch.uint8)}  # row mask
    (tmp_path / "mask").mkdir()
    save_file(masks, str(tmp_path / "mask" / "masks.safetensors"),
              metadata={"granularity": "mixed", "granularity_by_param": f"{q}=column;{down}=row"})
    scores = {q: torch.rand(w0[q].shape[1], generator=gen), down: torch.rand(w0[down].shape[1], generator=gen)}
    stored = {f"{n}@column": s for n, s in scores.items()} | {f"{q}@element": torch.rand(w0[q].shape, generator=gen)}
    save_file(stored, str(tmp_path / "scores.safetensors"), metadata={"scorer": "test", "shapes": "{}"})
    run_ok(invoke, "merge", "revert", "--base", base, "--model", adapted, "--mask", tmp_path / "mask", "-o", tmp_path / "m", "-q")
    run_ok(invoke, "merge", "revert", "--base", base, "--model", adapted, "--scores", tmp_path / "scores.safetensors", "--fraction", "0.25", "-o", tmp_path / "s", "-q")
    by_mask, by_scores = weights(tmp_path / "m"), weights(tmp_path / "s")
    for n in w0:
        if n not in masks:  # no mask or score entry: kept as adapted
            assert torch.equal(by_mask[n], w1[n]) and torch.equal(by_scores[n], w1[n]), n
            continue
        expected = w1[n].clone()  # units SSU would have frozen (0) go back to the base
        if n == q:
            expected[:, masks[n] == 0] = w0[n][:, masks[n] == 0]
        else:
            expected[masks[n] == 0, :] = w0[n][masks[n] == 0, :]
        assert torch.equal(by_mask[n], expected), n
        top = scores[n].argsort(descending=True)[: math.floor(0.25 * scores[n].numel() + 0.5)]  # column scores preferred
        expected = w1[n].clone()
        expected[:, top] = w0[n][:, top]
        assert torch.equal(by_scores[n], expected), n


def test_lines_scales_updates_by_depth(invoke, make_model_dir, tmp_path):
    base, adapted = make_model_dir("llama", 0, layers=3), make_model_dir("llama", 1, layers=3)
    run_ok(invoke, "merge", "lines", "--base", base, "-m", adapted, "--alpha", "0.2", "--beta", "0.8", "-o", tmp_path / "o", "-q")
    w0, w1, out = weights(base), weights(adapted), weights(tmp_path / "o")
    scale = {"model.embed_tokens.weight": 0.2, "model.norm.weight": 0.8, "lm_head.weight": 0.8}
    for n in w0:
        if ".layers." in n:
            scale[n] = 0.2 + 0.6 * int(n.split(".layers.")[1].split(".")[0]) / 2
        assert torch.allclose(out[n], w0[n] + scale[n] * (w1[n] - w0[n]), atol=1e-6), n
    assert scale["model.layers.1.mlp.up_proj.weight"] == pytest.approx(0.5)


def test_layer_swap_and_layra_presets(invoke, trio, tmp_path):
    base, a, b = trio
    run_ok(invoke, "merge", "layer-swap", "-m", a, "-m", b, "--layers", "0,head", "-o", tmp_path / "swap", "-q")
    run_ok(invoke, "merge", "layra-merge", "--base", base, "-m", a, "-m", b, "--layers", "1", "--lambda", "0.5", "-o", tmp_path / "lm", "-q")
    run_ok(invoke, "merge", "layra-series", "--base", base, "-m", a, "--instruct", b, "--lambda-prime", "0.6", "--layers", "embed,0", "-o", tmp_path / "ls", "-q")
    w0, wa, wb = weights(base), weights(a), weights(b)
    swap, lm, ls = weights(tmp_path / "swap"), weights(tmp_path / "lm"), weights(tmp_path / "ls")
    for n in w0:
        assert torch.equal(swap[n], wa[n] if (".layers.0." in n or n in ("model.norm.weight", "lm_head.weight")) else wb[n]), n
        expected = w0[n] + 0.5 * ((wa[n] - w0[n]) + (wb[n] - w0[n])) if ".layers.1." in n else w0[n]
        assert torch.allclose(lm[n], expected, atol=1e-6), n
        expected = wb[n] + 0.6 * (wa[n] - w0[n]) if (".layers.0." in n or "embed" in n) else wb[n]
        assert torch.allclose(ls[n], expected, atol=1e-6), n


def test_dtype_follows_the_input_unless_asked_and_outputs_compose(invoke, make_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base = make_model_dir("llama", 0)
    bf16 = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(make_model_dir("llama", 1), dtype=torch.bfloat16)
    model.save_pretrained(bf16)
    run_ok(invoke, "merge", "task-arithmetic", "--base", base, "-m", bf16, "--lambda", "0.5", "-o", tmp_path / "half", "-q")
    half = weights(tmp_path / "half")
    assert all(t.dtype == torch.bfloat16 for t in half.values())
    w0, w1 = weights(base), weights(bf16)
    n = "model.layers.0.mlp.up_proj.weight"
    expected = (w0[n] + 0.5 * (w1[n].float() - w0[n])).to(torch.bfloat16)
    assert torch.equal(half[n], expected)
    # every output is a valid input of the next command
    run_ok(invoke, "merge", "revert", "--base", base, "-m", tmp_path / "half", "--layers", "0", "--dtype", "float32", "-o", tmp_path / "next", "-q")
    nxt = weights(tmp_path / "next")
    assert nxt[n].dtype == torch.float32 and torch.equal(nxt[n], w0[n])
    assert json.loads((tmp_path / "next" / "config.json").read_text())["dtype"] == "float32"



class NegateMethod(MergeMethod):
    """A third-party merge method: -theta."""

    name = "negate"
    summary = "Negate every weight"

    def merge_tensor(self, tensors, base, params, ctx):
        return -tensors[0]


class NegatePlugin:
    """Registered in-process, as an entry-point plugin would be."""

    @staticmethod
    @hookimpl
    def register_merge_methods(register):
        register(MergeMethodSpec(name="negate", factory=NegateMethod, summary=NegateMethod.summary))


def test_a_plugin_merge_method_gets_a_subcommand(invoke, trio, tmp_path):
    from adaptkit.registry import register_plugin, unregister_plugin

    register_plugin(NegatePlugin, name="negate-plugin")
    try:
        assert "negate" in invoke("merge", "--help").stdout
        run_ok(invoke, "merge", "negate", "-m", trio[1], "-o", tmp_path / "neg", "-q")
    finally:
        unregister_plugin("negate-plugin")
    wa = weights(trio[1])
    close(weights(tmp_path / "neg"), {n: -wa[n] for n in wa})
    assert "negate" not in invoke("merge", "--help").stdout
