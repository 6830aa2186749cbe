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
    assert [line.split(" -m adaptkit ")[1].split()[0:2] for line in lines if not line.startswith("mkdir")] == [
        ["data", "prepare"], ["calibrate", "--model"], ["train", "--config"], ["train", "--config"], ["study", str(path)]]
    assert f"-o {out / 'tokens' / 'ha'}" in lines[0] and "en" not in [p.name for p in (out / "tokens").glob("*")]
    config = yaml.safe_load((out / "configs" / "ssu-wanda-freeze_ratio0.5.yaml").read_text())
    assert config["method_params"] == {"calib": str((out / "calib").resolve()), "freeze_ratio": 0.5}
    assert not (out / "runs").exists() and not (out / "tokens").exists()
    assert lines[2] == f"mkdir -p {out / 'results'}" and all(f"> {out / 'results'}" in line for line in lines[3:5])


@pytest.mark.slow  # the whole study through the shell: data, a training, the evaluation and report
def test_printed_commands_run_as_printed(tmp_path, make_model_dir, corpora, invoke):
    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "fft"}], steps=2)
    out = tmp_path / "out"
    result = invoke("study", path, "-o", out, "--print-commands")
    assert result.returncode == 0, result
    script = tmp_path / "study.sh"
    script.write_text("set -e\n" + result.stdout)
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=_env(), timeout=1200, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "results" / "fft.json").read_text())["steps"] == 2
    assert (out / "report" / "results.json").is_file()


@pytest.mark.parametrize("progress", [True, False])
def test_study_steps_report_progress_unless_the_study_is_quiet(tmp_path, make_model_dir, corpora, progress):
    from adaptkit.study import state
    from adaptkit.study.spec import load_study

    study = load_study(study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "ssu-wanda"}]))
    (tmp_path / "out" / "configs").mkdir(parents=True)
    calls = []
    state.execute(study, tmp_path / "out", lambda message: None, call=lambda command, what: calls.append(command) or '{"steps": 6}',
                  progress=progress)
    assert [c[c.index("adaptkit") + 1] for c in calls] == ["data", "calibrate", "train"]
    assert all(("--quiet" in c) != progress for c in calls) and ("--progress" in calls[-1]) == progress and "--json" in calls[-1]


def test_another_study_in_the_same_directory_is_refused(tmp_path, make_model_dir, corpora, invoke):
    model = make_model_dir("llama")
    out = tmp_path / "out"
    assert invoke("study", study_yaml(tmp_path / "a.yaml", model, corpora, [{"method": "fft"}]), "-o", out, "--print-commands").returncode == 0
    (out / "runs" / "fft").mkdir(parents=True)  # its work has begun (a scheduler started the printed run)
    other = study_yaml(tmp_path / "b.yaml", model, corpora, [{"method": "fft"}], steps=7)
    assert_input_error(invoke("study", other, "-o", out), "-o/--output", "holds another study", "runs")


def test_a_study_directory_with_no_work_yet_takes_the_corrected_study(tmp_path, make_model_dir, corpora, invoke):
    model = make_model_dir("llama")
    out = tmp_path / "out"
    assert invoke("study", study_yaml(tmp_path / "a.yaml", model, corpora, [{"method": "fft"}]), "-o", out, "--print-commands").returncode == 0
    fixed = study_yaml(tmp_path / "b.yaml", model, corpora, [{"method": "fft"}], steps=7)
    assert invoke("study", fixed, "-o", out, "--print-commands").returncode == 0
    assert json.loads((out / "plan.json").read_text())["runs"]["fft"]["max_steps"] == 7


def _break(data: dict, case: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.txt")
    if case == "model":
        data["model"] = str(tmp_path / "no-model")
    elif case == "source":
        data["sources"]["en"]["spec"] = missing
        data["mixture"] = {"ha": 0.95, "en": 0.05}
    elif case == "calibration":
        data["calibration"]["data"] = missing
    elif case == "evaluate":
        data["evaluate"] = [data["train"]["eval"]["data"][0], f"late={missing}:target"]
    elif case == "train-eval":
        data["evaluate"] = list(data["train"]["eval"]["data"])
        data["train"]["eval"]["data"].append(f"extra={missing}")


@pytest.mark.parametrize("case, fragments", [
    ("model", ["'model'", "no-model", "does not exist"]),
    ("source", ["'sources.en'", "missing.txt", "does not exist"]),
    ("calibration", ["'calibration.data'", "missing.txt", "does not exist"]),
    ("evaluate", ["'evaluate' set 'late'", "missing.txt", "does not exist"]),
    ("train-eval", ["'train.eval.data' set 'extra'", "missing.txt", "does not exist"]),
])
def test_every_input_is_checked_before_anything_is_written_and_the_fix_reruns_in_the_same_directory(
        tmp_path, make_model_dir, corpora, invoke, case, fragments):
    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "ssu-wanda"}])
    good = yaml.safe_load(path.read_text())
    broken = yaml.safe_load(path.read_text())
    _break(broken, case, tmp_path)
    path.write_text(yaml.safe_dump(broken))
    out = tmp_path / "out"
    assert_input_error(invoke("study", path, "-o", out), str(path), *fragments)
    assert not out.exists()
    path.write_text(yaml.safe_dump(good))
    assert invoke("study", path, "-o", out, "--print-commands").returncode == 0


def test_a_method_whose_extra_is_missing_is_refused_before_anything_is_written(tmp_path, make_model_dir, corpora, invoke, monkeypatch):
    from adaptkit import specs

    real = specs.missing_package
    monkeypatch.setattr(specs, "missing_package", lambda extra: "peft" if extra == "peft" else real(extra))
    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "fft"}, {"method": "lora"}])
    out = tmp_path / "out"
    assert_input_error(invoke("study", path, "-o", out), "grid entry 2", "method 'lora'", "'peft'", "adaptkit[peft]")
    assert not out.exists()


def test_missing_package_reads_adaptkit_extras_without_importing_them():
    from adaptkit.specs import missing_package

    assert missing_package("peft") is None  # installed with the test extra
    assert missing_package("no-such-module-here") == "no-such-module-here"  # a plugin's own extra: a module name
    before = set(sys.modules)
    missing_package("mergekit")
    assert "mergekit" not in set(sys.modules) - before


def test_an_unwritable_output_is_named_before_anything_runs(tmp_path, make_model_dir, corpora, invoke):
    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "fft"}])
    assert_input_error(invoke("study", path, "-o", "/proc/adaptkit-study"), "-o/--output", "/proc/adaptkit-study", "cannot write")


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
    assert "train: step 8/8 (100%)" in result.stderr  # each run's progress lines, not minutes of silence
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
    from helpers import assert_ended, children, end_group, wait_for

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


@pytest.mark.slow
def test_study_accepts_new_methods_and_reports_averaged_models(tmp_path, make_model_dir, corpora, invoke):
    """Registered methods work as grid entries by name; a run's final-ema/ and final-lawa/ are evaluated as
    rows of their own (RUN-ema, RUN-lawa) with the run's facts."""
    grid = [{"method": "spectrum", "name": "fft", "params": {"fraction": 0.5}},  # a run whose name prefixes fft-avg-ema
            {"method": "fft", "name": "fft-avg", "train": {"averaging": {"ema_decay": 0.5, "lawa_k": 2}, "schedule": {"name": "wsd"}}},
            {"method": "fft", "name": "bam", "bam": {"rounds": 1, "branches": 2, "merge": "linear"}}]
    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, grid, steps=4)
    result = invoke("study", path, "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result
    rows = {row["model"]: row for row in json.loads((tmp_path / "out" / "report" / "results.json").read_text())["models"]}
    assert list(rows) == ["base", "fft", "fft-avg", "fft-avg-ema", "fft-avg-lawa", "bam"]
    for kind in ("ema", "lawa"):  # the facts of fft-avg, not of the run "fft" whose name begins theirs
        average = rows[f"fft-avg-{kind}"]
        assert average["method"] == f"fft ({kind})" and average["trainable_fraction"] == 1.0
        assert average["train_seconds"] == rows["fft-avg"]["train_seconds"] != rows["fft"]["train_seconds"]
    assert rows["fft-avg-ema"]["ha"]["ppl"] != rows["fft-avg"]["ha"]["ppl"]
    assert rows["fft"]["method"] == "spectrum" and rows["fft"]["trainable_fraction"] < 1
    assert rows["bam"]["trainable_fraction"] == 1.0 and (tmp_path / "out" / "runs" / "bam" / "round-0" / "branch-1" / "final").is_dir()
    assert rows["bam"]["ha"]["ppl"] != rows["fft-avg"]["ha"]["ppl"]


@pytest.mark.slow  # the merge method's check imports torch
@pytest.mark.parametrize("bam, fragment", [({"branches": 0}, "--branches"), ({"rounds": 2, "turns": 3}, "turns"),
                                           ({"branches": 3}, "--merge slerp")])
def test_bad_bam_entry_is_reported_with_its_position(tmp_path, make_model_dir, corpora, bam, fragment):
    from adaptkit.errors import InputError
    from adaptkit.study.spec import load_study

    path = study_yaml(tmp_path / "study.yaml", make_model_dir("llama"), corpora, [{"method": "fft"}, {"method": "fft", "name": "b", "bam": bam}])
    with pytest.raises(InputError) as err:
        load_study(path)
    assert "grid entry 2" in str(err.value) and fragment in str(err.value)


@pytest.mark.slow  # the merge method's check imports torch
def test_shipped_beyond_study_file_expands():
    """benchmarks/study_smollm2_beyond.yaml: every entry checked (the new methods, a BaM entry, a schedule and averaging)."""
    from adaptkit.study.spec import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "benchmarks" / "study_smollm2_beyond.yaml")
    runs = {run.name: run for run in study.runs}
    assert {"block-expansion", "bam", "fft-wsd", "fft-avg", "spectrum-fraction0.25", "spectrum-fraction0.5"} <= set(runs)
    assert runs["bam"].bam == {"rounds": 2, "branches": 2, "merge": "slerp", "merge_params": {}}
    assert runs["fft-avg"].train["averaging"]["ema_decay"] == 0.99


def _metrics(path: Path, losses: list[tuple[int, float]], ppl: list[tuple[int, float]]) -> Path:
    rows = [{"step": s, "loss": v} for s, v in losses] + [{"step": s, "eval": "ha", "role": "target", "ppl": v} for s, v in ppl]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curves_of_runs_shorter_than_log_steps_show_what_exists(tmp_path):
    import matplotlib.pyplot as plt

    from adaptkit.study.report import curves_figure

    none = curves_figure({"a": _metrics(tmp_path / "a.jsonl", [], [(0, 9.0), (4, 7.0)])})
    texts = [t.get_text() for t in none.axes[0].texts]
    assert any("no training loss logged" in t and "log_steps" in t for t in texts)
    one = curves_figure({"a": _metrics(tmp_path / "b.jsonl", [(4, 3.5)], [(0, 9.0), (4, 7.0)])})
    (line,) = one.axes[0].lines
    assert line.get_marker() == "o" and list(line.get_xdata()) == [4] and not one.axes[0].texts  # the one point shows
    plt.close("all")


def test_frontier_labels_of_nearby_points_do_not_overlap():
    import matplotlib.pyplot as plt

    from adaptkit.study.report import frontier_figure

    rows = [{"model": "base", "method": None, "source_gain_bpb": 0.0, "target_gain_bpb": 0.0}]
    rows += [{"model": f"ssu-wanda-freeze_ratio0.{i}", "method": "ssu-wanda", "source_gain_bpb": -0.010 - 0.0001 * i,
              "target_gain_bpb": 0.300 + 0.0001 * i} for i in range(1, 6)]
    rows += [{"model": "fft", "method": "fft", "source_gain_bpb": -0.2, "target_gain_bpb": 0.35}]
    fig = frontier_figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts]
    assert sorted(t.get_text() for t in labels) == sorted(r["model"] for r in rows)
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not [(a.get_text(), b.get_text()) for i, (a, x) in enumerate(zip(labels, boxes)) for b, y in zip(labels[i + 1:], boxes[i + 1:]) if x.overlaps(y)]
    plt.close(fig)
