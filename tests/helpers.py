"""Helpers shared by test modules (a test module imports from here or from conftest, never from
another test module): reading model weights, running the CLI, the engine tests' masked method, small
files in the layouts of the SSU paper's lm-eval datasets, loading a model and capturing module inputs.
Session fixtures (calibration sets, the `transformers serve` server) are in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from adaptkit.engine.masks import MaskSet, UpdateMask
from adaptkit.engine.plan import TrainingMethod, TrainingPlan


def weights(directory: Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of a (sharded) safetensors model directory, read with the safetensors library."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(directory).glob(f"{prefix}*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def run_ok(invoke, *args):
    """Run the CLI in-process and require success."""
    result = invoke(*args)
    assert result.returncode == 0, result
    return result


def masks_for(model) -> dict[str, UpdateMask]:
    """Column, row and element masks on a few parameters (True = trainable)."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    q = "model.layers.0.self_attn.q_proj.weight"
    down = "model.layers.1.mlp.down_proj.weight"
    norm = "model.layers.0.input_layernorm.weight"
    up = "model.layers.0.mlp.up_proj.weight"
    return {
        q: UpdateMask("column", torch.rand(params[q].shape[1], generator=generator) > 0.5),
        down: UpdateMask("row", torch.rand(params[down].shape[0], generator=generator) > 0.5),
        norm: UpdateMask("element", torch.rand(params[norm].shape, generator=generator) > 0.5),
        up: UpdateMask("element", torch.rand(params[up].shape, generator=generator) > 0.5),
    }


class MaskedTestMethod(TrainingMethod):
    """Trains everything except layer 1's attention, with masks on four parameters."""

    def plan(self, model, ctx):
        plan = TrainingPlan.from_masks(model, MaskSet(masks_for(model)), summary="test masks")
        for name in list(plan.trainable):
            if "layers.1.self_attn" in name:
                del plan.trainable[name]
        return plan


def train_directly(method: TrainingMethod, run_dir, model_dir, data, **settings):
    """The engine on a method instance (no registry): seq_len 32, batch 4 unless `settings` say otherwise."""
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.loop import train

    config = TrainConfig(model=str(model_dir), data={"paths": [str(data)], "seq_len": 32}, **{"batch_size": 4, **settings})
    return train(config, method, run_dir, log=lambda message: None)


# --- the SSU paper's lm-eval datasets, in their layouts (facebook/belebele, cais/mmlu, CohereForAI/Global-MMLU)

SUBJECTS = """abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry
college_computer_science college_mathematics college_medicine college_physics computer_security conceptual_physics
econometrics electrical_engineering elementary_mathematics formal_logic global_facts high_school_biology
high_school_chemistry high_school_computer_science high_school_european_history high_school_geography
high_school_government_and_politics high_school_macroeconomics high_school_mathematics high_school_microeconomics
high_school_physics high_school_psychology high_school_statistics high_school_us_history high_school_world_history
human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning management marketing
medical_genetics miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting
professional_law professional_medicine professional_psychology public_relations security_studies sociology
us_foreign_policy virology world_religions""".split()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def belebele_rows(language: str, passage: str, question: str) -> list[dict]:
    """Five passages, two questions each, in facebook/belebele's fields."""
    return [{"link": f"https://en.wikibooks.org/wiki/{p}", "question_number": q + 1, "flores_passage": f"{passage} {p}.",
             "question": f"{question} {p}-{q}?", "mc_answer1": f"zabi {p}", "mc_answer2": "kogi.", "mc_answer3": "dutse",
             "mc_answer4": "teku", "correct_answer_num": str((p + 2 * q) % 4 + 1), "dialect": language, "ds": "2023-05-03"}
            for p in range(5) for q in range(2)]


def global_mmlu_rows(split: str, count: int) -> list[dict]:
    """CohereForAI/Global-MMLU's fields; in the test split one item of anatomy has an empty option."""
    return [{"sample_id": f"{subject}/{split}/{i}", "subject": subject, "subject_category": "STEM",
             "question": f"Tambaya ta {i} game da {subject.replace('_', ' ')}?", "option_a": f"amsa {i}", "option_b": "babu",
             "option_c": "" if (split == "test" and subject == "anatomy" and i == 1) else "duka", "option_d": "biyu",
             "answer": "ABCD"[(i + len(subject)) % 4], "required_knowledge": "[]", "time_sensitive": "[]", "reference": "[]",
             "culture": "[]", "region": "[]", "country": "[]", "cultural_sensitivity_label": "CA", "is_annotated": False}
            for subject in SUBJECTS for i in range(count)]


def write_ssu_data(root: Path) -> Path:
    """Local copies, in the layout `--set lm-eval.data_dir` reads: DIR/<dataset>/<config>/<split>.jsonl."""
    write_jsonl(root / "belebele" / "hau_Latn" / "test.jsonl", belebele_rows("hau_Latn", "Kogin Neja yana da tsawo", "me ya faru"))
    write_jsonl(root / "belebele" / "amh_Ethi" / "test.jsonl", belebele_rows("amh_Ethi", "ወንዙ ረጅም ነው", "ምን ሆነ"))
    write_jsonl(root / "global-mmlu" / "ha" / "dev.jsonl", global_mmlu_rows("dev", 5))
    write_jsonl(root / "global-mmlu" / "ha" / "test.jsonl", global_mmlu_rows("test", 2))
    for subject in SUBJECTS:
        for split, count in (("dev", 5), ("test", 1)):
            write_jsonl(root / "mmlu" / subject / f"{split}.jsonl",
                   [{"question": f" What is {i} in {subject}?", "subject": subject, "choices": ["one", "two", "three", "four"],
                     "answer": (i + len(subject)) % 4} for i in range(count)])
    return root


# --- loading a model and capturing module inputs (the SSU scorer tests)

def load_model(model_dir: Path):
    import torch

    from adaptkit.io.models import load_causal_lm, resolve_model_source

    return load_causal_lm(resolve_model_source(str(model_dir)), torch.float32).eval()


def capture_inputs(model, blocks, module_names: list[str]) -> dict[str, "torch.Tensor"]:
    """Every input row of the named modules over all blocks, as float64 (N, features), via pre-hooks."""
    import torch

    modules = dict(model.named_modules())
    captured: dict[str, list] = {name: [] for name in module_names}
    handles = [
        modules[name].register_forward_pre_hook(lambda m, args, name=name: captured[name].append(args[0].detach().double().reshape(-1, args[0].shape[-1])))
        for name in module_names
    ]
    with torch.no_grad():
        model(input_ids=blocks)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(rows) for name, rows in captured.items()}
