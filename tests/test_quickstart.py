"""The quickstart: the whole pipeline on the embedded default, shrunk to seconds."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest


ARGS = ("--methods", "fft,ssu-wanda", "--source-steps", "30", "--steps", "6", "--seq-len", "32", "--batch-size", "4", "--calib-samples", "4")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One quickstart run on the embedded default, shrunk to seconds: (its directory, its --json summary)."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("quickstart") / "demo"
    result = run_cli("quickstart", "-o", out, *ARGS, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


@pytest.mark.slow
def test_quickstart_compares_methods_and_writes_the_report(demo):
    out, summary = demo
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
        assert row["en"]["ppl"] == models[row["model"]]["en (source)"]["ppl"]
        assert row["ha"]["bits_per_byte"] == models[row["model"]]["ha (target)"]["bits_per_byte"]
        assert row["target_gain_bpb"] == models[row["model"]]["target_gain_bpb"]
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
    # every recorded path is relative to the demo directory, so the demo can be moved
    config = (out / "runs" / "fft" / "config.yaml").read_text()
    assert "model: runs/source/final" in config and "tokens/ha" in config and str(out.parent) not in config
    assert not list(out.parent.glob(".demo*"))


@pytest.mark.slow
def test_quickstart_directory_is_a_study_directory(demo):
    """`adaptkit study`'s runner, given the quickstart's study, accepts its plan and finds every run finished and
    its data prepared; the report table is what report.study_rows computes from the eval results."""
    from adaptkit.commands.quickstart import Settings, build_study
    from adaptkit.errors import InputError
    from adaptkit.study import report, state

    out, summary = demo
    here = Path(".")
    files = {"source": "en-train", "source-test": "en-test", "target": "ha-train", "target-test": "ha-test"}
    files = {role: Path("data") / f"{stem}.txt" for role, stem in files.items()}
    params = {"fft": {}, "ssu-wanda": {"freeze_ratio": 0.5}}
    with contextlib.chdir(out):
        study = build_study(Path("runs/source/final"), files, params, Settings("en", "ha", 6, 32, 4, 1e-3, 4, 0))
        assert sorted(json.loads(Path("plan.json").read_text())["runs"]) == ["fft", "ssu-wanda"]
        state.open_study_dir(study, here, overwrite=False)  # the same plan: accepted
        other = build_study(Path("runs/source/final"), files, params, Settings("en", "ha", 7, 32, 4, 1e-3, 4, 0))
        with pytest.raises(InputError, match="holds another study"):
            state.open_study_dir(other, here, overwrite=False)
        said: list[str] = []
        state.execute(study, here, said.append)
        assert said == ["study: run 1/2 fft: finished, skipped", "study: run 2/2 ssu-wanda: finished, skipped"]
        results = json.loads(Path("eval/results.json").read_text())
        evaluation = {name: {**{s: {k: results["results"][name][s][k] for k in ("ppl", "bits_per_byte")} for s in ("en", "ha")},
                             **results["summary"].get(name, {})} for name in ("source", "fft", "ssu-wanda")}
        rows = report.study_rows(study, here, evaluation)
        assert json.loads(Path("report/results.json").read_text())["models"] == json.loads(json.dumps(rows))
        assert Path("report/results.md").read_text() == report.markdown(rows, ["en", "ha"])
        for row in rows[1:]:  # each run's settings as its `adaptkit train --json` result gave them
            record = json.loads(Path("results", f"{row['model']}.json").read_text())
            assert (row["trainable_fraction"], row["train_seconds"]) == (record["trainable_fraction"], record["seconds"])
            assert summary["models"][row["model"]]["trainable_fraction"] == record["trainable_fraction"]


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


def test_study_steps_run_in_process_give_their_stdout_or_fail_as_the_study(tmp_path, capfd):
    """The quickstart runs the study's commands through its own CLI: the command's stdout comes back whole, a
    failed step stops the study (its bad input is the study's runtime failure, exit 1) naming the command."""
    from adaptkit.cli import run_in_process
    from adaptkit.commands.quickstart import steps_in_process
    from adaptkit.errors import AdaptkitError
    from adaptkit.study.state import cli

    _in_process = steps_in_process(run_in_process)

    listed = json.loads(_in_process([*cli(), "plugins", "--kind", "method", "--json"], "listing"))
    assert {"fft", "ssu-wanda"} <= {p["name"] for p in listed["plugins"]}
    missing = tmp_path / "missing"
    with pytest.raises(AdaptkitError, match=r"study: run x failed \(exit 2\): .* train --model .*missing") as error:
        _in_process([*cli(), "train", "--model", str(missing), "--data", str(missing), "-o", str(tmp_path / "out")], "run x")
    assert error.value.exit_code == 1
    assert "--model" in capfd.readouterr().err and not (tmp_path / "out").exists()


def test_a_method_whose_extra_is_missing_is_refused_before_anything_is_written(tmp_path, invoke, monkeypatch):
    from conftest import assert_input_error

    from adaptkit import specs

    real = specs.missing_package
    monkeypatch.setattr(specs, "missing_package", lambda extra: "peft" if extra == "peft" else real(extra))
    out = tmp_path / "demo"
    assert_input_error(invoke("quickstart", "--methods", "fft,lora", "-o", out), "--methods", "method 'lora'", "adaptkit[peft]")
    assert not out.exists()
