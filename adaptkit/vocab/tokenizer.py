"""A model's tokenizer as it is, its kind, and text segmented the way its BPE model segments it.

Supported kinds for extension: byte-level BPE (GPT-2 / Llama 3 / Qwen2 / SmolLM2 / OLMo-2) and
BPE with byte fallback (sentencepiece conversions such as Llama 2 and Mistral). A `Segmenter`
runs the tokenizer's own normalizer, pre-tokenizer and BPE model, and turns each pre-token into
*words*: lists of units that new merges may join. A unit is an old token's vocabulary string, or,
for byte fallback, the character that a run of `<0xXX>` byte tokens spells (a character the old
vocabulary lacks). Units that must never merge (the unknown token, bytes that spell no character)
split a word.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from adaptkit.errors import InputError, first_line

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from adaptkit.io.models import ModelSource

BYTE_LEVEL = "byte-level BPE"
BYTE_FALLBACK = "BPE with byte fallback"
SUPPORTED = (BYTE_LEVEL, BYTE_FALLBACK)
METASPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def load_tokenizer_as_is(source: "ModelSource") -> Any:
    """The tokenizer exactly as saved (no pad token filled in): special tokens and chat template stay."""
    from transformers import AutoTokenizer

    from adaptkit.io.models import quiet_transformers

    quiet_transformers()
    name, kwargs = source.load_args
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError... for a missing tokenizer
        raise InputError(f"{source.flag}: '{source.location}' has no loadable tokenizer ({first_line(exc)})") from None
    if tokenizer is None or isinstance(tokenizer, bool):
        raise InputError(f"{source.flag}: '{source.location}' has no tokenizer")
    return tokenizer


def tokenizer_spec(tokenizer: Any, flag: str = "--model") -> dict:
    """The fast tokenizer's JSON description (a slow-only tokenizer is refused, naming its class)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"{flag}: tokenizer kind '{type(tokenizer).__name__}' (no fast tokenizer) is not supported; supported: {', '.join(SUPPORTED)}")
    return json.loads(backend.to_str())


def _has_component(component: Any, kind: str) -> bool:
    """Whether a normalizer / pre-tokenizer description contains a component of type `kind`."""
    if isinstance(component, dict):
        return component.get("type") == kind or any(_has_component(v, kind) for v in component.values())
    if isinstance(component, list):
        return any(_has_component(v, kind) for v in component)
    return False


def tokenizer_kind(spec: dict, flag: str = "--model") -> str:
    """BYTE_LEVEL or BYTE_FALLBACK; any other kind is an InputError naming it."""
    model = spec.get("model") or {}
    model_type = model.get("type") or ("BPE" if "merges" in model else "unknown")
    supported = f"supported: {', '.join(SUPPORTED)}"
    if model_type != "BPE":
        raise InputError(f"{flag}: tokenizer kind '{model_type}' is not supported for vocabulary extension; {supported}")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise InputError(f"{flag}: tokenizer kind 'BPE with subword prefix/suffix' is not supported for vocabulary extension; {supported}")
    if _has_component(spec.get("pre_tokenizer"), "ByteLevel"):
        return BYTE_LEVEL
    if model.get("byte_fallback"):
        return BYTE_FALLBACK
    raise InputError(f"{flag}: tokenizer kind 'BPE without byte-level or byte fallback' is not supported for vocabulary extension; {supported}")


def next_free_id(spec: dict) -> int:
    """One past the largest id of the BPE vocabulary and the added tokens."""
    ids = list(spec["model"]["vocab"].values()) + [t["id"] for t in spec.get("added_tokens") or []]
    return max(ids) + 1


@dataclass
class Segmenter:
    """Text -> words of units, as the tokenizer's normalizer, pre-tokenizer and BPE model see it."""

    backend: "Tokenizer"
    kind: str

    def pieces(self, text: str) -> list[str]:
        normalizer, pre_tokenizer = self.backend.normalizer, self.backend.pre_tokenizer
        text = normalizer.normalize_str(text) if normalizer is not None else text
        if pre_tokenizer is None:
            return [text]
        return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]

    def words(self, piece: str) -> list[list[str]]:
        """The units of one pre-token, split where merging is impossible (and, for byte fallback,
        before each token that starts with the metaspace, as sentencepiece pieces do)."""
        unk = self.backend.model.unk_token if hasattr(self.backend.model, "unk_token") else None
        words: list[list[str]] = [[]]
        pending = bytearray()
        for token in self.backend.model.tokenize(piece):
            match = _BYTE_TOKEN.match(token.value) if self.kind == BYTE_FALLBACK else None
            if match:
                pending.append(int(match.group(1), 16))
                continue
            self._flush(pending, words)
            if token.value == unk:
                words.append([])
                continue
            if self.kind == BYTE_FALLBACK and token.value.startswith(METASPACE):
                words.append([])
            words[-1].append(token.value)
        self._flush(pending, words)
        return [w for w in words if w]

    @staticmethod
    def _flush(pending: bytearray, words: list[list[str]]) -> None:
        """Characters spelled by a run of byte tokens become units; undecodable bytes split the word."""
        if not pending:
            return
        text = bytes(pending).decode("utf-8", errors="replace")
        for char in text:
            if char == "\ufffd":
                words.append([])
            else:
                words[-1].append(char)
        pending.clear()


def word_counts(texts: Iterable[str], segmenter: Segmenter) -> Counter:
    """How often each word (a tuple of units) occurs in `texts`."""
    pieces = Counter(piece for text in texts for piece in segmenter.pieces(text))
    words: Counter = Counter()
    for piece, count in pieces.items():
        for word in segmenter.words(piece):
            words[tuple(word)] += count
    return words


def old_pieces(backend: "Tokenizer", tokens: list[str]) -> list[list[int]]:
    """The old ids each new vocabulary string splits into under the old BPE model (FVT)."""
    return [[t.id for t in backend.model.tokenize(token)] for token in tokens]
