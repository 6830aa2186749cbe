"""Weight averaging during training, written as models beside final/ (final-ema/, final-lawa/).

- EMA: an exponential moving average of the weights, updated after every optimizer step from the
  starting weights: ema <- ema + (1 - decay) (theta - ema) (torch.lerp, so an entry that never changes
  stays bit-identical; e.g. Polyak averaging as in Kaddour et al. / Izmailov et al.).
- LAWA (latest weight averaging, Kaddour 2022, arXiv 2209.14981; for LLM pre-training Sanyal et al. 2023,
  arXiv 2306.03241): the mean of the last k snapshots of the weights, one taken every `interval` steps and
  one at the end of the run; mean = first + sum(snapshot - first) / k (frozen entries stay bit-identical).

Only the trained parameters are averaged (the rest is the same in every snapshot). Both are training
callbacks the engine adds to any plan (no method asks for them), after the strategy has distributed it:
under FSDP each process averages its own dim-0 shard of every trained parameter (the memory divided by the
processes, as the optimizer state), the shards are checkpointed in global coordinates with the run's other
tensors (so a resumed run, under any layout, writes the same averages), and at the end they are gathered
(a collective) and the main process writes the models. They need a plan that trains the model's own weights
(no callback that exports another model, such as an adapter merge).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from adaptkit.engine.plan import TrainingCallback, TrainingPlan
from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from adaptkit.engine.chunked import Chunk
    from adaptkit.engine.config import AveragingConfig


class WeightAverage(TrainingCallback, abc.ABC):
    """Base of the averages: the trained parameters by name (this process's shard of each), and the model
    written beside final/."""

    shard_aware = True
    directory = ""  # the model directory's name beside final/
    title = ""

    def __init__(self, plan: TrainingPlan):
        from adaptkit.engine.shards import local_shard

        self.params = {name: p for name, p in plan.model.named_parameters() if name in plan.trainable}
        self.places = {name: (local_shard(p)[1], tuple(p.shape)) for name, p in self.params.items()}  # (first row, whole shape)
        self.gathered: dict[str, "torch.Tensor"] = {}  # the whole averages, on the process that exports

    def local(self, name: str) -> "torch.Tensor":
        """This process's part of parameter `name` now (looked up each time: a strategy may move its storage)."""
        from adaptkit.engine.shards import local_shard

        return local_shard(self.params[name])[0]

    def chunk(self, name: str, tensor: "torch.Tensor") -> "Chunk":
        """`tensor` (this process's rows of an average of parameter `name`) in global coordinates."""
        from adaptkit.engine.chunked import Chunk

        offset, shape = self.places[name]
        return Chunk(tensor, offset, shape)

    @abc.abstractmethod
    def average(self) -> dict[str, "torch.Tensor"]:
        """The averaged tensors (this process's part), by parameter name (each subclass's own average)."""

    def gather(self, model: "torch.nn.Module", keep: bool) -> None:
        from adaptkit.engine.shards import whole_of

        self.gathered = {}
        for name, average in self.average().items():
            whole = whole_of(average, self.params[name])  # a collective under FSDP
            if keep:
                self.gathered[name] = whole.detach().cpu()

    def save_extra(self, model: "torch.nn.Module", directory: Path, state: Optional[dict] = None) -> None:
        """The exported model's tensors with the averaged ones in their place, in RUN/<directory>."""
        save_beside(model, state, directory, directory.parent / self.directory, self.gathered, self.title)


class EMA(WeightAverage):
    directory = "final-ema"

    def __init__(self, plan: TrainingPlan, decay: float):
        super().__init__(plan)
        self.decay = decay
        self.title = f"exponential moving average of the weights (decay {decay:g}, every step)"
        self.ema = {name: self.local(name).float().clone() for name in self.params}

    def on_step_end(self, model: "torch.nn.Module", step: int) -> None:
        import torch

        with torch.no_grad():
            for name in self.params:
                self.ema[name].lerp_(self.local(name).float(), 1.0 - self.decay)

    def average(self) -> dict[str, "torch.Tensor"]:
        return self.ema

    def placed_state(self) -> dict[str, "Chunk"]:
        return {f"ema.{name}": self.chunk(name, tensor) for name, tensor in self.ema.items()}


class LAWA(WeightAverage):
    directory = "final-lawa"

    def __init__(self, plan: TrainingPlan, k: int, interval: int, total_steps: int):
        import torch

        super().__init__(plan)
        self.k, self.interval, self.total = k, interval, total_steps
        self.title = f"mean of the last {k} snapshots of the weights (LAWA), one every {interval} steps and at the end"
        self.slots = {name: torch.zeros((k, *self.local(name).shape), dtype=torch.float32) for name in self.params}
        self.taken = torch.zeros((), dtype=torch.int64)  # snapshots taken so far (slot = count mod k)

    def on_step_end(self, model: "torch.nn.Module", step: int) -> None:
        import torch

        done = step + 1
        if done % self.interval and done != self.total:
            return
        slot = int(self.taken) % self.k
        with torch.no_grad():
            for name in self.params:
                self.slots[name][slot].copy_(self.local(name).float())
        self.taken += 1

    def average(self) -> dict[str, "torch.Tensor"]:
        count = min(int(self.taken), self.k)
        if count == 0:
            return {}
        return {name: slots[0] + (slots[1:count] - slots[0]).sum(0) / count for name, slots in self.slots.items()}

    def state_dict(self) -> dict[str, "torch.Tensor"]:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict[str, "torch.Tensor"]) -> None:
        self.taken.copy_(state["taken"])

    def placed_state(self) -> dict[str, "Chunk"]:
        """Each slot of each parameter as a tensor of the parameter's shape (slot j: `slots.j.NAME`)."""
        return {f"slots.{j}.{name}": self.chunk(name, slots[j]) for name, slots in self.slots.items() for j in range(self.k)}


def averaging_callbacks(config: "AveragingConfig", plan: TrainingPlan, total_steps: int, interval: int) -> list[WeightAverage]:
    """The averages the run's settings ask for (none by default), checked against the plan (made after the
    strategy distributed it: under FSDP they keep this process's shards)."""
    wanted = [flag for flag, value in (("--ema-decay", config.ema_decay), ("--lawa-k", config.lawa_k)) if value is not None]
    if not wanted:
        return []
    if any(type(callback).export is not TrainingCallback.export for callback in plan.callbacks):
        raise InputError(f"{wanted[0]}: weight averaging needs a method that trains the model's own weights "
                         f"(this plan exports another model: {plan.summary or 'an adapter'})")
    callbacks: list[WeightAverage] = []
    if config.ema_decay is not None:
        callbacks.append(EMA(plan, config.ema_decay))
    if config.lawa_k is not None:
        callbacks.append(LAWA(plan, config.lawa_k, config.lawa_interval or max(1, interval), total_steps))
    return callbacks


def save_beside(model: "torch.nn.Module", state: Optional[dict], final_tmp: Path, target: Path, averages: dict[str, "torch.Tensor"],
                title: str) -> None:
    """Write `model` with `averages` in place of its tensors of those names (and of the names tied to them) to
    `target`, with the tokenizer and other files final/ has (copied from its partial directory). `state`: the
    tensors final/ was written from (the gathered weights of a sharded model); None: the model's own."""
    import shutil

    from adaptkit.io.atomic import atomic_dir
    from adaptkit.io.model_card import CardInfo, write_model_card
    from adaptkit.io.models import save_model

    state = dict(state) if state is not None else model.state_dict()
    names: dict[int, list[str]] = {}  # the names of each parameter object (tied ones have several)
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    aliases = {name: group for group in names.values() for name in group}
    for name, average in averages.items():
        for key in aliases[name]:
            if key in state:
                state[key] = average.to(state[key].dtype)
    with atomic_dir(target, overwrite=True) as tmp:
        for file in final_tmp.iterdir():
            if file.is_file() and not file.name.startswith("model") and file.name != "README.md":
                shutil.copy2(file, tmp / file.name)
        save_model(model, None, tmp, state)
        write_model_card(tmp, CardInfo(title=f"{target.parent.name}/{target.name}", method="weight averaging", relation="finetune",
                                       summary=f"The {title} of this run's training; the last weights are in final/."))
