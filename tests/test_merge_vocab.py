"""Merging models whose tokenizers differ: refused unless the output's tokenizer is named."""

from __future__ import annotations

import shutil

import pytest

import torch

from _merge_helpers import no_partial_outputs, run_mergekit_configs, save_tiny_model, weights
from conftest import assert_input_error


@pytest.fixture(scope="module")
def hausa_tokenizer(corpora):
    """A tokenizer trained on Hausa only: the same special tokens and bytes, other merges at other ids."""
    from adaptkit import demo

    return demo.train_tokenizer(corpora["ha"].read_text().splitlines(), vocab_size=320)


@pytest.fixture(scope="module")
def hausa_dir(tmp_path_factory, hausa_tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("hausa"), hausa_tokenizer, seed=5)


def test_first_model_without_tokenizer_is_refused(invoke, make_model_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(make_model_dir("llama", 1), bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    out = tmp_path / "out"
    result = invoke("merge", "linear", "-m", bare, "-m", make_model_dir("llama", 2), "-o", out)
    assert_input_error(result, "--model", "/bare'", "no tokenizer files", "--tokenizer-from")
    assert not out.exists() and no_partial_outputs(tmp_path)
    named = invoke("merge", "linear", "-m", bare, "-m", make_model_dir("llama", 2), "--tokenizer-from", make_model_dir("llama", 2), "-o", out, "-q")
    assert named.returncode == 0, named
    assert (out / "tokenizer.json").is_file()


def test_base_with_another_vocabulary_is_refused(invoke, make_model_dir, hausa_dir, hausa_tokenizer, tokenizer, tmp_path):
    model = make_model_dir("llama", 1)
    same = [i for i in range(min(len(tokenizer), len(hausa_tokenizer))) if tokenizer.convert_ids_to_tokens(i) == hausa_tokenizer.convert_ids_to_tokens(i)]
    first = min(set(range(len(hausa_tokenizer))) - set(same))  # the first id the two tokenizers give to different tokens
    out = tmp_path / "out"
    # the base has fewer rows, which the vocabulary rule accepts (an extended --model): only the tokenizers tell them apart
    assert len(hausa_tokenizer) < len(tokenizer)
    result = invoke("merge", "task-arithmetic", "--base", hausa_dir, "-m", model, "-o", out)
    assert_input_error(result, "--base", f"id {first}", repr(hausa_tokenizer.convert_ids_to_tokens(first)), "--tokenizer-from")
    assert not out.exists() and no_partial_outputs(tmp_path)


def rows_by_token(directory) -> dict[str, dict[str, torch.Tensor]]:
    """{tensor: {token string: row}} of a model directory's embedding and head, through its own tokenizer."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab(with_added_tokens=True)
    tensors = weights(directory)
    return {name: {token: tensors[name][i] for token, i in vocab.items() if i < tensors[name].shape[0]} for name in VOCAB_TENSORS}


VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


@pytest.mark.slow  # two tokenizers, two merges
def test_union_merge_maps_rows_by_token_string(invoke, make_model_dir, hausa_dir, tokenizer, hausa_tokenizer, corpora, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = make_model_dir("llama", 1)
    out = tmp_path / "union"
    result = invoke("merge", "linear", "-m", first, "-m", hausa_dir, "--weight", "0.3", "--weight", "0.7", "--tokenizer-source", "union", "-o", out, "-q")
    assert result.returncode == 0, result
    a, b, merged = rows_by_token(first), rows_by_token(hausa_dir), rows_by_token(out)
    union = AutoTokenizer.from_pretrained(out)
    vocab = union.get_vocab()
    assert set(vocab) == set(tokenizer.get_vocab()) | set(hausa_tokenizer.get_vocab())
    assert all(vocab[t] == i for t, i in tokenizer.get_vocab().items())  # the first tokenizer's ids are kept
    for name in VOCAB_TENSORS:
        assert len(merged[name]) == len(vocab)
        for token, row in merged[name].items():
            if token in a[name] and token in b[name]:
                expected = 0.3 * a[name][token] + 0.7 * b[name][token]
            else:  # a token one model lacks: the other model's row, never another id's
                expected = a[name][token] if token in a[name] else b[name][token]
            assert torch.allclose(row, expected, atol=1e-6), (name, token)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(vocab)
    # the union segments a text as the first tokenizer does, then merges further with the other's merges
    for text in (corpora["en-test"].read_text(), corpora["ha-test"].read_text()):
        ids = union(text, add_special_tokens=False)["input_ids"]
        assert union.decode(ids) == text
        assert len(ids) <= len(tokenizer(text, add_special_tokens=False)["input_ids"])
    hausa = corpora["ha-test"].read_text()
    assert len(union(hausa)["input_ids"]) < len(tokenizer(hausa)["input_ids"])  # the Hausa tokenizer's tokens are used


@pytest.mark.slow  # mergekit's import and three merges
def test_same_rows_per_token_as_mergekit(invoke, make_model_dir, hausa_dir, tmp_path_factory, tmp_path):
    """mergekit's tokenizer_source (union, a model, base) on the same YAML: the same row for every token string.

    mergekit adds the union's new tokens as added tokens (in another order), so ids differ; token
    strings are compared. Equal bit for bit: both take or average the same rows in float32."""
    first = make_model_dir("llama", 1)
    two = [{"model": str(first), "parameters": {"weight": 0.3}}, {"model": str(hausa_dir), "parameters": {"weight": 0.7}}]
    configs = {
        "union": {"merge_method": "linear", "models": two, "tokenizer_source": "union", "dtype": "float32"},
        "model": {"merge_method": "linear", "models": two, "tokenizer_source": str(hausa_dir), "dtype": "float32"},
        "base": {"merge_method": "task_arithmetic", "base_model": str(hausa_dir), "models": [{"model": str(first), "parameters": {"weight": 0.5}}],
                 "tokenizer_source": "base", "dtype": "float32"},
    }
    outputs = run_mergekit_configs(configs, tmp_path_factory.mktemp("mergekit-vocab"), copy_tokenizer=True)
    for name, (config, reference) in outputs.items():
        result = invoke("merge", "--config", config, "-o", tmp_path / name, "-q")
        assert result.returncode == 0, result
        ours, theirs = rows_by_token(tmp_path / name), rows_by_token(reference)
        for tensor in VOCAB_TENSORS:
            assert ours[tensor].keys() == theirs[tensor].keys(), (name, set(ours[tensor]) ^ set(theirs[tensor]))
            worst = max((ours[tensor][t] - theirs[tensor][t]).abs().max().item() for t in theirs[tensor])
            assert worst <= 1e-8, (name, tensor, worst)
        rest_ours, rest_theirs = weights(tmp_path / name), weights(reference)
        assert all(torch.allclose(rest_ours[n], rest_theirs[n], atol=1e-8, rtol=0) for n in rest_theirs if n not in VOCAB_TENSORS)
