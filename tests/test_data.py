"""Corpora: formats, packing, the token cache, and bad data."""

from __future__ import annotations

import json

import pytest
import torch

from adaptkit.data import corpus
from adaptkit.errors import InputError


def test_text_jsonl_and_dataset_dir_give_the_same_stream(tmp_path, tokenizer):
    docs = ["Kowa yana da hakki.", "Everyone has the right to life.", "Ƴanci da adalci."]
    (tmp_path / "a.txt").write_text("\n".join(docs) + "\n\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    import datasets

    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "ds"))
    streams = [corpus.token_stream(tmp_path / name, tokenizer, use_cache=False) for name in ("a.txt", "a.jsonl", "ds")]
    assert torch.equal(streams[0], streams[1]) and torch.equal(streams[0], streams[2])
    expected = []
    for d in docs:
        expected += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert streams[0].tolist() == expected


def test_packing_drops_the_remainder():
    blocks = corpus.pack_blocks(torch.arange(10, dtype=torch.int32), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and blocks.dtype == torch.long


def test_second_run_reads_the_cache(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("ADAPTKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.txt").write_text("Everyone has the right to life.\n" * 5)
    first = corpus.token_stream(tmp_path / "a.txt", tokenizer)
    from adaptkit.data import store

    monkeypatch.setattr(store, "encode", lambda *a, **k: pytest.fail("tokenized twice"))
    assert torch.equal(first, corpus.token_stream(tmp_path / "a.txt", tokenizer))
    (tmp_path / "a.txt").write_text("changed text\n")
    with pytest.raises(pytest.fail.Exception):
        corpus.token_stream(tmp_path / "a.txt", tokenizer)


@pytest.mark.parametrize(
    "content, name, message",
    [
        ("", "empty.txt", "contains no text"),
        ('{"text": "ok"}\n{"body": "no text field"}\n', "rows.jsonl", "line 2 has no string field 'text'"),
        ('{"text": "ok"}\nnot json\n', "bad.jsonl", "line 2 is not valid JSON"),
        ("short\n", "short.txt", "fewer than one block of 512"),
    ],
)
def test_bad_data_names_the_problem(tmp_path, tokenizer, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        corpus.load_blocks([str(path)], tokenizer, 512, use_cache=False)


def test_missing_file(tmp_path, tokenizer):
    with pytest.raises(InputError, match="does not exist"):
        corpus.load_blocks([str(tmp_path / "nope.txt")], tokenizer, 8)
