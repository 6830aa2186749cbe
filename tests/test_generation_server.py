"""`--generation-server URL` on `evaluate` and `generate`, against a real `transformers serve`.

The server (tests/_serve_helpers.py) serves the same tiny chat model that is evaluated
in-process; greedy generations through it must equal in-process ones exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _serve_helpers import free_port  # chat_model_dir and server: session fixtures in conftest.py
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


def test_lm_eval_generation_tasks_are_refused_with_a_server(server, chat_model_dir, tmp_path, invoke):
    pytest.importorskip("lm_eval")
    from test_layerwise import _choice_task

    url, _ = server
    _choice_task(tmp_path / "gen-tasks", tmp_path / "gen.jsonl", output_type="generate_until")
    out = tmp_path / "eval"
    result = invoke("evaluate", "--model", chat_model_dir, "--task", f"lm-eval:{tmp_path / 'gen-tasks'}", "--generation-server", url, "-o", out)
    # refused when lm-eval asks for generations (its progress bars are on stderr too, as in test_layerwise)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and "--generation-server" in errors[0] and "generate_until" in errors[0]
    assert not out.exists()


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
