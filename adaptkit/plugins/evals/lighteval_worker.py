"""Runs a lighteval pipeline on one model: in adaptkit's process, or as a script in another environment.

Standalone on purpose (standard library, torch, transformers and lighteval only, no adaptkit
import), so that `python lighteval_worker.py REQUEST.json RESULT.json` works in a separate
virtual environment that has lighteval but not adaptkit (`--set lighteval.python=...`).
REQUEST.json: {"model_dir", "model_name", "tasks", "settings"}; RESULT.json: {"results":
{lighteval task key: {metric: value}}}. Written for lighteval 0.13 (`TransformersModel.from_model`,
`Pipeline`, tasks `TASK|SHOTS`). Reference: Fourrier et al., Hugging Face lighteval.
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any


def _tolerant(load):
    """`load(items, *args)` of lighteval's registry, applied item by item, skipping (and naming) the ones that raise."""
    def tolerant(items, *args):
        configs = {}
        for item in items:
            try:
                configs.update(load([item], *args))
            except Exception as exc:  # a network call at import, an API of another huggingface-hub
                print(f"lighteval: skipped built-in tasks '{item.stem if item.suffix else item.name}' ({type(exc).__name__}: {exc})", file=sys.stderr)
        return configs

    tolerant.adaptkit_tolerant = True
    return staticmethod(tolerant)


def tolerate_broken_task_modules() -> None:
    """Let lighteval's registry skip built-in task modules that fail to import, naming each on stderr.

    lighteval 0.13 imports every built-in task module to build its registry, so one that fails
    stops every task, custom ones included. Two do here: tasks/tiny_benchmarks.py downloads a file
    from GitHub at import (fails offline), and tasks/mt_bench/main.py calls
    `HfApi.list_models(model_name=...)`, which huggingface-hub 2 no longer has. Requested tasks of
    a skipped module are then reported missing by lighteval.
    """
    from lighteval.tasks.registry import Registry

    for name in ("_load_from_files", "_load_from_subdirs"):
        load = getattr(Registry, name)
        if not getattr(load, "adaptkit_tolerant", False):
            setattr(Registry, name, _tolerant(load))


def run_pipeline(model: Any, tokenizer_dir: str, model_name: str, tasks: str, settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Evaluate the loaded `model` on lighteval `tasks` (comma list); the tokenizer is read from `tokenizer_dir`.

    settings: custom_tasks (file or module), max_samples, batch_size, use_chat_template, device (of the model's inputs).
    Returns the numeric metrics of each task, keyed as lighteval reports them (e.g. `name|0`).
    """
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.transformers.transformers_model import TransformersModel, TransformersModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    tolerate_broken_task_modules()
    config = TransformersModelConfig(model_name=model_name, tokenizer=tokenizer_dir, batch_size=settings["batch_size"],
                                     device=settings["device"], override_chat_template=settings["use_chat_template"])
    with tempfile.TemporaryDirectory(prefix="adaptkit-lighteval-") as tmp:
        pipeline = Pipeline(
            tasks=tasks,
            pipeline_parameters=PipelineParameters(launcher_type=ParallelismManager.NONE, custom_tasks_directory=settings["custom_tasks"],
                                                   max_samples=settings["max_samples"]),
            evaluation_tracker=EvaluationTracker(output_dir=tmp, save_details=False),
            model=TransformersModel.from_model(model, config=config),
        )
        pipeline.evaluate()
        results = pipeline.get_results()["results"]
    return {key: {m: float(v) for m, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for key, metrics in results.items() if key != "all"}


def main(argv: list[str]) -> int:
    """`python lighteval_worker.py REQUEST.json RESULT.json`: load the saved model, evaluate, write the results."""
    from transformers import AutoModelForCausalLM

    with open(argv[0], encoding="utf-8") as handle:
        request = json.load(handle)
    model = AutoModelForCausalLM.from_pretrained(request["model_dir"], dtype="auto").to(request["settings"]["device"])
    results = run_pipeline(model, request["model_dir"], request["model_name"], request["tasks"], request["settings"])
    with open(argv[1], "w", encoding="utf-8") as handle:
        json.dump({"results": results}, handle)
    return 0


if __name__ == "__main__":
    import os

    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # this directory holds adaptkit's lighteval.py, which would shadow the lighteval package
    sys.exit(main(sys.argv[1:]))
