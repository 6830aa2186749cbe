"""The embedded default: multilingual text, a tokenizer and tiny models made offline.

Text comes from the Universal Declaration of Human Rights files that the
`notofonttools` package ships (400+ languages). A small byte-level BPE tokenizer is
trained on it with `tokenizers`, and tiny Llama / OLMo-2 / Qwen2 models are built from
configs. Used by `adaptkit quickstart`, the tests and the benchmarks; nothing here
touches the network.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.errors import InputError, MissingExtraError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

# ISO 639-1/3 codes users type -> UDHR file keys in notofonttools
UDHR_KEYS = {
    "en": "eng", "eng": "eng",
    "ha": "hau_NG", "hau": "hau_NG",
    "ig": "ibo", "ibo": "ibo",
    "am": "amh", "amh": "amh",
    "ky": "kir", "kir": "kir",
    "ne": "nep", "nep": "nep", "npi": "nep",
    "sw": "swh", "swh": "swh",
    "yo": "yor", "yor": "yor",
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def _udhr_dir() -> Path:
    try:
        dist = metadata.distribution("notofonttools")
    except metadata.PackageNotFoundError:
        raise MissingExtraError("notofonttools", "demo", "the embedded UDHR corpus") from None
    for file in dist.files or []:
        if str(file).endswith("udhr_eng.xml"):
            return Path(dist.locate_file(file)).parent
    raise MissingExtraError("notofonttools", "demo", "the embedded UDHR corpus")


def udhr_languages() -> list[str]:
    return sorted(p.stem[len("udhr_"):] for p in _udhr_dir().glob("udhr_*.xml"))


@lru_cache(maxsize=None)
def udhr_paragraphs(language: str) -> tuple[str, ...]:
    """The titles and paragraphs of the UDHR in `language` (ISO code or UDHR key), in order."""
    key = UDHR_KEYS.get(language, language)
    path = _udhr_dir() / f"udhr_{key}.xml"
    if not path.is_file():
        from adaptkit.errors import did_you_mean

        raise InputError(
            f"--target-lang: no UDHR text for '{language}'{did_you_mean(key, udhr_languages())} "
            f"(known codes include: {', '.join(sorted(set(UDHR_KEYS)))})"
        )
    root = ET.parse(path).getroot()
    texts = []
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag in ("title", "para") and element.text and element.text.strip():
            texts.append(re.sub(r"\s+", " ", "".join(element.itertext())).strip())
    return tuple(texts)


def split_corpus(language: str, held_out: float = 0.2) -> tuple[list[str], list[str]]:
    """(train, held-out) paragraphs: every k-th paragraph is held out, so both cover the text."""
    paragraphs = list(udhr_paragraphs(language))
    every = max(2, round(1 / held_out))
    train = [p for i, p in enumerate(paragraphs) if i % every != every - 1]
    test = [p for i, p in enumerate(paragraphs) if i % every == every - 1]
    return train, test


def write_lines(lines: list[str], path: Path) -> Path:
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> "PreTrainedTokenizerFast":
    """A byte-level BPE tokenizer trained on `texts`, with <s>, </s>, <pad>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def tiny_config(architecture: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, **overrides: Any):
    """A small config of a transformers architecture with special-token ids that fit the vocabulary."""
    from transformers import LlamaConfig, Olmo2Config, Qwen2Config

    classes = {"llama": LlamaConfig, "olmo2": Olmo2Config, "qwen2": Qwen2Config}
    if architecture not in classes:
        raise InputError(f"--arch: unknown architecture '{architecture}' (choose from {', '.join(classes)})")
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2 + hidden // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
        use_cache=False,
    )
    settings.update(overrides)
    return classes[architecture](**settings)


def tiny_model(architecture: str, vocab_size: int, seed: int = 0, **config_overrides: Any) -> "PreTrainedModel":
    """A randomly initialised tiny causal LM (deterministic for a seed)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(architecture, vocab_size, **config_overrides)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
