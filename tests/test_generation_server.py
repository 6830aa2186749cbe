"""`--generation-server URL` on `evaluate` and `generate`, against a real `transformers serve`.

The server (the `server` fixture in tests/conftest.py) serves the same tiny chat model that is evaluated
in-process; greedy generations through it must equal in-process ones exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import free_port  # chat_model_dir and server: session fixtures in conftest.py
from conftest import assert_input_error

pytestmark = pytest.mark.slow  # starts a server (the CLI runs in this process)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _mt_file(tmp_path: Path) -> Path:
    pairs = [("Good morning.", "Ina kwana."), ("Thank you.", "Na gode."), ("Where is the market?", "Ina kasuwa take?")]
    path = tmp_path / "mt.jsonl"
    path.write_text("".join(json.dumps({"id": i, "src": s, "tgt": t, "src_lang": "en", "tgt_lang": "ha"}) + "\n"
                            for i, (s, t) in enumerate(pairs)), encoding="utf-8")
    return path


def test_generate_through_the_server_equals_in_process(server, chat_model_dir, tmp_path, invoke):
    url, _ = server
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(["Write about the sea.", "Say hello."])))
    outputs = {}
    for mode, extra in (("local", []), ("server", ["--generation-server", url])):
        out = tmp_path / f"{mode}.jsonl"
        result = invoke("generate", "--model", chat_model_dir, "--prompts", prompts, "--max-new-tokens", "10", "-o", out, *extra)
        assert result.returncode == 0, result.stderr
        outputs[mode] = _lines(out)
    assert outputs["server"] == outputs["local"]
    assert any(r["response"] for r in outputs["local"])  # a comparison of non-empty texts


def test_evaluate_mt_through_the_server_equals_in_process(server, chat_model_dir, tmp_path, invoke):
    url, served = server
    mt = _mt_file(tmp_path)
    text = tmp_path / "eng.txt"
    text.write_text("The sea is blue and the sky is wide.\n" * 20, encoding="utf-8")
    runs = {}
    for mode, extra in (("local", []), ("server", ["--generation-server", url, "--generation-server-model", served])):
        out = tmp_path / mode
        result = invoke("evaluate", "--model", f"m={chat_model_dir}", "--task", f"mt:fl={mt}", "--task", f"ppl:eng={text}",
                        "--set", "mt.max_new_tokens=8", "--set", "mt.shots=1", "--set", "ppl.block_size=32", "--no-plots", "-o", out, *extra)
        assert result.returncode == 0, result.stderr
        runs[mode] = (json.loads((out / "results.json").read_text()), _lines(out / "details" / "m" / "fl.jsonl"))
    (local, local_records), (remote, remote_records) = runs["local"], runs["server"]
    assert [r["response"] for r in remote_records] == [r["response"] for r in local_records]
    assert remote["results"] == local["results"]  # chrF of the same texts; ppl on the loaded model
    assert remote["config"]["generation_server"] == {"base_url": url, "model": served}
    assert "generation_server" not in local["config"]


def test_generation_server_bad_input_is_one_line_exit_2(server, chat_model_dir, tmp_path, invoke):
    url, served = server
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    cases = [
        (["generate", "--model", chat_model_dir, "--generation-server", dead], (dead, "transformers serve", "vllm serve")),
        (["generate", "--model", chat_model_dir, "--generation-server", url, "--generation-server-model", "no-such-model"],
         ("--generation-server-model", "no-such-model", served)),
        (["generate", "--model", f"a={chat_model_dir}", "--model", f"b={chat_model_dir}", "--generation-server", url],
         ("--generation-server", "exactly one --model")),
        (["generate", "--model", chat_model_dir, "--generation-server-model", served], ("--generation-server-model", "only with --generation-server")),
    ]
    for args, fragments in cases:
        out = tmp_path / "out.jsonl"
        assert_input_error(invoke(*args, "--prompts", prompts, "-o", out), *fragments)
        assert not out.exists()
    out = tmp_path / "eval"
    mt = _mt_file(tmp_path)
    assert_input_error(invoke("evaluate", "--model", chat_model_dir, "--task", f"mt:{mt}", "--generation-server", dead, "-o", out),
                       dead, "transformers serve")
    assert not out.exists()


QUESTIONS = ["Kowa yana da", "Everyone has the right", "All human beings are born", "The sea is"]


def _generation_task(directory: Path, data: Path, answers: list[str]) -> Path:
    """A local lm-eval generate_until task (offline, dataset_path json): greedy, stop at a newline, 5 tokens."""
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, answers)), encoding="utf-8")
    directory.mkdir(exist_ok=True)
    (directory / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 5\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n", encoding="utf-8")
    return directory


def _lm_eval_generations(model_dir: Path, tasks: Path, generator, chat_template: bool) -> list[str]:
    """lm-eval's own pipeline on HFLM (in-process, or with generate_until through `generator`): each doc's generation."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from adaptkit.evals.lm_eval_server import server_generate_until
    from adaptkit.io.models import load_tokenizer, resolve_model_source
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lm = HFLM(pretrained=model, tokenizer=load_tokenizer(resolve_model_source(str(model_dir))), batch_size=8, device="cpu")
    if generator is not None:
        lm.generate_until = server_generate_until(lm, generator, 0)
    result = simple_evaluate(model=lm, tasks=["tiny_gen"], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                             apply_chat_template=chat_template, log_samples=True, bootstrap_iters=0)
    samples = sorted(result["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    return [s["resps"][0][0] for s in samples]


def test_lm_eval_generation_through_the_server_equals_in_process(server, chat_model_dir, tmp_path, invoke):
    """generate_until requests go to the server: the same greedy generations (with and without the chat template) and score."""
    pytest.importorskip("lm_eval")
    from adaptkit.evals.server_generation import server_generator

    url, served = server
    torch.set_num_threads(1)
    tasks = _generation_task(tmp_path / "tasks", tmp_path / "gen.jsonl", ["-"] * len(QUESTIONS))
    generator = server_generator(url, served)
    local = {}
    for chat in (False, True):
        local[chat] = _lm_eval_generations(chat_model_dir, tasks, None, chat)
        assert _lm_eval_generations(chat_model_dir, tasks, generator, chat) == local[chat]
        assert sum(bool(g.strip()) for g in local[chat]) >= 2  # a comparison of real texts
    assert local[True] != local[False]  # the chat template reached the prompts
    answers = [local[False][0], local[False][1], "zzz", local[False][3] + "zzz"]  # exact match on 2 of 4
    _generation_task(tasks, tmp_path / "gen.jsonl", answers)
    results = {}
    for mode, extra in (("local", []), ("server", ["--generation-server", url]), ("layerwise", ["--generation-server", url, "--layer-by-layer"])):
        out = tmp_path / mode
        result = invoke("evaluate", "--model", f"m={chat_model_dir}", "--task", f"lm-eval:{tasks}", "--no-plots", "-o", out, *extra)
        assert result.returncode == 0, result.stderr
        results[mode] = json.loads((out / "results.json").read_text())["results"]
    assert results["local"]["m"]["tiny_gen"]["exact_match"] == pytest.approx(0.5)
    assert results["server"] == results["local"]
    assert results["layerwise"] == results["local"]  # log-likelihoods layer by layer, generations on the server


def test_judge_answers_through_the_server_equal_in_process(server, chat_model_dir, tmp_path, invoke, monkeypatch):
    url, served = server
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps({"question_id": 81 + i, "category": "writing", "turns": [f"Question {i}?", f"Rewrite it {i}."]}) + "\n"
                                 for i in range(2)))
    answers = {}
    monkeypatch.setenv("ADAPTKIT_CACHE", str(tmp_path / "cache"))
    for mode, extra in (("local", []), ("server", ["--generation-server", url])):
        out = tmp_path / mode
        result = invoke("evaluate", "--model", f"m={chat_model_dir}", "--task", f"judge-single:mtb={questions}", "--set", f"judge.base_url={url}",
                        "--set", f"judge.model={served}", "--set", "judge.max_new_tokens=6", "--set", "judge.judge_max_tokens=8",
                        "--no-plots", "-o", out, *extra)
        assert result.returncode == 0, result.stderr
        answers[mode] = [r["answers"] for r in _lines(out / "details" / "m" / "mtb.jsonl")]
    assert answers["server"] == answers["local"]  # both turns, the second seeing the first answer
    assert any(a for turns in answers["local"] for a in turns)
