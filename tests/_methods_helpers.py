"""Helpers shared by the training-method tests: weights on disk, claims checks, a logits-capturing method wrapper."""

from __future__ import annotations

from pathlib import Path

import torch

from adaptkit.engine.plan import TrainingCallback, TrainingMethod
from helpers import weights  # noqa: F401  (the one reader; the method tests import it from here)

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
