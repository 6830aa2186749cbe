"""The `adaptkit_vocab.json` file format (`vocab extend`): what was added to a model, so training can restrict to the new rows.

Fields: format, tokenizer_kind, old_vocab_size (embedding rows before), new_vocab_size (rows
after), new_token_ids, filler_ids (rows no token uses: padding), new_tokens (vocabulary strings),
merges_added, initializer (name, params, seed), min_frequency, data (files and sha256), and the
fertility report. Rows [old_vocab_size, new_vocab_size) are the extension. A transplant
(`vocab transplant`) writes the same format with its new tokens' ids (spread over the new
vocabulary) in new_token_ids and a `transplant` section (how each row was initialised).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from adaptkit.errors import InputError

VOCAB_RECORD = "adaptkit_vocab.json"
FORMAT = "adaptkit-vocab/1"


def write_record(directory: Path, record: dict[str, Any]) -> Path:
    path = Path(directory) / VOCAB_RECORD
    path.write_text(json.dumps({"format": FORMAT, **record}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_record(directory: Path, flag: str = "--model") -> dict[str, Any] | None:
    """The record of an extended model directory, or None when the model was not extended."""
    path = Path(directory) / VOCAB_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{flag}: '{path}' is not valid JSON") from None
    if record.get("format") != FORMAT or not {"old_vocab_size", "new_vocab_size"} <= set(record):
        raise InputError(f"{flag}: '{path}' is not an {FORMAT} record")
    return record


def new_rows(record: dict[str, Any]) -> list[int]:
    """The rows a record calls new: its new_token_ids and filler_ids (a transplant's are spread over the
    vocabulary), else the rows from old_vocab_size to new_vocab_size (an extension's)."""
    if isinstance(record.get("new_token_ids"), list):
        return sorted(int(i) for i in record["new_token_ids"] + list(record.get("filler_ids") or []))
    return list(range(int(record["old_vocab_size"]), int(record["new_vocab_size"])))


def copy_record(source: Path, target: Path) -> bool:
    """Give the model directory `target` the record of `source` (an output with `source`'s rows); False when it has none."""
    path = Path(source) / VOCAB_RECORD
    if not path.is_file():
        return False
    shutil.copyfile(path, Path(target) / VOCAB_RECORD)
    return True
