"""--report-to: TensorBoard, MLflow, W&B (offline) and trackio, each read back from its real local store."""

from __future__ import annotations

import json
import types

import pytest

from conftest import assert_input_error, run_cli

STEPS = 3
RUN_NAME = "hausa-fft"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, make_model_dir, corpora):
    """One real training run (its own process) reporting to all four trackers, with evaluation rows
    (--eval-data) and, in the training rows, a nested extra value added by a sitecustomize on the path."""
    root = tmp_path_factory.mktemp("tracked")
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import adaptkit.engine.metrics as metrics\n"
        "_flush = metrics.MetricsLog.flush\n"
        "def flush(self, step, lr, grad_norm):\n"
        "    row = _flush(self, step, lr, grad_norm)\n"
        "    row['extra'] = {'score': 100.0 / step, 'name': 'text is left out'}\n"
        "    return row\n"
        "metrics.MetricsLog.flush = flush\n"
    )
    import os

    out = root / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(root / "trackio"), "MLFLOW_TRACKING_URI": "",
           "PYTHONPATH": f"{os.environ.get('PYTHONPATH', '')}:{hook}"}
    result = run_cli("train", "--model", make_model_dir("llama"), "--data", corpora["ha"], "-o", out, "--max-steps", str(STEPS),
                     "--seq-len", "32", "--batch-size", "4", "--set", "log_steps=1", "--quiet",
                     "--eval-data", f"ha={corpora['ha-test']}:target", "--eval-steps", "1",
                     "--report-to", "tensorboard,mlflow,wandb,trackio", "--run-name", RUN_NAME, "--project", "adapt-test", env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows, evals = [r for r in lines if "loss" in r], [r for r in lines if "eval" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and rows[0]["extra"]["score"] == 100.0
    assert [r["step"] for r in evals] == list(range(0, STEPS + 1))
    return types.SimpleNamespace(out=out, rows=rows, evals=evals, root=root)


def _expected(rows, key):
    return [(r["step"], r[key]) for r in rows]


def _same_series(got, rows, key):
    """(step, value) pairs equal to metrics.jsonl's (values as float32 or better)."""
    expected = _expected(rows, key)
    assert [s for s, _ in got] == [s for s, _ in expected], (got, expected)
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


@pytest.mark.slow  # reads the module's real training process, reporting to four trackers
def test_tensorboard_event_files_hold_every_row_and_the_config(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    directory = tracked.out / "logs" / "adapt-test"
    events = EventAccumulator(str(directory))
    events.Reload()
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        _same_series([(e.step, e.value) for e in events.Scalars(key)], tracked.rows, key)
    assert [e.value for e in events.Scalars("extra/score")] == pytest.approx([100.0 / s for s in range(1, STEPS + 1)])
    assert "extra/name" not in events.Tags()["scalars"]
    _same_series([(e.step, e.value) for e in events.Scalars("eval/ha/ppl")], tracked.evals, "ppl")
    _same_series([(e.step, e.value) for e in events.Scalars("eval/ha/bits_per_byte")], tracked.evals, "bits_per_byte")
    found = []
    for sub in (p for p in directory.iterdir() if p.is_dir()):  # add_hparams writes a folder of its own
        hp = EventAccumulator(str(sub))
        hp.Reload()
        if "hparams" in hp.PluginAssets("hparams") or hp._plugin_to_tag_to_content.get("hparams"):
            found.append(hp.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert len(found) == 1
    start = plugin_data_pb2.HParamsPluginData.FromString(found[0])
    values = start.session_start_info.hparams
    assert values["optimizer.lr"].number_value == pytest.approx(5e-5)
    assert values["method"].string_value == "fft" and values["data.seq_len"].number_value == 32


@pytest.mark.slow  # reads the module's real training process, reporting to four trackers
def test_mlflow_local_store_holds_the_run(tracked):
    import mlflow
    from mlflow.tracking import MlflowClient

    from adaptkit.engine.trackers import mlflow_default_uri

    uri = mlflow_default_uri(tracked.out)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["adapt-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == RUN_NAME
    assert run.data.params["optimizer.lr"] == "5e-05" and run.data.params["method"] == "fft"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "loss")
    _same_series(sorted((m.step, m.value) for m in history), tracked.rows, "loss")
    assert run.data.metrics["extra/score"] == pytest.approx(100.0 / STEPS)
    _same_series(sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run.info.run_id, "eval/ha/ppl")), tracked.evals, "ppl")


def _wandb_records(run_dir):
    """The records of an offline run's .wandb file: a 7-byte header (':W&B', magic, version), then
    LevelDB-log framing (32 KiB blocks; 7-byte record headers: crc, length, type FULL/FIRST/MIDDLE/LAST)
    around protobuf `Record`s. wandb 0.31 no longer ships a Python reader, so this is one."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.mark.slow  # reads the module's real training process, reporting to four trackers
def test_wandb_offline_run_files_hold_every_row_and_the_config(tracked):
    runs = list((tracked.out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history, config, name = [], {}, None
    for record in _wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            name = record.run.display_name
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    assert name == RUN_NAME
    _same_series([(h["_step"], h["loss"]) for h in history if "loss" in h], tracked.rows, "loss")
    assert [h["extra/score"] for h in history if "extra/score" in h] == pytest.approx([100.0 / s for s in range(1, STEPS + 1)])
    _same_series([(h["_step"], h["eval/ha/ppl"]) for h in history if "eval/ha/ppl" in h], tracked.evals, "ppl")
    assert config["optimizer.lr"] == pytest.approx(5e-5) and config["method"] == "fft"


@pytest.mark.slow  # reads the module's real training process, reporting to four trackers
def test_trackio_local_database_holds_every_row_and_the_config(tracked):
    code = (
        "import json; from trackio.sqlite_storage import SQLiteStorage as S;"
        f"print(json.dumps({{'logs': S.get_logs('adapt-test', '{RUN_NAME}'), 'config': S.get_run_config('adapt-test', '{RUN_NAME}'),"
        "'runs': S.get_runs('adapt-test')}, default=str))"
    )
    import subprocess
    import sys

    read = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"TRACKIO_DIR": str(tracked.root / "trackio"), "PATH": ""})
    assert read.returncode == 0, read.stderr
    found = json.loads(read.stdout.strip().splitlines()[-1])
    assert found["runs"] == [RUN_NAME]
    _same_series([(r["step"], r["loss"]) for r in found["logs"] if "loss" in r], tracked.rows, "loss")
    assert [r["extra/score"] for r in found["logs"] if "extra/score" in r] == pytest.approx([100.0 / s for s in range(1, STEPS + 1)])
    _same_series([(r["step"], r["eval/ha/ppl"]) for r in found["logs"] if "eval/ha/ppl" in r], tracked.evals, "ppl")
    assert found["config"]["optimizer.lr"] == pytest.approx(5e-5)


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, llama_dir, corpora, invoke, monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    out = tmp_path / "run"
    result = invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, "--report-to", "wandb", "--quiet")
    assert_input_error(result, "--report-to wandb", "pip install 'adaptkit[wandb]'")
    assert not out.exists()
    assert_input_error(invoke("train", "--model", llama_dir, "--data", corpora["ha"], "-o", out, "--report-to", "tensorbord"), "--report-to", "tensorboard")


def test_only_the_main_process_starts_and_logs():
    from adaptkit.engine.trackers import Trackers

    calls = []
    accelerator = types.SimpleNamespace(is_main_process=False, init_trackers=lambda *a, **k: calls.append("init"),
                                        log=lambda *a, **k: calls.append("log"), trackers=[])
    trackers = Trackers(accelerator, ["tensorboard"], "p", "r", "/nonexistent/run")
    trackers.start({"a": 1})
    trackers.log({"step": 1, "loss": 1.0})
    trackers.finish()
    assert calls == []
    accelerator.is_main_process = True
    trackers.run_dir = __import__("pathlib").Path("/tmp")
    trackers.start({"a": {"b": [1, 2]}, "c": None})
    trackers.log({"step": 2, "loss": 1.0, "tokens": {"en": 3, "ha": 5}, "note": "x"})
    assert calls == ["init", "log"]


def test_rows_and_config_flatten_generically():
    from adaptkit.engine.trackers import flat_numbers, hyperparameters

    assert flat_numbers({"loss": 1.5, "tokens": {"en": 3, "ha": {"udhr": 5}, "note": "x"}, "ok": True}) == {
        "loss": 1.5, "tokens/en": 3, "tokens/ha/udhr": 5, "ok": 1}
    assert flat_numbers({"step": 2, "eval": "ha", "role": "target", "ppl": 3.5}) == {"eval/ha/step": 2, "eval/ha/ppl": 3.5}
    assert hyperparameters({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a.b": 1, "a.c": "[1, 2]", "d": "null", "e": "{}"}
