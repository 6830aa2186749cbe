"""Model cards (README.md) of train, merge, instruct-vector and vocab-extend outputs, in the Hub's format."""

from __future__ import annotations

import json
import types

import pytest
from huggingface_hub import ModelCard

COMMON = ["--seq-len", "32", "--batch-size", "4", "--quiet"]


def _card(directory):
    """The card as the Hub's own loader reads it (it raises on a malformed card)."""
    card = ModelCard.load(directory / "README.md", ignore_metadata_errors=False)
    return card


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_train_final_has_a_hub_model_card(tmp_path, llama_dir, corpora, invoke):
    out = tmp_path / "run"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, "--max-steps", "2",
                    "--eval-data", f"ha={corpora['ha-test']}:target", "--eval-steps", "1",
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
    losses = [r for r in rows if "loss" in r]
    assert f"{losses[-1]['loss']:.6g}" in card.text
    evals = [r for r in rows if "eval" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    table = card.text[card.text.index("## Evaluation results"):]
    assert all(f"| {r['step']} | ha | target | {r['ppl']:.6g} |" in table for r in evals), table
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
    assert hub_id("hub:HuggingFaceFW/fineweb-2:hau_Latn@train", "datasets") == "HuggingFaceFW/fineweb-2"
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


# --push-to-hub: everything up to the upload (no Hub here); the HfApi calls are recorded, not made.
TOKEN = "hf_secretTOKEN0123456789"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A logged-in, online environment whose HfApi records the calls (and the uploaded files' bytes)."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        calls.append(("create_branch", repo_id, kw))

    def create_commit(self, repo_id, operations, **kw):
        files = {op.path_in_repo: open(op.path_or_fileobj, "rb").read() for op in operations}
        calls.append(("create_commit", repo_id, {**kw, "files": files}))
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def _no_token_anywhere(result, directory):
    assert TOKEN not in result.stdout + result.stderr
    assert all(TOKEN.encode() not in p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_train_push_uploads_final_and_run_records(tmp_path, llama_dir, corpora, invoke, hub):
    out = tmp_path / "run"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, "--max-steps", "1",
                    "--push-to-hub", "me/hausa-fft", "--private", "--revision", "exp", "--json", *COMMON)
    assert result.returncode == 0, result
    assert [c[0] for c in hub] == ["create_repo", "create_branch", "create_commit"]
    assert hub[0][2]["private"] is True and hub[1][2]["branch"] == "exp" and hub[2][2]["revision"] == "exp"
    files = hub[2][2]["files"]
    final = {p.relative_to(out / "final").as_posix() for p in (out / "final").rglob("*") if p.is_file()}
    assert set(files) == final | {"run/run_card.md", "run/config.yaml", "run/metrics.jsonl"}
    assert files["model.safetensors"] == (out / "final" / "model.safetensors").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.tags == ["adaptkit", "fft"] and card.data.library_name == "transformers"
    assert json.loads(result.stdout)["hub"] == "https://huggingface.co/me/hausa-fft/commit/abc"
    _no_token_anywhere(result, out)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_merge_vocab_and_instruct_vector_push_their_output_directory(tmp_path, make_model_dir, corpora, invoke, hub):
    a, b = make_model_dir("llama", 1), make_model_dir("llama", 2)
    result = invoke("merge", "linear", "--model", a, "--model", b, "-o", tmp_path / "m", "--push-to-hub", "me/m", "-q")
    assert result.returncode == 0, result
    expected = {p.name for p in (tmp_path / "m").iterdir()}
    assert set(hub[-1][2]["files"]) == expected and {"README.md", "merge_card.md", "config.json"} <= expected
    assert hub[-1][2]["revision"] is None and hub[0][2]["private"] is False

    result = invoke("vocab", "extend", "--model", a, "--data", corpora["ha"], "--add", "10", "-o", tmp_path / "v", "--push-to-hub", "me/v", "-q")
    assert result.returncode == 0, result
    assert hub[-1][1] == "me/v" and "adaptkit_vocab.json" in hub[-1][2]["files"]

    base, instruct, adapted = make_model_dir("olmo2", 0), make_model_dir("olmo2", 1), make_model_dir("olmo2", 2)
    result = invoke("instruct-vector", "apply", "--model", adapted, "--base", base, "--instruct", instruct, "-o", tmp_path / "iv",
                    "--push-to-hub", "me/iv", "-q")
    assert result.returncode == 0, result
    assert hub[-1][1] == "me/iv" and "README.md" in hub[-1][2]["files"]
    _no_token_anywhere(result, tmp_path)


@pytest.mark.parametrize("command", ["train", "merge", "vocab", "instruct-vector"])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_push_refused_before_any_work(tmp_path, llama_dir, corpora, invoke, monkeypatch, command):
    """Offline mode, no login, a bad id, --private alone: one line, exit 2, nothing written, no model loaded."""
    from conftest import assert_input_error
    from huggingface_hub import constants

    import adaptkit.io.models as models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "out"
    args = {
        "train": ["train", "--model", llama_dir, "--data", corpora["ha"], *COMMON],
        "merge": ["merge", "linear", "--model", llama_dir, "--model", llama_dir],
        "vocab": ["vocab", "extend", "--model", llama_dir, "--data", corpora["ha"], "--add", "5"],
        "instruct-vector": ["instruct-vector", "apply", "--model", llama_dir, "--base", llama_dir, "--instruct", llama_dir],
    }[command] + ["-o", out]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_input_error(invoke(*args, "--push-to-hub", "me/x"), "--push-to-hub", "HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert_input_error(invoke(*args, "--push-to-hub", "me/x"), "--push-to-hub", "no Hub token")
    assert_input_error(invoke(*args, "--push-to-hub", "me/bad id!"), "--push-to-hub", "not a Hub repository id")
    assert_input_error(invoke(*args, "--private"), "--private", "only with --push-to-hub")
    assert not out.exists()


def test_a_failed_upload_is_one_line_and_keeps_the_output(tmp_path, make_model_dir, invoke, hub, monkeypatch):
    from huggingface_hub import HfApi

    def refuse(self, repo_id, **kw):
        raise RuntimeError("403 Forbidden: you cannot write to this repository\nmore detail")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    result = invoke("merge", "linear", "--model", make_model_dir("llama", 1), "--model", make_model_dir("llama", 2), "-o", tmp_path / "m", "--push-to-hub", "me/m")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "403 Forbidden" in lines[-1] and "kept locally" in lines[-1] and "more detail" not in result.stderr
    assert (tmp_path / "m" / "README.md").is_file()
