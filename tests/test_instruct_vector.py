"""Instruction residuals: extract once, apply with any alpha, one-step form, added vocabulary rows."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _merge_helpers import close, copy_tokenizer, run_ok, weights

TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


@pytest.fixture(scope="module")
def family(make_model_dir, tmp_path_factory):
    """OLMo-2 base, an 'instruct' model with a chat template, and an 'adapted' base."""
    root = tmp_path_factory.mktemp("family")
    instruct = root / "instruct"
    shutil.copytree(make_model_dir("olmo2", 1), instruct)
    (instruct / "chat_template.jinja").write_text(TEMPLATE)
    return make_model_dir("olmo2", 0), instruct, make_model_dir("olmo2", 2)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_extract_apply_and_one_step(invoke, family, tmp_path):
    base, instruct, adapted = family
    result = run_ok(invoke, "instruct-vector", "extract", "--base", base, "--instruct", instruct, "-o", tmp_path / "iv", "--json")
    assert json.loads(result.stdout)["output"] == str(tmp_path / "iv")
    info = json.loads((tmp_path / "iv" / "instruct_vector.json").read_text())
    assert info["model_type"] == "olmo2" and set(info["inputs"]) == {"instruct", "base"}
    assert (tmp_path / "iv" / "chat_template.jinja").read_text() == TEMPLATE
    w0, wi, wa = weights(base), weights(instruct), weights(adapted)
    vector = weights(tmp_path / "iv", prefix="vector")
    close(vector, {n: wi[n] - w0[n] for n in w0}, atol=0)

    run_ok(invoke, "instruct-vector", "apply", "--model", adapted, "--vector", tmp_path / "iv", "--alpha", "0.5", "-o", tmp_path / "two", "-q")
    close(weights(tmp_path / "two"), {n: wa[n] + 0.5 * (wi[n] - w0[n]) for n in w0})
    assert (tmp_path / "two" / "chat_template.jinja").read_text() == TEMPLATE  # the adapted base had none

    run_ok(invoke, "instruct-vector", "apply", "--model", adapted, "--base", base, "--instruct", instruct, "--alpha", "0.5", "-o", tmp_path / "one", "-q")
    close(weights(tmp_path / "one"), {n: wi[n] + 0.5 * (wa[n] - w0[n]) for n in w0})

    run_ok(invoke, "instruct-vector", "apply", "--model", adapted, "--vector", tmp_path / "iv", "-o", tmp_path / "two1", "-q")
    run_ok(invoke, "instruct-vector", "apply", "--model", adapted, "--base", base, "--instruct", instruct, "-o", tmp_path / "one1", "-q")
    close(weights(tmp_path / "two1"), weights(tmp_path / "one1"))  # both forms agree at alpha = 1

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "two")
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<s>user: hi</s>"


def test_rows_of_tokens_added_by_adaptation_are_kept(invoke, family, tmp_path):
    from transformers import AutoModelForCausalLM

    base, instruct, adapted = family
    model = AutoModelForCausalLM.from_pretrained(adapted)
    old = model.config.vocab_size
    model.resize_token_embeddings(old + 8)
    model.save_pretrained(tmp_path / "extended")
    copy_tokenizer(adapted, tmp_path / "extended")  # 8 rows no token uses: the vocabularies agree on every shared id
    run_ok(invoke, "instruct-vector", "extract", "--base", base, "--instruct", instruct, "-o", tmp_path / "iv", "-q")
    run_ok(invoke, "instruct-vector", "apply", "--model", tmp_path / "extended", "--vector", tmp_path / "iv", "--alpha", "0.8", "-o", tmp_path / "two", "-q")
    run_ok(invoke, "instruct-vector", "apply", "--model", tmp_path / "extended", "--base", base, "--instruct", instruct, "--alpha", "0.8", "-o", tmp_path / "one", "-q")
    w0, wi, we = weights(base), weights(instruct), weights(tmp_path / "extended")
    two, one = weights(tmp_path / "two"), weights(tmp_path / "one")
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        assert two[n].shape[0] == old + 8
        assert torch.allclose(two[n][:old], we[n][:old] + 0.8 * (wi[n] - w0[n]), atol=1e-6)
        assert torch.allclose(one[n][:old], wi[n] + 0.8 * (we[n][:old] - w0[n]), atol=1e-6)
        assert torch.equal(two[n][old:], we[n][old:]) and torch.equal(one[n][old:], we[n][old:])
    assert "tokens added by adaptation" in (tmp_path / "two" / "merge_card.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two").config.vocab_size == old + 8


@pytest.mark.parametrize("arch,tied", [("olmo2", False), ("qwen2", True)])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_a_model_extended_by_vocab_extend_takes_the_vector(invoke, make_model_dir, tmp_path, arch, tied):
    """`vocab extend` (new rows appended, padded to a multiple of 64), then extract/apply and the one-step form:
    old rows follow the residual arithmetic, new and filler rows stay the extended model's, the output is still extended."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptkit import demo

    config = {"tie_word_embeddings": True} if tied else {}
    base, instruct, adapted = (make_model_dir(arch, seed, **config) for seed in (0, 1, 2))
    text = demo.write_lines(demo.split_corpus("ha")[0], tmp_path / "ha.txt")
    extended = tmp_path / "extended"
    run_ok(invoke, "vocab", "extend", "--model", adapted, "--data", text, "--add", "30", "--pad-to-multiple-of", "64", "-o", extended, "-q")
    record = json.loads((extended / "adaptkit_vocab.json").read_text())
    old, rows = record["old_vocab_size"], record["new_vocab_size"]
    assert rows % 64 == 0 and rows - old >= 30
    run_ok(invoke, "instruct-vector", "extract", "--base", base, "--instruct", instruct, "-o", tmp_path / "iv", "-q")
    run_ok(invoke, "instruct-vector", "apply", "--model", extended, "--vector", tmp_path / "iv", "--alpha", "0.8", "-o", tmp_path / "two", "-q")
    run_ok(invoke, "instruct-vector", "apply", "--model", extended, "--base", base, "--instruct", instruct, "--alpha", "0.8", "-o", tmp_path / "one", "-q")
    w0, wi, we = weights(base), weights(instruct), weights(extended)
    two, one = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert two.keys() == one.keys() == we.keys() == w0.keys()
    vocab_tensors = [n for n in w0 if we[n].shape != w0[n].shape]
    assert sorted(vocab_tensors) == (["model.embed_tokens.weight"] if tied else ["lm_head.weight", "model.embed_tokens.weight"])
    for n in w0:
        shared = w0[n].shape[0] if n in vocab_tensors else None  # all of a tensor the extension did not touch
        residual = wi[n] - w0[n]
        assert torch.allclose(two[n][:shared], we[n][:shared] + 0.8 * residual, atol=1e-6), n
        assert torch.allclose(one[n][:shared], wi[n] + 0.8 * (we[n][:shared] - w0[n]), atol=1e-6), n
        if shared is not None:
            assert two[n].shape[0] == one[n].shape[0] == rows and shared == old
            assert torch.equal(two[n][old:], we[n][old:]) and torch.equal(one[n][old:], we[n][old:]), n
    for out in (tmp_path / "two", tmp_path / "one"):
        assert json.loads((out / "adaptkit_vocab.json").read_text()) == record  # still an extended model (train_embeddings=new-only)
        tokenizer = AutoTokenizer.from_pretrained(out)
        ids = tokenizer(text.read_text(encoding="utf-8").splitlines()[0], add_special_tokens=False)["input_ids"]
        assert any(i >= old for i in ids)  # the extended tokenizer came along
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert model.config.vocab_size == rows and model(torch.tensor([ids])).logits.shape[-1] == rows
