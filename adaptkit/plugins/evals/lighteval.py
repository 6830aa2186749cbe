"""`lighteval`: tasks of Hugging Face lighteval, run on the model already loaded (optional extra).

Task spec: `lighteval:TASK|SHOTS[,...]` as lighteval 0.13 writes tasks (e.g.
`lighteval:belebele_hau_Latn_mcf|0`; the older `SUITE|TASK|SHOTS` is accepted, lighteval
ignores the suite), with custom task files via `--set lighteval.custom_tasks=/path/tasks.py`.
Two ways to run (the pipeline code is one, in `lighteval_worker`):
- in this process (default): lighteval is imported only when such a task is prepared; when it
  is missing the CLI says how to install it (`pip install 'adaptkit[lighteval]'`), and any
  import failure of lighteval itself becomes a one-line error, never a traceback;
- in another environment, `--set lighteval.python=/path/to/venv/bin/python`: the evaluated
  model (and tokenizer) is saved to a temporary directory and that interpreter runs
  `lighteval_worker.py` on it as a subprocess; its JSON results are read back. That
  environment needs lighteval, torch and transformers, not adaptkit.
Reference: Fourrier et al., Hugging Face lighteval (the SSU paper's MT-Bench protocol).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from adaptkit.evals.tasks import EvalBackend, EvalTask, RunContext, TaskOutput
from adaptkit.specs import EvalBackendSpec, Params

PRIMARY_ORDER = ("acc_norm", "acc", "em", "chrf", "f1")


class LightevalParams(Params):
    custom_tasks: str | None = None
    max_samples: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    use_chat_template: bool = False
    python: str | None = Field(None, description="Python of another environment that has lighteval; runs it there as a subprocess.")
    timeout_s: float = Field(6 * 3600.0, gt=0, description="With lighteval.python: the most seconds its subprocess may run before it is stopped (a runtime failure).")


def _import_lighteval() -> None:
    from adaptkit.errors import InputError, MissingExtraError

    try:
        import lighteval.pipeline  # noqa: F401
        from lighteval.models.transformers.transformers_model import TransformersModel  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "lighteval":
            raise MissingExtraError("lighteval", "lighteval", "the lighteval eval backend") from None
        raise InputError(f"lighteval does not import here (missing '{exc.name}'); reinstall it with `pip install 'adaptkit[lighteval]'`"
                         " or point --set lighteval.python at an environment that has it") from None
    except Exception as exc:  # e.g. a Hub call at import while offline, or an incompatible version
        raise InputError(f"lighteval failed to import ({type(exc).__name__}: {exc}); it may need network access at import") from None


def _check_python(python: str) -> None:
    """The interpreter given as lighteval.python exists and finds lighteval (without importing it: that is slow)."""
    import subprocess

    from adaptkit.errors import InputError

    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('lighteval') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"--set lighteval.python={python}: expected a Python interpreter ({type(exc).__name__}: {exc})") from None
    if not found:
        raise InputError(f"--set lighteval.python={python}: that Python does not have lighteval (pip install lighteval==0.13.0 there)")


def _task_name(entry: str, flag: str, spec: str) -> str:
    from adaptkit.errors import InputError

    parts = entry.split("|")
    if len(parts) not in (2, 3) or not parts[-1].isdigit() or not parts[-2]:
        raise InputError(f"{flag} lighteval:{spec}: expected TASK|SHOTS (e.g. belebele_hau_Latn_mcf|0), got '{entry}'")
    return parts[-2]


def _outputs(results: dict[str, dict[str, float]], tasks: list[EvalTask]) -> dict[str, TaskOutput]:
    from adaptkit.errors import AdaptkitError

    outputs = {}
    for task in tasks:
        key = next((k for k in results if task.name in re.split(r"[|:]", k)), None)  # 0.13: 'name:0'; older: 'suite|name|0'
        if key is None:
            raise AdaptkitError(f"lighteval returned no result for task '{task.payload}' (it reported: {', '.join(results) or 'nothing'})")
        metrics = {k: v for k, v in results[key].items() if "stderr" not in k}
        primary = next((m for m in PRIMARY_ORDER if m in metrics), next(iter(metrics), None))
        if primary is None:
            raise AdaptkitError(f"lighteval reported no metric for task '{task.payload}'")
        outputs[task.name] = TaskOutput(metrics, primary=primary, higher_is_better=True)
    return outputs


class LightevalBackend(EvalBackend):
    name = "lighteval"

    def prepare(self, spec: str, flag: str) -> list[EvalTask]:
        from adaptkit.errors import InputError

        if self.params.custom_tasks and self.params.custom_tasks.endswith(".py") and not Path(self.params.custom_tasks).is_file():
            raise InputError(f"--set lighteval.custom_tasks={self.params.custom_tasks}: no such file (expected a lighteval tasks .py)")
        if self.params.python:
            _check_python(self.params.python)
        else:
            _import_lighteval()
        entries = [e.strip() for e in spec.split(",") if e.strip()]
        return [EvalTask(_task_name(e, flag, spec), "lighteval", spec, e, {"lighteval_task": e}) for e in entries]

    def _settings(self, model) -> dict:
        from adaptkit.io.models import input_device

        custom = self.params.custom_tasks
        if custom and Path(custom).is_file():
            custom = str(Path(custom).resolve())
        return {"custom_tasks": custom, "max_samples": self.params.max_samples, "batch_size": self.params.batch_size,
                "use_chat_template": self.params.use_chat_template, "device": str(input_device(model))}

    def _run_elsewhere(self, model, tokenizer, tasks: str, ctx: RunContext, tmp: Path) -> dict:
        """Save the model, run lighteval_worker.py under lighteval.python, read its results."""
        import json
        import subprocess

        from adaptkit.errors import AdaptkitError
        from adaptkit.plugins.evals import lighteval_worker

        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        request = {"model_dir": str(tmp / "model"), "model_name": ctx.model_name, "tasks": tasks, "settings": self._settings(model)}
        (tmp / "request.json").write_text(json.dumps(request))
        with open(tmp / "log.txt", "w") as log:
            try:  # on timeout or an interrupt subprocess.run kills the worker and waits for it
                done = subprocess.run([self.params.python, lighteval_worker.__file__, str(tmp / "request.json"), str(tmp / "result.json")],
                                      stdout=log, stderr=subprocess.STDOUT, timeout=self.params.timeout_s)
            except subprocess.TimeoutExpired:
                raise AdaptkitError(f"lighteval (under {self.params.python}) did not finish within {self.params.timeout_s:g} s and was stopped;"
                                    " raise --set lighteval.timeout_s for longer evaluations") from None
        if done.returncode != 0:
            tail = [line for line in (tmp / "log.txt").read_text(errors="replace").splitlines() if line.strip()][-1:]
            raise AdaptkitError(f"lighteval (under {self.params.python}) failed with exit {done.returncode}: {tail[0] if tail else 'no output'}")
        return json.loads((tmp / "result.json").read_text())["results"]

    def run(self, model, tokenizer, tasks: list[EvalTask], ctx: RunContext) -> dict[str, TaskOutput]:
        import tempfile

        task_list = ",".join(t.payload for t in tasks)
        with tempfile.TemporaryDirectory(prefix="adaptkit-lighteval-") as tmp:
            if self.params.python:
                results = self._run_elsewhere(model, tokenizer, task_list, ctx, Path(tmp))
            else:
                from adaptkit.plugins.evals.lighteval_worker import run_pipeline

                tokenizer.save_pretrained(tmp)  # lighteval loads its (left-padded) tokenizer from a path
                results = run_pipeline(model, tmp, ctx.model_name, task_list, self._settings(model))
        return _outputs(results, tasks)


SPEC = EvalBackendSpec(
    name="lighteval",
    factory="adaptkit.plugins.evals.lighteval:LightevalBackend",
    summary="Hugging Face lighteval tasks on the loaded model, here or in another environment (lighteval.python)",
    reference="Fourrier et al., Hugging Face lighteval; used by the SSU paper for MT/SUM/Belebele",
    params=LightevalParams,
    extras=("lighteval",),
)
