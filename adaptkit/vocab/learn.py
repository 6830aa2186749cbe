"""New BPE tokens learned on top of an old tokenizer's segmentation of target-language text.

New merges go after all existing ones, so the extended tokenizer first segments a word exactly
as the old one did (old merges have priority) and then applies the new merges. The merges are
therefore learned on the old segmentation: every unit (an old token, or a character a
byte-fallback tokenizer lacked) becomes one private-use character, and `tokenizers`' BPE
trainer learns merges over those characters, which map back to merges of vocabulary strings.
For byte fallback, characters missing from the vocabulary are added first (most frequent
first): each replaces two to four byte tokens, and merges need them as symbols.

`--add N` is exact: a merge whose result is already a token (an old one, or a new one reached
by another split) is kept, so longer tokens built on it stay reachable, but is not counted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from adaptkit.errors import InputError

# Private-use code points: each unit of the old segmentation becomes one of these characters.
_PRIVATE_RANGES = ((0xE000, 0xF900), (0xF0000, 0xFFFFE), (0x100000, 0x10FFFE))


@dataclass
class Learned:
    """New vocabulary strings (in id order) and the merges to append after the old ones."""

    tokens: list[str] = field(default_factory=list)
    merges: list[tuple[str, str]] = field(default_factory=list)
    reused: int = 0  # kept merges whose result was already a token


def _private_char(index: int) -> str:
    for start, end in _PRIVATE_RANGES:
        if index < end - start:
            return chr(start + index)
        index -= end - start
    raise RuntimeError("more distinct units than private-use code points")


def new_characters(words: Counter, vocab: dict[str, int], count: int, min_frequency: int) -> list[str]:
    """Characters that the vocabulary lacks (byte fallback), most frequent first, at most `count`."""
    freq: Counter = Counter()
    for word, n in words.items():
        for unit in word:
            if unit not in vocab:
                freq[unit] += n
    ranked = sorted((c for c, n in freq.items() if n >= min_frequency), key=lambda c: (-freq[c], c))
    return ranked[:count]


def _runs(word: tuple[str, ...], known: set[str]) -> Iterator[tuple[str, ...]]:
    """Maximal runs of known units (an unknown unit can take part in no merge)."""
    run: list[str] = []
    for unit in word:
        if unit in known:
            run.append(unit)
            continue
        if len(run) > 1:
            yield tuple(run)
        run = []
    if len(run) > 1:
        yield tuple(run)


def train_merges(words: Counter, known: set[str], merges: int, min_frequency: int) -> tuple[list[tuple[str, str]], bool]:
    """(merges of unit strings in rank order, whether the text ran out of pairs before `merges`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet: dict[str, str] = {}
    encoded: Counter = Counter()
    for word, n in words.items():
        for run in _runs(word, known):
            encoded["".join(alphabet.setdefault(u, _private_char(len(alphabet))) for u in run)] += n
    if not encoded:
        return [], True
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + merges, min_frequency=min_frequency, show_progress=False)
    tokenizer.train_from_iterator(_repeat(encoded), trainer=trainer)
    unit_of = {char: unit for unit, char in alphabet.items()}
    learned = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned]
    decoded = [("".join(unit_of[c] for c in a), "".join(unit_of[c] for c in b)) for a, b in pairs]
    return decoded, len(decoded) < merges


def _repeat(encoded: Counter, chunk: int = 4096) -> Iterator[str]:
    """Each encoded word as often as it occurs, in space-separated chunks."""
    for word, n in encoded.items():
        while n > 0:
            k = min(n, chunk)
            yield " ".join([word] * k)
            n -= k


def select(merges: list[tuple[str, str]], vocab: dict[str, int], chars: list[str], count: int, skip: set[str], old_merges: set) -> Learned:
    """Take merges in rank order until `count` new tokens (chars included) exist."""
    learned = Learned(tokens=list(chars))
    current = set(vocab) | set(chars)
    pairs = set(old_merges)
    for left, right in merges:
        if len(learned.tokens) >= count:
            break
        merged = left + right
        if (left, right) in pairs or left not in current or right not in current or merged in skip:
            continue
        pairs.add((left, right))
        learned.merges.append((left, right))
        if merged in current:
            learned.reused += 1
        else:
            learned.tokens.append(merged)
            current.add(merged)
    return learned


def learn(words: Counter, spec: dict, count: int, min_frequency: int, byte_fallback: bool) -> Learned:
    """Up to `count` new tokens for `words` (fewer when the text runs out of pairs)."""
    model = spec["model"]
    vocab = model["vocab"]
    old_merges = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []}
    skip = {t["content"] for t in spec.get("added_tokens") or [] if t["content"] not in vocab}
    chars = new_characters(words, vocab, count, min_frequency) if byte_fallback else []
    known = set(vocab) | set(chars)
    budget = count - len(chars)
    request = budget + budget // 4 + 64
    while True:
        merges, exhausted = train_merges(words, known, request, min_frequency) if budget else ([], True)
        learned = select(merges, vocab, chars, count, skip, old_merges)
        if len(learned.tokens) >= count or exhausted:
            return learned
        request *= 2


def learn_tokens(words: Counter, spec: dict, count: int, min_frequency: int, byte_fallback: bool) -> Learned:
    """Exactly `count` new tokens for `words`, or an InputError saying how many the text supports."""
    learned = learn(words, spec, count, min_frequency, byte_fallback)
    if len(learned.tokens) < count:
        raise InputError(
            f"--add: the target text supports only {len(learned.tokens)} new tokens with --min-frequency {min_frequency}, "
            f"not {count}; lower --add or --min-frequency, or give more --data"
        )
    return learned
