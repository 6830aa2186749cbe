"""LLM-judge evaluations and generation through an OpenAI-compatible server.

A real `transformers serve` (the `serving` extra) is started once for this module on
127.0.0.1, serving a tiny model built here; it is the judge and the generation server.
A few error paths (401, 429/5xx retries) need answers `transformers serve` never gives:
they use a minimal http.server on 127.0.0.1. All traffic stays on loopback.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port  # chat_model_dir and server: session fixtures in conftest.py
from conftest import assert_input_error

from adaptkit.errors import AdaptkitError, InputError
from adaptkit.evals.judge_stats import grade_summary, lc_win_rate, swapped_preference, verdict_preference, win_rate
from adaptkit.evals.judging import load_template, parse_grade, parse_verdict

SECRET = "sk-test-do-not-leak-41f7"


class Scripted(BaseHTTPRequestHandler):
    """Answers from a script of (status, body) for each request; records what it saw."""

    script: list = []
    seen: list = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization"), self.rfile.read(length)))
        status, body = type(self).script.pop(0) if type(self).script else (500, {})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    """A minimal OpenAI-shaped server on 127.0.0.1 answering a given script."""
    handler = type("Handler", (Scripted,), {"script": [], "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler
    httpd.shutdown()
    httpd.server_close()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def alpaca_file(tmp_path: Path, n: int = 3) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"Write a short line about topic {i}.", "dataset": "test"} for i in range(n)])


def mt_bench_file(tmp_path: Path, n: int = 3) -> Path:
    return write_jsonl(tmp_path / "question.jsonl", [{"question_id": 81 + i, "category": ["writing", "math"][i % 2],
                                                      "turns": [f"Question {i}, part one?", f"Now rewrite it, part two {i}."]} for i in range(n)])


# ----------------------------------------------------------------- parsing and arithmetic


def test_parse_grade_reads_the_formats_judges_write():
    ten, five = (1.0, 10.0), (1.0, 5.0)
    assert parse_grade("The answer is fine. Rating: [[7]]", ten) == 7.0
    assert parse_grade("Rating: [[8.5]]", ten) == 8.5
    assert parse_grade("<feedback>ok</feedback>\n<score>4</score>", five) == 4.0
    assert parse_grade("Score: 3", five) == 3.0
    assert parse_grade("I would give it 6/10.", ten) == 6.0
    assert parse_grade("Rating: [9]", ten) == 9.0
    assert parse_grade(" 5 ", ten) == 5.0
    assert parse_grade("Rating: [[11]]", ten) is None  # off the scale
    assert parse_grade("<score>7</score>", five) is None  # a 1-5 scale
    assert parse_grade("ab\ufffdight cikin", ten) is None
    assert parse_grade("", ten) is None
    assert parse_grade("first [[2]], corrected: [[6]]", ten) == 6.0  # the final rating


def test_parse_verdict_and_position_swap():
    assert parse_verdict("A is more detailed. [[A]]") == "A"
    assert parse_verdict("[[C]]") == "C"
    assert parse_verdict("Assistant B") == "B"
    assert parse_verdict("[[A]] no wait [[B]]") is None  # contradictory
    assert parse_verdict("garbage \ufffd") is None
    # order 1: the model is A; order 2: the model is B
    assert verdict_preference("A", "A") == 1.0 and verdict_preference("A", "B") == 0.0 and verdict_preference("C", "B") == 0.5
    assert swapped_preference("A", "B") == 1.0  # the model won in both positions
    assert swapped_preference("A", "A") == 0.5  # the judge always picked position A: bias cancels
    assert swapped_preference("B", "B") == 0.5
    assert swapped_preference("B", "A") == 0.0
    assert swapped_preference(None, "B") == 1.0  # one parsed order counts alone
    assert swapped_preference("C", "B") == 0.75
    assert swapped_preference(None, None) is None


def test_win_rate_and_interval_against_hand_computation():
    prefs = [1.0, 0.0, 0.5, 1.0]
    # mean 0.625; sample variance ((.375^2)*2 + .625^2 + .125^2) / 3 = 0.22916..; se = sqrt(var / 4)
    se = math.sqrt((2 * 0.375**2 + 0.625**2 + 0.125**2) / 3 / 4)
    result = win_rate(prefs)
    assert result["win_rate"] == pytest.approx(62.5)
    assert result["win_rate_se"] == pytest.approx(100 * se)
    assert result["win_rate_ci_low"] == pytest.approx(100 * (0.625 - 1.959963984540054 * se))
    assert result["win_rate_ci_high"] == pytest.approx(min(100, 100 * (0.625 + 1.959963984540054 * se)))
    assert math.isnan(win_rate([])["win_rate"])


def test_lc_win_rate_against_hand_computation():
    # Two length groups: model longer by 40 chars (preferences 1, 0.8 -> mean 0.9) and shorter by 40
    # (0.5, 0.5 -> 0.5). The two-parameter logistic model is saturated, so its MLE fits each group:
    # theta + phi*c = logit(0.9), theta - phi*c = logit(0.5) = 0  =>  theta = ln(9)/2, LC = 1/(1+1/3) = 75%.
    prefs = [1.0, 0.8, 0.5, 0.5]
    len_model, len_ref = [140, 140, 60, 60], [100, 100, 100, 100]
    assert win_rate(prefs)["win_rate"] == pytest.approx(70.0)
    assert lc_win_rate(prefs, len_model, len_ref, ridge=0.0) == pytest.approx(75.0, abs=1e-9)
    assert lc_win_rate(prefs, len_model, len_ref) == pytest.approx(75.0, abs=0.1)  # the default, slightly penalised fit
    # no length differences: the length term drops out and LC equals the raw win rate
    assert lc_win_rate(prefs, [100] * 4, [100] * 4, ridge=0.0) == pytest.approx(70.0, abs=1e-9)
    # groups at 0.9 and 0.3: theta = (ln 9 + ln(3/7)) / 2, so the odds are sqrt(27/7)
    odds = math.sqrt(27 / 7)
    assert lc_win_rate([0.9, 0.9, 0.3, 0.3], len_model, len_ref, ridge=0.0) == pytest.approx(100 * odds / (1 + odds), abs=1e-9)
    # the length feature is tanh(delta / sd): a uniform scaling of the lengths changes nothing
    assert lc_win_rate(prefs, [3 * x for x in len_model], [3 * x for x in len_ref]) == pytest.approx(lc_win_rate(prefs, len_model, len_ref))
    assert lc_win_rate([1.0, 1.0], [10, 20], [5, 5]) == 100.0  # the model won everything
    # quasi-separation (every longer answer won): the unpenalised theta diverges; the ridge keeps it finite
    assert 75.0 < lc_win_rate([1.0, 1.0, 0.5, 0.5], len_model, len_ref) < 100.0


def test_grade_summary_counts_unparsable():
    metrics = grade_summary([[7.0, None, 5.0], [None, None, 9.0]])
    assert metrics["turn_1"] == 6.0 and metrics["turn_2"] == 9.0
    assert metrics["score"] == pytest.approx(7.0)
    assert metrics["unparsable"] == 3.0 and metrics["unparsable_turn_1"] == 1.0 and metrics["judged"] == 3.0
    assert math.isnan(grade_summary([[None], [None]])["score"])


def test_builtin_templates_and_a_bad_template(tmp_path):
    assert load_template(None, "mt-bench", "single", "--set judge.template").scale == (1.0, 10.0)
    assert load_template("likert", "mt-bench", "single", "--set judge.template").scale == (1.0, 5.0)
    pair = load_template(None, "pairwise", "pairwise", "--set judge.template")
    text = pair.messages("user", instruction="I", output_a="X", output_b="Y")[-1]["content"]
    assert "X" in text and "Y" in text and text.index("X") < text.index("Y")
    bad = tmp_path / "bad.txt"
    bad.write_text("# kind: single\n# scale: 1-10\n=== system ===\n=== turn 1 ===\n{{question}}\n=== turn 2 ===\n{{answer_2}}\n")
    with pytest.raises(InputError, match="unknown field"):
        load_template(str(bad), "mt-bench", "single", "--set judge.template")
    with pytest.raises(InputError, match="'pairwise' template"):
        load_template("pairwise", "mt-bench", "single", "--set judge.template")


# ----------------------------------------------------------------- the client against scripted answers


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_client_retries_429_and_5xx_then_succeeds(scripted, tmp_path):
    from adaptkit.io.openai_client import OpenAIClient

    url, handler = scripted
    ok = {"choices": [{"message": {"content": "[[B]]"}}]}
    handler.script += [(200, {"data": [{"id": "judge"}]}), (429, {}), (503, {}), (200, ok)]
    client = OpenAIClient(url, retries=3, backoff=0.01)
    client.check_model("judge")
    assert client.chat("judge", [{"role": "user", "content": "hi"}], {"temperature": 0}) == "[[B]]"
    assert [path for _, path, _, _ in handler.seen] == ["/v1/models"] + ["/v1/chat/completions"] * 3
    handler.script += [(500, {"error": "down"})] * 2
    with pytest.raises(AdaptkitError, match="HTTP 500") as caught:
        OpenAIClient(url, retries=1, backoff=0.01).chat("judge", [{"role": "user", "content": "x"}], {})
    assert not isinstance(caught.value, InputError)  # a runtime failure (exit 1)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_client_sends_the_key_but_never_stores_it(scripted, tmp_path, monkeypatch):
    from adaptkit.io.openai_client import OpenAIClient, ReplyCache

    url, handler = scripted
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    handler.script += [(200, {"choices": [{"message": {"content": "fine"}}]})]
    cache = ReplyCache(tmp_path / "replies.sqlite")
    client = OpenAIClient(url, key_env="MY_JUDGE_KEY", cache=cache)
    messages = [{"role": "user", "content": "q"}]
    assert client.chat("judge", messages, {"temperature": 0}, tag="t") == "fine"
    assert handler.seen[0][2] == f"Bearer {SECRET}"
    again = OpenAIClient(url, key_env="MY_JUDGE_KEY", cache=ReplyCache(tmp_path / "replies.sqlite"))
    assert again.chat("judge", messages, {"temperature": 0}, tag="t") == "fine" and again.requests_sent == 0  # cached
    assert len(handler.seen) == 1
    assert SECRET.encode() not in (tmp_path / "replies.sqlite").read_bytes()
    assert again.cache.key(url, "t", {"a": 1}) != again.cache.key(url, "other template", {"a": 1})


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_auth_refused_is_one_line_exit_2(scripted, tmp_path, llama_dir, invoke, monkeypatch):
    url, handler = scripted
    handler.script += [(401, {"error": "bad key"})]
    out = tmp_path / "eval"
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    result = invoke("evaluate", "--model", llama_dir, "--task", f"judge-single:{mt_bench_file(tmp_path)}", "--set", f"judge.base_url={url}",
                    "--set", "judge.model=judge", "--set", "judge.api_key_env=MY_JUDGE_KEY", "-o", out)
    assert_input_error(result, "judge.base_url", "HTTP 401", "$MY_JUDGE_KEY")
    assert SECRET not in result.stderr + result.stdout
    assert not out.exists()


def test_unreachable_endpoint_names_the_url_and_what_to_start(tmp_path, llama_dir, invoke):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    out = tmp_path / "eval"
    result = invoke("evaluate", "--model", llama_dir, "--task", f"judge-single:{mt_bench_file(tmp_path)}",
                    "--set", f"judge.base_url={url}", "--set", "judge.model=j", "-o", out)
    assert_input_error(result, url, "transformers serve", "vllm serve")
    assert not out.exists()


# ----------------------------------------------------------------- bad input, before any model loads


@pytest.mark.slow  # needs the real `transformers serve` (the CLI runs in this process)
@pytest.mark.parametrize("case", ["no-reference", "no-instruction", "one-turn", "unknown-judge", "unknown-key"])
def test_bad_judge_input_is_one_line_exit_2(case, server, tmp_path, llama_dir, invoke):
    url, judge = server
    out = tmp_path / "eval"
    common = ["--set", f"judge.base_url={url}", "--set", f"judge.model={judge}", "-o", out]
    if case == "no-reference":
        args, fragments = ["--task", f"judge-pairwise:{alpaca_file(tmp_path)}"], ("judge.reference", "needs reference answers")
    elif case == "no-instruction":
        bad = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
        args, fragments = ["--task", f"judge-pairwise:{bad}", "--set", f"judge.reference={llama_dir}"], ("p.jsonl", "'instruction'")
    elif case == "one-turn":
        bad = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "category": "writing", "turns": ["only one"]}])
        args, fragments = ["--task", f"judge-single:{bad}"], ("q.jsonl", "1 turn(s)", "needs 2")
    elif case == "unknown-judge":
        args, fragments = ["--task", f"judge-single:{mt_bench_file(tmp_path)}"], ("judge.model", "does not serve", judge)
        common[3] = "judge.model=no-such-judge"
    else:
        args, fragments = ["--task", f"judge-single:{mt_bench_file(tmp_path)}", "--set", f"judge.reference={llama_dir}"], ("judge.reference",)
    result = invoke("evaluate", "--model", llama_dir, *args, *common)
    assert_input_error(result, *fragments)
    assert not out.exists()


# ----------------------------------------------------------------- end to end against the real server


@pytest.mark.slow  # needs the real `transformers serve` (the CLI runs in this process)
def test_judge_tasks_end_to_end_through_evaluate(server, tmp_path, chat_model_dir, make_model_dir, invoke, monkeypatch):
    from adaptkit.evals.judge_stats import lc_win_rate

    url, judge = server
    out = tmp_path / "eval"
    cache = tmp_path / "cache"
    reference = make_model_dir("llama", seed=1)
    monkeypatch.setenv("ADAPTKIT_CACHE", str(cache))
    monkeypatch.setenv("ADAPTKIT_JUDGE_API_KEY", SECRET)
    result = invoke("evaluate", "--model", f"chat={chat_model_dir}", "--task", f"judge-pairwise:ae={alpaca_file(tmp_path)}",
                    "--task", f"judge-single:mtb={mt_bench_file(tmp_path)}", "--set", f"judge.reference={reference}",
                    "--set", f"judge.base_url={url}", "--set", f"judge.model={judge}", "--set", "judge.judge_max_tokens=6",
                    "--set", "judge.max_new_tokens=6", "--set", "judge.concurrency=2", "-o", out)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    ae, mtb = results["results"]["chat"]["ae"], results["results"]["chat"]["mtb"]
    pair_records = [json.loads(l) for l in (out / "details" / "chat" / "ae.jsonl").read_text().splitlines()]
    single_records = [json.loads(l) for l in (out / "details" / "chat" / "mtb.jsonl").read_text().splitlines()]
    # pairwise: both orders judged, raw replies kept, counts and rates recomputed from the records
    assert len(pair_records) == 3 and all(len(r["judgments"]) == 2 for r in pair_records)
    assert [j["model_is"] for j in pair_records[0]["judgments"]] == ["A", "B"]
    verdicts = [parse_verdict(j["reply"]) for r in pair_records for j in r["judgments"]]
    assert ae["unparsable"] == verdicts.count(None) and ae["items"] == 3
    kept = [r for r in pair_records if r["preference"] is not None]
    assert ae["judged_items"] == len(kept)
    if kept:
        assert ae["win_rate"] == pytest.approx(100 * sum(r["preference"] for r in kept) / len(kept))
        assert ae["lc_win_rate"] == pytest.approx(lc_win_rate([r["preference"] for r in kept], [len(r["output"]) for r in kept],
                                                              [len(r["reference_output"]) for r in kept]))
    else:
        assert math.isnan(ae["win_rate"])
    # single: two turns per question, the second judged with the first answer in view
    assert len(single_records) == 3 and all(len(r["answers"]) == 2 for r in single_records)
    grades = [parse_grade(j["reply"], (1.0, 10.0)) for r in single_records for j in r["judgments"]]
    assert [j["grade"] for r in single_records for j in r["judgments"]] == grades
    assert mtb["unparsable"] == grades.count(None)
    assert mtb["unparsable_turn_1"] + mtb["unparsable_turn_2"] == mtb["unparsable"] and mtb["judged"] == 6 - mtb["unparsable"]
    # the key stays out of every output
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    # a re-run is answered from the judge cache: the same replies
    monkeypatch.delenv("ADAPTKIT_JUDGE_API_KEY")
    again = invoke("evaluate", "--model", f"chat={chat_model_dir}", "--task", f"judge-single:mtb={mt_bench_file(tmp_path)}",
                   "--set", f"judge.base_url={url}", "--set", f"judge.model={judge}", "--set", "judge.judge_max_tokens=6",
                   "--set", "judge.max_new_tokens=6", "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    rerun = [json.loads(l) for l in (tmp_path / "again" / "details" / "chat" / "mtb.jsonl").read_text().splitlines()]
    assert [j["reply"] for r in rerun for j in r["judgments"]] == [j["reply"] for r in single_records for j in r["judgments"]]


@pytest.mark.slow  # needs the real `transformers serve` (the CLI runs in this process)
def test_reply_cache_saves_server_requests(server, tmp_path):
    from adaptkit.io.openai_client import OpenAIClient, ReplyCache

    url, judge = server
    messages = [{"role": "user", "content": "Rate this."}]
    first = OpenAIClient(url, cache=ReplyCache(tmp_path / "c.sqlite"))
    reply = first.chat(judge, messages, {"temperature": 0.0, "max_tokens": 4})
    second = OpenAIClient(url, cache=ReplyCache(tmp_path / "c.sqlite"))
    assert second.chat(judge, messages, {"temperature": 0.0, "max_tokens": 4}) == reply
    assert (first.requests_sent, second.requests_sent) == (1, 0)
    second.chat(judge, messages, {"temperature": 0.0, "max_tokens": 5})  # other settings: a new request
    assert second.requests_sent == 1


@pytest.mark.slow  # needs the real `transformers serve` (the CLI runs in this process)
def test_server_generation_equals_in_process_for_greedy(server, chat_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptkit.evals.generation import generate
    from adaptkit.evals.server_generation import server_generator

    url, served = server
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    remote = server_generator(url, tokenizer=tokenizer)
    assert remote.model == served  # the only model served
    prompts = ["Write about the sea.", "Translate: hello", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                                          {"role": "user", "content": "More?"}]]
    for stop, chat in (((), True), (("\n",), True), ((), False)):
        texts = prompts if chat else prompts[:2]
        local = generate(model, tokenizer, texts, max_new_tokens=12, stop=stop, batch_size=1, chat_template=chat)
        assert remote(texts, max_new_tokens=12, stop=stop, chat_template=chat) == local
        assert any(local)


def test_judge_cache_off_as_set_gives_it_arrives_as_false():
    """`--set judge.cache=off` is parsed to the boolean false; it turns the reply cache off, like 'off'."""
    from adaptkit.settings import parse_set_overrides
    from adaptkit.evals.judging import JudgeParams, _cache

    [(path, value)] = parse_set_overrides(["judge.cache=off"])
    assert value is False
    assert _cache(JudgeParams(cache=value).cache) is None and _cache(JudgeParams(cache="off").cache) is None
    assert _cache(JudgeParams().cache) is not None  # the default caches


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_a_server_that_stops_answering_or_dies_fails_the_client_within_its_bounds():
    """A server that answered once, then hangs on a request (or drops the connection): the client gives up
    after (retries + 1) x timeout plus backoff, one runtime error; it never waits without a bound."""
    import time

    from adaptkit.io.openai_client import OpenAIClient

    class Stalling(BaseHTTPRequestHandler):
        mode = "hang"

        def do_GET(self):
            body = json.dumps({"data": [{"id": "judge"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            if Stalling.mode == "hang":
                time.sleep(5)  # longer than the client's timeout
            self.connection.close()  # "die": no answer at all

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = OpenAIClient(f"http://127.0.0.1:{httpd.server_port}/v1", timeout=0.3, retries=1, backoff=0.01)
        client.check_model("judge")
        for mode in ("hang", "die"):
            Stalling.mode = mode
            started = time.monotonic()
            with pytest.raises(AdaptkitError, match="no answer after 2 attempt") as caught:
                client.chat("judge", [{"role": "user", "content": "hi"}], {})
            assert time.monotonic() - started < 3 and not isinstance(caught.value, InputError), mode
    finally:
        httpd.shutdown()
