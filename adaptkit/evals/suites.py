"""Task suites of the papers: `adaptkit evaluate --suite NAME` expands into tagged tasks.

`ssu-paper` (Yamaguchi et al. 2025, arXiv:2512.04844, Sec. 4, Tables 2-4, 7 and 9) for one
target language (`--set suite.lang=ha`; the paper: am, ha, ig, ky, ne):

- source suite (English; the forgetting axis): XL-SUM English (0-shot chrF++), MMLU (5-shot)
  and Belebele English (3-shot), and the chat benchmarks IFEval, GSM8K, MT-Bench, AlpacaEval 2.0
  and the Tulu 3 safety suite;
- target suite (the learning axis): FLORES-200 target->English and English->target (3-shot
  chrF++), XL-SUM in the target language (0-shot chrF++), Global MMLU (5-shot) and Belebele (3-shot).

Data locations are suite settings: `suite.flores=DIR` (FLORES-200 layout), `suite.xlsum=DIR`
(XL-SUM layout), `suite.lm_eval_data=DIR` for local copies of Belebele, MMLU and Global MMLU
(the layout of `--set lm-eval.data_dir`), `suite.hub=true` when the Hub (or its local cache) serves
the lm-eval tasks' datasets. What can run runs, with the paper's protocol preset (`mt.protocol=ssu-paper`
with the reference's items `mt.selection=reference`, `sum.protocol=ssu-paper` (with `suite.sum_tokenizer=TOK`
also the reference's 500 shortest articles), lm-eval with the chat template, few-shot turns, the
reference's sampling for IFEval (`leaderboard_ifeval`) and GSM8K and three runs of each; an explicit `--set` wins); every
task that cannot is listed with why and how to get it. Belebele/MMLU tasks are the package's
lm-eval task definitions `ssu-belebele-<lang>`, `ssu-mmlu-en`, `ssu-global-mmlu-<lang>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.specs import Params, Spec

LM_EVAL_LANGS = {"ha": "hau", "am": "amh", "ne": "npi", "ky": "kir", "ig": "ibo"}
HUB_DATASETS = {"belebele": "facebook/belebele", "mmlu": "cais/mmlu", "global-mmlu": "CohereForAI/Global-MMLU",
                "ifeval": "wis-k/instruction-following-eval", "gsm8k": "openai/gsm8k"}
# the reference's lm-eval settings for IFEval and GSM8K (gucci-j/ssu evaluation/scripts/source_gen.sh) and the paper's three runs
# of generative tasks; log-likelihood tasks (Belebele, MMLU) run once whatever `runs` says
REFERENCE_LM_EVAL = {"apply_chat_template": True, "fewshot_as_multiturn": True, "runs": 3,
                     "gen_kwargs": "temperature=0.8,top_p=0.8,top_k=40,repetition_penalty=1.1,do_sample=true"}
LOCAL_DATASETS = ("belebele", "mmlu", "global-mmlu")  # the package's ssu-* tasks read these from lm-eval.data_dir


class SuiteSettings(Params):
    lang: str = Field(description="the target language (ISO 639-1/3; paper: am, ha, ig, ky, ne)")
    flores: str | None = Field(None, description="FLORES-200 directory (dev/, devtest/)")
    xlsum: str | None = Field(None, description="XL-SUM directory (<language>_<split>.jsonl)")
    lm_eval_data: str | None = Field(None, description="local Belebele/MMLU/Global MMLU copies (DIR/<dataset>/<config>/<split>.jsonl)")
    hub: bool = Field(False, description="the Hub or its cache serves the lm-eval tasks' datasets")
    sum_tokenizer: str | None = Field(None, description="tokenizer whose token counts choose the 500 shortest XL-SUM articles, as the reference "
                                                           "(allenai/OLMo-2-1124-7B-Instruct); without it the first 500 test articles")


@dataclass
class SuiteEntry:
    """One task of a suite: its report name, role, and the --task argument, or why it cannot run."""

    name: str
    role: str
    task: str | None = None
    missing: str = ""


@dataclass
class Suite:
    name: str
    settings: dict[str, Any]
    entries: list[SuiteEntry]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def runnable(self) -> list[SuiteEntry]:
        return [e for e in self.entries if e.task is not None]

    def params(self, given: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """`given` backend settings over the suite's presets, for the backends its runnable tasks use."""
        used = {e.task.split(":", 1)[0] for e in self.runnable}
        merged = {k: dict(v) for k, v in given.items()}
        for backend, preset in self.presets.items():
            if backend in used:
                merged[backend] = {**preset, **merged.get(backend, {})}
        return merged

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.settings,
                "run": [{"name": e.name, "role": e.role, "task": e.task} for e in self.runnable],
                "not_run": [{"name": e.name, "role": e.role, "reason": e.missing} for e in self.entries if e.task is None]}


def _flores(settings: SuiteSettings, src: str, tgt: str, role: str) -> SuiteEntry:
    from adaptkit.evals.layouts import FLORES_HOW, read_flores

    name = f"flores-{src}-{tgt}"
    if settings.flores is None:
        return SuiteEntry(name, role, missing=f"needs FLORES-200: --set suite.flores=DIR ({FLORES_HOW})")
    try:
        for split in ("dev", "devtest"):
            read_flores(Path(settings.flores), src, tgt, split, "--set suite.flores")
    except InputError as exc:
        return SuiteEntry(name, role, missing=f"{exc} ({FLORES_HOW})")
    return SuiteEntry(name, role, f"mt:{name}={settings.flores}:{src}-{tgt}")


def _xlsum(settings: SuiteSettings, lang: str, role: str) -> SuiteEntry:
    from adaptkit.evals.layouts import XLSUM_HOW, xlsum_file

    name = f"xlsum-{lang}"
    if settings.xlsum is None:
        return SuiteEntry(name, role, missing=f"needs XL-SUM: --set suite.xlsum=DIR ({XLSUM_HOW})")
    path = xlsum_file(Path(settings.xlsum), lang, "test")
    if not path.is_file():
        return SuiteEntry(name, role, missing=f"'{path}' is missing ({XLSUM_HOW})")
    return SuiteEntry(name, role, f"sum:{name}={settings.xlsum}:{lang}")


def _lm_eval(settings: SuiteSettings, task: str, dataset: str, role: str, check: Callable[[str], str]) -> SuiteEntry:
    hub = HUB_DATASETS[dataset]
    local = settings.lm_eval_data is not None and dataset in LOCAL_DATASETS
    if not settings.hub and not local:
        where = " or local copies with --set suite.lm_eval_data=DIR" if dataset in LOCAL_DATASETS else ""
        return SuiteEntry(task, role, missing=f"needs the Hub dataset {hub} (lm-eval task {task}): run online (or with it in the HF cache) and --set suite.hub=true{where}")
    problem = check(task)
    if problem:
        return SuiteEntry(task, role, missing=f"{problem}: install lm-eval and adaptkit's SSU task definitions (pip install 'adaptkit[lm-eval]')")
    return SuiteEntry(task, role, f"lm-eval:{task}")


def lm_eval_checker(data_dir: str | None = None) -> Callable[[str], str]:
    """check(task): '' when lm-eval knows `task` (and finds its data), else why not (one line); one task index for all checks."""
    from adaptkit.registry import get_spec

    spec = get_spec("eval backend", "lm-eval", "--suite")
    backend = spec.load()(spec.validate_params({"data_dir": data_dir} if data_dir else {}))

    def check(task: str) -> str:
        try:
            backend.prepare(task, "--suite")
        except InputError as exc:
            return str(exc)
        return ""

    return check


NOT_IN_ADAPTKIT = {
    "mt-bench": "needs an LLM judge: --task judge-single:mt-bench=QUESTIONS.jsonl --set judge.template=likert with a judge server (the paper: LightEval's MT-Bench)",
    "alpacaeval-2": "not in adaptkit: AlpacaEval 2.0 (pip install alpaca-eval==0.6.6; the paper's judge config is in gucci-j/ssu evaluation/config)",
    "safety": "not in adaptkit: the Tulu 3 safety suite (github.com/allenai/safety-eval, needs an OpenAI judge)",
}


def ssu_paper(settings: SuiteSettings, check: Callable[[str], str] | None = None) -> Suite:
    """The SSU paper's source and target suites for `settings.lang` (`check` tells whether lm-eval knows a task)."""
    from adaptkit.evals.langcodes import resolve_language

    if check is None:
        check = lm_eval_checker(settings.lm_eval_data) if settings.hub or settings.lm_eval_data else (lambda task: "")
    lang = resolve_language(settings.lang, "--set suite.lang")
    if lang == "en":
        raise InputError("--set suite.lang: the target language must not be English (the source language of the paper's models)")
    code3 = LM_EVAL_LANGS.get(lang)
    entries = [_xlsum(settings, "en", "source"),
               _lm_eval(settings, "ssu-mmlu-en", "mmlu", "source", check),
               _lm_eval(settings, "ssu-belebele-eng", "belebele", "source", check),
               _lm_eval(settings, "leaderboard_ifeval", "ifeval", "source", check),
               _lm_eval(settings, "gsm8k", "gsm8k", "source", check)]
    entries += [SuiteEntry(name, "source", missing=why) for name, why in NOT_IN_ADAPTKIT.items()]
    entries += [_flores(settings, lang, "en", "target"), _flores(settings, "en", lang, "target"), _xlsum(settings, lang, "target")]
    for task, dataset in ((f"ssu-belebele-{code3 or lang}", "belebele"), (f"ssu-global-mmlu-{code3 or lang}", "global-mmlu")):
        if code3 is None:
            entries.append(SuiteEntry(task, "target", missing="the paper's Belebele/Global MMLU prompts cover am, ha, ig, ky, ne only"))
        else:
            entries.append(_lm_eval(settings, task, dataset, "target", check))
    reference_sum = {"selection": "reference", "length_tokenizer": settings.sum_tokenizer} if settings.sum_tokenizer else {}
    presets = {"mt": {"protocol": "ssu-paper", "selection": "reference"}, "sum": {"protocol": "ssu-paper", **reference_sum}, "lm-eval": dict(REFERENCE_LM_EVAL)}
    if settings.lm_eval_data:
        presets["lm-eval"]["data_dir"] = settings.lm_eval_data
    return Suite("ssu-paper", settings.model_dump(), entries, presets)


class SuiteSpec(Spec):
    kind: ClassVar[str] = "suite"


SUITES = {"ssu-paper": SuiteSpec(name="ssu-paper", factory=ssu_paper, params=SuiteSettings,
                                 summary="The SSU paper's source and target suites (MT, SUM, MMLU, Belebele, chat)",
                                 reference="Yamaguchi et al. 2025 (SSU), arXiv:2512.04844, Sec. 4, Tables 7 and 9")}


def expand_suite(name: str, values: dict[str, Any], flag: str = "--suite") -> Suite:
    """The suite `name` with its `--set suite.*` settings; bad names and settings are InputErrors."""
    from adaptkit.errors import did_you_mean

    if name not in SUITES:
        raise InputError(f"{flag}: unknown suite '{name}'{did_you_mean(name, list(SUITES))} (suites: {', '.join(SUITES)})")
    if "lang" not in values:
        raise InputError(f"{flag} {name}: give the target language with --set suite.lang=CODE (e.g. ha)")
    spec = SUITES[name]
    return spec.load()(spec.validate_params(values, where="--set suite.*"))
