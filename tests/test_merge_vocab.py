"""Merging models whose tokenizers differ: refused unless the output's tokenizer is named; with
--tokenizer-source (base, union, a model) rows are mapped by token string, checked per token
against rows computed here and against mergekit's tokenizer_source."""

from __future__ import annotations

import shutil

import pytest

import torch

from helpers import no_partial_outputs, run_mergekit_configs, save_tiny_model, weights
from conftest import assert_input_error


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


@pytest.mark.slow  # three merges
def test_row_blocks_merge_as_whole_tensors_bit_for_bit(make_model_dir, hausa_dir, tmp_path, monkeypatch):
    """A method declared row-separable (linear) merges the vocabulary tensors of a union a block of
    rows at a time, from the inputs' original tensors: byte for byte the output of the same method on
    whole rebuilt tensors; the inputs' hashes (rebuilt tensors are read a chunk of rows at a time)
    are those of whole reads."""
    from adaptkit.merge import vocab_tensors
    from adaptkit.merge.executor import Input, MergeOptions, run_merge
    from adaptkit.plugins.merges.linear import Linear, LinearParams

    class WholeLinear(Linear):
        row_separable = False

    blocks = []
    monkeypatch.setattr(vocab_tensors, "CHUNK", 64)  # the union has about 600 rows: several blocks
    monkeypatch.setattr(vocab_tensors, "READ_CHUNK", 50)  # and several chunks read into each rebuilt tensor
    monkeypatch.setattr(vocab_tensors.VocabTensors, "blocks", lambda self, *a, _blocks=vocab_tensors.VocabTensors.blocks: blocks.append(1) or _blocks(self, *a))
    models = [Input("model", make_model_dir("llama", 1), "--model"), Input("model", hausa_dir, "--model")]
    params = LinearParams(weight=[0.3, 0.7])
    block_run = run_merge(Linear(), params, models, tmp_path / "blocks", options=MergeOptions(tokenizer_source="union"))
    assert len(blocks) == len(VOCAB_TENSORS)
    whole_run = run_merge(WholeLinear(), params, models, tmp_path / "whole", options=MergeOptions(tokenizer_source="union"))
    assert len(blocks) == len(VOCAB_TENSORS)  # the whole path took no blocks
    assert (tmp_path / "blocks" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    same = run_merge(Linear(), params, [models[1], models[1]], tmp_path / "same")  # one vocabulary: whole reads
    hashes = [run["inputs"][1]["weights_hash"] for run in (block_run, whole_run, same)]
    assert hashes[0] == hashes[1] == hashes[2]


@pytest.mark.slow  # two merges
def test_row_statistics_merge_in_two_passes_as_whole_tensors(make_model_dir, hausa_dir, tmp_path, monkeypatch):
    """SLERP (row statistics: the angle of the whole tensors) merges a union's vocabulary tensors in
    two passes over blocks of rows, never rebuilding the inputs whole: the statistics summed over
    the blocks, then each block merged; the same rows as SLERP on whole rebuilt tensors (float64 sums
    in another order: within 1e-7), the same input hashes."""
    from safetensors.torch import load_file

    from adaptkit.merge import vocab_tensors
    from adaptkit.merge.executor import Input, MergeOptions, run_merge
    from adaptkit.plugins.merges.slerp import Slerp, SlerpParams

    class WholeSlerp(Slerp):
        row_statistics = False

    passes = []
    monkeypatch.setattr(vocab_tensors, "CHUNK", 64)  # several blocks of the union's rows
    original = vocab_tensors.VocabTensors.blocks
    monkeypatch.setattr(vocab_tensors.VocabTensors, "blocks", lambda self, *a, **k: passes.append(k.get("first_pass") is not None) or original(self, *a, **k))
    models = [Input("model", make_model_dir("llama", 1), "--model"), Input("model", hausa_dir, "--model")]
    two_pass = run_merge(Slerp(), SlerpParams(t=0.3), models, tmp_path / "blocks", options=MergeOptions(tokenizer_source="union"))
    assert passes == [True] * len(VOCAB_TENSORS)
    whole = run_merge(WholeSlerp(), SlerpParams(t=0.3), models, tmp_path / "whole", options=MergeOptions(tokenizer_source="union"))
    assert len(passes) == len(VOCAB_TENSORS)  # the whole path took no blocks
    ours, theirs = load_file(tmp_path / "blocks" / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert torch.allclose(ours[name], theirs[name], atol=1e-7, rtol=0), (name, (ours[name] - theirs[name]).abs().max())
    assert [i["weights_hash"] for i in two_pass["inputs"]] == [i["weights_hash"] for i in whole["inputs"]]


@pytest.mark.slow  # mergekit's import and three merges
def test_same_rows_per_token_as_mergekit(invoke, make_model_dir, hausa_dir, tmp_path_factory, tmp_path):
    """mergekit's tokenizer_source (union, a model, base) on the same YAML: the same row for every token string.

    mergekit adds the union's new tokens as added tokens (in another order), so ids differ; token
    strings are compared: the same token set, rows within 1e-8 (linear's weighted sum rounds in
    another order than mergekit's: one float32 ulp)."""
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


@pytest.mark.slow  # four runs of instruct-vector
def test_instruction_residual_across_vocabularies(invoke, make_model_dir, hausa_dir, tmp_path):
    """An instruct/base pair on one vocabulary applied to a model on another, one step and two steps."""
    base, instruct = make_model_dir("llama", 0), make_model_dir("llama", 1)
    refused = invoke("instruct-vector", "apply", "--model", hausa_dir, "--base", base, "--instruct", instruct, "-o", tmp_path / "no")
    assert refused.returncode == 2 and "--tokenizer-source" in refused.stderr
    run = lambda *args: invoke("instruct-vector", *map(str, args), "-q")
    assert run("apply", "--model", hausa_dir, "--base", base, "--instruct", instruct, "--alpha", "0.5", "--tokenizer-source", hausa_dir, "-o", tmp_path / "one").returncode == 0
    assert run("extract", "--base", base, "--instruct", instruct, "-o", tmp_path / "iv").returncode == 0
    assert run("apply", "--model", hausa_dir, "--vector", tmp_path / "iv", "--alpha", "0.8", "--tokenizer-source", hausa_dir, "-o", tmp_path / "two").returncode == 0
    m, b, i = rows_by_token(hausa_dir), rows_by_token(base), rows_by_token(instruct)
    one, two = rows_by_token(tmp_path / "one"), rows_by_token(tmp_path / "two")
    for name in VOCAB_TENSORS:
        assert one[name].keys() == m[name].keys() == two[name].keys()  # the model's vocabulary
        shared = [t for t in m[name] if t in b[name]]
        only = [t for t in m[name] if t not in b[name]]
        assert shared and only
        for t in shared:  # theta_instruct + alpha (theta_model - theta_base), per token string
            assert torch.allclose(one[name][t], i[name][t] + 0.5 * (m[name][t] - b[name][t]), atol=1e-6), t
            assert torch.allclose(two[name][t], m[name][t] + 0.8 * (i[name][t] - b[name][t]), atol=1e-6), t
        for t in only:  # no instruction residual exists for a token the pair lacks: the model's row
            assert torch.equal(one[name][t], m[name][t]) and torch.equal(two[name][t], m[name][t]), t


@pytest.mark.parametrize("args,fragments", [
    (["--tokenizer-source", "{other}"], ["--tokenizer-source", "is not among the inputs"]),
    (["--tokenizer-source", "base"], ["--tokenizer-source", "no --base"]),
    (["--tokenizer-source", "union", "--tokenizer-from", "{a}"], ["--tokenizer-from", "not both"]),
    (["--tokenizer-source", "union", "--vocab-init", "nope"], ["--vocab-init", "nope"]),
])
def test_bad_tokenizer_sources_are_refused(invoke, make_model_dir, hausa_dir, tmp_path, args, fragments):
    paths = {"a": make_model_dir("llama", 1), "other": make_model_dir("llama", 2)}
    out = tmp_path / "out"
    result = invoke("merge", "linear", "-m", paths["a"], "-m", hausa_dir, *[a.format(**paths) for a in args], "-o", out)
    assert_input_error(result, *fragments)
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow  # a union merge
def test_vocab_init_gives_a_missing_token_the_mean_of_its_own_pieces(invoke, make_model_dir, hausa_dir, tokenizer, tmp_path):
    first = make_model_dir("llama", 1)
    out = tmp_path / "out"
    result = invoke("merge", "linear", "-m", first, "-m", hausa_dir, "--tokenizer-source", "union", "--vocab-init", "subword-mean", "-o", out, "-q")
    assert result.returncode == 0, result
    a, b, merged = rows_by_token(first), rows_by_token(hausa_dir), rows_by_token(out)
    only_b = [t for t in b["lm_head.weight"] if t not in a["lm_head.weight"]]
    assert only_b
    own = weights(first)
    for name in VOCAB_TENSORS:
        for token in only_b:  # the first model's row: the mean of its rows for the pieces its own BPE splits the token into
            pieces = [piece.id for piece in tokenizer.backend_tokenizer.model.tokenize(token)]
            expected = 0.5 * own[name][pieces].mean(dim=0) + 0.5 * b[name][token]
            assert torch.allclose(merged[name][token], expected, atol=1e-6), (name, token)


@pytest.mark.slow  # a tokenizer and a model built here
def test_output_tokenizer_without_the_models_special_token_is_refused(invoke, make_model_dir, corpora, tmp_path):
    """The first model's special tokens must exist in the output vocabulary (their config ids are moved to them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpora["ha"].read_text().splitlines(), trainer=trainer)
    other = save_tiny_model(tmp_path / "other", PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|end|>"),
                            seed=3, bos_token_id=None, eos_token_id=1, pad_token_id=None)
    out = tmp_path / "out"
    result = invoke("merge", "linear", "-m", make_model_dir("llama", 1), "-m", other, "--tokenizer-source", other, "-o", out)
    assert_input_error(result, "--tokenizer-source", "'<s>'", "bos_token_id")
    assert not out.exists()


def test_a_union_past_the_id_limit_is_refused_before_any_tensor(invoke, make_model_dir, hausa_dir, tmp_path, monkeypatch):
    """A union whose ids could not be addressed is bad input: one line naming --tokenizer-source, nothing
    written. (The real limit is 2**31 - 1 ids; here it is lowered below the two tiny tokenizers' union.)"""
    import adaptkit.merge.vocab as vocab

    monkeypatch.setattr(vocab, "MAX_IDS", 300)
    out = tmp_path / "out"
    result = invoke("merge", "linear", "-m", make_model_dir("llama", 1), "-m", hausa_dir, "--tokenizer-source", "union", "-o", out)
    assert_input_error(result, "--tokenizer-source", "token ids, more than the 300")
    assert not out.exists() and not list(tmp_path.iterdir())
