"""The union of several BPE tokenizers: the first one, extended by the others' tokens and merges.

The first tokenizer is kept whole (its ids, merges, special tokens and chat template); every
vocabulary entry of the others that it lacks is appended, in input order and, within an input,
in id order, with the merges that build it (those whose result is an appended token), after all
of the first tokenizer's merges, as `vocab extend` appends learned tokens (`write_tokenizer`).
A text is therefore first segmented exactly as the first tokenizer does and then merged further:
it never takes more tokens than under the first tokenizer. The others' added (special) tokens
that the first lacks are added last, with their settings. All tokenizers must be BPE of one kind
(byte-level, or with byte fallback), since their vocabulary strings must mean the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit.errors import InputError
from adaptkit.vocab import tokenizer as tok
from adaptkit.vocab.learn import Learned


def _merges(spec: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges") or []]


def union_tokenizer(first: Any, others: list[tuple[str, Any]], first_flag: str, directory: Path) -> Any:
    """Write the union of `first` and `others` ([(flag, tokenizer)]) into `directory`; returns it reloaded."""
    from tokenizers import AddedToken

    spec = tok.tokenizer_spec(first, first_flag)
    kind = tok.tokenizer_kind(spec, first_flag)
    vocab = dict(spec["model"]["vocab"])
    added = {entry["content"] for entry in spec.get("added_tokens") or []}
    known_merges = set(_merges(spec))
    learned = Learned()
    extra_added: list[Any] = []
    for flag, other in others:
        other_spec = tok.tokenizer_spec(other, flag)
        other_kind = tok.tokenizer_kind(other_spec, flag)
        if other_kind != kind:
            raise InputError(f"{flag}: a '{other_kind}' tokenizer cannot join a union with the '{kind}' tokenizer of {first_flag}")
        other_added = {entry["content"]: entry for entry in other_spec.get("added_tokens") or []}
        for token, _ in sorted(other_spec["model"]["vocab"].items(), key=lambda item: item[1]):
            if token not in vocab and token not in added and token not in other_added:
                vocab[token] = len(vocab)
                learned.tokens.append(token)
        new = set(learned.tokens)
        for pair in _merges(other_spec):
            if pair not in known_merges and "".join(pair) in new:
                known_merges.add(pair)
                learned.merges.append(pair)
        for content, entry in other_added.items():
            if content not in vocab and content not in added:
                added.add(content)
                extra_added.append(AddedToken(content, single_word=entry.get("single_word", False), lstrip=entry.get("lstrip", False),
                                              rstrip=entry.get("rstrip", False), normalized=entry.get("normalized", False), special=entry.get("special", False)))
    from adaptkit.vocab.extend import write_tokenizer

    union = write_tokenizer(first, learned, tok.next_free_id(spec), directory)
    if extra_added:
        union.add_tokens(extra_added)
        union.save_pretrained(directory)
    return union
