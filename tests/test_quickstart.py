"""The quickstart: the whole pipeline on the embedded default, shrunk to seconds."""

from __future__ import annotations

import pytest

import json


@pytest.mark.slow
def test_quickstart_compares_methods_and_writes_the_report(tmp_path, invoke):
    out = tmp_path / "demo"
    result = invoke("quickstart", "-o", out, "--methods", "fft,ssu-wanda", "--source-steps", "30", "--steps", "6",
                    "--seq-len", "32", "--batch-size", "4", "--calib-samples", "4", "--json")
    assert result.returncode == 0, result
    summary = json.loads(result.stdout)
    models = summary["models"]
    assert set(models) == {"source", "fft", "ssu-wanda"}
    for name in ("fft", "ssu-wanda"):
        assert "source_gain_bpb" in models[name] and "target_gain_bpb" in models[name]
        assert (out / "runs" / name / "final" / "model.safetensors").is_file()
    assert models["ssu-wanda"]["trainable_fraction"] < models["fft"]["trainable_fraction"] == 1.0
    for name in ("results.json", "results.md", "tasks.png", "forgetting_learning.png"):
        assert (out / "eval" / name).is_file()
    # the study report: one row per model with the eval's numbers, the Pareto front, the frontier and all curves
    study = json.loads((out / "report" / "results.json").read_text())
    assert [row["model"] for row in study["models"]] == ["source", "fft", "ssu-wanda"]
    for row in study["models"]:
        assert row["en (source)"]["ppl"] == models[row["model"]]["en (source)"]["ppl"]
        assert row["target_gain_bpb"] == models[row["model"]].get("target_gain_bpb", 0.0)
    assert summary["pareto_front"] == [row["model"] for row in study["models"] if row["pareto"]] != []
    for name in ("results.md", "frontier.png", "curves.png"):
        assert (out / "report" / name).is_file()
    # the curves of each method: held-out source and target sets evaluated while it trained
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("fft", "ssu-wanda"):
        assert (out / "runs" / name / "curves.png").is_file()
        rows = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        evals = [(r["step"], r["eval"], r["role"]) for r in rows if "eval" in r]
        assert evals == [(s, lang, role) for s in range(0, 7) for lang, role in (("en", "source"), ("ha", "target"))]
        last = {r["eval"]: r["ppl"] for r in rows if "eval" in r and r["step"] == 6}
        # the last point of each curve is the perplexity the report gives for the trained model
        assert last["en"] == pytest.approx(models[name]["en (source)"]["ppl"], rel=1e-9)
        assert last["ha"] == pytest.approx(models[name]["ha (target)"]["ppl"], rel=1e-9)
    # every recorded path is relative to the demo directory, so the demo can be moved or resumed
    assert "model: runs/source/final" in (out / "runs" / "fft" / "config.yaml").read_text()
    assert not list(tmp_path.glob(".demo*"))


def test_quickstart_bad_input_writes_nothing(tmp_path, invoke):
    from conftest import assert_input_error

    out = tmp_path / "demo"
    assert_input_error(invoke("quickstart", "-o", out, "--methods", "fft,sssu-wanda"), "--methods", "did you mean: ssu-wanda")
    assert_input_error(invoke("quickstart", "-o", out, "--target-lang", "xx"), "--target-lang")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_chat_rendered_source_text_for_instruct_models(tmp_path, llama_dir, tokenizer):
    import shutil

    from adaptkit.commands.quickstart import _chat_rendered

    assert _chat_rendered(llama_dir, ["Everyone has rights."], tmp_path / "none.jsonl") is None
    chat_dir = tmp_path / "chat-model"
    shutil.copytree(llama_dir, chat_dir)
    templated = tokenizer.__class__.from_pretrained(chat_dir)
    templated.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}"
    templated.save_pretrained(chat_dir)
    path = _chat_rendered(chat_dir, ["Everyone has rights."], tmp_path / "chat.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"text": "<|user|>Quote a passage of the Universal Declaration of Human Rights.</s><|assistant|>Everyone has rights.</s>"}]
