"""Merging models whose tokenizers differ: refused unless the output's tokenizer is named."""

from __future__ import annotations

import shutil

import pytest

from _merge_helpers import no_partial_outputs, save_tiny_model
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
