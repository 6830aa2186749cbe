"""Prompt functions and data loaders of the SSU paper's MRC and MMLU tasks (lm-eval task YAMLs here).

Yamaguchi et al. (2025), "Mitigating Catastrophic Forgetting in Target Language Adaptation of LLMs
via Source-Shielded Updates", Section 4 and Table 9: Belebele three-shot, English MMLU and Global
MMLU five-shot, accuracy. The reference code (gucci-j/ssu, evaluation/src/{belebele,gmmlu}.py) runs
them in LightEval with its multiple-choice "MCF" formulation, which these functions render:

    [instruction]{Passage}\n{Question}: {question}\n A. {a}\n B. {b}\n C. {c}\n D. {d}\n{Answer}:

scored by the log-likelihood of " A" .. " D". English MMLU is LightEval's `leaderboard|mmlu`
(the harness prompt: "{question}\nA. {a}\n...D. {d}\nAnswer:"). Question and answer words and
punctuation in `LITERALS` are those of the reference's patched LightEval literals (gucci-j/ssu
evaluation/src/patches/translation_literals.py: Hausa, Igbo, Kyrgyz, Nepali, Amharic; option letters
A-D in every language, as the MCF formulation's "Letters" prefix); the Global MMLU instructions are
the reference code's.

Data: the Hub datasets (facebook/belebele, cais/mmlu, CohereForAI/Global-MMLU), or, with
`data_dir` (`--set lm-eval.data_dir=DIR`), local files of the same layout:
`DIR/<dataset>/<config>/<split>*.jsonl|json|parquet` (dataset: belebele, mmlu, global-mmlu).
Few-shot examples never come from the evaluated items: MMLU and Global MMLU use their dev split;
Belebele has only a test split, so the first question of each of its first three passages is the
shot pool ("dev") and every question on those passages is left out of the evaluated items.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

LETTERS = "ABCD"
BELEBELE_SHOT_PASSAGES = 3


@dataclass(frozen=True)
class Literals:
    """Words and punctuation of the multiple-choice template in one language."""

    question: str
    answer: str
    full_stop: str = "."
    question_mark: str = "?"
    comma: str = ","
    colon: str = ":"
    space: str = " "


LITERALS: dict[str, Literals] = {
    "eng": Literals("question", "answer"),
    "hau": Literals("tambaya", "amsa"),
    "ibo": Literals("ajụjụ", "azịza"),
    "kir": Literals("суроо", "жооп"),
    "npi": Literals("प्रश्न", "उत्तर", full_stop="।"),
    "amh": Literals("ጥያቄ", "መልስ"),  # the reference's patched LightEval literals: full stop "." (not "።")
}

# the reference code's Global MMLU instructions (gmmlu.py, lang_code_to_instruction); {subject} with spaces
GMMLU_INSTRUCTIONS: dict[str, str] = {
    "eng": "The following are multiple choice questions (with answers) about {subject}.\n\n",
    "amh": "ከታች ስለ {subject} የቀረቡ ባለብዙ ምርጫ ጥያቄዎች (ከመልሶች ጋር) ናቸው።\n\n",
    "npi": "तल {subject} सम्बन्धी बहु-विकल्प प्रश्नहरू (उत्तर सहित) दिइएका छन्।\n\n",
    "hau": "Waɗannan tambayoyi masu zaɓi da yawa (tare da amsoshi) game da {subject} ne.\n\n",
    "ibo": "Nke a bụ ajụjụ ọnụ nhọrọ ọtụtụ (na azịza) gbasara {subject}.\n\n",
    "kir": "Бул {subject} боюнча бир нече тандоо суроолору (жооптор менен) төмөндө келтирилген.\n\n",
}
MMLU_INSTRUCTION = GMMLU_INSTRUCTIONS["eng"]

BELEBELE_CODES = {"eng": "eng_Latn", "hau": "hau_Latn", "amh": "amh_Ethi", "npi": "npi_Deva", "kir": "kir_Cyrl", "ibo": "ibo_Latn"}
GMMLU_CODES = {"eng": "en", "hau": "ha", "amh": "am", "npi": "ne", "kir": "ky", "ibo": "ig"}
HUB = {"belebele": "facebook/belebele", "mmlu": "cais/mmlu", "global-mmlu": "CohereForAI/Global-MMLU"}


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fix_ending(text: str, words: Literals) -> str:
    """Strip trailing space and write a final . ? , : in the language's punctuation."""
    text = text.rstrip()
    marks = {"?": words.question_mark, ".": words.full_stop, ",": words.comma, ":": words.colon}
    if text and text[-1] in marks:
        text = text[:-1] + marks[text[-1]]
    return text


def _tidy(text: str, words: Literals) -> str:
    return _capitalize(_fix_ending(str(text), words))


def mcq_query(language: str, question: str, choices: list[str], passage: str | None = None) -> str:
    """The MCF query of one item, ending with the answer word and colon (the letter is the continuation)."""
    words = LITERALS[language]
    context = f"{_tidy(passage, words)}\n" if passage else ""
    options = "\n".join(f"{words.space}{LETTERS[i]}{words.full_stop}{words.space}{_tidy(c, words)}" for i, c in enumerate(choices))
    return (f"{context}{_capitalize(words.question)}{words.colon}{words.space}{_tidy(question, words)}\n"
            f"{options}\n{_capitalize(words.answer)}{words.colon}")


def mmlu_harness_query(question: str, choices: list[str]) -> str:
    """English MMLU as LightEval's leaderboard task writes it (the lm-eval harness prompt)."""
    return question.strip() + "\n" + "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(choices)) + "Answer:"


def belebele_text(doc: dict) -> str:
    choices = [doc[f"mc_answer{i}"] for i in range(1, 5)]
    return mcq_query(doc["ssu_language"], doc["question"], choices, passage=doc["flores_passage"])


def global_mmlu_text(doc: dict) -> str:
    choices = [doc[f"option_{letter}"] for letter in "abcd"]
    return mcq_query(doc["ssu_language"], doc["question"], choices)


def mmlu_text(doc: dict) -> str:
    return mmlu_harness_query(doc["question"], list(doc["choices"]))


@lru_cache(maxsize=16)
def _read_split(dataset: str, config: str, split: str, data_dir: str | None) -> list[dict]:
    """Rows of one split: from `data_dir/<dataset>/<config>/<split>*` when given, else from the Hub (read once per process)."""
    import datasets

    if not data_dir:
        return list(datasets.load_dataset(HUB[dataset], config, split=split))
    folder = Path(data_dir) / dataset / config
    files = sorted(p for p in folder.glob(f"{split}*") if p.suffix in (".jsonl", ".json", ".parquet"))
    if not files:
        from adaptkit.errors import InputError

        raise InputError(f"--set lm-eval.data_dir: no {split} file of {HUB[dataset]} ({config}) in '{folder}' "
                         f"(expected {folder}/{split}.jsonl or .parquet)")
    kind = "parquet" if files[0].suffix == ".parquet" else "json"
    return list(datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train"))


def _splits(test: list[dict], dev: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(test), "dev": datasets.Dataset.from_list(dev)})


def belebele_shot_split(rows: list[dict], passages: int = BELEBELE_SHOT_PASSAGES) -> tuple[list[dict], list[dict]]:
    """(evaluated rows, shot pool): the pool is the first question of each of the first `passages`
    passages; no question on those passages is evaluated."""
    held: list[str] = []
    shots = []
    for row in rows:
        if row["flores_passage"] not in held and len(held) < passages:
            held.append(row["flores_passage"])
            shots.append(row)
    return [row for row in rows if row["flores_passage"] not in held], shots


def load_belebele(language: str, data_dir: str | None = None, **_: Any):
    rows = [{**row, "ssu_language": language, "gold": int(row["correct_answer_num"]) - 1}
            for row in _read_split("belebele", BELEBELE_CODES[language], "test", data_dir)]
    return _splits(*belebele_shot_split(rows))


def load_mmlu(subject: str, data_dir: str | None = None, **_: Any):
    def rows(split: str) -> list[dict]:
        return [{**row, "instruction": MMLU_INSTRUCTION.format(subject=subject.replace("_", " ")), "gold": int(row["answer"])}
                for row in _read_split("mmlu", subject, split, data_dir) if row.get("subject", subject) == subject]

    return _splits(rows("test"), rows("dev"))


def load_global_mmlu(language: str, subject: str, data_dir: str | None = None, **_: Any):
    """One subject of Global MMLU; items with an empty option are left out, as in the reference code."""
    instruction = GMMLU_INSTRUCTIONS[language].format(subject=subject.replace("_", " "))

    def rows(split: str) -> list[dict]:
        return [{**row, "ssu_language": language, "instruction": instruction, "gold": LETTERS.index(row["answer"])}
                for row in _read_split("global-mmlu", GMMLU_CODES[language], split, data_dir)
                if row["subject"].lower() == subject and all((row[f"option_{o}"] or "").strip() for o in "abcd")]

    return _splits(rows("test"), rows("dev"))
