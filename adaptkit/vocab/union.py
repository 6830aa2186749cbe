"""The union of several BPE tokenizers: the first one, extended by the others' tokens and merges.

The first tokenizer is kept whole (its ids, merges, special tokens and chat template); every
vocabulary entry of the others that it lacks is appended, in input order and, within an input,
in id order, with the merges that build it (those whose result is an appended token), after all
of the first tokenizer's merges, as `vocab extend` appends learned tokens. A text is therefore
first segmented exactly as the first tokenizer does and then merged further: it never takes
more tokens than under the first tokenizer. The others' added (special) tokens that the first
lacks are added last, with their settings. All tokenizers must be BPE of one kind (byte-level,
or with byte fallback), since their vocabulary strings must mean the same bytes. Works on the
`tokenizer.json` files with the `tokenizers` library only (no transformers import).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from adaptkit.errors import InputError
from adaptkit.vocab import tokenizer as tok

COMPANION_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "generation_config.json")


def read_spec(directory: Path, flag: str) -> dict:
    """A directory's parsed tokenizer.json (InputError naming `flag` when missing or not JSON)."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{flag}: '{directory}' has no tokenizer.json; a union needs fast (tokenizer.json) tokenizers")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"{flag}: '{path}' is not valid JSON") from None


def spec_vocabulary(spec: dict) -> dict[str, int]:
    """A parsed BPE tokenizer.json's token string -> id, added tokens included (a new dict)."""
    return {**spec["model"]["vocab"], **{entry["content"]: entry["id"] for entry in spec.get("added_tokens") or []}}


def _merges(spec: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges") or []]


def union_tokenizer(first: tuple[str, Path, dict], others: list[tuple[str, Path, dict]], directory: Path) -> dict[str, int]:
    """Write the union of the tokenizers `first` and `others` ([(flag, dir, parsed tokenizer.json)]) into
    `directory`; returns its vocabulary (token string -> id, added tokens included). `first`'s spec is changed."""
    spec = first[2]
    kind = tok.tokenizer_kind(spec, first[0])
    model = spec["model"]
    known = set(model["vocab"]) | {entry["content"] for entry in spec.get("added_tokens") or []}
    merges, known_merges = list(model.get("merges") or []), set(_merges(spec))
    string_merges = bool(merges) and isinstance(merges[0], str)
    next_id = tok.next_free_id(spec)
    new_tokens: list[str] = []
    added: list[dict] = []
    for flag, _, other in others:
        if tok.tokenizer_kind(other, flag) != kind:
            raise InputError(f"{flag}: a '{tok.tokenizer_kind(other, flag)}' tokenizer cannot join a union with the '{kind}' tokenizer of {first[0]}")
        their_added = {entry["content"]: entry for entry in other.get("added_tokens") or []}
        fresh = [t for t, _ in sorted(other["model"]["vocab"].items(), key=lambda item: item[1]) if t not in known and t not in their_added]
        new_tokens += fresh
        known.update(fresh)
        fresh_set = set(fresh)
        for pair in _merges(other):
            if pair not in known_merges and "".join(pair) in fresh_set:
                known_merges.add(pair)
                merges.append(" ".join(pair) if string_merges else list(pair))
        for content, entry in their_added.items():
            if content not in known:
                known.add(content)
                added.append(dict(entry))
    for token in new_tokens:
        model["vocab"][token] = next_id
        next_id += 1
    model["merges"] = merges
    for entry in added:
        entry["id"] = next_id
        next_id += 1
    spec["added_tokens"] = list(spec.get("added_tokens") or []) + added
    (Path(directory) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    _companions(Path(first[1]), Path(directory), added)
    return spec_vocabulary(spec)


def _companions(source: Path, directory: Path, added: list[dict]) -> None:
    """The first tokenizer's other files; its tokenizer_config.json also lists the added tokens."""
    for name in COMPANION_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, directory / name)
    config_path = directory / "tokenizer_config.json"
    if added and config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config.get("added_tokens_decoder"), dict):
            for entry in added:
                config["added_tokens_decoder"][str(entry["id"])] = {k: v for k, v in entry.items() if k != "id"}
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
