"""`lm-eval`: any lm-evaluation-harness task, run on the model already loaded.

Task spec: `lm-eval:TASK[,TASK...]` (names from lm-eval's task registry, e.g. xnli_sw,
pawsx_en, xcopa_sw, xstorycloze_sw, mgsm_direct_sw, mmlu) or `lm-eval:DIR` /
`lm-eval:DIR:TASK[,TASK]` for a directory of local task YAMLs (every task defined there,
or the named ones). A local task may read a local file (`dataset_path: json`,
`dataset_kwargs: {data_files: {test: /abs/path.jsonl}}`), so it runs offline.

The model is wrapped with lm-eval's `HFLM(pretrained=<loaded model>, tokenizer=...)`, or,
under `evaluate --layer-by-layer`, with `adaptkit.evals.layerwise_lm.LayerwiseLM`
(log-likelihood tasks only, scored like HFLM). With `--generation-server`, log-likelihood
requests still run on the loaded model and generate_until requests go to the server as
completions built like HFLM's in-process generation (adaptkit.evals.lm_eval_server), also
under `--layer-by-layer`; each requested task (or group) becomes one task in the report. The primary metric is
the first of acc_norm, acc, exact_match, f1, bleu, chrf the task reports, else its first
metric; its direction comes from lm-eval's `higher_is_better`.

Tasks shipped with adaptkit (adaptkit/evals/lm_tasks) are known by name next to lm-eval's:
the SSU paper's `ssu-belebele-LANG`, `ssu-mmlu-en` and `ssu-global-mmlu-LANG` (LANG: eng, hau,
amh, npi, kir, ibo). They read the Hub datasets, or local copies under `--set lm-eval.data_dir=DIR`
(layout in adaptkit/evals/lm_tasks/ssu_prompts.py).

Generation settings pass through to lm-eval as its CLI would: `gen_kwargs` (its --gen_kwargs string),
`fewshot_as_multiturn`, `system_instruction`. With `runs` N > 1, every task that generates text
(output_type generate_until, itself or a subtask) is evaluated N times with seeds seed, seed+1, ...
and reported as the mean of each metric with the primary metric's spread (`<metric>_std`, sample
standard deviation, `_min`, `_max`) and `runs`, as the `mt`/`sum` tasks report theirs; deterministic
(log-likelihood) tasks run once. The SSU paper's IFEval and GSM8K settings (gucci-j/ssu
evaluation/scripts/source_gen.sh; "average scores over three runs for generative tasks"):
`gen_kwargs=temperature=0.8,top_p=0.8,top_k=40,repetition_penalty=1.1,do_sample=true`,
`fewshot_as_multiturn=true`, `runs=3`, tasks `leaderboard_ifeval` (0-shot) and `gsm8k` (5-shot).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput
from adaptkit.specs import EvalBackendSpec, Params

PRIMARY_ORDER = ("acc_norm", "acc", "exact_match", "f1", "bleu", "chrf", "word_perplexity")


class LmEvalParams(Params):
    num_fewshot: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1, description="items per task (for quick checks)")
    batch_size: int = Field(8, ge=1)
    apply_chat_template: bool = False
    bootstrap_iters: int = Field(0, ge=0, description="lm-eval stderr bootstrap (0: off, fast)")
    data_dir: str | None = Field(None, description="local copies of the datasets adaptkit's tasks read (DIR/<dataset>/<config>/<split>.jsonl)")
    gen_kwargs: str | None = Field(None, description="generation settings of generate_until tasks, as lm-eval's --gen_kwargs (e.g. 'temperature=0.8,top_p=0.8,do_sample=true')")
    fewshot_as_multiturn: bool | None = Field(None, description="few-shot examples as chat turns (lm-eval's --fewshot_as_multiturn; with apply_chat_template); default: lm-eval's")
    system_instruction: str | None = Field(None, description="lm-eval's --system_instruction")
    runs: int = Field(1, ge=1, description="runs of each text-generating task (seeds seed, seed+1, ...): the mean and the primary metric's spread")


def _split_dir_spec(spec: str) -> tuple[Path | None, list[str]]:
    """('DIR', [names]) for a directory spec, (None, names) for task names."""
    if Path(spec).is_dir():
        return Path(spec), []
    head, sep, tail = spec.rpartition(":")
    if sep and Path(head).is_dir():
        return Path(head), [t.strip() for t in tail.split(",") if t.strip()]
    return None, [t.strip() for t in spec.split(",") if t.strip()]


def _generates(result: dict, name: str) -> bool:
    """Whether task `name` (or a subtask of the group) generates text, by the configs lm-eval reports."""
    configs = result.get("configs", {})
    names = [name, *result.get("group_subtasks", {}).get(name, [])]
    return any(configs.get(n, {}).get("output_type") == "generate_until" for n in names)


def _metric_name(key: str) -> str:
    return key.split(",")[0]


class LmEvalBackend(EvalBackend):
    name = "lm-eval"
    layer_by_layer = True  # log-likelihood tasks; generation tasks only with --generation-server (adaptkit.evals.layerwise_lm)

    def __init__(self, params: LmEvalParams):
        super().__init__(params)
        self._managers: dict[str, object] = {}

    def _task_manager(self, include_path: Path | None):
        from adaptkit.errors import require

        require("lm_eval", "lm-eval", "the lm-eval backend")
        import logging

        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        from adaptkit.evals.lm_tasks import TASKS_DIR

        key = str(include_path) if include_path else ""
        metadata = {"data_dir": str(Path(self.params.data_dir).resolve())} if self.params.data_dir else None
        if key not in self._managers:
            if include_path:
                self._managers[key] = TaskManager(include_path=str(include_path.resolve()), include_defaults=False, metadata=metadata)
            else:  # lm-eval's registry and the tasks shipped with adaptkit
                self._managers[key] = TaskManager(include_path=str(TASKS_DIR), metadata=metadata)
        return self._managers[key]

    def _shipped(self, names: list[str]) -> Path | None:
        """adaptkit's task folder when every name is one of its tasks (indexing only it is fast), else None."""
        from adaptkit.evals.lm_tasks import TASKS_DIR

        shipped = {path.stem for path in TASKS_DIR.glob("*.yaml")}
        return TASKS_DIR if names and all(name in shipped for name in names) else None

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.errors import InputError
        from adaptkit.errors import did_you_mean

        include_path, names = _split_dir_spec(spec)
        if include_path is None and (spec.startswith(("/", ".", "~")) or spec.endswith((".yaml", ".yml"))):
            raise InputError(f"{flag} lm-eval:{spec}: '{spec}' is not a directory of lm-eval task YAMLs")
        if self.params.data_dir and not Path(self.params.data_dir).is_dir():
            raise InputError(f"--set lm-eval.data_dir: '{self.params.data_dir}' is not a directory")
        include_path = include_path or self._shipped(names)
        manager = self._task_manager(include_path)
        known = list(manager.all_tasks)
        if include_path is not None and not names:
            names = known
            if not names:
                raise InputError(f"{flag} lm-eval:{spec}: no task YAML found in '{include_path}'")
        for name in names:
            if name not in known:
                raise InputError(f"{flag}: unknown lm-eval task '{name}'{did_you_mean(name, known)}")
        manager.load(names)  # builds the tasks, so their data is read (and missing files reported) before any model loads
        key = str(include_path) if include_path else ""
        return [EvalTask(name, "lm-eval", spec, {"manager": key}, {"lm_eval_task": name, **({"include_path": key} if key else {})})
                for name in names]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        from adaptkit.streamed_model import LayerwiseModel

        if isinstance(model, LayerwiseModel):
            from adaptkit.evals.layerwise_lm import LayerwiseLM

            lm = LayerwiseLM(model, tokenizer, self.params.batch_size)
        else:
            from lm_eval.models.huggingface import HFLM

            from adaptkit.io.models import input_device

            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.params.batch_size, device=str(ctx.device))
            if getattr(model, "hf_device_map", None):  # placed by accelerate: HFLM took model.device, meta when offloaded
                lm._device = input_device(model)
        if ctx.generator is not None:
            from adaptkit.evals.lm_eval_server import server_generate_until

            lm.generate_until = server_generate_until(lm, ctx.generator, ctx.seed)
        outputs: dict[str, TaskOutput] = {}
        by_manager: dict[str, list[EvalTask]] = {}
        for task in tasks:
            by_manager.setdefault(task.payload["manager"], []).append(task)
        for key, group in by_manager.items():
            names = [t.name for t in group]
            per_run = [self._evaluate(lm, names, key, ctx.seed)]
            generating = [name for name in names if _generates(per_run[0], name)]
            per_run += [self._evaluate(lm, generating, key, ctx.seed + run) for run in range(1, self.params.runs if generating else 1)]
            for name in names:
                outputs[name] = self._combined([r for r in per_run if name in r["results"]], name)
        return outputs

    def _evaluate(self, lm, names: list[str], manager: str, seed: int) -> dict:
        """One lm-eval run of `names` with every random seed set to `seed`."""
        from lm_eval import simple_evaluate

        p = self.params
        return simple_evaluate(
            model=lm, tasks=names, task_manager=self._managers[manager], num_fewshot=p.num_fewshot, limit=p.limit,
            bootstrap_iters=p.bootstrap_iters, apply_chat_template=p.apply_chat_template, system_instruction=p.system_instruction,
            gen_kwargs=p.gen_kwargs, log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            **({} if p.fewshot_as_multiturn is None else {"fewshot_as_multiturn": p.fewshot_as_multiturn}),
        )

    def _combined(self, results: list[dict], name: str) -> TaskOutput:
        """One run's output, or over several the mean of each metric and the primary metric's spread."""
        from adaptkit.evals.generation import run_metrics

        outputs = [self._output(result, name) for result in results]
        if len(outputs) == 1:
            return outputs[0]
        first = outputs[0]
        metrics = run_metrics([o.metrics for o in outputs], spread=(first.primary,))
        metrics["runs"] = float(len(outputs))
        return TaskOutput(metrics, primary=first.primary, higher_is_better=first.higher_is_better)

    @staticmethod
    def _output(result: dict, name: str) -> TaskOutput:
        entries = result["results"]
        subtasks = result.get("group_subtasks", {}).get(name, [])
        raw = entries.get(name, {})
        metrics = {_metric_name(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and "stderr" not in k}
        if not metrics and subtasks:  # a group without aggregate: mean over its subtasks
            collected: dict[str, list[float]] = {}
            for sub in subtasks:
                for k, v in entries.get(sub, {}).items():
                    if isinstance(v, (int, float)) and "stderr" not in k:
                        collected.setdefault(_metric_name(k), []).append(float(v))
            metrics = {k: sum(v) / len(v) for k, v in collected.items()}
        metrics.pop("sample_len", None)
        if not metrics:
            from adaptkit.errors import AdaptkitError

            raise AdaptkitError(f"lm-eval task '{name}' returned no metrics")
        primary = next((m for m in PRIMARY_ORDER if m in metrics), next(iter(metrics)))
        hib_table = result.get("higher_is_better", {}).get(name) or next(
            (result["higher_is_better"].get(s) for s in subtasks if result.get("higher_is_better", {}).get(s)), {}
        ) or {}
        higher = bool(hib_table.get(primary, "perplexity" not in primary))
        samples = result.get("n-samples", {}).get(name, {})
        if samples:
            metrics["items"] = float(samples.get("effective", samples.get("original", 0)))
        return TaskOutput(metrics, primary=primary, higher_is_better=higher)


SPEC = EvalBackendSpec(
    name="lm-eval",
    factory="adaptkit.plugins.evals.lm_eval:LmEvalBackend",
    summary="Any lm-evaluation-harness task or local task YAML directory, on the already-loaded model",
    reference="Gao et al., EleutherAI lm-evaluation-harness; LayRA's XNLI/PAWS-X/XCOPA/XStoryCloze/MGSM/MMLU",
    params=LmEvalParams,
    extras=("lm-eval",),
)
