"""Model cards: the `README.md` of every model adaptkit writes, in the Hugging Face Hub's format.

One home for the format (https://huggingface.co/docs/hub/model-cards): YAML metadata
(`base_model`, `base_model_relation`, `language`, `datasets`, `library_name`, `tags`)
rendered by `huggingface_hub.ModelCardData`, then what was done: method, data and tokens,
hyperparameters and evaluation results. The writers (train's `final/`, merge and
instruct-vector outputs, `vocab extend`) describe their run as a `CardInfo`; this module
turns it into the card. Only Hub ids go into `base_model` and `datasets` (the Hub refuses
local paths there); local inputs are named in the text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

CARD_FILE = "README.md"
RELATIONS = ("finetune", "merge", "adapter", "quantized")
_CACHE_DIR = re.compile(r"^(models|datasets)--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")


@dataclass
class CardInfo:
    """What a writer knows about the model it wrote."""

    title: str
    method: str
    relation: str  # one of RELATIONS
    summary: str  # one paragraph: what was done
    bases: list[str] = field(default_factory=list)  # model locations (Hub ids or local paths)
    data: list[str] = field(default_factory=list)  # data locations (Hub ids or local paths)
    languages: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # "tokens": 1234, "trainable parameters": ...
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)  # evaluation rows: {"step":..., "name": value}
    reference: str = ""
    command: str = ""

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"base_model_relation must be one of {', '.join(RELATIONS)}, got '{self.relation}'")


def hub_id(location: str, kind: str = "models") -> Optional[str]:
    """The Hub repository id `location` names: itself when it is an id (and no local path), the id
    of a Hub cache snapshot (`.../models--owner--name/snapshots/...`) or of a `hub:ID[:CONFIG][@SPLIT]`
    data source, else None."""
    if kind == "datasets" and location.startswith("hub:"):  # a streamed Hub dataset: hub:ID[:CONFIG][@SPLIT]
        location = location[4:].split("@")[0].split(":")[0]
    path = Path(location)
    if path.exists():
        for part in path.resolve().parts:
            match = _CACHE_DIR.match(part)
            if match and match.group(1) == kind:
                return f"{match['owner']}/{match['name']}"
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if location.count("/") > 1 or location.startswith((".", "/", "~")) or Path(location).suffix in (".gguf", ".txt", ".jsonl", ".json"):
        return None
    try:
        validate_repo_id(location)
    except HFValidationError:
        return None
    return location


def card_languages(directory: str | Path) -> list[str]:
    """The `language` metadata of the model card in a local model directory (none when it has no card)."""
    card = Path(directory) / CARD_FILE
    if not card.is_file():
        return []
    from huggingface_hub import ModelCard

    try:
        language = ModelCard.load(card).data.language
    except Exception:  # a README that is no model card: nothing known
        return []
    return [language] if isinstance(language, str) else list(language or [])


def merged_languages(sources: Sequence[str | Path], extra: Sequence[str] = ()) -> list[str]:
    """Explicit codes first, then those of the input models' cards, each once."""
    seen: list[str] = []
    for code in [*extra, *(c for s in sources for c in card_languages(s))]:
        if code not in seen:
            seen.append(code)
    return seen


def render(info: CardInfo) -> str:
    """The model card's text: YAML front matter, then the description."""
    from huggingface_hub import ModelCardData

    bases = [b for b in (hub_id(x) for x in info.bases) if b]
    datasets = [d for d in (hub_id(x, "datasets") for x in info.data) if d]
    data = ModelCardData(
        base_model=(bases[0] if len(bases) == 1 else bases) or None,
        base_model_relation=info.relation if bases else None,
        language=info.languages or None,
        datasets=datasets or None,
        library_name="transformers",
        tags=["adaptkit", info.method],
        pipeline_tag="text-generation",
    )
    lines = ["---", data.to_yaml(), "---", "", f"# {info.title}", "", info.summary, ""]
    lines += _inputs_section(info) + _facts_section(info) + _results_section(info)
    lines += ["", "Made with [adaptkit](https://github.com/adaptkit/adaptkit)" + (f": `{info.command}`" if info.command else "") + ".", ""]
    return "\n".join(lines)


def _inputs_section(info: CardInfo) -> list[str]:
    lines = ["## What was done", "", f"- method: `{info.method}`" + (f" ({info.reference})" if info.reference else "")]
    lines += [f"- base model: `{b}`" for b in info.bases]
    lines += [f"- data: `{d}`" for d in info.data]
    if info.languages:
        lines.append(f"- language: {', '.join(info.languages)}")
    return lines


def _facts_section(info: CardInfo) -> list[str]:
    lines = [f"- {name}: {_value(value)}" for name, value in info.facts.items()]
    if info.hyperparameters:
        lines += ["", "## Hyperparameters", "", "| name | value |", "| --- | --- |"]
        lines += [f"| {name} | {_value(value)} |" for name, value in info.hyperparameters.items()]
    return lines


def _results_section(info: CardInfo) -> list[str]:
    if not info.results:
        return []
    columns = list(dict.fromkeys(key for row in info.results for key in row))
    lines = ["", "## Evaluation results", "", "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_value(row.get(c, "")) for c in columns) + " |" for row in info.results]
    return lines


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, sort_keys=True)}`"
    return str(value).replace("|", "\\|")


def write_model_card(directory: Path, info: CardInfo) -> Path:
    """Write `directory/README.md` (the directory is a model output being assembled)."""
    from adaptkit.io.atomic import write_text_atomic

    path = Path(directory) / CARD_FILE
    write_text_atomic(path, render(info))
    return path
