"""--packing doc-mask: documents packed into one block neither attend to each other nor share positions.

The test computes each document's summed token loss inside a packed block (the engine's model
inputs) and alone (the document's tokens as their own sequence, positions from 0), with the same
tiny model, and requires them equal to 1e-6 relative (float32; only the summation order of the
attention differs). The default packing (concat) is the control: its losses differ.
"""

from __future__ import annotations

import json

import pytest
import torch

from adaptkit.engine.batches import document_ids, model_inputs


def _token_losses(model, inputs):
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    labels = inputs["labels"]
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")


def _documents(tokenizer, texts):
    eos = tokenizer.eos_token_id
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_per_document_losses_of_a_packed_block_equal_each_document_alone(llama_dir, corpora, tokenizer, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation=attn).eval()
    docs = _documents(tokenizer, corpora["ha"].read_text().splitlines()[3:7])
    block = torch.tensor([sum(docs, [])])
    packed = model_inputs(block, "doc-mask", tokenizer.eos_token_id, attn)
    with torch.no_grad():
        losses = _token_losses(model, packed)[0]
        plain = _token_losses(model, model_inputs(block, "concat", tokenizer.eos_token_id, attn))[0]
    start = 0
    for doc in docs:
        with torch.no_grad():
            alone = _token_losses(model, {"input_ids": torch.tensor([doc]), "labels": torch.tensor([doc])})[0].sum()
        inside = losses[start:start + len(doc) - 1].sum()  # the predictions of tokens 1.. of this document
        assert torch.allclose(inside, alone, rtol=1e-6, atol=0), (inside, alone)
        if start:  # after the first document the default packing sees the earlier ones: another loss
            assert (plain[start:start + len(doc) - 1].sum() - alone).abs() > 10 * 1e-6 * alone.abs()  # 10x the tolerance
            assert losses[start - 1] == 0  # the EOS -> next document prediction is not trained on
        start += len(doc)
    assert int((packed["labels"] == -100).sum()) == len(docs) - 1
    assert packed["position_ids"][0].tolist() == [i for doc in docs for i in range(len(doc))]


def test_document_ids_split_after_each_eos():
    ids = torch.tensor([[5, 2, 7, 8, 2, 9], [2, 4, 4, 4, 2, 2]])
    assert document_ids(ids, 2).tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 2]]
    assert document_ids(ids, None).tolist() == [[0] * 6, [0] * 6]


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_train_with_doc_mask_packing(tmp_path, llama_dir, corpora, invoke):
    args = ["--model", llama_dir, "--data", corpora["ha"], "--max-steps", "3", "--seq-len", "64", "--batch-size", "2",
            "--lr", "1e-2", "--quiet", "--json"]
    masked = invoke("train", *args, "--packing", "doc-mask", "-o", tmp_path / "masked")
    plain = invoke("train", *args, "-o", tmp_path / "plain")
    assert masked.returncode == 0 and plain.returncode == 0, (masked, plain)
    assert json.loads(masked.stdout)["final_loss"] != json.loads(plain.stdout)["final_loss"]
    assert "packing doc-mask" in (tmp_path / "masked" / "run_card.md").read_text()
    bad = invoke("train", *args, "--packing", "segments", "-o", tmp_path / "bad")
    assert bad.returncode == 2 and "--packing" in bad.stderr and not (tmp_path / "bad").exists()
