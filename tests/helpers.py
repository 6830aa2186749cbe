"""Helpers shared by test modules (a test module imports from here or from conftest, never from
another test module): reading model weights, running the CLI, the engine tests' masked method, small
files in the layouts of the SSU paper's lm-eval datasets, loading a model and capturing module inputs;
the training-method tests' claims checks, the merge tests' independent expectations, and the
multi-process tests' mask-file plugin and launchers; busy processes, CLIs in their own process
groups and the processes a command left (the signal, kill and stress tests).

Run as a script under a launcher (`launch_runs`), this file is a driver that makes several
`adaptkit` runs in one launch (one torch import and one process group for all of them):
    torchrun --nproc_per_node=N tests/helpers.py RUNS.json

Session fixtures (calibration sets, the `transformers serve` server) are in conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from adaptkit.engine.masks import MaskSet, UpdateMask
from adaptkit.engine.plan import TrainingCallback, TrainingMethod, TrainingPlan


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


# --- the training-method tests: weights on disk, claims checks, a logits-capturing method wrapper

# One intra-op thread: these models are tiny, and on a shared 2-core machine OpenMP threads that spin
# while other processes hold the cores make a step up to 100x slower.
torch.set_num_threads(1)

# tiny runs: 3 optimizer steps of 4 x 32 tokens; a large lr and weight decay so that every trainable
# entry moves and a frozen entry touched by weight decay would show
TRAIN = ["--seq-len", "32", "--batch-size", "4", "--max-steps", "3", "--lr", "1e-2", "--weight-decay", "0.1", "--warmup-ratio", "0", "--quiet"]
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROBE = torch.tensor([[1, 5, 9, 40, 77, 120, 200, 300, 17, 60, 91, 250]])


def assert_trains_exactly(before: dict, after: dict, trainable: dict) -> None:
    """Entries outside `trainable` (name -> None for the whole tensor, or a bool tensor) are bit-identical;
    most trainable entries of every trainable tensor changed."""
    assert set(before) == set(after)
    for name, old in before.items():
        new = after[name]
        if name not in trainable:
            assert torch.equal(old, new), f"{name} should be frozen"
            continue
        mask = trainable[name]
        mask = torch.ones_like(old, dtype=torch.bool) if mask is None else mask.expand(old.shape)
        assert torch.equal(old[~mask], new[~mask]), f"{name}: frozen entries changed"
        if not mask.any():
            continue
        changed = (old[mask] != new[mask]).float().mean().item()
        assert changed > 0.5, f"{name}: only {changed:.0%} of the trainable entries changed"


def logits_of(model, input_ids: torch.Tensor = PROBE) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids).logits.detach().clone()
    model.train(was_training)
    return out


class CaptureLogits(TrainingCallback):
    """Records the logits of the in-memory trained model, just before the engine exports it."""

    captured: dict[str, torch.Tensor] = {}

    def __init__(self, key: str):
        self.key = key

    def export(self, model):
        CaptureLogits.captured[self.key] = logits_of(model)
        return model


class Capturing(TrainingMethod):
    """A method instance's plan with CaptureLogits first: the engine takes the wrapped instance directly."""

    def __init__(self, inner: TrainingMethod, key: str):
        super().__init__(inner.params)
        self.inner, self.key = inner, key
        self.freeze_special_tokens = inner.freeze_special_tokens  # the wrapped method's default

    def plan(self, model, ctx):
        plan = self.inner.plan(model, ctx)
        plan.callbacks.insert(0, CaptureLogits(self.key))
        return plan


def train_capturing(args: list, run_dir: Path) -> torch.Tensor:
    """Train as `adaptkit train ARGS -o RUN_DIR` would (flags and --set resolved by the train command's own
    functions), through Capturing; returns the logits of the in-memory model just before export."""
    from adaptkit.train_settings import build_config, build_method
    from adaptkit.engine.loop import train

    flags, overrides, words = {}, [], iter(str(a) for a in args)
    for word in words:
        if word == "--quiet":
            continue
        value = next(words)
        if word == "--set":
            overrides.append(value)
        else:
            flags[word[2:].replace("-", "_")] = [value] if word == "--data" else value
    config = build_config(None, flags, overrides)
    train(config, Capturing(build_method(config), str(run_dir)), run_dir, log=lambda message: None)
    return CaptureLogits.captured.pop(str(run_dir))


def block_modules(block) -> dict[str, list[str]]:
    """A transformer block's attention and MLP projections (nn.Linear children of self_attn / mlp, in
    module order) and its norms (direct children whose class name has 'norm'), read off the HF module."""
    return {
        "attention": [f"self_attn.{n}" for n, m in block.self_attn.named_children() if isinstance(m, torch.nn.Linear)],
        # the SSU code's _find_mlp_modules looks for up_proj, down_proj, gate_proj in that order
        "mlp": sorted((f"mlp.{n}" for n, m in block.mlp.named_children() if isinstance(m, torch.nn.Linear)), key=lambda n: ("up_proj", "down_proj", "gate_proj").index(n[4:])),
        "norms": [n for n, m in block.named_children() if "norm" in type(m).__name__.lower()],
    }


def hft_frozen_modules(model_dir: Path, seed: int) -> dict[int, list[str]]:
    """HFT's rule (Hui et al. 2024, SSU repository variant), written here from its definition: with
    random.Random(seed), shuffle the layer order; the first half of that order freezes ceil(3/2) = 2 MLP
    projections, the rest floor(3/2) = 1; every layer freezes 2 of its 4 attention projections and 1 of
    its 2 block norms, each drawn in that order with rng.sample (the SSU code's global random, seeded alike)."""
    import random

    from transformers import AutoModelForCausalLM

    blocks = AutoModelForCausalLM.from_pretrained(model_dir).model.layers
    rng = random.Random(seed)
    order = list(range(len(blocks)))
    rng.shuffle(order)
    more = set(order[: len(blocks) // 2])
    frozen = {}
    for index, block in enumerate(blocks):
        modules = block_modules(block)
        mlp_count = (len(modules["mlp"]) + 1) // 2 if index in more else len(modules["mlp"]) // 2
        frozen[index] = (rng.sample(modules["attention"], len(modules["attention"]) // 2) + rng.sample(modules["mlp"], mlp_count)
                         + rng.sample(modules["norms"], len(modules["norms"]) // 2))
    return frozen


def frozen_modules_seen(before: dict, after: dict, model_dir: Path) -> dict[int, list[str]]:
    """Per layer, the block modules (projections and norms) whose weights did not change at all."""
    from transformers import AutoModelForCausalLM

    blocks = AutoModelForCausalLM.from_pretrained(model_dir).model.layers
    seen = {}
    for index, block in enumerate(blocks):
        names = [m for group in block_modules(block).values() for m in group]
        seen[index] = [m for m in names if torch.equal(before[f"model.layers.{index}.{m}.weight"], after[f"model.layers.{index}.{m}.weight"])]
    return seen


def assert_hft_rule(before: dict, after: dict, model_dir: Path, seed: int) -> dict:
    """The frozen modules seen in the weights follow HFT's rule and are the seeded draw; returns the trainable map."""
    seen = frozen_modules_seen(before, after, model_dir)
    expected = hft_frozen_modules(model_dir, seed)
    for index, frozen in seen.items():
        assert sum(m.startswith("self_attn.") for m in frozen) == 2, (index, frozen)
        assert sum(m.startswith("mlp.") for m in frozen) in (1, 2) and sum("norm" in m and "." not in m for m in frozen) == 1, (index, frozen)
        assert sorted(frozen) == sorted(expected[index]), (index, frozen, expected[index])
    mlp_counts = sorted(sum(m.startswith("mlp.") for m in v) for v in seen.values())
    assert mlp_counts == sorted([2] * (len(seen) // 2) + [1] * (len(seen) - len(seen) // 2)), mlp_counts
    prefixes = tuple(f"model.layers.{i}.{m}." for i, names in expected.items() for m in names)
    return {name: None for name in before if not name.startswith(prefixes)}


def assert_resume_bit_identical(invoke, tmp_path: Path, args: list, models: tuple[str, ...] = ("final",)) -> None:
    """`train ARGS` straight through, and again stopped after the checkpoint at step 2 of 6 (later saves
    removed) then resumed: each model directory in `models` is bit-identical between the two."""
    import json
    import shutil

    steps = ["--max-steps", "6", "--save-steps", "2"]  # checkpoints 2 and 4 kept (the newest two)
    assert invoke("train", *args, *steps, "-o", tmp_path / "straight").returncode == 0
    stopped = tmp_path / "stopped"
    assert invoke("train", *args, *steps, "-o", stopped).returncode == 0
    for later in ["checkpoint-4", *models]:
        shutil.rmtree(stopped / later)
    resumed = invoke("train", *args, *steps, "-o", stopped, "--resume", "--json")
    assert resumed.returncode == 0, resumed
    assert json.loads(resumed.stdout)["resumed_from"] == 2
    for model in models:
        a, b = weights(tmp_path / "straight" / model), weights(stopped / model)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), model


# --- the merge tests: read model directories back, compute expectations independently

def close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        diff = (actual[name].double() - expected[name].double()).abs().max().item()
        assert diff <= atol, (name, diff)


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming by a full sort (independent of the selection used by adaptkit)."""
    k = max(1, int(density * delta.numel()))
    order = delta.abs().flatten().argsort(descending=True)[:k]
    keep = torch.zeros(delta.numel())
    keep[order] = 1
    return delta * keep.reshape(delta.shape)


def disjoint_merge(deltas: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """TIES elect + disjoint mean (or sum, without `normalize`), written elementwise."""
    weighted = [d * w for d, w in zip(deltas, weights)]
    total = sum(weighted)
    sign = torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))
    numerator = torch.zeros_like(total)
    denominator = torch.zeros_like(total)
    for d, w in zip(weighted, weights):
        agree = (torch.sign(d) == sign).float()
        numerator += d * agree
        denominator += w * agree
    denominator[denominator == 0] = 1
    return numerator / denominator if normalize else numerator


def no_partial_outputs(parent: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in Path(parent).iterdir())


def save_tiny_model(directory: Path, tokenizer, seed: int, arch: str = "llama", **config) -> Path:
    """A tiny model (adaptkit.demo) with `tokenizer`'s vocabulary size, saved with that tokenizer."""
    from adaptkit import demo

    demo.tiny_model(arch, len(tokenizer), seed=seed, **config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def copy_tokenizer(source: Path, target: Path) -> None:
    """Give a model directory saved by hand the tokenizer files of `source` (merges refuse outputs without one)."""
    import shutil

    for file in Path(source).iterdir():
        if file.name.startswith("tokenizer") or file.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copyfile(file, Path(target) / file.name)


def run_mergekit_configs(configs: dict[str, dict], root: Path, copy_tokenizer: bool = False) -> dict[str, tuple[Path, Path]]:
    """Write each config as YAML under `root` and merge it with the installed mergekit, in-process;
    returns {name: (yaml file, mergekit output)}. Skips (fails under CI=true) without mergekit."""
    import importlib
    import os

    import pytest
    import yaml

    try:
        mergekit_config = importlib.import_module("mergekit.config")
        mergekit_merge = importlib.import_module("mergekit.merge")
    except ImportError as exc:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"mergekit parity is required in CI but mergekit does not import: {exc}")
        pytest.skip(f"mergekit is not installed ({exc}); pip install 'adaptkit[mergekit]'")
    outputs = {}
    for name, config in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
        out = root / f"mergekit-{name}"
        mergekit_merge.run_merge(
            mergekit_config.MergeConfiguration.model_validate(config), str(out),
            options=mergekit_merge.MergeOptions(copy_tokenizer=copy_tokenizer, quiet=True, write_model_card=False),
        )
        outputs[name] = (root / f"{name}.yaml", out)
    return outputs


# --- the multi-process, crash and bad-input tests: a mask-file method plugin that subprocesses find
# through an entry point, mask sets with every granularity, and launchers

PLUGIN_SOURCE = '''
from adaptkit.engine.plan import TrainingMethod, TrainingPlan
from adaptkit.hookspecs import hookimpl
from typing import Optional

from adaptkit.specs import MethodSpec, Need, Params


class MaskFileParams(Params):
    mask: Optional[str] = None  # set by --mask


class MaskFile(TrainingMethod):
    """Train what the --mask set allows (parameters without a mask train whole)."""

    def plan(self, model, ctx):
        masks = ctx.mask_set()
        masks.check_fits(model)
        return TrainingPlan.from_masks(model, masks, summary="mask file")


@hookimpl
def register_methods(register):
    register(MethodSpec(name="mask-file", factory="adaptkit_test_maskfile:MaskFile", params=MaskFileParams,
                        summary="test: train through --mask", needs=(Need(("mask",), "--mask DIR"),)))
'''


def install_mask_file_plugin(site: Path) -> Path:
    """Write an importable plugin + dist-info with an `adaptkit` entry point under `site`."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "adaptkit_test_maskfile.py").write_text(PLUGIN_SOURCE)
    info = site / "adaptkit_test_maskfile-0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: adaptkit-test-maskfile\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[adaptkit]\nmask-file = adaptkit_test_maskfile\n")
    return site


def write_mask_set(model_dir: Path, out: Path, seed: int = 0) -> dict:
    """Column, row and element masks (True = trainable) on a few parameters; one parameter frozen whole."""
    from safetensors.torch import load_file

    from adaptkit.engine.masks import MaskSet, UpdateMask

    weights = load_file(str(model_dir / "model.safetensors"))
    generator = torch.Generator().manual_seed(seed)

    def coin(n):
        return torch.rand(n, generator=generator) > 0.5

    q, down = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"
    up, norm = "model.layers.0.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight"
    k1 = "model.layers.1.self_attn.k_proj.weight"
    masks = {
        q: UpdateMask("column", coin(weights[q].shape[1])),
        down: UpdateMask("row", coin(weights[down].shape[0])),
        up: UpdateMask("element", coin(tuple(weights[up].shape))),
        norm: UpdateMask("element", coin(tuple(weights[norm].shape))),
        k1: UpdateMask("row", torch.zeros(weights[k1].shape[0], dtype=torch.bool)),
    }
    out.mkdir(parents=True, exist_ok=True)
    MaskSet(masks, {"source": "test"}).save(out)
    return masks


def env_with(site: Path | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    parts = [str(site)] if site else []
    env["PYTHONPATH"] = os.pathsep.join(parts + [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra})
    return env


def launch(launcher: str, nproc: int, args: list, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `adaptkit ARGS` in a plain process ("python") or under torchrun / accelerate launch with `nproc` CPU processes (gloo)."""
    bindir = Path(sys.executable).parent
    if launcher == "python":
        cmd = [sys.executable, "-m", "adaptkit"]
    elif launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "adaptkit"]
    else:
        # accelerate's --cpu starts a single process; --multi_gpu starts N (gloo when there is no GPU)
        cmd = [str(bindir / "accelerate"), "launch", "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", "-m", "adaptkit"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


def frozen_entries(masks: dict, name: str, shape: tuple) -> torch.Tensor:
    """Bool tensor of the entries of `name` that must not change."""
    return ~masks[name].expand(shape)


def stop_copy(run: Path, into: Path, at: int) -> Path:
    """A copy of `run` as if killed while it saved checkpoint-<at>: it resumes from the checkpoint before
    (no final/, nor the averaged models beside it)."""
    shutil.copytree(run, into)
    for model in into.glob("final*"):
        shutil.rmtree(model)
    shutil.rmtree(into / f"checkpoint-{at}")
    (into / f".checkpoint-{at}.partial").mkdir()
    return into


def launch_runs(launcher: str, nproc: int, runs: list[dict], env: dict, workdir: Path, timeout: int = 900) -> dict[str, dict]:
    """Several `adaptkit` runs in one launch, in order; each run is {"name", "args", and optionally
    "stop": [run dir, copy, step]} (stop_copy made by the main process before the run).
    Returns each run's JSON summary (the --json line rank 0 printed); a failed run fails the launch."""
    plan = workdir / f"runs-{launcher}-{nproc}.json"
    plan.write_text(json.dumps(runs, default=str))
    bindir = Path(sys.executable).parent
    script = str(Path(__file__).resolve())
    if launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", script, str(plan)]
    else:
        cmd = [str(bindir / "accelerate"), "launch", "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
               "--mixed_precision=no", "--dynamo_backend=no", script, str(plan)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    summaries: dict[str, list] = {}
    name = None
    for line in done.stdout.splitlines():
        if line.startswith("@@run "):
            name = line.split(" ", 1)[1]
            summaries[name] = []
        elif line.startswith("{") and name is not None:
            summaries[name].append(json.loads(line))
    assert list(summaries) == [r["name"] for r in runs], done.stdout[-3000:]
    assert all(len(lines) == 1 for lines in summaries.values()), summaries  # rank 0 alone reports
    return {k: v[0] for k, v in summaries.items()}


def _drive(plan_file: str) -> None:
    """The driver: every process makes the runs of `plan_file` one after the other."""
    import torch.distributed as dist

    from adaptkit.cli import main

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for run in json.loads(Path(plan_file).read_text()):
        if run.get("stop") and rank == 0:
            source, into, at = run["stop"]
            stop_copy(Path(source), Path(into), int(at))
        dist.barrier()
        if rank == 0:
            print(f"@@run {run['name']}", flush=True)
        try:
            main(run["args"])
        except SystemExit as exc:
            if exc.code:
                print(f"run {run['name']} failed on rank {rank} (exit {exc.code})", file=sys.stderr, flush=True)
                raise
        sys.stdout.flush()
        dist.barrier()
    dist.destroy_process_group()


# --- processes under load, killed or interrupted: busy processes on every core, a CLI started in its own
# process group, waiting for a condition, the processes a command left

import contextlib  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import psutil  # noqa: E402

# `adaptkit ARGS` with the token store's chunk size set first: many small chunks give a pool many
# tasks (and a worker to kill mid-build) from a corpus of a few MB
PREPARE_SMALL_CHUNKS = (
    "import sys; from adaptkit.data import store; store.CHUNK_CHARS = int(sys.argv[1]); "
    "from adaptkit.cli import main; main(sys.argv[2:])"
)


@contextlib.contextmanager
def busy_processes(count: int = 4) -> Iterator[list[int]]:
    """`count` processes spinning on the CPU (two per core on this machine), killed on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)


def start_cli(args: list[str], stderr: Path, chunk_chars: int | None = None, python_args: bool = False) -> subprocess.Popen:
    """`python -m adaptkit ARGS` (with small store chunks; or `python ARGS`) in its own session and
    process group (so that a signal to the group is what a terminal's Ctrl-C does), stderr to a file."""
    if python_args:
        command = [sys.executable, *map(str, args)]
    elif chunk_chars is not None:
        command = [sys.executable, "-c", PREPARE_SMALL_CHUNKS, str(chunk_chars), *map(str, args)]
    else:
        command = [sys.executable, "-m", "adaptkit", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(stderr, "w"), start_new_session=True)


def wait_for(condition: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll `condition` until it returns something truthy; fails after `timeout` s or when `proc` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def assert_ended(pids: list[int], timeout: float = 5.0) -> None:
    """Every process in `pids` is gone (a zombie waiting for init to reap it counts as gone)."""
    def alive() -> list[int]:
        left = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = alive()
    for pid in left:  # do not leave them behind for the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


def end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a test's command and its process group (after a failed assertion)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A text file of about `megabytes` MB: documents of UDHR-like words, one per line."""
    from adaptkit import demo

    words = " ".join(demo.udhr_paragraphs("ha") + demo.udhr_paragraphs("en")).split()
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(words, k=rng.randint(8, 120))) for _ in range(2000)]
    block = "\n".join(lines) + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(max(1, round(megabytes * 1_000_000 / len(block.encode())))):
            handle.write(block)
    return path


if __name__ == "__main__":
    _drive(sys.argv[1])
