"""`lighteval`: tasks of Hugging Face lighteval, run on the model already loaded (optional extra).

Task spec: `lighteval:SUITE|TASK|SHOTS[,...]` exactly as lighteval writes tasks (e.g.
`lighteval:lighteval|belebele_hau_Latn_mcf|0`), optionally with custom task files via
`--set lighteval.custom_tasks=/path/tasks.py`. lighteval is imported only when such a
task is prepared: when it is missing the CLI says how to install it
(`pip install 'adaptkit[lighteval]'`), and `adaptkit --help` / `adaptkit plugins` never
import it. Any import failure of lighteval itself (it may try to reach the Hub at
import) becomes the same one-line error, never a traceback.
"""

from __future__ import annotations

from pydantic import Field

from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput
from adaptkit.specs import EvalBackendSpec, Params


class LightevalParams(Params):
    custom_tasks: str | None = None
    max_samples: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    use_chat_template: bool = False


def _import_lighteval():
    from adaptkit.errors import InputError, MissingExtraError

    try:
        from lighteval.logging.evaluation_tracker import EvaluationTracker
        from lighteval.models.transformers.transformers_model import TransformersModel, TransformersModelConfig
        from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters
    except ModuleNotFoundError as exc:
        if exc.name == "lighteval":
            raise MissingExtraError("lighteval", "lighteval", "the lighteval eval backend") from None
        raise InputError(f"lighteval does not import here (missing '{exc.name}'); reinstall it with `pip install 'adaptkit[lighteval]'`") from None
    except Exception as exc:  # e.g. a Hub call at import while offline, or an incompatible version
        raise InputError(f"lighteval failed to import ({type(exc).__name__}: {exc}); it may need network access at import") from None
    return EvaluationTracker, TransformersModel, TransformersModelConfig, ParallelismManager, Pipeline, PipelineParameters


class LightevalBackend(EvalBackend):
    name = "lighteval"

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.errors import InputError

        _import_lighteval()
        tasks = []
        for entry in [e.strip() for e in spec.split(",") if e.strip()]:
            parts = entry.split("|")
            if len(parts) < 2:
                raise InputError(f"{flag} lighteval:{spec}: expected SUITE|TASK|SHOTS (e.g. lighteval|belebele_hau_Latn_mcf|0), got '{entry}'")
            tasks.append(EvalTask(parts[1], "lighteval", spec, entry, {"lighteval_task": entry}))
        return tasks

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        import tempfile

        EvaluationTracker, TransformersModel, TransformersModelConfig, ParallelismManager, Pipeline, PipelineParameters = _import_lighteval()
        with tempfile.TemporaryDirectory(prefix="adaptkit-lighteval-") as tmp:
            config = TransformersModelConfig(model_name=ctx.model_name, batch_size=self.params.batch_size)
            wrapped = TransformersModel.from_model(model, config=config)
            wrapped._tokenizer = tokenizer
            pipeline = Pipeline(
                tasks=",".join(t.payload for t in tasks),
                pipeline_parameters=PipelineParameters(
                    launcher_type=ParallelismManager.NONE,
                    custom_tasks_directory=self.params.custom_tasks,
                    max_samples=self.params.max_samples,
                ),
                evaluation_tracker=EvaluationTracker(output_dir=tmp, save_details=False),
                model=wrapped,
            )
            pipeline.evaluate()
            results = pipeline.get_results()["results"]
        outputs = {}
        for task in tasks:
            key = next((k for k in results if task.payload.rsplit("|", 1)[0] in k or task.name in k), None)
            metrics = {k: float(v) for k, v in (results.get(key) or {}).items() if isinstance(v, (int, float)) and "stderr" not in k}
            primary = next((m for m in ("acc_norm", "acc", "em", "chrf", "f1") if m in metrics), next(iter(metrics), "score"))
            outputs[task.name] = TaskOutput(metrics or {"score": float("nan")}, primary=primary, higher_is_better=True)
        return outputs


SPEC = EvalBackendSpec(
    name="lighteval",
    factory="adaptkit.plugins.evals.lighteval:LightevalBackend",
    summary="Hugging Face lighteval tasks on the already-loaded model (optional extra, guarded)",
    reference="Fourrier et al., Hugging Face lighteval; used by the SSU paper for MT/SUM/Belebele",
    params=LightevalParams,
    extras=("lighteval",),
)
