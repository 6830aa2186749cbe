"""Every merge method on tiny Llama / OLMo-2 models, checked against independent computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from _merge_helpers import close, copy_tokenizer, disjoint_merge, run_ok, trim, weights

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


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
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


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
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


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
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


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
def test_lines_scales_updates_by_depth(invoke, make_model_dir, tmp_path, arch):
    base, adapted = make_model_dir(arch, 0, layers=3), make_model_dir(arch, 1, layers=3)
    run_ok(invoke, "merge", "lines", "--base", base, "-m", adapted, "--alpha", "0.2", "--beta", "0.8", "-o", tmp_path / "o", "-q")
    w0, w1, out = weights(base), weights(adapted), weights(tmp_path / "o")
    outside = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert outside <= set(w0)
    for n in w0:
        if n in outside:
            scale = 0.2  # every tensor outside the blocks takes alpha, as the LiNeS reference code does
        else:
            scale = 0.2 + 0.6 * int(n.split(".layers.")[1].split(".")[0]) / 2
        assert torch.allclose(out[n], w0[n] + scale * (w1[n] - w0[n]), atol=1e-6), n


def test_layer_swap(invoke, trio, tmp_path):
    base, a, b = trio
    run_ok(invoke, "merge", "layer-swap", "-m", a, "-m", b, "--layers", "0,head", "-o", tmp_path / "swap", "-q")
    wa, wb, swap = weights(a), weights(b), weights(tmp_path / "swap")
    for n in wa:
        assert torch.equal(swap[n], wa[n] if (".layers.0." in n or n in ("model.norm.weight", "lm_head.weight")) else wb[n]), n


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_layra_formulas(invoke, make_model_dir, tmp_path, arch):
    """The LayRA paper's merge (average by default), series and instruct formulas, by explicit arithmetic."""
    base, a, b, c = (make_model_dir(arch, seed, layers=2) for seed in (0, 1, 2, 3))
    run_ok(invoke, "merge", "layra-merge", "--base", base, "-m", a, "-m", b, "-m", c, "-o", tmp_path / "avg", "-q")
    run_ok(invoke, "merge", "layra-merge", "--base", base, "-m", a, "-m", b, "--layers", "1", "--lambda", "0.5", "-o", tmp_path / "lm", "-q")
    # series: a stands for the stage-1 model theta_1 and b for the stage-2 model trained from it
    run_ok(invoke, "merge", "layra-series", "--base", a, "-m", b, "--lambda-prime", "0.6", "--layers", "embed,0", "-o", tmp_path / "ls", "-q")
    run_ok(invoke, "merge", "layra-instruct", "--base", base, "-m", a, "--instruct", c, "--alpha", "0.4", "--layers", "0,head", "-o", tmp_path / "li", "-q")
    w0, wa, wb, wc = weights(base), weights(a), weights(b), weights(c)
    avg, lm, ls, li = (weights(tmp_path / name) for name in ("avg", "lm", "ls", "li"))
    for n in w0:
        assert torch.allclose(avg[n], (wa[n] + wb[n] + wc[n]) / 3, atol=1e-6), n  # lambda = 1/n: the average
        expected = w0[n] + 0.5 * ((wa[n] - w0[n]) + (wb[n] - w0[n])) if ".layers.1." in n else w0[n]
        assert torch.allclose(lm[n], expected, atol=1e-6), n
        expected = wa[n] + 0.6 * (wb[n] - wa[n]) if (".layers.0." in n or "embed" in n) else wa[n]
        assert torch.allclose(ls[n], expected, atol=1e-6), n
        in_layers = ".layers.0." in n or n in ("model.norm.weight", "lm_head.weight")
        expected = wc[n] + 0.4 * (wa[n] - w0[n]) if in_layers else wc[n]
        assert torch.allclose(li[n], expected, atol=1e-6), n


def test_dtype_follows_the_input_unless_asked_and_outputs_compose(invoke, make_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base = make_model_dir("llama", 0)
    bf16 = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(make_model_dir("llama", 1), dtype=torch.bfloat16)
    model.save_pretrained(bf16)
    copy_tokenizer(base, bf16)
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


def test_each_parameter_declares_its_own_check():
    from typing import Annotated

    from adaptkit.errors import InputError
    from adaptkit.merge.base import Check, Layers, Weights
    from adaptkit.specs import Params

    class AtMostModels(Check):
        def __call__(self, value, flag, inputs):
            if value > inputs.n_models:
                raise InputError(f"{flag}: at most {inputs.n_models}")

    class TopParams(Params):
        top_k: Annotated[int, AtMostModels()] = 1
        weight: Weights = None
        layers: Layers = None

    class Top(MergeMethod):
        name = "top"
        Params = TopParams

        def merge_tensor(self, tensors, base, params, ctx):
            return tensors[0]

    Top().check(TopParams(top_k=2, weight=[1.0, 2.0], layers="embed,0-3,head"), n_models=2, has_base=False, num_layers=4)
    for params, n_models, message in (
        (TopParams(top_k=3), 2, "--top-k: at most 2"),
        (TopParams(weight=[1.0]), 2, "--weight: 1 values for 2 models"),
        (TopParams(layers="embed,4"), 2, "--layers: layer 4 is outside the model, which has 4 layers"),
        (TopParams(layers="0,lm"), 2, "--layers: expected layer indices"),
    ):
        with pytest.raises(InputError, match=message):
            Top().check(params, n_models=n_models, has_base=False, num_layers=4)


def test_one_layer_selection_for_methods_and_merges():
    from adaptkit.errors import InputError
    from adaptkit.layers import LayerSelection, parse_layers

    selection = LayerSelection.parse("embed, 0-1,3,head", "--layers", ends=True)
    assert selection.indices == [0, 1, 3] and selection.embed and selection.head
    picked = [n for n, layer in (("model.embed_tokens.weight", None), ("model.layers.1.mlp.up_proj.weight", 1), ("model.layers.2.mlp.up_proj.weight", 2), ("model.norm.weight", None), ("lm_head.weight", None)) if selection.contains(n, layer)]
    assert picked == ["model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"]
    assert not LayerSelection.parse("2", "--layers", ends=True).contains("lm_head.weight", None)
    assert parse_layers("0-1,3", 4) == [0, 1, 3] and parse_layers([2, 0], 4) == [0, 2]
    with pytest.raises(InputError, match="--set layers: expected layer indices"):
        parse_layers("embed,0", 4)  # training methods select blocks only
    with pytest.raises(InputError, match="layer 5 is outside the model"):
        parse_layers("0-5", 4)
