"""Initializers of new embedding rows, each against an independent computation of the expected rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptkit.hookspecs import hookimpl
from helpers import run_ok, weights

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.fixture(scope="module")
def hausa(tmp_path_factory) -> Path:
    from adaptkit import demo

    return demo.write_lines(demo.split_corpus("ha")[0], tmp_path_factory.mktemp("init-texts") / "ha.txt")


def extend(invoke, model: Path, data: Path, out: Path, *extra: str) -> dict:
    run_ok(invoke, "vocab", "extend", "--model", model, "--data", data, "--add", "48", "-o", out, "-q", *extra)
    return json.loads((out / "adaptkit_vocab.json").read_text())


@pytest.mark.parametrize("tied", [False, True])
def test_subword_mean_is_the_mean_of_old_pieces(invoke, make_model_dir, hausa, tmp_path, tied):
    from transformers import AutoTokenizer

    source = make_model_dir("llama", **({"tie_word_embeddings": True} if tied else {}))
    record = extend(invoke, source, hausa, tmp_path / "out", "--init", "subword-mean")
    old_tok, new_tok = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(tmp_path / "out")
    before, after = weights(source), weights(tmp_path / "out")
    names = [EMBED] if tied else [EMBED, HEAD]
    assert (HEAD in after) is not tied
    checked = 0
    for token_id in record["new_token_ids"]:
        text = new_tok.decode([token_id])
        if "\ufffd" in text:  # a piece of a character: no text to re-tokenize
            continue
        pieces = old_tok(text, add_special_tokens=False)["input_ids"]
        assert len(pieces) > 1 and max(pieces) < record["old_vocab_size"]
        for name in names:
            assert torch.allclose(after[name][token_id], before[name][pieces].mean(dim=0), atol=1e-6), (name, text)
        checked += 1
    assert checked >= 0.8 * len(record["new_token_ids"])
    if not tied:
        assert not torch.allclose(after[EMBED][record["new_token_ids"]], after[HEAD][record["new_token_ids"]])


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_mean_is_transformers_mean_resizing(invoke, make_model_dir, hausa, tmp_path, arch, tied):
    """N(mean, 1e-9 * covariance) of the old rows, seeded, input rows drawn before head rows; and the same
    spread as transformers' resize_token_embeddings(mean_resizing=True), which draws from that distribution."""
    from torch.distributions.multivariate_normal import MultivariateNormal
    from transformers import AutoModelForCausalLM

    source = make_model_dir(arch, **({"tie_word_embeddings": True} if tied else {}))
    record = extend(invoke, source, hausa, tmp_path / "out", "--init", "mean", "--seed", "3", "--pad-to-multiple-of", "64")
    before, after, old = weights(source), weights(tmp_path / "out"), record["old_vocab_size"]
    rows = record["new_vocab_size"] - old
    assert rows == 64
    names = [EMBED] if tied else [EMBED, HEAD]
    torch.manual_seed(3)
    expected = {}
    for name in names:
        w = before[name]
        centered = w - w.mean(dim=0)
        expected[name] = MultivariateNormal(w.mean(dim=0), covariance_matrix=1e-9 * (centered.T @ centered / w.shape[0])).sample((rows,))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.resize_token_embeddings(record["new_vocab_size"], mean_resizing=True)
    reference = {EMBED: model.get_input_embeddings().weight.detach(), HEAD: model.get_output_embeddings().weight.detach()}
    for name in names:
        assert torch.equal(after[name][old:], expected[name]), name
        ours, theirs = after[name][old:], reference[name][old:]
        assert torch.allclose(ours.mean(dim=0), theirs.mean(dim=0), atol=1e-6)
        assert 0.8 < ours.std(dim=0).mean() / theirs.std(dim=0).mean() < 1.25
        assert not torch.equal(after[name][old], after[name][old + 1])  # seeded noise, not a constant row


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_random_is_normal_with_initializer_range(invoke, make_model_dir, hausa, tmp_path):
    source = make_model_dir("llama")
    record = extend(invoke, source, hausa, tmp_path / "out", "--init", "random", "--seed", "5")
    after, old, n = weights(tmp_path / "out"), record["old_vocab_size"], len(record["new_token_ids"])
    torch.manual_seed(5)
    expected = {EMBED: torch.normal(0.0, 0.02, size=(n, 64)), HEAD: torch.normal(0.0, 0.02, size=(n, 64))}
    for name in (EMBED, HEAD):
        assert torch.equal(after[name][old:], expected[name]), name
        assert after[name][old:].std().item() == pytest.approx(0.02, rel=0.1)
    record = extend(invoke, source, hausa, tmp_path / "wide", "--init", "random", "--set", "std=0.5")
    assert weights(tmp_path / "wide")[EMBED][old:].std().item() == pytest.approx(0.5, rel=0.1)


class _ZerosPlugin:
    """A third-party initializer registered through the hook (zeros)."""

    @staticmethod
    @hookimpl
    def register_initializers(register):
        from adaptkit.specs import InitializerSpec

        register(InitializerSpec(name="zeros", factory=_Zeros, summary="zeros"))


class _Zeros:
    def __init__(self, params):
        self.params = params

    def rows(self, weight, pieces, config):
        return torch.zeros(len(pieces), weight.shape[1])


def test_initializers_are_plugins(invoke, make_model_dir, hausa, tmp_path):
    from adaptkit.registry import register_plugin, unregister_plugin

    listed = json.loads(run_ok(invoke, "plugins", "--kind", "initializer", "--json").stdout)["plugins"]
    assert {(p["name"], p["plugin"]) for p in listed} == {(n, "builtin-initializers") for n in ("subword-mean", "mean", "random")}
    register_plugin(_ZerosPlugin, name="zeros-plugin")
    try:
        record = extend(invoke, make_model_dir("llama"), hausa, tmp_path / "out", "--init", "zeros")
    finally:
        unregister_plugin("zeros-plugin")
    after = weights(tmp_path / "out")
    assert torch.count_nonzero(after[EMBED][record["old_vocab_size"]:]) == 0
    assert record["initializer"]["name"] == "zeros"
