"""The SSU paper's evaluation protocol: FLORES-200 / XL-SUM layouts, shots as chat turns from dev,
sampled three-run chrF++ with its spread, and `evaluate --suite ssu-paper`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import assert_input_error

from adaptkit.errors import InputError

pytestmark = pytest.mark.slow  # generation runs and lm-eval task builds


CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def flores(tmp_path, corpora) -> tuple[Path, dict[str, dict[str, list[str]]]]:
    """A FLORES-200 directory: dev (6 aligned lines) and devtest (4 other lines) for eng_Latn and hau_Latn."""
    en, ha = corpora["en"].read_text().splitlines(), corpora["ha"].read_text().splitlines()
    text = {"dev": {"en": en[:6], "ha": ha[:6]}, "devtest": {"en": en[10:14], "ha": ha[10:14]}}
    root = tmp_path / "flores200_dataset"
    for split, langs in text.items():
        for lang, code in (("en", "eng_Latn"), ("ha", "hau_Latn")):
            _write(root / split / f"{code}.{split}", langs[lang])
    return root, text


@pytest.fixture
def xlsum(tmp_path, corpora) -> Path:
    """An XL-SUM directory: hausa and english test/val splits of three records each."""
    root = tmp_path / "xlsum"
    for lang, name in (("en", "english"), ("ha", "hausa")):
        lines = corpora[lang].read_text().splitlines()
        for split, start in (("test", 0), ("val", 3)):
            records = [{"id": f"{name}-{split}-{i}", "url": "u", "title": "t", "summary": lines[start + i][:60], "text": lines[start + i]}
                       for i in range(3)]
            _write(root / f"{name}_{split}.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
    return root


@pytest.mark.slow  # over ~0.3 s (pandas): kept out of the fast loop
def test_mt_reference_selection_is_the_pandas_sample_of_the_reference(tmp_path, corpora):
    """generate_mt_data.py: devtest rows in id order, DataFrame.sample(n=500, random_state=42); here 40 rows, n = 12."""
    pandas = pytest.importorskip("pandas")
    from adaptkit.plugins.evals.mt import MTBackend, MTParams

    en, ha = corpora["en"].read_text().splitlines(), corpora["ha"].read_text().splitlines()
    root = tmp_path / "flores"
    for split, rows in (("dev", slice(0, 3)), ("devtest", slice(3, 43))):
        for lines, code in ((en, "eng_Latn"), (ha, "hau_Latn")):
            _write(root / split / f"{code}.{split}", [f"{i}: {lines[i % len(lines)]}" for i in range(rows.start, rows.stop)])
    devtest = pandas.DataFrame({"en": (root / "devtest" / "eng_Latn.devtest").read_text().splitlines(),
                                "ha": (root / "devtest" / "hau_Latn.devtest").read_text().splitlines()})
    expected = devtest.sample(n=12, random_state=42)
    [task] = MTBackend(MTParams(selection="reference", limit=12)).prepare(f"{root}:ha-en", "--task")
    assert [item["id"] for item in task.payload] == list(expected.index)
    assert [item["reference"] for item in task.payload] == list(expected["en"]) and task.info["selection"] == "reference"
    [first] = MTBackend(MTParams(limit=12)).prepare(f"{root}:ha-en", "--task")
    assert [item["id"] for item in first.payload] == list(range(12))


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_sum_reference_selection_is_the_shortest_of_test_and_validation(tmp_path, corpora, llama_dir):
    """generate_sum_data.py: test+validation, len(tokenizer.encode(text)), sorted(...)[:500]; here the first 5."""
    from transformers import AutoTokenizer

    from adaptkit.plugins.evals.sum import SumBackend, SumParams

    lines = corpora["ha"].read_text().splitlines()
    root = tmp_path / "xlsum"
    records = {split: [{"id": f"{split}-{i}", "summary": f"s{i}", "text": " ".join(lines[(i * 7 + k) % len(lines)] for k in range(1 + (i * 5) % 4))}
                       for i in range(8)] for split in ("test", "val")}
    for split, rows in records.items():
        _write(root / f"hausa_{split}.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    test_data = [{"id": r["id"], "len": len(tokenizer.encode(r["text"]))} for r in records["test"] + records["val"]]
    expected = [r["id"] for r in sorted(test_data, key=lambda x: x["len"])[:5]]
    [task] = SumBackend(SumParams(selection="reference", length_tokenizer=str(llama_dir), limit=5)).prepare(f"{root}:ha", "--task")
    assert [item["id"] for item in task.payload] == expected and any(i.startswith("val-") for i in expected)
    assert task.info["split"] == "test+val"
    with pytest.raises(InputError, match="length_tokenizer"):
        SumBackend(SumParams(selection="reference")).prepare(f"{root}:ha", "--task")
    with pytest.raises(InputError, match="shots"):
        SumBackend(SumParams(selection="reference", length_tokenizer=str(llama_dir), shots=1)).prepare(f"{root}:ha", "--task")


def test_paper_protocol_renders_shots_from_dev_as_chat_turns(flores):
    from adaptkit.evals.generation import format_prompt
    from adaptkit.evals.templates import MT_INSTRUCTIONS
    from adaptkit.plugins.evals.mt import MTBackend, MTParams

    root, text = flores
    [task] = MTBackend(MTParams(protocol="ssu-paper")).prepare(f"{root}:ha-en", "--task")
    assert task.name == "flores-ha-en" and task.info["split"] == "devtest" and len(task.payload) == 4
    dev = list(zip(text["dev"]["ha"], text["dev"]["en"]))
    test = list(zip(text["devtest"]["ha"], text["devtest"]["en"]))
    instruction = MT_INSTRUCTIONS[("ha", "en")]
    for number, item in enumerate(task.payload):
        messages = item["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
        assert messages[0]["content"].startswith(instruction)
        pairs = [(messages[2 * k]["content"].removeprefix(instruction if k == 0 else "").removesuffix(" ="), messages[2 * k + 1]["content"])
                 for k in range(3)]
        assert all(pair in dev and pair not in test for pair in pairs)  # shots from dev, none from the evaluated split
        shots = [dev.index(pair) for pair in pairs]
        assert len(set(shots)) == 3
        # the conversation built independently from the shots found, in their order
        expected = [{"role": "user", "content": f"{instruction}{dev[shots[0]][0]} ="}, {"role": "assistant", "content": dev[shots[0]][1]}]
        for j in shots[1:]:
            expected += [{"role": "user", "content": f"{dev[j][0]} ="}, {"role": "assistant", "content": dev[j][1]}]
        expected.append({"role": "user", "content": f"{test[number][0]} ="})
        assert messages == expected and item["reference"] == test[number][1]
        # without a chat template the same conversation is the single-turn text
        assert item["prompt"] == instruction + "".join(f"{dev[j][0]} = {dev[j][1]}\n\n" for j in shots) + f"{test[number][0]} ="
    again = MTBackend(MTParams(protocol="ssu-paper")).prepare(f"{root}:ha-en", "--task")[0].payload
    other = MTBackend(MTParams(protocol="ssu-paper", shot_seed=1)).prepare(f"{root}:ha-en", "--task")[0].payload
    assert again == task.payload and other != task.payload  # seeded draw

    class Tokenizer:  # applies a chat template like transformers does
        chat_template = CHAT_TEMPLATE

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            from jinja2 import Template

            return Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=add_generation_prompt)

    rendered, _ = format_prompt(Tokenizer(), task.payload[0]["messages"], True)
    assert rendered.count("<user>") == 4 and rendered.count("<assistant>") == 4 and rendered.endswith("<assistant>")


def test_paper_preset_and_its_overrides():
    from adaptkit.evals.generation import PAPER_SAMPLING
    from adaptkit.evals.server_generation import PAPER_REQUEST
    from adaptkit.plugins.evals.mt import MTParams
    from adaptkit.plugins.evals.sum import SumParams

    paper = MTParams(protocol="ssu-paper")
    assert (paper.decoding, paper.runs, paper.limit, paper.shot_turns, paper.shots, paper.max_new_tokens) == ("paper", 3, 500, True, 3, 128)
    assert SumParams(protocol="ssu-paper").shots == 0
    mine = MTParams(protocol="ssu-paper", runs=5, decoding="greedy", limit=10)
    assert (mine.runs, mine.decoding, mine.limit, mine.shot_turns) == (5, "greedy", 10, True)
    default = MTParams()
    assert (default.decoding, default.runs, default.limit, default.shot_turns) == ("greedy", 1, None, False)
    assert PAPER_SAMPLING == {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}
    assert PAPER_REQUEST == {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}  # --generation-server: the same


def test_three_sampled_runs_mean_and_spread_match_sacrebleu(make_model_dir, flores):
    import sacrebleu
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptkit.evals.tasks import RunContext
    from adaptkit.plugins.evals.mt import MTBackend, MTParams

    directory = make_model_dir("llama", seed=0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.append({k: kwargs[k] for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")})
        seen[-1]["text"] = tokenizer.decode(kwargs["input_ids"][0], skip_special_tokens=True)
        return original(**kwargs)

    model.generate = spy
    backend = MTBackend(MTParams(protocol="ssu-paper", shots=1, max_new_tokens=8, batch_size=4))
    [task] = backend.prepare(f"{flores[0]}:en-ha", "--task")
    output = backend.run(model, tokenizer, [task], RunContext(seed=7))[task.name]
    assert all(s == {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1, "max_new_tokens": 8, "text": s["text"]}
               for s in seen) and len(seen) == 3
    assert "<assistant>" in seen[0]["text"]  # the shot went in as an assistant turn of the chat template
    records = output.records
    assert sorted({(r["run"], r["seed"]) for r in records}) == [(0, 7), (1, 8), (2, 9)]
    per_run = []
    for run in range(3):
        rows = [r for r in records if r["run"] == run]
        per_run.append(sum(sacrebleu.sentence_chrf(r["response"], [r["reference"]], word_order=2).score for r in rows) / len(rows))
    assert len({tuple(r["response"] for r in records if r["run"] == run) for run in range(3)}) > 1  # sampled: the runs differ
    mean = sum(per_run) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in per_run) / 2)
    m = output.metrics
    assert m["chrf++"] == pytest.approx(mean) and m["chrf++_std"] == pytest.approx(std) and std > 0
    assert (m["chrf++_min"], m["chrf++_max"]) == (pytest.approx(min(per_run)), pytest.approx(max(per_run)))
    assert m["runs"] == 3 and m["items"] == 4


def test_xlsum_layout_zero_shot_and_the_paper_refuses_shots_from_evaluated_items(xlsum, tmp_path):
    from adaptkit.errors import InputError
    from adaptkit.evals.templates import sum_query
    from adaptkit.plugins.evals.mt import MTBackend, MTParams
    from adaptkit.plugins.evals.sum import SumBackend, SumParams

    [task] = SumBackend(SumParams(protocol="ssu-paper")).prepare(f"{xlsum}:ha", "--task")
    records = [json.loads(line) for line in (xlsum / "hausa_test.jsonl").read_text().splitlines()]
    assert task.name == "xlsum-ha" and [i["id"] for i in task.payload] == [r["id"] for r in records]
    assert [i["messages"] for i in task.payload] == [[{"role": "user", "content": sum_query("ha", r["text"])}] for r in records]
    assert [i["reference"] for i in task.payload] == [r["summary"] for r in records]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"src": "a", "tgt": "b", "src_lang": "en", "tgt_lang": "ha"}) + "\n")
    with pytest.raises(InputError, match="never from the evaluated items"):
        MTBackend(MTParams(protocol="ssu-paper")).prepare(str(pairs), "--task")
    with pytest.raises(InputError, match="hausa_test.jsonl' is missing|kyrgyz_test.jsonl' is missing"):
        SumBackend(SumParams()).prepare(f"{xlsum}:ky", "--task")


def test_suite_ssu_paper_runs_what_has_data_and_lists_the_rest(invoke, make_model_dir, flores, xlsum, tmp_path):
    model = make_model_dir("llama", seed=0)
    out = tmp_path / "suite"
    result = invoke("evaluate", "--model", f"base={model}", "--suite", "ssu-paper", "--set", "suite.lang=hau",
                    "--set", f"suite.flores={flores[0]}", "--set", f"suite.xlsum={xlsum}", "--set", "mt.max_new_tokens=4",
                    "--set", "sum.max_new_tokens=4", "--set", "mt.runs=2", "--no-plots", "-o", out)
    assert result.returncode == 0, result
    results = json.loads((out / "results.json").read_text())
    roles = {t["name"]: t["role"] for t in results["tasks"]}
    assert roles == {"xlsum-en": "source", "flores-ha-en": "target", "flores-en-ha": "target", "xlsum-ha": "target"}
    params = results["config"]["params"]
    assert (params["mt"]["protocol"], params["mt"]["runs"], params["sum"]["runs"], params["sum"]["decoding"]) == ("ssu-paper", 2, 3, "paper")
    assert "chrf++_std" in results["results"]["base"]["flores-ha-en"]
    not_run = {e["name"]: e for e in results["suite"]["not_run"]}
    expected = {"ssu-mmlu-en", "ssu-belebele-eng", "leaderboard_ifeval", "gsm8k", "mt-bench", "alpacaeval-2", "safety", "ssu-belebele-hau", "ssu-global-mmlu-hau"}
    assert set(not_run) == expected and "suite.hub=true" in not_run["ssu-global-mmlu-hau"]["reason"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: --suite ssu-paper: not run:")]
    assert len(warnings) == len(expected) and all(any(name in w for w in warnings) for name in expected)
    markdown = (out / "results.md").read_text()
    assert "## Suite `ssu-paper`" in markdown and "| ssu-belebele-hau | target |" in markdown


def test_suite_without_data_is_bad_input(invoke, make_model_dir, tmp_path):
    model = make_model_dir("llama", seed=0)
    out = tmp_path / "out"
    result = invoke("evaluate", "--model", model, "--suite", "ssu-paper", "--set", "suite.lang=ha", "-o", out)
    assert_input_error(result, "--suite ssu-paper", "no task of the suite has its data")
    assert sum(line.startswith("warning: --suite ssu-paper: not run: flores-ha-en") for line in result.stderr.splitlines()) == 1
    assert not out.exists()
    for args, fragments in ((["--suite", "ssu-papr", "--set", "suite.lang=ha"], ["--suite", "did you mean: ssu-paper"]),
                            (["--suite", "ssu-paper"], ["--set suite.lang=CODE"]),
                            (["--suite", "ssu-paper", "--set", "suite.lang=ha", "--set", "suite.flors=x"], ["--set suite.*", "'flors'", "did you mean: flores"]),
                            (["--task", "ppl:x.txt", "--set", "suite.lang=ha"], ["--set suite.*", "only with --suite"])):
        assert_input_error(invoke("evaluate", "--model", model, *args, "-o", out), *fragments)
        assert not out.exists()


def test_suite_with_the_hub_runs_the_lm_eval_tasks_lm_eval_knows(flores):
    from adaptkit.evals.suites import SuiteSettings, ssu_paper

    known = {"leaderboard_ifeval", "gsm8k", "ssu-belebele-npi"}
    suite = ssu_paper(SuiteSettings(lang="ne", hub=True, flores=str(flores[0])),
                      check=lambda task: "" if task in known else f"unknown lm-eval task '{task}'")
    runnable = {e.name: (e.role, e.task) for e in suite.runnable}
    assert runnable == {"leaderboard_ifeval": ("source", "lm-eval:leaderboard_ifeval"), "gsm8k": ("source", "lm-eval:gsm8k"),
                        "ssu-belebele-npi": ("target", "lm-eval:ssu-belebele-npi")}  # no FLORES files for Nepali here
    missing = {e["name"]: e["reason"] for e in suite.report()["not_run"]}
    assert "unknown lm-eval task 'ssu-global-mmlu-npi'" in missing["ssu-global-mmlu-npi"]
    assert "npi_Deva.dev' is missing" in missing["flores-ne-en"] and "flores200_dataset.tar.gz" in missing["flores-ne-en"]
    # presets only for the backends that run; an explicit setting wins
    reference = {"apply_chat_template": True, "fewshot_as_multiturn": True, "runs": 3,  # gucci-j/ssu evaluation/scripts/source_gen.sh
                 "gen_kwargs": "temperature=0.8,top_p=0.8,top_k=40,repetition_penalty=1.1,do_sample=true"}
    assert suite.params({"lm-eval": {"apply_chat_template": False}}) == {"lm-eval": {**reference, "apply_chat_template": False}}
    assert suite.params({}) == {"lm-eval": reference}
    other = ssu_paper(SuiteSettings(lang="sw"), check=lambda task: "")
    assert "cover am, ha, ig, ky, ne only" in {e.name: e.missing for e in other.entries}["ssu-belebele-sw"]


@pytest.mark.slow  # imports lm-eval: over ~0.3 s
def test_lm_eval_runs_generating_tasks_n_times_with_the_reference_settings(monkeypatch):
    """runs=3: a generate_until task three times (seeds s, s+1, s+2) with the given gen_kwargs, mean and spread of its
    primary metric; a log-likelihood task once. lm-eval itself is replaced by a recorder."""
    import statistics

    pytest.importorskip("lm_eval")
    import lm_eval
    import lm_eval.models.huggingface

    from adaptkit.evals.tasks import EvalTask, RunContext
    from adaptkit.plugins.evals.lm_eval import LmEvalBackend, LmEvalParams

    calls = []
    scores = {"gen": [0.25, 0.5, 0.6], "choice": [0.75]}

    def fake_evaluate(**kwargs):
        calls.append(kwargs)
        run = sum(1 for c in calls if "gen" in c["tasks"]) - 1
        results = {name: {"exact_match,none": scores[name][run if name == "gen" else 0], "exact_match_stderr,none": 0.1} for name in kwargs["tasks"]}
        configs = {"gen": {"output_type": "generate_until"}, "choice": {"output_type": "multiple_choice"}}
        return {"results": results, "configs": {n: configs[n] for n in kwargs["tasks"]}, "higher_is_better": {n: {"exact_match": True} for n in kwargs["tasks"]}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_evaluate)
    monkeypatch.setattr(lm_eval.models.huggingface, "HFLM", lambda **kwargs: object())
    gen_kwargs = "temperature=0.8,top_p=0.8,top_k=40,repetition_penalty=1.1,do_sample=true"
    backend = LmEvalBackend(LmEvalParams(runs=3, gen_kwargs=gen_kwargs, fewshot_as_multiturn=True, apply_chat_template=True, system_instruction=""))
    backend._managers[""] = None
    tasks = [EvalTask(name, "lm-eval", name, {"manager": ""}, {}) for name in ("gen", "choice")]
    outputs = backend.run(None, None, tasks, RunContext(seed=7))
    assert [c["tasks"] for c in calls] == [["gen", "choice"], ["gen"], ["gen"]] and [c["random_seed"] for c in calls] == [7, 8, 9]
    assert all(c["gen_kwargs"] == gen_kwargs and c["fewshot_as_multiturn"] is True and c["system_instruction"] == "" for c in calls)
    gen = outputs["gen"].metrics
    assert gen["exact_match"] == pytest.approx(statistics.mean(scores["gen"])) and gen["runs"] == 3
    assert gen["exact_match_std"] == pytest.approx(statistics.stdev(scores["gen"])) and (gen["exact_match_min"], gen["exact_match_max"]) == (0.25, 0.6)
    assert outputs["choice"].metrics == {"exact_match": 0.75}


def test_generation_server_gets_the_turns_and_the_paper_sampling(flores):
    from adaptkit.evals.server_generation import PAPER_REQUEST, ServerGenerator
    from adaptkit.evals.tasks import RunContext
    from adaptkit.plugins.evals.mt import MTBackend, MTParams

    class Client:  # records what an OpenAI-compatible server would receive
        base_url = "http://server/v1"

        def __init__(self):
            self.calls = []

        def chat(self, model, messages, settings, tag=""):
            self.calls.append(("chat", messages, settings))
            return f"reply {len(self.calls)}\nignored after the stop"

        def complete(self, model, prompt, settings, tag=""):
            self.calls.append(("complete", prompt, settings))
            return "text"

        def map(self, function, items):
            return [function(item) for item in items]

    backend = MTBackend(MTParams(protocol="ssu-paper", runs=2))
    [task] = backend.prepare(f"{flores[0]}:ha-en", "--task")
    for templated, kind in ((True, "chat"), (False, "complete")):
        client = Client()
        output = backend.run(None, None, [task], RunContext(seed=3, generator=ServerGenerator(client, "m", templated)))[task.name]
        assert len(client.calls) == 2 * len(task.payload) and {c[0] for c in client.calls} == {kind}
        sent = [c[1] for c in client.calls[: len(task.payload)]]
        assert sent == [item["messages"] if templated else item["prompt"] for item in task.payload]
        assert [c[2] for c in client.calls] == [{**PAPER_REQUEST, "max_tokens": 128, "seed": seed, "stop": ["\n"]}
                                                for seed in (3, 4) for _ in task.payload]
        assert output.metrics["runs"] == 2


def test_suite_with_local_lm_eval_data_runs_the_packaged_tasks(tmp_path):
    from helpers import write_ssu_data

    from adaptkit.evals.suites import SuiteSettings, ssu_paper

    data = write_ssu_data(tmp_path / "ssu-data")  # Belebele hau/amh, Global MMLU ha, English MMLU; no Belebele English
    suite = ssu_paper(SuiteSettings(lang="ha", lm_eval_data=str(data)))
    runnable = {e.name: (e.role, e.task) for e in suite.runnable}
    assert runnable == {"ssu-mmlu-en": ("source", "lm-eval:ssu-mmlu-en"), "ssu-belebele-hau": ("target", "lm-eval:ssu-belebele-hau"),
                        "ssu-global-mmlu-hau": ("target", "lm-eval:ssu-global-mmlu-hau")}
    missing = {e["name"]: e["reason"] for e in suite.report()["not_run"]}
    assert "eng_Latn" in missing["ssu-belebele-eng"] and "suite.hub=true" in missing["leaderboard_ifeval"]
    assert suite.params({})["lm-eval"]["data_dir"] == str(data) and suite.params({})["lm-eval"]["runs"] == 3
