"""lighteval backend: a real lighteval 0.13 run, offline, scored like lm-eval and an explicit computation.

lighteval is not installed in the test environment, so this slow test builds a virtual environment
(`python -m venv` that also sees this environment's packages through a .pth file, so torch,
transformers and huggingface-hub are the ones tested here and nothing large is downloaded) and pip
installs `lighteval==0.13.0` into it from PyPI, with pip's wheel cache under the same directory
(`$ADAPTKIT_TEST_VENVS`, default ~/.cache/adaptkit-test-venvs; reused by later runs). It skips,
saying so, only when PyPI cannot be reached. The task is a custom lighteval task over a local JSONL
(log-likelihood multiple choice), run twice: from this environment through
`--set lighteval.python=VENV/bin/python` (the two-environment setup), and inside the venv itself
(lighteval in adaptkit's process), next to the same task through the lm-eval backend.
"""

from __future__ import annotations

import json
import os
import random
import site
import subprocess
import sys
from pathlib import Path

import pytest

LIGHTEVAL = "lighteval==0.13.0"
PINS = (LIGHTEVAL, "xxhash<4")  # lighteval 0.13 hashes str with xxhash, which xxhash 4 refuses
TIMEOUT = 1500  # seconds for each step; lighteval imports every built-in task module (minutes on a busy CPU)

pytestmark = pytest.mark.slow

TASKS_PY = '''
from lighteval.metrics.metrics import Metrics
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc


def prompt(line, task_name=None):
    return Doc(task_name=task_name, query=line["question"], choices=line["choices"], gold_index=line["label"])


TASKS_TABLE = [LightevalTaskConfig(name="tiny_choice", prompt_function=prompt, hf_repo={data_dir!r}, hf_subset="default",
                                   metrics=[Metrics.loglikelihood_acc], hf_avail_splits=["test"], evaluation_splits=["test"])]
'''

LM_EVAL_YAML = """task: tiny_choice_lm
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: '{{{{question}}}}'
doc_to_choice: '{{{{choices}}}}'
doc_to_target: '{{{{label}}}}'
target_delimiter: ''
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _pip(python: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", *args, "--cache-dir", str(cache), "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def lighteval_python(tmp_path_factory) -> Path:
    """The venv's Python, with lighteval 0.13.0 installed beside this environment's packages."""
    root = Path(os.environ.get("ADAPTKIT_TEST_VENVS", Path.home() / ".cache" / "adaptkit-test-venvs")) / LIGHTEVAL.replace("==", "-")
    python, cache = root / "venv" / "bin" / "python", root / "pip-cache"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('lighteval'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == LIGHTEVAL.split("==")[1]:
        return python
    download = _pip(Path(sys.executable), "download", "--no-deps", LIGHTEVAL, "-d", str(tmp_path_factory.mktemp("wheel")), cache=cache)
    if download.returncode != 0:
        pytest.skip(f"PyPI unreachable, cannot get {LIGHTEVAL}: {download.stderr.strip().splitlines()[-1:]}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root / "venv")], check=True, timeout=TIMEOUT)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_adaptkit_base_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = _pip(python, "install", *PINS, cache=cache)
    assert install.returncode == 0, install.stderr[-2000:]
    frozen = subprocess.run([str(python), "-c", "import torch, transformers, huggingface_hub as h; print(torch.__version__, transformers.__version__, h.__version__)"],
                            capture_output=True, text=True, check=True).stdout.split()
    import huggingface_hub
    import torch
    import transformers

    assert frozen == [torch.__version__, transformers.__version__, huggingface_hub.__version__]  # the same core packages
    return python


def choice_rows(n: int = 24) -> list[dict]:
    """Items from UDHR sentences: the first words as the question, the true next word vs another sentence's."""
    from adaptkit import demo

    rng = random.Random(0)
    sentences = [s.split() for s in demo.split_corpus("en")[1] + demo.split_corpus("ha")[1] if len(s.split()) > 6]
    rows = []
    for words in rng.sample(sentences, n):
        other = rng.choice(sentences)[4]
        choices = [" " + words[4], " " + other]
        if rng.random() < 0.5:
            choices.reverse()
        rows.append({"question": " ".join(words[:4]), "choices": choices, "label": choices.index(" " + words[4])})
    return rows


def explicit_accuracy(model_dir: Path, rows: list[dict]) -> float:
    """The choice with the highest summed log-probability of its tokens after the question's, against the label."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    correct = 0
    for row in rows:
        context = tokenizer(row["question"])["input_ids"]
        totals = []
        for choice in row["choices"]:
            whole = tokenizer(row["question"] + choice)["input_ids"]
            assert whole[: len(context)] == context
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            totals.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += max(range(len(totals)), key=totals.__getitem__) == row["label"]
    return correct / len(rows)


def _evaluate(python: Path, out: Path, *args: str) -> dict:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([str(python), "-m", "adaptkit", "evaluate", *args, "-o", str(out), "--no-plots", "--json"],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_lighteval_runs_offline_and_scores_like_lm_eval(lighteval_python, make_model_dir, tmp_path):
    model_dir = make_model_dir("llama", seed=0)
    rows = choice_rows()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks.py").write_text(TASKS_PY.format(data_dir=str(data_dir)))
    lm_tasks = tmp_path / "lm-tasks"
    lm_tasks.mkdir()
    (lm_tasks / "tiny_choice_lm.yaml").write_text(LM_EVAL_YAML.format(data=data_dir / "test.jsonl"))
    task = ["--model", f"tiny={model_dir}", "--task", "lighteval:tiny_choice|0", "--set", f"lighteval.custom_tasks={tmp_path / 'tasks.py'}"]

    two_envs = _evaluate(Path(sys.executable), tmp_path / "two-envs", *task, "--task", f"lm-eval:{lm_tasks}",
                         "--set", f"lighteval.python={lighteval_python}")
    one_env = _evaluate(lighteval_python, tmp_path / "one-env", *task)

    expected = explicit_accuracy(model_dir, rows)
    assert 0 < expected < 1  # the items separate right from wrong scoring
    for results in (two_envs, one_env):
        scores = results["results"]["tiny"]["tiny_choice"]
        assert scores["acc"] == pytest.approx(expected, abs=1e-12)
    assert two_envs["results"]["tiny"]["tiny_choice_lm"]["acc"] == pytest.approx(expected, abs=1e-12)


def test_lighteval_python_that_lacks_lighteval_is_bad_input(cli, make_model_dir, tmp_path):
    from conftest import assert_input_error

    result = cli("evaluate", "--model", str(make_model_dir("llama", seed=0)), "--task", "lighteval:tiny_choice|0",
                 "--set", f"lighteval.python={sys.executable}", "-o", str(tmp_path / "out"))
    assert_input_error(result, "lighteval.python", "does not have lighteval")
    assert not (tmp_path / "out").exists()


def test_a_lighteval_worker_that_never_finishes_is_stopped_at_its_timeout(cli, make_model_dir, tmp_path):
    """lighteval.python's subprocess is bounded by lighteval.timeout_s: a worker that hangs is killed
    (not waited on forever) and the evaluation fails with exit 1 and one line saying so."""
    import time

    pid_file = tmp_path / "worker.pid"
    fake = tmp_path / "python"  # passes the lighteval probe (-c ...), then hangs as the worker
    fake.write_text(f'#!/bin/sh\ncase "$1" in -c) exit 0;; esac\necho $$ > {pid_file}\nexec sleep 600\n')
    fake.chmod(0o755)
    started = time.monotonic()
    result = cli("evaluate", "--model", str(make_model_dir("llama", seed=0)), "--task", "lighteval:tiny_choice|0",
                 "--set", f"lighteval.python={fake}", "--set", "lighteval.timeout_s=2", "-o", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    assert "did not finish within 2 s" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 120
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the hung worker is gone
    assert not (tmp_path / "out").exists()
