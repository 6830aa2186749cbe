"""Reading evaluation inputs: documents (via `adaptkit.data.corpus`) and JSONL records with several fields.

Every problem is an InputError naming the flag, the file and, for JSONL, the line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptkit.errors import InputError


def read_jsonl(path: Path, flag: str, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Records of a JSONL file; each must be an object holding the `required` string fields."""
    path = Path(path)
    _check_file(path, flag)
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{flag}: {path} line {number} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{flag}: {path} line {number} must be a JSON object, not {type(row).__name__}")
            for field in required:
                value = row.get(field)
                if not isinstance(value, str):
                    got = "missing" if field not in row else f"a {type(value).__name__}"
                    raise InputError(f"{flag}: {path} line {number} has no text field '{field}' ({got}; expected a string)")
            rows.append(row)
    if not rows:
        raise InputError(f"{flag}: {path} is empty; expected at least one JSON record")
    return rows


def read_documents(path: Path, flag: str, text_field: str = "text") -> list[str]:
    """Documents of a text file (one per line), a JSONL file or a saved HF dataset; refuses an empty one."""
    from adaptkit.data.corpus import iter_documents

    documents = list(iter_documents(Path(path), text_field, flag=flag))
    if not documents:
        raise InputError(f"{flag}: '{path}' is empty; expected text, one document per line (or JSONL records)")
    return documents


def _check_file(path: Path, flag: str) -> None:
    if not path.is_file():
        raise InputError(f"{flag}: '{path}' is not a readable file")
