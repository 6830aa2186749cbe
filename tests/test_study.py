"""`adaptkit study`: grid expansion, bad entries, skipping finished runs, and a study killed in its
second run that, rerun, gives the same report as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import assert_input_error


def study_yaml(path: Path, model: Path, corpora: dict, grid: list, steps: int = 6, **extra) -> Path:
    data = {
        "model": str(model),
        "sources": {"ha": {"spec": str(corpora["ha"])}, "en": {"spec": str(corpora["en"]), "max_tokens": "4k"}},
        "mixture": {"ha": 1},
        "train": {"max_steps": steps, "batch_size": 4, "log_steps": 1, "save_steps": 2, "data": {"seq_len": 32}, "optimizer": {"lr": 1e-3},
                  "eval": {"data": [f"en={corpora['en-test']}:source", f"ha={corpora['ha-test']}:target"], "steps": 3, "block_size": 32}},
        "calibration": {"data": str(corpora["en"]), "format": "text", "num_samples": 4, "block_size": 32, "pool": 100},
        "seeds": [0],
        "grid": grid,
        **extra,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_grid_expands_methods_parameters_and_seeds(tmp_path, make_model_dir, corpora):
    from adaptkit.study.spec import load_study, train_values

    grid = [{"method": "fft"}, {"method": "ssu-wanda", "params": {"granularity": "row"}, "sweep": {"freeze_ratio": [0.25, 0.5, 0.75]}},
            {"method": "lora", "seeds": [1, 2], "params": {"r": 4}}, {"method": "fft", "name": "fft-replay", "mixture": {"ha": 0.95, "en": 0.05}},
            {"method": "hft", "train": {"optimizer": {"lr": 5e-4}}}]
    study = load_study(study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, grid))
    names = [run.name for run in study.runs]
    assert names == ["fft", "ssu-wanda-freeze_ratio0.25", "ssu-wanda-freeze_ratio0.5", "ssu-wanda-freeze_ratio0.75",
                     "lora-seed1", "lora-seed2", "fft-replay", "hft"]
    runs = {run.name: run for run in study.runs}
    assert [runs[f"ssu-wanda-freeze_ratio{r}"].params for r in (0.25, 0.5, 0.75)] == [
        {"granularity": "row", "calib": "calib", "freeze_ratio": r} for r in (0.25, 0.5, 0.75)]
    assert [runs[n].seed for n in ("fft", "lora-seed1", "lora-seed2")] == [0, 1, 2]
    assert runs["fft"].mixture == {"ha": 1.0} and runs["fft-replay"].mixture == {"ha": 0.95, "en": 0.05}
    assert runs["hft"].train["optimizer"]["lr"] == 5e-4 and runs["fft"].train["optimizer"]["lr"] == 1e-3
    assert study.used_sources() == ["ha", "en"] and study.needs_calibration
    values = train_values(study, runs["fft-replay"], Path("/s/tokens"), Path("/s/calib"))
    assert values["data"]["sources"] == [{"name": "ha", "spec": "/s/tokens/ha", "weight": 0.95}, {"name": "en", "spec": "/s/tokens/en", "weight": 0.05}]
    assert values["data"]["seq_len"] == 32 and values["method"] == "fft" and values["seed"] == 0
    assert train_values(study, runs["ssu-wanda-freeze_ratio0.5"], Path("/s/tokens"), Path("/s/calib"))["method_params"]["calib"] == "/s/calib"
    # stable: the same file gives the same runs
    assert [r.name for r in load_study(tmp_path / "study.yaml").runs] == names


def test_pareto_front_against_brute_force():
    import itertools
    import random

    from adaptkit.study.report import pareto_front

    assert pareto_front({"a": (0, 0), "b": (1, -1), "c": (-1, 1), "d": (-1, -1), "e": (0.5, -1)}) == ["c", "a", "b"]
    rng = random.Random(0)
    for _ in range(50):
        points = {str(i): (rng.randint(-3, 3), rng.randint(-3, 3)) for i in range(8)}
        dominated = {n for n, m in itertools.permutations(points, 2)
                     if points[m][0] >= points[n][0] and points[m][1] >= points[n][1] and points[m] != points[n]}
        assert set(pareto_front(points)) == set(points) - dominated


@pytest.mark.parametrize("entry, fragments", [
    ({"method": "ssu-wandaa"}, ["grid entry 2 (line ", "method", "did you mean: ssu-wanda"]),
    ({"method": "lora", "params": {"rr": 8}}, ["grid entry 2 (line ", "'rr'", "did you mean: r"]),
    ({"method": "ssu-wanda", "sweep": {"freeze_ratio": [0.5, 1.5]}}, ["grid entry 2 (line ", "freeze_ratio"]),
    ({"method": "fft", "mixture": {"fr": 1}}, ["grid entry 2 (line ", "unknown source 'fr'"]),
    ({"method": "fft", "lr": 1e-3}, ["grid entry 2 (line ", "unknown key 'lr'"]),
    ({"method": "fft", "train": {"optimizer": {"lr": -1}}}, ["grid entry 2 (line ", "optimizer.lr"]),
])
def test_bad_grid_entry_is_reported_with_its_position_before_anything_runs(tmp_path, make_model_dir, corpora, invoke, entry, fragments):
    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "fft"}, entry])
    line = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text.startswith("- ")][-1]  # grid is the last key
    out = tmp_path / "out"
    result = invoke("study", path, "-o", out)
    assert_input_error(result, *fragments, f"(line {line})")
    assert not out.exists()


def test_print_commands_lists_the_study_and_runs_nothing(tmp_path, make_model_dir, corpora, invoke):
    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "fft"}, {"method": "ssu-wanda", "sweep": {"freeze_ratio": [0.5]}}])
    out = tmp_path / "out"
    result = invoke("study", path, "-o", out, "--print-commands")
    assert result.returncode == 0, result
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert [line.split(" -m adaptkit ")[1].split()[0:2] for line in lines] == [
        ["data", "prepare"], ["calibrate", "--model"], ["train", "--config"], ["train", "--config"], ["study", str(path)]]
    assert f"-o {out / 'tokens' / 'ha'}" in lines[0] and "en" not in [p.name for p in (out / "tokens").glob("*")]
    config = yaml.safe_load((out / "configs" / "ssu-wanda-freeze_ratio0.5.yaml").read_text())
    assert config["method_params"] == {"calib": str((out / "calib").resolve()), "freeze_ratio": 0.5}
    assert not (out / "runs").exists() and not (out / "tokens").exists()


def test_another_study_in_the_same_directory_is_refused(tmp_path, make_model_dir, corpora, invoke):
    model = make_model_dir("llama")
    out = tmp_path / "out"
    assert invoke("study", study_yaml(tmp_path / "a.yaml", model, corpora, [{"method": "fft"}]), "-o", out, "--print-commands").returncode == 0
    other = study_yaml(tmp_path / "b.yaml", model, corpora, [{"method": "fft"}], steps=7)
    assert_input_error(invoke("study", other, "-o", out), "-o/--output", "holds another study", "runs")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _study(path: Path, out: Path) -> subprocess.CompletedProcess:
    """The study in a subprocess, without --json so that its progress lines (stderr) can be read."""
    return subprocess.run([sys.executable, "-m", "adaptkit", "study", str(path), "-o", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=1200)


GRID = [{"method": "fft"}, {"method": "ssu-wanda", "sweep": {"freeze_ratio": [0.5]}}]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, make_model_dir, corpora):
    root = tmp_path_factory.mktemp("study")
    path = study_yaml(root / "study.yaml", make_model_dir("llama"), corpora, GRID, steps=8)
    result = _study(path, root / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front:" in result.stdout and "study: run 2/2" in result.stderr
    return path, root / "out", json.loads((root / "out" / "report" / "results.json").read_text())


def _numbers(report: dict) -> list:
    """What a report says about the models, without wall times."""
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in report["models"]]


@pytest.mark.slow
def test_study_trains_evaluates_and_reports(finished_study):
    path, out, report = finished_study
    rows = {row["model"]: row for row in report["models"]}
    assert list(rows) == ["base", "fft", "ssu-wanda-freeze_ratio0.5"]
    assert rows["ssu-wanda-freeze_ratio0.5"]["trainable_fraction"] < rows["fft"]["trainable_fraction"] == 1.0
    for name in ("fft", "ssu-wanda-freeze_ratio0.5"):
        evals = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
        last = {r["eval"]: r["ppl"] for r in evals if r["step"] == 8}
        # the final evaluation scores the same models on the same windows as the last eval during training
        assert last["en"] == pytest.approx(rows[name]["en"]["ppl"], rel=1e-9) and last["ha"] == pytest.approx(rows[name]["ha"]["ppl"], rel=1e-9)
    assert rows["base"]["source_gain_bpb"] == 0.0 and rows["fft"]["target_gain_bpb"] > 0
    assert f"{rows['fft']['ha']['ppl']:.2f}" in (out / "report" / "results.md").read_text()
    assert "| fft | fft | 0 |" in (out / "report" / "results.md").read_text()
    for name in ("frontier.png", "curves.png"):
        assert (out / "report" / name).read_bytes()[:4] == b"\x89PNG"
    # one token store and one calibration set for all runs
    assert sorted(p.name for p in (out / "tokens").iterdir()) == ["ha"] and (out / "calib").is_dir()
    for name in ("fft", "ssu-wanda-freeze_ratio0.5"):
        assert yaml.safe_load((out / "runs" / name / "config.yaml").read_text())["data"]["sources"][0]["spec"] == [str((out / "tokens" / "ha").resolve())]


@pytest.mark.slow
def test_finished_runs_are_skipped(finished_study):
    path, out, report = finished_study
    finals = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/final/model.safetensors")}
    result = _study(path, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("finished, skipped") == 2 and "preparing" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/final/model.safetensors")} == finals
    assert _numbers(json.loads((out / "report" / "results.json").read_text())) == _numbers(report)


@pytest.mark.slow
def test_study_killed_in_its_second_run_resumes_to_the_same_report(finished_study, tmp_path):
    path, reference, report = finished_study
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "adaptkit", "study", str(path), "-o", str(out), "--json"], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    second = out / "runs" / "ssu-wanda-freeze_ratio0.5"
    deadline = time.monotonic() + 900
    while not list(second.glob("checkpoint-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the study and its training process, as a crash would
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (out / "runs" / "fft" / "final").is_dir() and not (second / "final").exists(), "killed outside its second run"
    result = _study(path, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fft: finished, skipped" in result.stderr and "ssu-wanda-freeze_ratio0.5: resuming" in result.stderr
    assert _numbers(json.loads((out / "report" / "results.json").read_text())) == _numbers(report)
    for name in ("fft", "ssu-wanda-freeze_ratio0.5"):
        rows = lambda d: [json.loads(l) for l in (d / "runs" / name / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]  # noqa: E731,E741
        assert rows(out) == rows(reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM-to-study", "SIGINT-to-group"])
def test_interrupted_study_stops_its_training_with_a_checkpoint(tmp_path, make_model_dir, corpora, signum, to_group):
    """SIGTERM to the study alone (a scheduler) or Ctrl-C to its process group, once its run has a
    checkpoint: the training gets the signal once, saves its last step and ends; the study exits
    128 + signal with its one line; no process is left."""
    from _process_helpers import assert_ended, children, end_group, wait_for

    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "fft"}], steps=100_000)
    out, errors = tmp_path / "out", tmp_path / "stderr"
    process = subprocess.Popen([sys.executable, "-m", "adaptkit", "study", str(path), "-o", str(out)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=open(errors, "w"), start_new_session=True)
    try:
        wait_for(lambda: list((out / "runs" / "fft").glob("checkpoint-*/state.json")), 900, "the run's first checkpoint", process)
        pids = [c.pid for c in children(process.pid)]
        (os.killpg if to_group else os.kill)(process.pid, signum)
        process.wait(180)
    finally:
        end_group(process)
    lines = errors.read_text().strip().splitlines()
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, lines[-5:]
    assert lines[-1].startswith(f"adaptkit: interrupted ({name})") and "run the same command again" in lines[-1], lines[-5:]
    trained = [line for line in lines[:-1] if line.startswith("adaptkit: interrupted")]
    assert len(trained) == 1 and "kept" in trained[0] and "checkpoint-" in trained[0], lines[-5:]  # the training's own line
    assert not (out / "runs" / "fft" / "final").exists()
    assert_ended(pids)
