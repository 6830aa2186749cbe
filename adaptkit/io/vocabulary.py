"""A model directory's tokenizer vocabulary: token string -> id, read without loading the model.

`tokenizer.json` (every fast tokenizer) is read with the `tokenizers` library, added tokens
included; a directory with only a slow tokenizer (sentencepiece `tokenizer.model`, `vocab.json`)
is read through transformers. `None` when the directory holds no tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

from adaptkit.errors import InputError, first_line
from adaptkit.io.models import TOKENIZER_FILES


def has_tokenizer(directory: Path) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def read_vocabulary(directory: Path, flag: str) -> dict[str, int] | None:
    """{token string: id} of the tokenizer in `directory` (added tokens included), None without one."""
    directory = Path(directory)
    if not has_tokenizer(directory):
        return None
    try:
        if (directory / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab(with_added_tokens=True)
        from transformers import AutoTokenizer

        return dict(AutoTokenizer.from_pretrained(str(directory)).get_vocab())
    except Exception as exc:  # tokenizers raises its own Exception type; transformers OSError / ValueError ...
        raise InputError(f"{flag}: the tokenizer in '{directory}' cannot be loaded ({first_line(exc)})") from None


def first_conflict(ours: dict[str, int], theirs: dict[str, int]) -> tuple[int, str, str] | None:
    """The smallest id that both vocabularies use for different tokens: (id, our token, their token)."""
    by_id = {index: token for token, index in theirs.items()}
    conflicts = sorted((index, token, by_id[index]) for token, index in ours.items() if index in by_id and by_id[index] != token)
    return conflicts[0] if conflicts else None
