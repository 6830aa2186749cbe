"""`adaptkit vocab transplant`: another tokenizer for a model; shared rows exact, new ones by subword
mean or by OMP over a donor's shared tokens; the result generates and trains its new rows only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import run_ok, save_tiny_model, weights
from conftest import assert_input_error


@pytest.fixture(scope="module")
def donor_dir(tmp_path_factory, hausa_tokenizer):
    """A model on the Hausa tokenizer: the donor whose embeddings OMP reads."""
    return save_tiny_model(tmp_path_factory.mktemp("donor"), hausa_tokenizer, seed=7)


@pytest.fixture(scope="module")
def tokenizer_only(tmp_path_factory, hausa_tokenizer):
    directory = tmp_path_factory.mktemp("hausa-tokenizer")
    hausa_tokenizer.save_pretrained(directory)
    return directory


def test_omp_coefficients_are_the_least_squares_fit_on_the_chosen_atoms():
    from adaptkit.vocab.transplant import omp

    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(40, 12, generator=generator)
    targets = torch.randn(3, 12, generator=generator)
    targets[0] = 2.0 * atoms[3] - 0.5 * atoms[17]  # exactly 2-sparse
    indices, coeffs = omp(targets, atoms, k=4)
    assert indices.shape == coeffs.shape == (3, 4)
    for row in range(3):
        chosen = indices[row].tolist()
        assert len(set(chosen)) == 4
        solution, *_ = np.linalg.lstsq(atoms[chosen].double().numpy().T, targets[row].double().numpy(), rcond=None)
        assert np.allclose(coeffs[row].numpy(), solution, atol=1e-9)
    # the greedy choice: the first atom is the one most correlated with the target
    assert indices[1, 0].item() == int((targets[1] @ atoms.T).abs().argmax())
    # a sparse target: support found first, its coefficients exact, the rest 0
    assert set(indices[0, :2].tolist()) == {3, 17}
    found = dict(zip(indices[0].tolist(), coeffs[0].tolist()))
    assert found[3] == pytest.approx(2.0, abs=1e-6) and found[17] == pytest.approx(-0.5, abs=1e-6)  # the target is float32
    assert all(abs(found[i]) < 1e-6 for i in indices[0, 2:].tolist())


def rows_of(directory):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab(with_added_tokens=True)
    tensors = weights(directory)
    return vocab, tensors


@pytest.mark.slow  # a transplant, a generation and three training steps
def test_subword_mean_transplant_keeps_shared_rows_generates_and_trains_new_rows(invoke, make_model_dir, tokenizer, tokenizer_only, corpora, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = make_model_dir("llama", 1)
    out = tmp_path / "out"
    result = run_ok(invoke, "vocab", "transplant", "--model", model, "--tokenizer", tokenizer_only, "-o", out, "--json")
    record = json.loads(result.stdout)
    old_vocab, old = rows_of(model)
    new_vocab, new = rows_of(out)
    shared = [t for t in new_vocab if t in old_vocab]
    fresh = [t for t in new_vocab if t not in old_vocab]
    assert shared and fresh and record["transplant"]["kept"] == len(shared) and record["transplant"]["initialized"] == len(fresh)
    assert sorted(record["new_token_ids"]) == sorted(new_vocab[t] for t in fresh)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert new[name].shape[0] == len(new_vocab)
        for t in shared:  # bit for bit, at the new id
            assert torch.equal(new[name][new_vocab[t]], old[name][old_vocab[t]]), (name, t)
        for t in fresh:  # the mean of the old rows of the old tokens that spell it
            pieces = [p.id for p in tokenizer.backend_tokenizer.model.tokenize(t)]
            assert torch.allclose(new[name][new_vocab[t]], old[name][pieces].mean(dim=0), atol=1e-6), (name, t)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    new_tok = AutoTokenizer.from_pretrained(out)
    ids = new_tok("Kowa na da hakkin", return_tensors="pt")["input_ids"]
    generated = loaded.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=new_tok.pad_token_id)
    assert generated.shape[1] == ids.shape[1] + 5 and int(generated.max()) < len(new_vocab)
    # train_embeddings=new-only: the transplanted tokens' rows train, the kept rows stay bit-identical
    run_ok(invoke, "train", "--model", out, "--data", corpora["ha"], "-o", tmp_path / "run", "--method", "fft", "--max-steps", "3", "--seq-len", "16",
           "--batch-size", "2", "--lr", "1e-2", "--weight-decay", "0.1", "--set", "train_embeddings=new-only", "--quiet")
    trained = weights(tmp_path / "run" / "final")
    kept = [new_vocab[t] for t in shared]
    moved = record["new_token_ids"]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(trained[name][kept], new[name][kept]), name
        assert not torch.equal(trained[name][moved], new[name][moved]), name


@pytest.mark.slow  # a transplant, and mergekit's import
def test_omp_transplant_matches_tokensurgeons_omp(invoke, make_model_dir, donor_dir, tmp_path):
    batch_omp = pytest.importorskip("mergekit.tokensurgeon.omp").batch_omp
    model = make_model_dir("llama", 1)
    out = tmp_path / "out"
    run_ok(invoke, "vocab", "transplant", "--model", model, "--tokenizer", donor_dir, "--init", "omp", "--k", "4", "-o", out, "-q")
    old_vocab, old = rows_of(model)
    new_vocab, new = rows_of(out)
    _, donor = rows_of(donor_dir)
    shared = sorted((t for t in new_vocab if t in old_vocab), key=lambda t: new_vocab[t])
    fresh = [t for t in new_vocab if t not in old_vocab]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        targets = donor[name][[new_vocab[t] for t in fresh]]
        indices, coeffs = batch_omp(targets, donor[name][[new_vocab[t] for t in shared]], 4)
        expected = torch.bmm(coeffs.unsqueeze(1), old[name][[old_vocab[t] for t in shared]][indices]).squeeze(1)
        assert torch.allclose(new[name][[new_vocab[t] for t in fresh]], expected, atol=1e-5), name
        for t in shared:
            assert torch.equal(new[name][new_vocab[t]], old[name][old_vocab[t]])


@pytest.mark.parametrize("args,fragments", [
    (["--tokenizer", "{missing}"], ["--tokenizer", "not a directory"]),
    (["--tokenizer", "{empty}"], ["--tokenizer", "tokenizer"]),
    (["--tokenizer", "{tokenizer_only}", "--init", "omp"], ["--init omp", "holds no model"]),
    (["--tokenizer", "{donor}", "--init", "omp", "--k", "0"], ["--k", "positive"]),
    (["--tokenizer", "{tokenizer_only}", "--init", "nope"], ["--init", "nope"]),
])
def test_bad_transplant_inputs(invoke, make_model_dir, tokenizer_only, donor_dir, tmp_path, args, fragments):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "tokenizer_only": tokenizer_only, "donor": donor_dir}
    out = tmp_path / "out"
    result = invoke("vocab", "transplant", "--model", make_model_dir("llama", 1), *[a.format(**paths) for a in args], "-o", out)
    assert_input_error(result, *fragments)
    assert not out.exists()
