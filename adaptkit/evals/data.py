"""Reading evaluation inputs: documents (via `adaptkit.data.corpus`) and JSONL records with several fields.

Every problem is an InputError naming the flag, the file and, for JSONL, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit.errors import InputError


def read_jsonl(path: Path, flag: str, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Records of a JSONL file (read by adaptkit.data's one reader); each must be an object holding
    the `required` string fields."""
    from adaptkit.data.corpus import iter_records

    path = Path(path)
    _check_file(path, flag)
    rows: list[dict[str, Any]] = []
    for number, row in iter_records(path, "jsonl", flag):
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


def read_eval_items(path: Path, flag: str, text_field: str = "text") -> list:
    """What a perplexity set holds: chat conversations (a JSONL file whose records have `messages`,
    a list of {role, content} strings) or else documents (`read_documents`)."""
    from adaptkit.data.corpus import detect_format, iter_records

    path = Path(path)
    if not path.exists() or path.is_dir() or detect_format(path) != "jsonl":
        return read_documents(path, flag, text_field)
    first = next(iter_records(path, "jsonl", flag), None)
    if first is None or not (isinstance(first[1], dict) and "messages" in first[1]):
        return read_documents(path, flag, text_field)
    return [_messages(record, path, number, flag) for number, record in iter_records(path, "jsonl", flag)]


def _messages(record: Any, path: Path, number: int, flag: str) -> list[dict[str, str]]:
    """The `messages` of one chat record, checked: a list of {role, content} strings with an assistant turn."""
    messages = record.get("messages") if isinstance(record, dict) else None
    where = f"{flag}: {path} line {number}"
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where} has no 'messages' list (expected chat records: {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}})")
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
            raise InputError(f"{where}: each message must be an object with 'role' and 'content' strings")
    if not any(m["role"] == "assistant" for m in messages):
        raise InputError(f"{where} has no assistant turn to score")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_file(path: Path, flag: str) -> None:
    if not path.is_file():
        raise InputError(f"{flag}: '{path}' is not a readable file")
