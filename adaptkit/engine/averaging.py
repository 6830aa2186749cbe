"""Weight averaging during training, written as models beside final/ (final-ema/, final-lawa/).

- EMA: an exponential moving average of the weights, updated after every optimizer step from the
  starting weights: ema <- ema + (1 - decay) (theta - ema) (torch.lerp, so an entry that never changes
  stays bit-identical; e.g. Polyak averaging as in Kaddour et al. / Izmailov et al.).
- LAWA (latest weight averaging, Kaddour 2022, arXiv 2209.14981; for LLM pre-training Sanyal et al. 2023,
  arXiv 2306.03241): the mean of the last k snapshots of the weights, one taken every `interval` steps and
  one at the end of the run; mean = first + sum(snapshot - first) / k (frozen entries stay bit-identical).

Only the trained parameters are averaged (the rest is the same in every snapshot). Both are training
callbacks the engine adds to any plan (no method asks for them); their state is checkpointed, so a resumed
run writes the same averages. They need whole parameters (not FSDP) and a plan that trains the model's own
weights (no callback that exports another model, such as an adapter merge).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from adaptkit.engine.plan import TrainingCallback, TrainingPlan
from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from adaptkit.engine.config import AveragingConfig


class WeightAverage(TrainingCallback, abc.ABC):
    """Base of the averages: the trained parameters by name, and the model written beside final/."""

    directory = ""  # the model directory's name beside final/
    title = ""

    def __init__(self, plan: TrainingPlan):
        self.params = {name: p for name, p in plan.model.named_parameters() if name in plan.trainable}

    @abc.abstractmethod
    def average(self) -> dict[str, "torch.Tensor"]:
        """The averaged tensors, by parameter name (each subclass's own average)."""

    def save_extra(self, model: "torch.nn.Module", directory: Path) -> None:
        """The exported model's tensors with the averaged ones in their place, in RUN/<directory>."""
        save_beside(model, directory, directory.parent / self.directory, self.average(), self.title)


class EMA(WeightAverage):
    directory = "final-ema"

    def __init__(self, plan: TrainingPlan, decay: float):
        super().__init__(plan)
        self.decay = decay
        self.title = f"exponential moving average of the weights (decay {decay:g}, every step)"
        self.ema = {name: p.detach().float().clone() for name, p in self.params.items()}

    def on_step_end(self, model: "torch.nn.Module", step: int) -> None:
        import torch

        with torch.no_grad():
            for name, p in self.params.items():
                self.ema[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def average(self) -> dict[str, "torch.Tensor"]:
        return self.ema

    def state_dict(self) -> dict[str, "torch.Tensor"]:
        return dict(self.ema)

    def load_state_dict(self, state: dict[str, "torch.Tensor"]) -> None:
        for name, tensor in self.ema.items():
            tensor.copy_(state[name])


class LAWA(WeightAverage):
    directory = "final-lawa"

    def __init__(self, plan: TrainingPlan, k: int, interval: int, total_steps: int):
        import torch

        super().__init__(plan)
        self.k, self.interval, self.total = k, interval, total_steps
        self.title = f"mean of the last {k} snapshots of the weights (LAWA), one every {interval} steps and at the end"
        self.slots = {name: torch.zeros((k, *p.shape), dtype=torch.float32) for name, p in self.params.items()}
        self.taken = torch.zeros((), dtype=torch.int64)  # snapshots taken so far (slot = count mod k)

    def on_step_end(self, model: "torch.nn.Module", step: int) -> None:
        import torch

        done = step + 1
        if done % self.interval and done != self.total:
            return
        slot = int(self.taken) % self.k
        with torch.no_grad():
            for name, p in self.params.items():
                self.slots[name][slot].copy_(p.detach().float())
        self.taken += 1

    def average(self) -> dict[str, "torch.Tensor"]:
        count = min(int(self.taken), self.k)
        if count == 0:
            return {}
        return {name: slots[0] + (slots[1:count] - slots[0]).sum(0) / count for name, slots in self.slots.items()}

    def state_dict(self) -> dict[str, "torch.Tensor"]:
        return {"taken": self.taken, **{f"slots.{name}": tensor for name, tensor in self.slots.items()}}

    def load_state_dict(self, state: dict[str, "torch.Tensor"]) -> None:
        self.taken.copy_(state["taken"])
        for name, tensor in self.slots.items():
            tensor.copy_(state[f"slots.{name}"])


def averaging_callbacks(config: "AveragingConfig", plan: TrainingPlan, total_steps: int, interval: int, sharded: bool) -> list[WeightAverage]:
    """The averages the run's settings ask for (none by default), checked against the plan."""
    wanted = [flag for flag, value in (("--ema-decay", config.ema_decay), ("--lawa-k", config.lawa_k)) if value is not None]
    if not wanted:
        return []
    if sharded:
        raise InputError(f"{wanted[0]}: weight averaging needs whole parameters; use --distributed ddp (or one process)")
    if any(type(callback).export is not TrainingCallback.export for callback in plan.callbacks):
        raise InputError(f"{wanted[0]}: weight averaging needs a method that trains the model's own weights "
                         f"(this plan exports another model: {plan.summary or 'an adapter'})")
    callbacks: list[WeightAverage] = []
    if config.ema_decay is not None:
        callbacks.append(EMA(plan, config.ema_decay))
    if config.lawa_k is not None:
        callbacks.append(LAWA(plan, config.lawa_k, config.lawa_interval or max(1, interval), total_steps))
    return callbacks


def save_beside(model: "torch.nn.Module", final_tmp: Path, target: Path, averages: dict[str, "torch.Tensor"], title: str) -> None:
    """Write `model` with `averages` in place of its tensors of those names (and of tensors tied to them)
    to `target`, with the tokenizer and other files final/ has (copied from its partial directory)."""
    import shutil

    from adaptkit.io.atomic import atomic_dir
    from adaptkit.io.model_card import CardInfo, write_model_card
    from adaptkit.io.models import save_model

    state = model.state_dict()
    pointers = {name: tensor.data_ptr() for name, tensor in state.items()}
    for name, average in averages.items():
        for key in [k for k, ptr in pointers.items() if ptr == pointers[name]]:
            state[key] = average.to(state[key].dtype)
    with atomic_dir(target, overwrite=True) as tmp:
        for file in final_tmp.iterdir():
            if file.is_file() and not file.name.startswith("model") and file.name != "README.md":
                shutil.copy2(file, tmp / file.name)
        save_model(model, None, tmp, state)
        write_model_card(tmp, CardInfo(title=f"{target.parent.name}/{target.name}", method="weight averaging", relation="finetune",
                                       summary=f"The {title} of this run's training; the last weights are in final/."))
