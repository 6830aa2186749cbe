"""Model cards (README.md) of train, merge, instruct-vector and vocab-extend outputs, in the Hub's format."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

COMMON = ["--seq-len", "32", "--batch-size", "4", "--quiet"]


def _card(directory):
    """The card as the Hub's own loader reads it (it raises on a malformed card)."""
    card = ModelCard.load(directory / "README.md", ignore_metadata_errors=False)
    return card


def test_train_final_has_a_hub_model_card(tmp_path, llama_dir, corpora, invoke):
    out = tmp_path / "run"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, "--max-steps", "2",
                    "--set", "language=ha", "--set", "log_steps=1", *COMMON)
    assert result.returncode == 0, result
    card = _card(out / "final")
    data = card.data
    assert data.library_name == "transformers"
    assert data.tags == ["adaptkit", "fft"]
    assert data.language == ["ha"]
    assert data.base_model is None  # a local directory is no Hub id: named in the text only
    assert f"`{llama_dir}`" in card.text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert f"{rows[-1]['loss']:.6g}" in card.text
    assert "| learning rate | 5e-05 |" in card.text
    assert "| sequence length | 32 |" in card.text


def _with_card(directory, tmp_path, name, language):
    """A copy of a model directory whose README.md is a card declaring `language`."""
    import shutil

    from adaptkit.io.model_card import CardInfo, write_model_card

    copy = tmp_path / name
    shutil.copytree(directory, copy)
    write_model_card(copy, CardInfo(title=name, method="fft", relation="finetune", summary="s", languages=[language]))
    return copy


def test_merge_output_card_names_inputs_and_inherits_languages(tmp_path, make_model_dir, invoke):
    a = _with_card(make_model_dir("llama", 1), tmp_path, "a", "ha")
    b = _with_card(make_model_dir("llama", 2), tmp_path, "b", "yo")
    result = invoke("merge", "linear", "--model", a, "--model", b, "--weight", "0.25", "--weight", "0.75", "-o", tmp_path / "m", "-q")
    assert result.returncode == 0, result
    card = _card(tmp_path / "m")
    assert card.data.tags == ["adaptkit", "linear"] and card.data.language == ["ha", "yo"]
    assert card.data.library_name == "transformers"
    assert f"`{a.resolve()}`" in card.text and f"`{b.resolve()}`" in card.text
    assert "| weight | `[0.25, 0.75]` |" in card.text
    assert (tmp_path / "m" / "merge_card.md").is_file()


def test_instruct_vector_apply_has_a_card_and_the_vector_none(tmp_path, make_model_dir, invoke):
    base, instruct, adapted = make_model_dir("olmo2", 0), make_model_dir("olmo2", 1), make_model_dir("olmo2", 2)
    assert invoke("instruct-vector", "extract", "--base", base, "--instruct", instruct, "-o", tmp_path / "iv", "-q").returncode == 0
    assert not (tmp_path / "iv" / "README.md").exists()  # an instruction vector is not a model
    result = invoke("instruct-vector", "apply", "--model", adapted, "--vector", tmp_path / "iv", "--alpha", "0.5", "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result
    card = _card(tmp_path / "out")
    assert card.data.tags == ["adaptkit", "instruct-vector-apply"]
    assert "| alpha | 0.5 |" in card.text and f"`{adapted.resolve()}`" in card.text


def test_vocab_extend_card_reports_tokens_and_fertility(tmp_path, make_model_dir, corpora, invoke):
    source = _with_card(make_model_dir("llama"), tmp_path, "src", "en")
    result = invoke("vocab", "extend", "--model", source, "--data", corpora["ha"], "--add", "20", "-o", tmp_path / "x", "--json")
    assert result.returncode == 0, result
    record = json.loads(result.stdout)
    card = _card(tmp_path / "x")
    assert card.data.tags == ["adaptkit", "vocab-extend"] and card.data.language == ["en"]
    assert f"extended by 20 BPE tokens" in card.text
    assert f"{record['old_vocab_size']} -> {record['new_vocab_size']}" in card.text
    after = record["report"][0]["after"]["tokens_per_word"]
    assert f"{after:.6g}" in card.text


def test_hub_ids_go_into_metadata_and_local_paths_do_not(tmp_path):
    from adaptkit.io.model_card import CardInfo, hub_id, render

    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    dataset = tmp_path / "hub" / "datasets--allenai--c4" / "snapshots" / "x"
    dataset.mkdir(parents=True)
    local = tmp_path / "mine"
    local.mkdir()
    assert hub_id(str(snapshot)) == "HuggingFaceTB/SmolLM2-135M"
    assert hub_id(str(dataset), "datasets") == "allenai/c4" and hub_id(str(dataset)) is None
    assert hub_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert hub_id(str(local)) is None and hub_id("missing/dir/deeper") is None and hub_id("m.gguf") is None
    one = ModelCard(render(CardInfo(title="t", method="ssu-wanda", relation="finetune", summary="s", bases=[str(snapshot)],
                                    data=[str(dataset), str(local / "a.txt")], languages=["ha", "en"])))
    assert one.data.base_model == "HuggingFaceTB/SmolLM2-135M" and one.data.base_model_relation == "finetune"
    assert one.data.datasets == ["allenai/c4"] and one.data.language == ["ha", "en"]
    two = ModelCard(render(CardInfo(title="t", method="ties", relation="merge", summary="s", bases=["a/b", "c/d", str(local)])))
    assert two.data.base_model == ["a/b", "c/d"] and two.data.base_model_relation == "merge"
    none = ModelCard(render(CardInfo(title="t", method="fft", relation="finetune", summary="s", bases=[str(local)])))
    assert none.data.base_model is None and getattr(none.data, "base_model_relation", None) is None
    with pytest.raises(ValueError):
        CardInfo(title="t", method="fft", relation="continued", summary="s")


def test_evaluation_rows_of_metrics_become_the_results_table():
    from adaptkit.engine.cards import evaluation_rows

    rows = [{"step": 1, "loss": 2.0, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 9.0, "elapsed_s": 1.0},
            {"step": 2, "loss": 1.5, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 9.0, "elapsed_s": 2.0, "eval/ha_ppl": 12.5}]
    assert evaluation_rows(rows) == [{"step": 2, "eval/ha_ppl": 12.5}]
