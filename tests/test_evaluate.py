"""evaluate: perplexity against a plain loop and lm-eval, chrF against sacrebleu, the report, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import assert_input_error

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(make_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = make_model_dir("llama", seed=0)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def plain_loop_nll(model, tokenizer, texts, block_size, stride, prefix=True):
    """Independent reference: one forward pass per scored token, over its window's context."""
    import torch

    nll, count = 0.0, 0
    for text in texts:
        ids = ([tokenizer.bos_token_id] if prefix else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
        position, first = 1, True
        while position < len(ids):
            end = min(position + (block_size if first else stride), len(ids))
            start = max(0, end - 1 - block_size)
            for target in range(position, end):
                with torch.no_grad():
                    logits = model(torch.tensor([ids[start:target]])).logits[0, -1].double()
                nll -= torch.log_softmax(logits, -1)[ids[target]].item()
                count += 1
            position, first = end, False
    return nll, count


@pytest.mark.parametrize("block_size, stride, prefix", [(512, None, "bos"), (12, 12, "bos"), (12, 5, "none")])
@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_perplexity_matches_a_plain_loop(tiny, corpora, block_size, stride, prefix):
    from adaptkit.evals.perplexity import perplexity

    model, tokenizer = tiny
    texts = [t[:120] for t in corpora["ha-test"].read_text().splitlines()[:2]] + ["Everyone has the right to life."]
    result = perplexity(model, tokenizer, texts, block_size=block_size, stride=stride, batch_size=3, prefix=prefix)
    nll, count = plain_loop_nll(model, tokenizer, texts, block_size, stride or block_size, prefix == "bos")
    assert result.tokens == count
    assert result.nll_sum == pytest.approx(nll, rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(nll / count), rel=1e-6)
    scored_bytes = sum(len(t.encode()) for t in texts)
    if prefix == "none":  # the first token of each document is context only: its bytes are not counted
        first = [len(tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:1]).encode()) for t in texts]
        scored_bytes -= sum(first)
    assert result.bytes == scored_bytes
    assert result.bits_per_byte == pytest.approx(nll / (math.log(2) * scored_bytes), rel=1e-6)


def choice_accuracy(model, tokenizer, rows) -> float:
    """Independent reference for lm-eval's multiple-choice `acc`: the choice (after the default ' ' target
    delimiter) with the highest summed log-probability given the question, against the label."""
    import torch

    correct = 0
    for row in rows:
        context = tokenizer(row["question"])["input_ids"]
        totals = []
        for choice in row["choices"]:
            whole = tokenizer(row["question"] + " " + choice)["input_ids"]
            assert whole[: len(context)] == context  # the continuation's tokens follow the context's
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            totals.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += max(range(len(totals)), key=totals.__getitem__) == row["label"]
    return correct / len(rows)


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_lm_eval_local_task_offline_and_rolling_parity(tiny, corpora, tmp_path):
    """A local lm-eval task runs offline through the backend; ppl equals lm-eval's loglikelihood_rolling."""
    from adaptkit.evals.perplexity import perplexity
    from adaptkit.evals.runner import ModelRef, prepare_tasks, run_evaluation

    model, tokenizer = tiny
    data = tmp_path / "choice.jsonl"
    rows = [{"question": "Kowa yana da", "choices": [" hakki", " zzzz"], "label": 0},
            {"question": "Everyone has the", "choices": [" qqq", " right"], "label": 1},
            {"question": "All human beings are born", "choices": [" free", " xx"], "label": 0},
            {"question": "Kowa yana da", "choices": [" zzzz", " hakki", " 'yanci"], "label": 2},
            {"question": "No one shall be held in", "choices": [" slavery", " life"], "label": 1},
            {"question": "Everyone has the right to", "choices": [" life", " qqq"], "label": 1}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "tiny_choice.yaml").write_text(
        "task: tiny_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    prepared = prepare_tasks([f"lm-eval:{tasks_dir}"], {"lm-eval": {"batch_size": 2}})
    run = run_evaluation([ModelRef("tiny", model=model, tokenizer=tokenizer)], prepared)
    assert run.task("tiny_choice").primary == "acc" and run.task("tiny_choice").higher_is_better
    scores = run.results["tiny"]["tiny_choice"]
    assert scores["items"] == len(rows)
    assert scores["acc"] == pytest.approx(choice_accuracy(model, tokenizer, rows), abs=1e-12)

    # lm-eval's rolling log-likelihood (EOT prefix, disjoint windows) on the same model and text
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    texts = corpora["en-test"].read_text().splitlines()[:4]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu", max_length=16)
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    reference = -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))
    ours = perplexity(model, tokenizer, texts, block_size=16, stride=16, batch_size=2)
    assert lm.prefix_token_id == tokenizer.bos_token_id or lm.prefix_token_id == tokenizer.eos_token_id
    assert ours.nll_sum == pytest.approx(reference, rel=1e-5)


def _signed(value: float) -> str:
    return f"{value:+.3g}"


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_evaluate_cli_report_with_baseline_roles_and_chrf(invoke, make_model_dir, corpora, tmp_path):
    import sacrebleu

    base, other = make_model_dir("llama", seed=0), make_model_dir("llama", seed=1)
    en, ha = corpora["en-test"].read_text().splitlines(), corpora["ha-test"].read_text().splitlines()
    mt = tmp_path / "flores-like.jsonl"
    mt.write_text("".join(json.dumps({"src": e, "tgt": h, "src_lang": "en", "tgt_lang": "ha"}, ensure_ascii=False) + "\n"
                          for e, h in zip(en[3:7], ha[3:7])))
    out = tmp_path / "eval"
    result = invoke(
        "evaluate", "--model", f"base={base}", "--model", f"other={other}",
        "--task", f"ppl:eng={corpora['en-test']}", "--task", f"ppl:hau={corpora['ha-test']}", "--task", f"mt:{mt}",
        "--set", "mt.max_new_tokens=6", "--set", "mt.shots=1", "--set", "ppl.block_size=64",
        "--baseline", "base", "--source-task", "eng", "--target-task", "hau", "-o", out, "--json",
    )
    assert result.returncode == 0, result
    results = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["base", "other"]
    assert {t["name"]: t["role"] for t in results["tasks"]} == {"eng": "source", "hau": "target", "flores-like": None}
    assert results["config"]["params"]["ppl"]["block_size"] == 64 and "torch" in results["versions"]
    change = results["changes"]["other"]["hau"]
    value, baseline = results["results"]["other"]["hau"]["ppl"], results["results"]["base"]["hau"]["ppl"]
    assert change["abs_change"] == pytest.approx(value - baseline)
    assert change["rel_change_pct"] == pytest.approx(100 * (value - baseline) / baseline)
    # perplexity tasks: the change in bits per byte (symmetric in log space), gain = bits per byte saved
    bpb = {m: results["results"][m]["hau"]["nll_sum"] / (math.log(2) * results["results"][m]["hau"]["bytes"]) for m in ("other", "base")}
    assert change["gain_unit"] == "bits/byte" and change["bpb_change"] == pytest.approx(bpb["other"] - bpb["base"])
    assert change["gain"] == pytest.approx(-change["bpb_change"]) and "gain_pct" not in change
    assert results["summary"]["other"]["source_gain_bpb"] == pytest.approx(results["changes"]["other"]["eng"]["gain"])
    assert results["summary"]["other"]["target_gain_bpb"] == pytest.approx(change["gain"])
    # a bounded metric (chrF++) keeps its relative change in %
    mt_change = results["changes"]["other"]["flores-like"]
    assert mt_change["gain_unit"] == "%" and mt_change["gain"] == pytest.approx(mt_change["rel_change_pct"])
    # chrF / chrF++ from the saved generations, computed with sacrebleu directly
    records = [json.loads(line) for line in (out / "details" / "other" / "flores-like.jsonl").read_text().splitlines()]
    assert len(records) == 4 and records[0]["prompt"].startswith("Fassara Turanci zuwa Hausa:\n")
    hyps, refs = [r["response"] for r in records], [r["reference"] for r in records]
    metrics = results["results"]["other"]["flores-like"]
    assert metrics["chrf++"] == pytest.approx(sum(sacrebleu.sentence_chrf(h, [r], word_order=2).score for h, r in zip(hyps, refs)) / 4)
    assert metrics["chrf"] == pytest.approx(sum(sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hyps, refs)) / 4)
    assert metrics["corpus_chrf++"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
    markdown = (out / "results.md").read_text()
    assert "| base (baseline) |" in markdown and "hau (ppl ↓) [target]" in markdown
    assert "| source gain (bits/byte) | target gain (bits/byte) |" in markdown and f"{_signed(change['bpb_change'])} bits/byte" in markdown
    for png in ("tasks.png", "forgetting_learning.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert json.loads(result.stdout)["summary"]["other"].keys() == {"source_gain_bpb", "target_gain_bpb"}


def greedy_decode(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Independent reference: one prompt at a time, no padding, argmax of a full forward pass per token."""
    import torch

    ids = tokenizer(prompt)["input_ids"]
    new: list[int] = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_generate_writes_greedy_responses_for_codemix(invoke, make_model_dir, tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    texts = ["Everyone has the right", "Kowa yana da", "All human beings are born free and equal in dignity"]
    prompts.write_text('{"id": "a", "prompt": "%s"}\n{"prompt": "%s"}\n{"prompt": "%s"}\n' % tuple(texts))
    out = tmp_path / "gens.jsonl"
    result = invoke("generate", "--model", f"tiny={make_model_dir('llama', seed=0)}", "--prompts", prompts, "--max-new-tokens", "8",
                    "--batch-size", "2", "-o", out)  # batches of two prompts of different lengths: left padding
    assert result.returncode == 0, result
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 1, 2] and [r["prompt"] for r in rows] == texts and {r["model"] for r in rows} == {"tiny"}
    model, tokenizer = tiny
    expected = [greedy_decode(model, tokenizer, text, 8) for text in texts]
    assert [r["response"] for r in rows] == expected
    assert any(expected), "the reference decodes are all empty: the comparison would be vacuous"


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_generate_ae2_decoding_is_the_reference_alpacaeval_sampling(invoke, make_model_dir, tmp_path, monkeypatch):
    """--decoding ae2: what gucci-j/ssu evaluation/src/ae2.py passes to generate (the responses its code-mixing analysis reads)."""
    import torch
    import transformers

    reference = {"max_new_tokens": 512, "temperature": 0.8, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.1, "do_sample": True,
                 "no_repeat_ngram_size": 3}
    seen = []

    def recording_generate(self, input_ids=None, **kwargs):
        seen.append(kwargs)
        return torch.cat([input_ids, input_ids[:, -1:]], dim=1)

    monkeypatch.setattr(transformers.GenerationMixin, "generate", recording_generate)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Everyone has the right"}\n')
    for extra, budget in (([], 512), (["--max-new-tokens", "9"], 9)):
        seen.clear()
        result = invoke("generate", "--model", make_model_dir("llama", seed=0), "--prompts", prompts, "--decoding", "ae2", "-o", tmp_path / f"g{budget}.jsonl", *extra)
        assert result.returncode == 0, result
        assert seen and all({k: kw.get(k) for k in reference} == {**reference, "max_new_tokens": budget} for kw in seen)
    bad = invoke("generate", "--model", make_model_dir("llama", seed=0), "--prompts", prompts, "--decoding", "ae3", "-o", tmp_path / "bad.jsonl")
    assert bad.returncode == 2 and "ae2" in bad.stderr and not (tmp_path / "bad.jsonl").exists()
    seen.clear()  # evaluate --generate takes the same decoding
    text = tmp_path / "text.txt"
    text.write_text("Everyone has the right to life.\n")
    result = invoke("evaluate", "--model", make_model_dir("llama", seed=0), "--task", f"ppl:{text}", "--generate", prompts, "--decoding", "ae2",
                    "--no-plots", "-o", tmp_path / "eval")
    assert result.returncode == 0, result
    assert seen and all({k: kw.get(k) for k in reference} == reference for kw in seen)
    alone = invoke("evaluate", "--model", make_model_dir("llama", seed=0), "--task", f"ppl:{text}", "--decoding", "ae2", "-o", tmp_path / "alone")
    assert alone.returncode == 2 and "--decoding" in alone.stderr and not (tmp_path / "alone").exists()


def _bad(tmp_path: Path, corpora, model_dir: Path, case: str) -> tuple[list[str], list[str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"}')
    eng = f"ppl:eng={corpora['en-test']}"
    cases = {
        "backend": (["--task", "ppx:a.txt"], ["--task", "unknown eval backend 'ppx'", "did you mean: ppl"]),
        "syntax": (["--task", "ppl"], ["--task", "BACKEND:SPEC"]),
        "empty": (["--task", f"ppl:{empty}"], ["--task", "empty.txt", "is empty"]),
        "field": (["--task", f"ppl:{rows}"], ["--task", "rows.jsonl' line 2", "'text'"]),
        "lang": (["--task", f"mt:{_mt_file(tmp_path, 'xx')}"], ["record 1 tgt_lang", "unknown language code 'xx'"]),
        "lm-eval-task": (["--task", "lm-eval:xnli_sww"], ["unknown lm-eval task 'xnli_sww'", "did you mean: xnli_sw"]),
        "lighteval": (["--task", "lighteval:lighteval|belebele_hau_Latn_mcf|0"], ["lighteval", "pip install 'adaptkit[lighteval]'"]),
        "param": (["--task", eng, "--set", "ppl.blocksize=3"], ["ppl", "no parameter 'blocksize'", "did you mean: block_size"]),
        "role": (["--task", eng, "--target-task", "hausa"], ["--target-task", "no task called 'hausa'"]),
        "baseline": (["--task", eng, "--baseline", "nope"], ["--baseline", "'nope'"]),
        "model": (["--task", eng, "--model", str(broken)], ["--model", "broken-model"]),
    }
    return cases[case]


def _mt_file(tmp_path: Path, lang: str) -> Path:
    path = tmp_path / "mt.jsonl"
    path.write_text(json.dumps({"src": "a", "tgt": "b", "src_lang": "en", "tgt_lang": lang}) + "\n")
    return path


@pytest.mark.parametrize("case", ["backend", "syntax", "empty", "field", "lang", pytest.param("lm-eval-task", marks=pytest.mark.slow),  # lm-eval's task index
                                  "lighteval", "param", "role", "baseline", "model"])
def test_evaluate_bad_input(invoke, make_model_dir, corpora, tmp_path, case):
    if case == "lighteval":
        try:
            import lighteval  # noqa: F401

            pytest.skip("lighteval is installed here")
        except ImportError:
            pass
    model_dir = make_model_dir("llama", seed=0)
    args, fragments = _bad(tmp_path, corpora, model_dir, case)
    out = tmp_path / "out"
    result = invoke("evaluate", "--model", model_dir, *args, "-o", out)
    assert_input_error(result, *fragments)
    assert not out.exists()


def test_mt_and_sum_tasks_build_their_prompts_from_the_records(tmp_path):
    from adaptkit.evals.templates import SUM_TEMPLATES, mt_instruction
    from adaptkit.plugins.evals.mt import MTBackend, MTParams
    from adaptkit.plugins.evals.sum import SumBackend, SumParams

    mt = tmp_path / "mt.jsonl"
    records = [{"src": "one", "tgt": "daya", "src_lang": "en", "tgt_lang": "ha"},
               {"src": "two", "tgt": "biyu", "src_lang": "en", "tgt_lang": "ha"},
               {"src": "uku", "tgt": "three", "src_lang": "ha", "tgt_lang": "en", "id": "x"}]
    mt.write_text("".join(json.dumps(r) + "\n" for r in records))
    [task] = MTBackend(MTParams(shots=1)).prepare(f"flores={mt}", "--task")
    assert (task.name, task.info["directions"], task.info["items"]) == ("flores", ["en->ha", "ha->en"], 3)
    first, second, third = task.payload
    assert first == {"id": 0, "src_lang": "en", "tgt_lang": "ha", "reference": "daya",
                     "prompt": f"{mt_instruction('en', 'ha')}two = biyu\n\none ="}  # the one other en->ha record is the shot
    assert second["prompt"] == f"{mt_instruction('en', 'ha')}one = daya\n\ntwo ="
    assert third["id"] == "x" and third["prompt"] == f"{mt_instruction('ha', 'en')}uku ="  # no other ha->en record

    summaries = tmp_path / "sum.jsonl"
    summaries.write_text(json.dumps({"text": "long text", "summary": "short"}) + "\n")
    [task] = SumBackend(SumParams(lang="ha")).prepare(str(summaries), "--task")
    instruction, anchor = SUM_TEMPLATES["ha"]
    assert task.name == "sum" and task.info["languages"] == ["ha"]
    assert task.payload == [{"id": 0, "lang": "ha", "prompt": f"{instruction} long text {anchor}", "reference": "short"}]


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_generate_with_several_models_writes_every_model_tagged_by_name(invoke, make_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Everyone has the right"}\n{"id": "b", "prompt": "Kowa yana da"}\n')
    first, second = make_model_dir("llama", seed=0), make_model_dir("llama", seed=1)
    alone = {}
    for name, directory in (("x", first), ("y", second)):
        out = tmp_path / f"{name}.jsonl"
        assert invoke("generate", "-m", f"{name}={directory}", "-p", prompts, "--max-new-tokens", "5", "-o", out, "-q").returncode == 0
        alone[name] = [json.loads(line) for line in out.read_text().splitlines()]
    out = tmp_path / "both.jsonl"
    result = invoke("generate", "-m", f"x={first}", "-m", f"y={second}", "-p", prompts, "--max-new-tokens", "5", "-o", out, "--json")
    assert result.returncode == 0, result
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == alone["x"] + alone["y"]
    assert [r["model"] for r in rows] == ["x", "x", "y", "y"] and json.loads(result.stdout)["models"] == ["x", "y"]
    assert [r["response"] for r in alone["x"]] != [r["response"] for r in alone["y"]]  # two models, two sets of responses


@pytest.mark.slow  # over ~0.3 s: kept out of the fast loop
def test_models_are_named_after_their_run_directories(invoke, make_model_dir, corpora, tmp_path):
    import shutil

    from adaptkit.evals.runner import default_names

    base = tmp_path / "base"
    shutil.copytree(make_model_dir("llama", seed=0), base)
    for run in ("fft", "ssu"):
        shutil.copytree(make_model_dir("llama", seed=1), tmp_path / "runs" / run / "final")
    out = tmp_path / "eval"
    result = invoke("evaluate", "-m", base, "-m", tmp_path / "runs/fft/final", "-m", tmp_path / "runs/ssu/final/",
                    "--task", f"ppl:hau={corpora['ha-test']}", "--set", "ppl.block_size=32", "--no-plots", "-o", out, "--json")
    assert result.returncode == 0, result
    assert list(json.loads(result.stdout)["results"]) == ["base", "fft", "ssu"]
    assert default_names(["a/fft/final", "b/fft/final", "runs/fft/checkpoint-20", "org/model"]) == ["a/fft", "b/fft", "fft/checkpoint-20", "model"]
    assert default_names(["x/m", "y/m", "z/m"]) == ["x/m", "y/m", "z/m"]  # every clashing name grows, not only the first
