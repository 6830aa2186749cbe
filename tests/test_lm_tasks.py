"""The SSU paper's MRC and MMLU tasks shipped as lm-eval YAMLs (adaptkit/evals/lm_tasks): rendered
prompts against the templates written out here, scores against an independent argmax over
log-likelihoods, layer by layer against the whole model; offline, on small files in the real
datasets' layouts (facebook/belebele, cais/mmlu, CohereForAI/Global-MMLU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_input_error
from helpers import SUBJECTS, belebele_rows, global_mmlu_rows, write_ssu_data

pytest.importorskip("lm_eval")

pytestmark = pytest.mark.slow  # builds the 57-subject MMLU task groups through lm-eval


@pytest.fixture(scope="module")
def ssu_data(tmp_path_factory) -> Path:
    return write_ssu_data(tmp_path_factory.mktemp("ssu-data"))


@pytest.fixture(scope="module")
def tiny(make_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = make_model_dir("llama", seed=0)
    return directory, AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


# The templates, written out: LightEval's MCF layout with each language's words (see the table in docs/evaluation.md)
def hausa_item(row: dict, passage: bool) -> str:
    """Belebele / Global MMLU rows in Hausa; the first letter of passage, question and options is capitalized."""
    options = [row[f"mc_answer{i}"] for i in range(1, 5)] if passage else [row[f"option_{x}"] for x in "abcd"]
    text = (row["flores_passage"] + "\n") if passage else ""
    text += "Tambaya: " + row["question"][0].upper() + row["question"][1:] + "\n"
    text += "".join(f" {letter}. {option[0].upper() + option[1:]}\n" for letter, option in zip("ABCD", options))
    return text + "Amsa:"


def amharic_item(row: dict) -> str:
    """Amharic Belebele with the reference's patched LightEval literals (gucci-j/ssu evaluation/src/patches/
    translation_literals.py, Language.AMHARIC): question word ጥያቄ, answer መልስ, full stop '.', colon ':'."""
    options = [row[f"mc_answer{i}"] for i in range(1, 5)]
    options = [o[0].upper() + o[1:] for o in options]
    return (row["flores_passage"] + "\n" + "ጥያቄ: " + row["question"] + "\n"
            + "".join(f" {letter}. {option}\n" for letter, option in zip("ABCD", options)) + "መልስ:")


def mmlu_item(row: dict) -> str:
    return row["question"].strip() + "\n" + "".join(f"{l}. {c}\n" for l, c in zip("ABCD", row["choices"])) + "Answer:"


def with_shots(shots: list[str], golds: list[int], query: str, instruction: str = "") -> str:
    return instruction + "".join(f"{shot} {'ABCD'[gold]}\n\n" for shot, gold in zip(shots, golds)) + query


def belebele_prompts(rows: list[dict], render) -> list[tuple[str, int]]:
    """(prompt, gold) of each evaluated item: the shots are the first question of passages 0-2, whose questions are not evaluated."""
    shot_rows = [rows[0], rows[2], rows[4]]
    assert len({r["flores_passage"] for r in shot_rows}) == 3
    evaluated = [r for r in rows if r["flores_passage"] not in {s["flores_passage"] for s in shot_rows}]
    golds = [int(r["correct_answer_num"]) - 1 for r in shot_rows]
    return [(with_shots([render(s) for s in shot_rows], golds, render(r)), int(r["correct_answer_num"]) - 1) for r in evaluated]


def global_mmlu_prompts(subject: str) -> list[tuple[str, int]]:
    dev = [r for r in global_mmlu_rows("dev", 5) if r["subject"] == subject]
    test = [r for r in global_mmlu_rows("test", 2) if r["subject"] == subject and r["option_c"]]
    instruction = f"Waɗannan tambayoyi masu zaɓi da yawa (tare da amsoshi) game da {subject.replace('_', ' ')} ne.\n\n"
    shots = [hausa_item(r, passage=False) for r in dev]
    return [(with_shots(shots, ["ABCD".index(r["answer"]) for r in dev], hausa_item(r, passage=False), instruction), "ABCD".index(r["answer"]))
            for r in test]


def _tasks(ssu_data: Path, names: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    from adaptkit.evals.lm_tasks import TASKS_DIR

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(ssu_data)})
    return manager.load(names)["tasks"]


def test_rendered_prompts_match_the_templates(ssu_data):
    tasks = _tasks(ssu_data, ["ssu-belebele-hau", "ssu-belebele-amh", "ssu-global-mmlu-hau", "ssu-mmlu-en"])
    for name, rows, render in (("ssu-belebele-hau", belebele_rows("hau_Latn", "Kogin Neja yana da tsawo", "me ya faru"), lambda r: hausa_item(r, True)),
                               ("ssu-belebele-amh", belebele_rows("amh_Ethi", "ወንዙ ረጅም ነው", "ምን ሆነ"), amharic_item)):
        task = tasks[name]
        docs = list(task.test_docs())
        expected = belebele_prompts(rows, render)
        assert len(docs) == len(expected) == 4  # the questions on the shots' passages are not evaluated
        assert [task.fewshot_context(doc, num_fewshot=3) for doc in docs] == [prompt for prompt, _ in expected]
        assert [task.doc_to_target(doc) for doc in docs] == [gold for _, gold in expected]
    anatomy = tasks["ssu-global-mmlu-hau::ssu-global-mmlu-hau-anatomy"]
    docs = list(anatomy.test_docs())
    assert len(docs) == 1  # the item with an empty option is left out, as in the reference code
    assert anatomy.fewshot_context(docs[0], num_fewshot=5) == global_mmlu_prompts("anatomy")[0][0]
    algebra = tasks["ssu-mmlu-en::ssu-mmlu-en-abstract_algebra"]
    dev = [{"question": f" What is {i} in abstract_algebra?", "choices": ["one", "two", "three", "four"]} for i in range(5)]
    golds = [(i + len("abstract_algebra")) % 4 for i in range(5)]
    expected = with_shots([mmlu_item(r) for r in dev], golds, mmlu_item(dev[0]),
                          "The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert algebra.fewshot_context(next(iter(algebra.test_docs())), num_fewshot=5) == expected
    assert len([t for t in tasks if t.startswith("ssu-mmlu-en::")]) == len(SUBJECTS) == 57


def argmax_accuracy(model, tokenizer, items: list[tuple[str, int]]) -> float:
    """Independent reference: the letter whose ' X' continuation has the highest log-probability after the prompt."""
    import torch

    correct = 0
    for prompt, gold in items:
        context = tokenizer(prompt)["input_ids"]
        scores = []
        for letter in "ABCD":
            whole = tokenizer(prompt + " " + letter)["input_ids"]
            assert whole[: len(context)] == context and len(whole) <= 1024
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        correct += max(range(4), key=scores.__getitem__) == gold
    return correct / len(items)


def _scores(tiny, ssu_data, names: str) -> tuple:
    from adaptkit.evals.runner import ModelRef, prepare_tasks, run_evaluation

    _, model, tokenizer = tiny
    prepared = prepare_tasks([f"lm-eval:{names}"], {"lm-eval": {"data_dir": str(ssu_data), "batch_size": 8}})
    return run_evaluation([ModelRef("tiny", model=model, tokenizer=tokenizer)], prepared), model, tokenizer


def test_belebele_score_equals_an_independent_argmax(tiny, ssu_data):
    run, model, tokenizer = _scores(tiny, ssu_data, "ssu-belebele-hau")
    rows = belebele_rows("hau_Latn", "Kogin Neja yana da tsawo", "me ya faru")
    expected = argmax_accuracy(model, tokenizer, belebele_prompts(rows, lambda r: hausa_item(r, True)))
    assert run.results["tiny"]["ssu-belebele-hau"]["acc"] == pytest.approx(expected, abs=1e-12)
    assert run.task("ssu-belebele-hau").primary == "acc" and run.task("ssu-belebele-hau").higher_is_better


@pytest.mark.slow  # 57 subject tasks, five shots each
def test_global_mmlu_score_is_the_mean_of_independent_argmax_accuracies(tiny, ssu_data):
    run, model, tokenizer = _scores(tiny, ssu_data, "ssu-global-mmlu-hau")
    per_subject = [argmax_accuracy(model, tokenizer, global_mmlu_prompts(subject)) for subject in SUBJECTS]
    assert run.results["tiny"]["ssu-global-mmlu-hau"]["acc"] == pytest.approx(sum(per_subject) / len(per_subject), abs=1e-12)
    assert run.task("ssu-global-mmlu-hau").primary == "acc"


def test_layer_by_layer_equals_the_whole_model(tiny, ssu_data, tmp_path, invoke):
    directory = tiny[0]
    results = []
    for flag in ([], ["--layer-by-layer"]):
        out = tmp_path / f"eval{len(flag)}"
        result = invoke("evaluate", "-m", f"m={directory}", "--task", "lm-eval:ssu-belebele-hau", "--set", f"lm-eval.data_dir={ssu_data}",
                        "--no-plots", "-o", out, "--quiet", *flag)
        assert result.returncode == 0, result.stderr
        results.append(json.loads((out / "results.json").read_text())["results"]["m"]["ssu-belebele-hau"])
    assert results[0]["items"] == 4 and results[0] == results[1]


def test_bad_data_dir_is_an_input_error(tiny, ssu_data, tmp_path, invoke):
    out = tmp_path / "eval"
    result = invoke("evaluate", "-m", str(tiny[0]), "--task", "lm-eval:ssu-belebele-hau", "--set", f"lm-eval.data_dir={tmp_path / 'absent'}", "-o", str(out))
    assert_input_error(result, "lm-eval.data_dir", "is not a directory")
    result = invoke("evaluate", "-m", str(tiny[0]), "--task", "lm-eval:ssu-belebele-kir", "--set", f"lm-eval.data_dir={ssu_data}", "-o", str(out))
    assert_input_error(result, "lm-eval.data_dir", "kir_Cyrl", "belebele")
    assert not out.exists()
