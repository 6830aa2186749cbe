"""How a tokenizer cuts a text: fertility, bytes per token, unknown and partial-character shares.

- tokens per word (fertility): tokens / words (Rust et al. 2021); words are separated by whitespace
  or the Ethiopic wordspace U+1361 (UDHR Amharic writes no spaces);
- bytes per token: UTF-8 bytes / tokens;
- unknown share: tokens that are the unknown token;
- byte share: tokens that spell no whole character on their own (a byte-fallback `<0xXX>` token,
  or a byte-level token holding part of a multi-byte character): they decode to U+FFFD alone.
Every text is tokenized on its own without special tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterator, Sequence


_WORD_BREAK = re.compile(r"[\s\u1361]+")


def count_words(text: str) -> int:
    return sum(1 for word in _WORD_BREAK.split(text) if word)


def _encode(texts: Sequence[str], tokenizer: Any, batch: int = 1000) -> Iterator[list[int]]:
    for start in range(0, len(texts), batch):
        yield from tokenizer(list(texts[start:start + batch]), add_special_tokens=False)["input_ids"]


def _partial_ids(tokenizer: Any, ids: set[int]) -> set[int]:
    partial = set()
    for token_id in ids:
        text = tokenizer.decode([token_id])
        if "\ufffd" in text and tokenizer.convert_ids_to_tokens(token_id) != "\ufffd":
            partial.add(token_id)
    return partial


def text_stats(texts: Sequence[str], tokenizer: Any) -> dict[str, Any]:
    """Counts and ratios of one text collection under `tokenizer`."""
    counts: Counter = Counter()
    for ids in _encode(texts, tokenizer):
        counts.update(ids)
    tokens = sum(counts.values())
    words = sum(count_words(text) for text in texts)
    size = sum(len(text.encode("utf-8")) for text in texts)
    unk = tokenizer.unk_token_id
    unknown = counts.get(unk, 0) if unk is not None else 0
    partial = sum(counts[i] for i in _partial_ids(tokenizer, set(counts)))
    return {
        "documents": len(texts),
        "words": words,
        "bytes": size,
        "tokens": tokens,
        "tokens_per_word": tokens / words if words else 0.0,
        "bytes_per_token": size / tokens if tokens else 0.0,
        "unknown_share": unknown / tokens if tokens else 0.0,
        "byte_share": partial / tokens if tokens else 0.0,
    }


def changed_share(texts: Sequence[str], old: Any, new: Any, batch: int = 1000) -> float:
    """Share of the old tokenizer's tokens that the new one does not produce at the same place
    (same id and character span); `old` and `new` are `tokenizers.Tokenizer` backends."""
    total = changed = 0
    for start in range(0, len(texts), batch):
        chunk = list(texts[start:start + batch])
        for before, after in zip(old.encode_batch(chunk, add_special_tokens=False), new.encode_batch(chunk, add_special_tokens=False)):
            old_tokens = Counter(zip(before.ids, before.offsets))
            kept = old_tokens & Counter(zip(after.ids, after.offsets))
            total += len(before.ids)
            changed += len(before.ids) - sum(kept.values())
    return changed / total if total else 0.0
