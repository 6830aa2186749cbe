"""Calibration sets: source-side token blocks that scorers (Wanda, SparseGPT, Fisher) consume.

SSU scores parameter importance on *source* data, by default instruction data of the
kind the model was tuned on (the paper samples 2000 raw examples of the tulu-3 SFT
mixture and packs them into 500 blocks of 2048 tokens, about 1M tokens; 128 blocks is
its cheaper ablation). The recipe here:

1. read raw examples: chat JSONL (`messages`: a list of {role, content}), Alpaca JSONL
   (`instruction` / `input` / `output`) or plain text (a document per line, or a
   `text` field), from a local file, a dataset directory saved with `save_to_disk`, or
   a Hub dataset id;
2. sample a pool of `pool` examples, seeded: reservoir sampling over local data (uniform,
   one pass); for a Hub id a streaming shuffle (buffer 10,000) then the first `pool`;
3. render chat and Alpaca examples with a chat template (the model's own by default;
   Alpaca becomes a user turn `instruction` [+ "\\n\\n" + `input`] and an assistant turn
   `output`); plain text is used as is and followed by EOS, as in training corpora;
4. tokenize without adding special tokens (the template writes its own), concatenate in
   pool order and cut into blocks of `block_size` tokens (the remainder is dropped);
5. keep `num_samples` blocks chosen at random with the seed (all of them when there are
   fewer, which the manifest records).

`recipe="reference"` (`calibrate --recipe reference`) follows the SSU reference's
preprocessing/src/generate_calibration_data.py and training/src/utils/data_utils.py instead, where
they differ: a Hub dataset's streaming shuffle buffer is 20,000 (its `--shuffle_buffer`); each
rendered example is tokenized with the tokenizer's own special tokens and truncated to `block_size`
tokens (plain text gets no EOS appended; an Alpaca `input` follows "\n\nInput: "); examples are
packed in batches of 1,000 (datasets' `map(batched=True)` default), each batch's remainder dropped
(the reference keeps a batch shorter than one block as one short block; blocks here are all
`block_size` long); and the `num_samples` blocks are the stride choice range(0, N, N // num_samples),
in order, not a seeded draw. Local files are sampled as above (the reference streams the Hub).

On disk a calibration set is a directory with `blocks.safetensors` (int32 `input_ids`,
shape (num_samples, block_size)) and `manifest.json` (source, format counts, template,
counts, tokenizer fingerprint and the sha256 of the blocks: the calibration hash that
scores and masks carry in their metadata).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

from adaptkit.errors import InputError, first_line

if TYPE_CHECKING:
    import torch

BLOCKS_FILE = "blocks.safetensors"
MANIFEST_FILE = "manifest.json"
FORMATS = ("auto", "chat", "alpaca", "text")
DEFAULT_BLOCK_SIZE = 2048  # the paper's; shorter where the model's context length is
HUB_SHUFFLE_BUFFER = 10_000
RECIPES = ("adaptkit", "reference")
REFERENCE = {"hub_shuffle_buffer": 20_000, "pack_batch": 1_000}  # generate_calibration_data.py's defaults

# Built-in chat templates for models without one (--template NAME).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{{ eos_token }}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "plain": PLAIN_TEMPLATE}

Record = Union[str, dict]


@dataclass
class CalibrationSet:
    """Token blocks (N, block_size) and the manifest that says where they come from."""

    blocks: "torch.Tensor"
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return self.manifest.get("blocks_sha256") or blocks_hash(self.blocks)

    @property
    def num_tokens(self) -> int:
        return int(self.blocks.numel())

    def save(self, directory: Path) -> Path:
        """Write blocks.safetensors and manifest.json into `directory` (created if needed)."""
        import torch

        from adaptkit.io.tensors import save_tensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors({"input_ids": self.blocks.to(torch.int32)}, directory / BLOCKS_FILE, {"blocks_sha256": self.hash})
        (directory / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return directory


def blocks_hash(blocks: "torch.Tensor") -> str:
    import torch

    data = blocks.to(torch.int32).contiguous().numpy().tobytes()
    return hashlib.sha256(f"{tuple(blocks.shape)}".encode() + data).hexdigest()


def load_calibration(path: Path, flag: str = "--calib") -> CalibrationSet:
    """Load a calibration directory written by `adaptkit calibrate` (or CalibrationSet.save)."""
    from adaptkit.io.tensors import load_tensors

    path = Path(path)
    if not path.is_dir() or not (path / BLOCKS_FILE).is_file() or not (path / MANIFEST_FILE).is_file():
        raise InputError(f"{flag}: '{path}' is not a calibration directory ({BLOCKS_FILE} + {MANIFEST_FILE}; make one with `adaptkit calibrate`)")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag}: '{path / MANIFEST_FILE}' is not valid JSON ({exc})") from None
    tensors = load_tensors(path / BLOCKS_FILE, flag)
    blocks = tensors.get("input_ids")
    if blocks is None or blocks.ndim != 2 or blocks.shape[0] == 0:
        raise InputError(f"{flag}: '{path / BLOCKS_FILE}' holds no (N, block_size) tensor 'input_ids'")
    if manifest.get("blocks_sha256") and blocks_hash(blocks) != manifest["blocks_sha256"]:
        raise InputError(f"{flag}: '{path}' blocks do not match the hash in {MANIFEST_FILE} (modified or corrupt)")
    return CalibrationSet(blocks.long(), manifest)


# --- Reading raw examples -------------------------------------------------------------------


def _hub_spec(text: str, split: str) -> str | None:
    """The `hub:` spec of a Hub dataset source: `hub:ID[:CONFIG][@SPLIT]`, or a bare ID (owner/name) with --split."""
    if text.startswith("hub:"):
        return text
    if not text.startswith((".", "/", "~")) and text.count("/") == 1 and not text.endswith((".jsonl", ".json", ".txt")):
        return f"hub:{text}@{split}"
    return None


def _hub_pool(spec: str, pool: int, seed: int, flag: str, buffer: int = HUB_SHUFFLE_BUFFER) -> list[Record]:
    """`pool` rows of a Hub dataset, streamed (read by adaptkit.data.sources) through a seeded shuffle buffer."""
    from adaptkit.data.sources import hub_dataset, resolve

    stream = hub_dataset(resolve(spec, flag))
    try:
        return list(stream.shuffle(seed=seed, buffer_size=buffer).take(pool))
    except Exception as exc:  # the hub client raises many types; all mean "cannot read it"
        raise InputError(f"{flag}: could not read Hub dataset '{spec}' ({first_line(exc)}); give a local file or dataset directory") from None


def reservoir_sample(records: Iterable[Record], pool: int, seed: int) -> tuple[list[Record], int]:
    """A uniform sample of `pool` records (all when fewer), kept in their original order; and the total seen."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, Record]] = []
    seen = 0
    for index, record in enumerate(records):
        seen += 1
        if len(reservoir) < pool:
            reservoir.append((index, record))
        else:
            slot = rng.randrange(index + 1)
            if slot < pool:
                reservoir[slot] = (index, record)
    reservoir.sort(key=lambda item: item[0])
    return [record for _, record in reservoir], seen


# --- Rendering ------------------------------------------------------------------------------


def record_kind(record: Record, fmt: str, text_field: str) -> str | None:
    """'chat', 'alpaca' or 'text' when the record is usable in format `fmt`, else None."""
    if isinstance(record, str):
        return "text" if fmt in ("auto", "text") and record.strip() else None
    if not isinstance(record, dict):
        return None
    messages = record.get("messages")
    if fmt in ("auto", "chat") and isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        return "chat"
    if fmt in ("auto", "alpaca") and isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        if record["instruction"].strip() or record["output"].strip():
            return "alpaca"
    if fmt in ("auto", "text") and isinstance(record.get(text_field), str) and record[text_field].strip():
        return "text"
    return None


def alpaca_messages(record: dict, input_prefix: str = "") -> list[dict[str, str]]:
    instruction = record["instruction"]
    extra = record.get("input")
    user = f"{instruction}\n\n{input_prefix}{extra}" if isinstance(extra, str) and extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def resolve_template(tokenizer: Any, template: str | None, flag: str = "--template") -> tuple[str, str]:
    """(name, jinja text) of the chat template to use: the model's own, a built-in one, or a file."""
    if template in (None, "", "model"):
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            raise InputError(
                f"{flag}: the tokenizer of --model has no chat template, which chat/Alpaca data needs; "
                f"choose one explicitly: --template {'|'.join(BUILTIN_TEMPLATES)}|FILE.jinja"
            )
        if isinstance(own, dict):  # several named templates: use the default one
            own = own.get("default") or next(iter(own.values()))
        return "model", own
    if template in BUILTIN_TEMPLATES:
        return template, BUILTIN_TEMPLATES[template]
    path = Path(template).expanduser()
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    raise InputError(f"{flag}: '{template}' is neither 'model', {', '.join(repr(t) for t in BUILTIN_TEMPLATES)} nor a Jinja template file")


def _render_chat(tokenizer: Any, messages: list[dict[str, str]], template_text: str) -> str | None:
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template_text, tokenize=False, add_generation_prompt=False)
    except Exception:  # templates raise on conversations they do not accept (e.g. role order)
        return None
    return text if isinstance(text, str) and text.strip() else None


# --- Building -------------------------------------------------------------------------------


def _sources(data: Any) -> list[str] | None:
    """The data sources named by `data` (a path or Hub id, or a list of them), or None for in-memory records."""
    if isinstance(data, (str, Path)):
        return [str(data)]
    items = list(data)
    if items and all(isinstance(i, Path) or (isinstance(i, str) and "\n" not in i and Path(i).expanduser().exists()) for i in items):
        return [str(i) for i in items]
    return None


def _as_tokenizer(tokenizer_or_model: Any, trust_remote_code: bool, block_size: int | None) -> tuple[Any, str, int]:
    """A tokenizer, a description and the block size, from a tokenizer object, a ModelSource or a model location.

    The block size defaults to DEFAULT_BLOCK_SIZE, or the model's context length where that is shorter;
    a block longer than the context length (config.json) is refused before anything is read.
    """
    from adaptkit.io.models import ModelSource, check_context_length, load_tokenizer, resolve_model_source, source_context_length

    if isinstance(tokenizer_or_model, (str, Path)):
        tokenizer_or_model = resolve_model_source(tokenizer_or_model, "--model")
    limit = source_context_length(tokenizer_or_model) if isinstance(tokenizer_or_model, ModelSource) else None
    if block_size is None:
        block_size = min(DEFAULT_BLOCK_SIZE, limit or DEFAULT_BLOCK_SIZE)
    check_context_length(block_size, limit, "--block-size")
    if isinstance(tokenizer_or_model, ModelSource):
        return load_tokenizer(tokenizer_or_model, trust_remote_code), tokenizer_or_model.location, block_size
    return tokenizer_or_model, getattr(tokenizer_or_model, "name_or_path", "") or "tokenizer", block_size


def build_calibration(
    tokenizer_or_model: Any,
    data: str | Path | list[str | Path] | list[Record],
    fmt: str = "auto",
    pool: int = 2000,
    num_samples: int = 500,
    block_size: int | None = None,
    seed: int = 42,
    template: str | None = None,
    text_field: str = "text",
    split: str = "train",
    trust_remote_code: bool = False,
    flag: str = "--data",
    progress: Callable[[str], None] = lambda message: None,
    recipe: str = "adaptkit",
) -> CalibrationSet:
    """Sample, render, tokenize and pack a calibration set (see the module docstring for the recipe and
    for `recipe="reference"`, the SSU reference's).

    `tokenizer_or_model` is a tokenizer, a ModelSource or a model location. `data` is a
    path or Hub dataset id, a list of paths (read one after the other), or an in-memory
    list of records (str documents or dicts); a list counts as paths when every item is
    a Path or names an existing file or directory.
    """
    _check_settings(fmt, pool, num_samples, block_size, recipe)
    tokenizer, model_name, block_size = _as_tokenizer(tokenizer_or_model, trust_remote_code, block_size)
    reference = recipe == "reference"
    buffer = REFERENCE["hub_shuffle_buffer"] if reference else HUB_SHUFFLE_BUFFER
    pooled = _sample_pool(data, pool, seed, split, flag, buffer)  # 1-2. raw examples and the seeded pool
    stream = _token_stream(tokenizer, pooled.sampled, fmt, text_field, template, block_size if reference else None)  # 3-4. render and tokenize
    if stream.used == 0:
        raise InputError(_no_usable_examples(fmt, text_field, pooled, stream, flag))
    blocks = _pack(stream, block_size, REFERENCE["pack_batch"] if reference else None)
    if blocks.shape[0] == 0:
        raise InputError(
            f"{flag}: the {stream.used} usable examples give {len(stream.ids)} tokens, fewer than one block of {block_size} "
            "(--block-size); give more data, a larger --pool or a smaller --block-size"
        )
    progress(f"sampled {len(pooled.sampled):,} of {pooled.seen:,} examples from {pooled.source}")  # reported once the input is known to be good
    progress(f"tokenized {stream.used:,} examples: {len(stream.ids):,} tokens, {blocks.shape[0]:,} blocks of {block_size}")
    available = blocks.shape[0]
    blocks = _stride_blocks(blocks, num_samples) if reference else _choose_blocks(blocks, num_samples, seed)  # 5. the choice of blocks
    settings = {"format": fmt, "pool": pool, "num_samples": num_samples, "block_size": block_size, "seed": seed, "split": split, "recipe": recipe}
    manifest = _manifest(pooled, stream, blocks, available, settings, model_name, tokenizer)
    calibration = CalibrationSet(blocks.long(), manifest)
    manifest["blocks_sha256"] = blocks_hash(calibration.blocks)
    return calibration


def _pack(stream: "_Stream", block_size: int, batch: int | None) -> "torch.Tensor":
    """Step 4's packing: the whole stream cut into blocks, or (the reference) each batch of `batch` examples
    concatenated and cut on its own, its remainder dropped."""
    import torch

    from adaptkit.data.corpus import pack_blocks

    if batch is None:
        return pack_blocks(torch.tensor(stream.ids, dtype=torch.int32), block_size)
    parts, start = [], 0
    for first in range(0, len(stream.lengths), batch):
        count = sum(stream.lengths[first:first + batch])
        parts.append(pack_blocks(torch.tensor(stream.ids[start:start + count], dtype=torch.int32), block_size))
        start += count
    return torch.cat(parts) if parts else torch.zeros((0, block_size), dtype=torch.long)


def _stride_blocks(blocks: "torch.Tensor", num_samples: int) -> "torch.Tensor":
    """Step 5 of the reference (data_utils.create_calibration_dataloader): blocks 0, s, 2s, ... with s = N // num_samples."""
    available = blocks.shape[0]
    count = min(num_samples, available)
    return blocks[list(range(0, available, max(1, available // count)))[:count]]


def _check_settings(fmt: str, pool: int, num_samples: int, block_size: int | None, recipe: str = "adaptkit") -> None:
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if recipe not in RECIPES:
        raise InputError(f"--recipe: unknown recipe '{recipe}' (choose from {', '.join(RECIPES)})")
    for value, name in ((pool, "--pool"), (num_samples, "--num-samples"), (block_size, "--block-size")):
        if value is not None and value < 1:
            raise InputError(f"{name}: must be at least 1 (got {value})")


@dataclass
class _Pool:
    """The seeded pool of raw examples and where it came from."""

    source: str
    source_hash: str | None
    sampled: list[Record]
    seen: int


def _sample_pool(data: Any, pool: int, seed: int, split: str, flag: str, buffer: int = HUB_SHUFFLE_BUFFER) -> _Pool:
    """Steps 1-2: read the examples (files one after the other, a Hub dataset, or in-memory records) and sample the pool."""
    from adaptkit.data.corpus import file_hash, iter_records

    sources = _sources(data)
    if sources is None:
        source_hash = hashlib.sha256(json.dumps(list(data), sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return _Pool("<in-memory>", source_hash, *reservoir_sample(data, pool, seed))
    if len(sources) == 1 and not Path(sources[0]).expanduser().exists() and _hub_spec(sources[0], split):
        sampled = _hub_pool(_hub_spec(sources[0], split), pool, seed, flag, buffer)
        return _Pool(sources[0], None, sampled, len(sampled))
    missing = [s for s in sources if not Path(s).expanduser().exists()]
    if missing:
        raise InputError(f"{flag}: '{missing[0]}' does not exist (expected a .jsonl/.txt file, a dataset directory or a Hub dataset id)")
    source_hash = hashlib.sha256("".join(file_hash(Path(s).expanduser()) for s in sources).encode()).hexdigest()
    records = (record for s in sources for _, record in iter_records(Path(s).expanduser(), "auto", flag, split))
    return _Pool(",".join(sources), source_hash, *reservoir_sample(records, pool, seed))


@dataclass
class _Stream:
    """The token stream of the pool: ids, examples used by kind, examples skipped by reason, the template used."""

    ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens of each used example, in stream order
    counts: dict[str, int] = field(default_factory=lambda: {"chat": 0, "alpaca": 0, "text": 0})
    skipped: dict[str, int] = field(default_factory=lambda: {"unrecognized": 0, "template_failed": 0, "empty": 0})
    template_name: str | None = None
    template_text: str | None = None

    @property
    def used(self) -> int:
        return sum(self.counts.values())


def _token_stream(tokenizer: Any, sampled: list[Record], fmt: str, text_field: str, template: str | None, truncate: int | None = None) -> _Stream:
    """Steps 3-4: render each example (chat and Alpaca under the template, text + EOS) and tokenize it into one stream.
    `truncate` (the reference recipe): each example tokenized with the tokenizer's special tokens, cut to that many
    tokens, plain text without EOS, Alpaca inputs after "Input: "."""
    kinds = [record_kind(record, fmt, text_field) for record in sampled]
    stream = _Stream()
    if template not in (None, "", "model"):  # an explicit template is checked even when the data is plain text
        resolve_template(tokenizer, template)
    if any(kind in ("chat", "alpaca") for kind in kinds):
        stream.template_name, stream.template_text = resolve_template(tokenizer, template)
    eos = tokenizer.eos_token_id
    for record, kind in zip(sampled, kinds):
        if kind is None:
            stream.skipped["unrecognized"] += 1
            continue
        if kind == "text":
            text = record if isinstance(record, str) else record[text_field]
            ids = _example_ids(tokenizer, text, truncate) + ([eos] if eos is not None and truncate is None else [])
        else:
            messages = record["messages"] if kind == "chat" else alpaca_messages(record, "Input: " if truncate else "")
            rendered = _render_chat(tokenizer, messages, stream.template_text)
            if rendered is None:
                stream.skipped["template_failed"] += 1
                continue
            ids = _example_ids(tokenizer, rendered, truncate)
        if not ids:
            stream.skipped["empty"] += 1
            continue
        stream.counts[kind] += 1
        stream.ids.extend(ids)
        stream.lengths.append(len(ids))
    return stream


def _example_ids(tokenizer: Any, text: str, truncate: int | None) -> list[int]:
    """Token ids of one rendered example: without special tokens (the template writes its own), or as the reference
    tokenizes (`tokenizer(text, truncation=True, max_length=truncate)`)."""
    if truncate is None:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text, truncation=True, max_length=truncate)["input_ids"]


def _no_usable_examples(fmt: str, text_field: str, pooled: _Pool, stream: _Stream, flag: str) -> str:
    wanted = {"auto": "chat `messages`, Alpaca `instruction`/`output` or text", "chat": "chat `messages` lists of {role, content}", "alpaca": "Alpaca `instruction`/`output` fields", "text": f"text (lines or a '{text_field}' field)"}[fmt]
    failed = stream.skipped["template_failed"]
    extra = f"; the chat template failed on all {failed}" if failed else ""
    return f"{flag}: '{pooled.source}' has no usable examples among the {len(pooled.sampled)} sampled (expected {wanted}{extra})"


def _choose_blocks(blocks: "torch.Tensor", num_samples: int, seed: int) -> "torch.Tensor":
    """Step 5: `num_samples` blocks chosen with a generator seeded by `seed`, in their stream order (all when fewer)."""
    import torch

    available = blocks.shape[0]
    if available <= num_samples:
        return blocks
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(available, generator=generator)[:num_samples].sort().values
    return blocks[chosen]


def _manifest(pooled: _Pool, stream: _Stream, blocks: "torch.Tensor", available: int, settings: dict[str, Any], model_name: str, tokenizer: Any) -> dict[str, Any]:
    """The manifest of a calibration set: source, recipe settings, counts at each step and the tokenizer."""
    from adaptkit.data.corpus import tokenizer_fingerprint

    return {
        "format_version": 1,
        "source": pooled.source,
        "source_sha256": pooled.source_hash,
        "split": settings["split"] if pooled.source != "<in-memory>" else None,
        "format": settings["format"],
        "examples_by_format": stream.counts,
        "template": stream.template_name,
        "template_sha256": hashlib.sha256(stream.template_text.encode()).hexdigest() if stream.template_text else None,
        "pool_requested": settings["pool"],
        "examples_seen": pooled.seen,
        "pool_sampled": len(pooled.sampled),
        "examples_used": stream.used,
        "examples_skipped": stream.skipped,
        "stream_tokens": len(stream.ids),
        "blocks_available": available,
        "num_samples_requested": settings["num_samples"],
        "num_samples": int(blocks.shape[0]),
        "block_size": settings["block_size"],
        "tokens": int(blocks.numel()),
        "seed": settings["seed"],
        "recipe": settings["recipe"],
        "model": model_name,
        "tokenizer_sha": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
    }


def check_calibration_fits(calibration: CalibrationSet, model: Any, tokenizer: Any = None, flag: str = "--calib") -> None:
    """Refuse token ids the model cannot embed, blocks longer than its context, and blocks made with another tokenizer."""
    from adaptkit.io.models import check_context_length, context_length

    check_context_length(int(calibration.blocks.shape[1]), context_length(model.config), f"{flag} (its blocks)")
    vocab = model.get_input_embeddings().weight.shape[0]
    top = int(calibration.blocks.max())
    if top >= vocab:
        raise InputError(f"{flag}: token id {top} is outside the model's vocabulary of {vocab} (calibration made with another tokenizer?)")
    if tokenizer is not None and calibration.manifest.get("tokenizer_sha"):
        from adaptkit.data.corpus import tokenizer_fingerprint

        if tokenizer_fingerprint(tokenizer) != calibration.manifest["tokenizer_sha"]:
            raise InputError(f"{flag}: made with a different tokenizer than the model's (tokenizer {calibration.manifest['tokenizer_sha']}); rebuild it with `adaptkit calibrate --model` on this model")
