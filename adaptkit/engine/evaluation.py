"""Evaluation during training: perplexity and bits per byte of eval sets at step 0, every
`--eval-steps` steps and at the end, as rows of metrics.jsonl and the figure curves.png.

Eval sets are `--eval-data NAME=SPEC[:ROLE]` (ROLE `source`: forgetting, `target`: learning),
read by the `ppl` task's reader (text documents, or chat records with `messages` scored over
their assistant turns), and `--validation-fraction F`: F of the training blocks, chosen with a
seeded permutation and left out of training, as the set `validation` (role `train`). Each set
is scored by `adaptkit.evals.perplexity.score_documents`, the function `adaptkit evaluate`'s
`ppl` task uses (one implementation, the same accounting), on the training model itself in
fp32, eval mode and no_grad; with several processes each scores a share of the windows and
the sums are reduced. Evaluation draws no random numbers (the RNG state is kept as it was), so
a resumed run writes the same eval rows as an uninterrupted one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from adaptkit.errors import InputError

if TYPE_CHECKING:
    from adaptkit.engine.config import TrainConfig
    from adaptkit.engine.metrics import MetricsLog
    from adaptkit.evals.perplexity import EncodedDocuments

ROLES = ("source", "target")
VALIDATION = "validation"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_VALIDATION_SEED = 7_919  # the held-out blocks' permutation: seeded by (seed, this)


@dataclass(frozen=True)
class EvalSpec:
    name: str
    spec: str
    role: Optional[str] = None


@dataclass
class EvalSet:
    name: str
    role: Optional[str]
    documents: "EncodedDocuments"


def parse_eval_data(values: Sequence[str], validation: bool = False, flag: str = "--eval-data") -> list[EvalSpec]:
    """NAME=SPEC[:ROLE] values (NAME defaults to the file's stem); names unique, `validation` reserved
    when --validation-fraction is given."""
    specs = []
    for value in values:
        name, sep, spec = value.partition("=")
        if not sep or not _NAME.match(name):
            name, spec = "", value
        head, colon, tail = spec.rpartition(":")
        role = tail if colon and tail in ROLES else None
        if colon and role is None and Path(head).exists() and not Path(spec).exists():  # FILE:TYPO, a misspelt role
            raise InputError(f"{flag}: '{value}': unknown role '{tail}' (roles: {', '.join(ROLES)}; NAME=SPEC[:ROLE])")
        spec = head if role else spec
        if not spec:
            raise InputError(f"{flag}: '{value}' names no data (expected NAME=SPEC[:ROLE], ROLE source or target)")
        specs.append(EvalSpec(name or Path(spec).stem or spec, spec, role))
    names = [s.name for s in specs] + ([VALIDATION] if validation else [])
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        why = " (the name of the --validation-fraction set)" if duplicate == VALIDATION and validation else ""
        raise InputError(f"{flag}: duplicate eval set name '{duplicate}'{why}; give each set its own NAME=")
    return specs


def check_eval_config(config: "TrainConfig") -> None:
    """Bad eval settings are input errors before anything runs."""
    if config.eval.steps and not config.eval.data and not config.data.validation_fraction:
        raise InputError("--eval-steps: needs an eval set (--eval-data NAME=SPEC[:ROLE] or --validation-fraction F)")
    parse_eval_data(config.eval.data, bool(config.data.validation_fraction))


class BlockSubset:
    """Some rows of a block reader (a block tensor or a token store's blocks), as a block reader."""

    def __init__(self, blocks: Any, rows: torch.Tensor):
        self.blocks, self.rows = blocks, rows

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.rows.numel()), int(self.blocks.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def __getitem__(self, key: Any) -> torch.Tensor:
        return self.blocks[self.rows[key]]

    def tensor(self) -> torch.Tensor:
        return self.blocks[self.rows]


def split_validation(blocks: Any, fraction: float, seed: int) -> tuple[Any, Optional[BlockSubset]]:
    """(training blocks, held-out blocks): round(fraction * N) blocks (at least one) chosen by a
    seeded permutation; the rest, in their order, train. Fraction 0 keeps every block."""
    if not fraction:
        return blocks, None
    n = int(blocks.shape[0])
    held = max(1, round(fraction * n))
    if held >= n:
        raise InputError(f"--validation-fraction: {fraction} of {n} training blocks leaves none to train on; give more data or a smaller fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + _VALIDATION_SEED))
    return BlockSubset(blocks, order[held:].sort().values), BlockSubset(blocks, order[:held].sort().values)


def hold_out_validation(sources: dict[str, Any], blocks: Any, fraction: float, seed: int) -> tuple[dict[str, Any], Any, Optional[BlockSubset]]:
    """(training sources, their blocks together, held-out blocks): each source keeps `fraction` of its
    blocks out of training (split_validation, seeded), so a mixture holds out of every source alike.
    `blocks` holds the sources' blocks one after the other, as the loop's set-up builds it."""
    if not fraction:
        return sources, blocks, None
    kept, held, trained, offset = {}, [], [], 0
    for name, source_blocks in sources.items():
        train, out = split_validation(source_blocks, fraction, seed)
        kept[name] = train
        trained.append(train.rows + offset)
        held.append(out.rows + offset)
        offset += int(source_blocks.shape[0])
    return kept, BlockSubset(blocks, torch.cat(trained)), BlockSubset(blocks, torch.cat(held))


def block_documents(blocks: BlockSubset, tokenizer: Any) -> "EncodedDocuments":
    """Held-out blocks as documents: the prefix token, then the block; EOS separators are not
    scored; bytes are those of the decoded block (without the separators)."""
    from adaptkit.evals.perplexity import EncodedDocuments, prefix_token_id

    prefix, eos = prefix_token_id(tokenizer, "bos"), tokenizer.eos_token_id
    ids, counted, total = [], [], 0
    for block in blocks.tensor().tolist():
        ids.append([prefix] + block)
        counted.append([False] + [token != eos for token in block])
        total += len(tokenizer.decode([t for t in block if t != eos]).encode("utf-8"))
    return EncodedDocuments(ids, total, counted)


def load_eval_sets(config: "TrainConfig", tokenizer: Any, held_out: Optional[BlockSubset]) -> list[EvalSet]:
    """Every eval set read and tokenized (a missing, empty or malformed one is an input error)."""
    from adaptkit.evals.data import read_eval_items
    from adaptkit.evals.perplexity import encode_items

    sets = []
    for spec in parse_eval_data(config.eval.data, held_out is not None):
        flag = f"--eval-data {spec.name}"
        items = read_eval_items(Path(spec.spec), flag, config.eval.text_field)
        sets.append(EvalSet(spec.name, spec.role, encode_items(tokenizer, items, "bos", flag)))
    if held_out is not None:
        sets.append(EvalSet(VALIDATION, "train", block_documents(held_out, tokenizer)))
    return sets


def eval_due(step: int, every: Optional[int], last: int) -> bool:
    return step == 0 or step == last or bool(every and step % every == 0)


class Evaluator:
    """Scores the eval sets when due (step 0, every --eval-steps, the last step) and writes their rows."""

    def __init__(self, evals: list[EvalSet], config: "TrainConfig", steps: int, tokenizer: Any, accelerator: Any,
                 device: torch.device, log: Any, curves: Path):
        self.evals, self.settings, self.steps, self.accelerator, self.device, self.log = evals, config.eval, steps, accelerator, device, log
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.curves = curves

    def due(self, step: int) -> bool:
        return bool(self.evals) and eval_due(step, self.settings.steps, self.steps)

    def maybe_evaluate(self, model: torch.nn.Module, step: int, metrics: "MetricsLog") -> None:
        """When due: score every eval set, append the rows to metrics.jsonl and redraw curves.png;
        the time is kept out of tokens/s."""
        if not self.due(step):
            return
        with metrics.paused():
            rows = [{"step": step, **row} for row in self.score(model)]
            metrics.append(rows)
            if metrics.main:
                plot_curves(metrics.path, self.curves)
        self.log(f"eval at step {step}: " + ", ".join(f"{r['eval']} ppl {r['ppl']:.2f} ({r['bits_per_byte']:.3f} bits/byte)" for r in rows))

    def score(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """A row per eval set; the RNG state is left as it was."""
        from adaptkit.evals.perplexity import score_documents

        accelerator, device, settings = self.accelerator, self.device, self.settings
        process = (accelerator.process_index, accelerator.num_processes)
        reduce = lambda x: accelerator.reduce(x.to(device), reduction="sum").cpu()  # noqa: E731
        rows = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for s in self.evals:
                result = score_documents(model, s.documents, settings.block_size, None, settings.batch_size, self.pad, device, process, reduce)
                rows.append({"eval": s.name, "role": s.role, "ppl": result.ppl, "bits_per_byte": result.bits_per_byte,
                             "nll_per_token": result.nll_per_token, "tokens": result.tokens, "bytes": result.bytes})
        return rows


ROLE_LABELS = {"source": "source", "target": "target", "train": "held-out training data", None: "no role"}
ROLE_STYLES = {"source": ("-", "Blues"), "target": ("--", "Oranges"), "train": ("-.", "Greens"), None: (":", "Purples")}


def role_styles(names_roles: Sequence[tuple[str, Optional[str]]]) -> dict[str, tuple[str, Any]]:
    """(line style, colour) of each eval set: source sets solid blues, target sets dashed oranges,
    the validation set dash-dot green, sets without a role dotted purples."""
    import matplotlib

    styles = {}
    for role, (line, cmap) in ROLE_STYLES.items():
        names = [n for n, r in names_roles if r == role]
        for i, name in enumerate(names):
            styles[name] = (line, matplotlib.colormaps[cmap](0.55 + 0.4 * (i + 1) / (len(names) + 1)))
    return styles


def plot_curves(metrics: Path, path: Path) -> None:
    """Training loss (left) and each eval set's perplexity (right, log scale) over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptkit.io.atomic import atomic_file

    from adaptkit.engine.metrics import read_metrics

    training, evals = read_metrics(metrics)
    sets = list(dict.fromkeys((r["eval"], r.get("role")) for r in evals))
    styles = role_styles(sets)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    left.plot([r["step"] for r in training], [r["loss"] for r in training], color="black", marker="o", markersize=3)
    left.set(xlabel="step", ylabel="loss", title="training loss")
    for name, role in sets:
        points = [(r["step"], r["ppl"]) for r in evals if r["eval"] == name]
        line, colour = styles[name]
        right.plot(*zip(*points), line, marker="o", markersize=3, color=colour, label=f"{name} ({ROLE_LABELS.get(role, role)})")
    right.set(xlabel="step", ylabel="perplexity", title="held-out perplexity (source: forgetting, target: learning)")
    right.set_yscale("log")
    right.title.set_fontsize(9)
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_methods(runs: dict[str, Path], path: Path) -> None:
    """Several runs side by side (the quickstart's methods): one panel per eval set, the perplexity
    of each run over its steps; the panel title says the set's role (source: forgetting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptkit.io.atomic import atomic_file

    from adaptkit.engine.metrics import read_metrics

    evals = {name: read_metrics(metrics)[1] for name, metrics in runs.items()}
    sets = list(dict.fromkeys((r["eval"], r.get("role")) for rows in evals.values() for r in rows))
    if not sets:
        return
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6), squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    for ax, (name, role) in zip(axes[0], sets):
        for i, (run, rows) in enumerate(evals.items()):
            points = [(r["step"], r["ppl"]) for r in rows if r["eval"] == name]
            if points:
                ax.plot(*zip(*points), ROLE_STYLES.get(role, ROLE_STYLES[None])[0], marker="o", markersize=3, color=colours(i % 10), label=run)
        what = {"source": "forgetting", "target": "learning"}.get(role, ROLE_LABELS.get(role, role))
        ax.set(xlabel="step", ylabel="perplexity", title=f"{name} ({role or 'no role'}: {what})")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
