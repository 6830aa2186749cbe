"""Per-token perplexity and bits per byte with a sliding window and exact token accounting.

Definition (the one lm-eval's `loglikelihood_rolling` uses when `stride == block_size`):

- Each document (a line of a text file, or a JSONL record's text field) is tokenized on
  its own, without special tokens. With `prefix="bos"` (default) the tokenizer's BOS token
  (EOS when there is no BOS) is prepended, so every token of the document is predicted;
  with `prefix="none"` the first token has no prediction and is not counted, and neither
  are its bytes.
- Tokens are scored left to right in windows of at most `block_size` input tokens. The
  first window predicts the first `block_size` tokens; each later window predicts the next
  `stride` tokens, conditioned on the `block_size` tokens before its last prediction. So
  every token is predicted exactly once, with at least `block_size - stride` tokens of
  left context once the document is longer than one window. `stride == block_size` gives
  disjoint windows (fastest); a smaller stride gives more context (closer to the model's
  true perplexity) at more compute.
- `nll_sum` is the summed negative log-likelihood (nats) of the scored tokens,
  `ppl = exp(nll_sum / tokens)`, `bits_per_byte = nll_sum / (ln 2 * bytes)` where `bytes`
  is the UTF-8 size of the scored text.

Windows of all documents are sorted by length and run in right-padded batches (causal
attention: real positions never attend to the pads, so no attention mask is passed, as in
lm-eval); log-probabilities are accumulated in float64.

Chat documents (JSONL records with `messages`): the conversation is rendered with the
tokenizer's chat template and tokenized whole; only the tokens of the assistant turns are
scored (the text each assistant turn adds to the rendering: its content and end-of-turn
marker), the prompt tokens are context only (labels -100), and `bytes` is the UTF-8 size of
the scored assistant text. Pre-tokenized documents (held-out training blocks) are scored the
same way through `score_documents`.

The same code scores `adaptkit evaluate`'s `ppl` task and the evaluation during training
(`train --eval-data`): `score_documents` takes the already-loaded model, puts it in eval mode
under no_grad and restores train mode after; with several processes each scores every
`world`-th batch and the per-batch sums are reduced, which gives the one-process result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from adaptkit.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PerplexityResult:
    nll_sum: float
    tokens: int
    bytes: int
    documents: int

    @property
    def nll_per_token(self) -> float:
        return self.nll_sum / self.tokens if self.tokens else float("nan")

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_per_token) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / (math.log(2) * self.bytes) if self.bytes else float("nan")

    def metrics(self) -> dict[str, float]:
        return {
            "ppl": self.ppl,
            "bits_per_byte": self.bits_per_byte,
            "nll_per_token": self.nll_per_token,
            **{k: v for k, v in asdict(self).items()},
        }


@dataclass(frozen=True)
class Window:
    """Token ids ids[0..k]: the model reads ids[:-1] and predicts ids[1:]; the last `scored` predictions count."""

    document: int
    ids: list[int]
    scored: int
    counted: tuple[bool, ...] | None = None  # of the `scored` predictions, those that count (None: all)


Conversation = list[dict[str, Any]]  # chat messages: {"role": ..., "content": ...}
EvalItem = Union[str, Conversation]


@dataclass
class EncodedDocuments:
    """Token ids per document, which predictions count (None: all), and the UTF-8 bytes they score."""

    ids: list[list[int]]
    bytes: int
    counted: list[list[bool] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counted:
            self.counted = [None] * len(self.ids)


DEFAULT_WINDOW = 2048


def default_block_size(model: "PreTrainedModel") -> int:
    """The model's context length, at most DEFAULT_WINDOW."""
    return check_windows(model.config, None, None)[0]


def check_windows(config: Any, block_size: int | None, stride: int | None) -> tuple[int, int]:
    """(block_size, stride) for a model's config: the window defaults to its context length (at most DEFAULT_WINDOW);
    a window longer than the context length, or a stride outside 1..block_size, is refused."""
    from adaptkit.io.models import check_context_length, context_length

    limit = context_length(config)
    if block_size is not None:
        check_context_length(block_size, limit, "--set ppl.block_size")
    block_size = block_size or min(limit or DEFAULT_WINDOW, DEFAULT_WINDOW)
    stride = stride or block_size
    if not 1 <= stride <= block_size:
        raise InputError(f"--set ppl.stride: must be between 1 and block_size ({block_size}), got {stride}")
    return block_size, stride


def prefix_token_id(tokenizer: "PreTrainedTokenizerBase", prefix: str) -> int | None:
    if prefix == "none":
        return None
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise InputError("ppl prefix=bos: the tokenizer has neither a BOS nor an EOS token; use --set ppl.prefix=none")
    return int(token)


def document_windows(ids: list[int], block_size: int, stride: int, document: int = 0,
                     counted: Sequence[bool] | None = None) -> list[Window]:
    """Windows that predict tokens 1..len(ids)-1 exactly once (token 0 is context only);
    `counted[i]`: whether the prediction of token i counts (default: all)."""
    windows = []
    target = 1  # next position to predict
    n = len(ids)
    first = True
    while target < n:
        step = block_size if first else stride
        end = min(target + step, n)  # predict positions target..end-1
        start = max(0, end - 1 - block_size)
        keep = None if counted is None else tuple(bool(c) for c in counted[target:end])
        windows.append(Window(document, ids[start : end], end - target, keep))
        target = end
        first = False
    return windows


def tokenize_eval_documents(
    tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str], prefix: str = "bos"
) -> tuple[list[list[int]], int]:
    """Token ids per document (with the prefix token when asked) and the UTF-8 bytes they score."""
    prefix_id = prefix_token_id(tokenizer, prefix)
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=prefix_id is None and tokenizer.is_fast)
    documents: list[list[int]] = []
    total_bytes = 0
    for i, text in enumerate(texts):
        ids = list(encoded["input_ids"][i])
        if prefix_id is not None:
            ids = [prefix_id] + ids
            total_bytes += len(text.encode("utf-8"))
        elif ids:
            # the first token is not predicted: leave out the bytes it covers
            skip = encoded["offset_mapping"][i][0][1] if "offset_mapping" in encoded else 0
            total_bytes += len(text[skip:].encode("utf-8"))
        documents.append(ids)
    return documents, total_bytes


def _window_batch(batch: list[Window], pad: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(input ids, targets, mask of the scored predictions), right-padded to the longest window."""
    import torch

    width = max(len(w.ids) for w in batch) - 1  # at most block_size model inputs
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    targets = torch.zeros((len(batch), width), dtype=torch.long)
    score_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, w in enumerate(batch):
        length = len(w.ids) - 1
        input_ids[row, :length] = torch.tensor(w.ids[:-1])
        targets[row, :length] = torch.tensor(w.ids[1:])
        score_mask[row, length - w.scored : length] = True if w.counted is None else torch.tensor(w.counted)
    return input_ids, targets, score_mask


def tokenize_chats(tokenizer: "PreTrainedTokenizerBase", conversations: Sequence[Conversation], flag: str = "ppl") -> EncodedDocuments:
    """Chat conversations rendered with the chat template; only the assistant turns' tokens count."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{flag}: chat records (with 'messages') need a tokenizer with a chat template; this one has none")
    if not tokenizer.is_fast:
        raise InputError(f"{flag}: chat records need a fast tokenizer (token offsets mark the assistant turns)")
    ids, counted, total_bytes = [], [], 0
    for number, messages in enumerate(conversations, start=1):
        text, spans = _assistant_spans(tokenizer, messages, f"{flag} conversation {number}")
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        keep = [any(a <= begin and end <= b for a, b in spans) and end > begin for begin, end in encoded["offset_mapping"]]
        if keep:
            keep[0] = False  # token 0 has no prediction
        ids.append(list(encoded["input_ids"]))
        counted.append(keep)
        total_bytes += sum(len(text[a:b].encode("utf-8")) for a, b in spans)
    return EncodedDocuments(ids, total_bytes, counted)


def _assistant_spans(tokenizer: "PreTrainedTokenizerBase", messages: Conversation, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans each assistant turn adds to it."""
    render = lambda upto, prompt: tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt)  # noqa: E731
    text = render(len(messages), False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before, through = render(i, True), render(i + 1, False)
        if not (text.startswith(through) and through.startswith(before)):
            raise InputError(f"{where}: the chat template does not render the conversation turn by turn (a prefix of it changes); cannot mark the assistant turns")
        spans.append((len(before), len(through)))
    if not spans:
        raise InputError(f"{where}: has no assistant turn to score")
    return text, spans


def encode_items(tokenizer: "PreTrainedTokenizerBase", items: Sequence[EvalItem], prefix: str = "bos", flag: str = "ppl") -> EncodedDocuments:
    """Token ids of text documents (see `tokenize_eval_documents`) or of chat conversations (see `tokenize_chats`)."""
    if not items:
        raise InputError("perplexity: no documents to score")
    if all(isinstance(item, str) for item in items):
        documents, total_bytes = tokenize_eval_documents(tokenizer, items, prefix)
        return EncodedDocuments(documents, total_bytes)
    if any(isinstance(item, str) for item in items):
        raise InputError(f"{flag}: mixes plain documents and chat conversations; use one kind per file")
    return tokenize_chats(tokenizer, items, flag)


def perplexity(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    texts: Sequence[EvalItem],
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    prefix: str = "bos",
    device: "torch.device | str | None" = None,
) -> PerplexityResult:
    """Perplexity of `model` on `texts` (documents, or chat conversations; see the module docstring)."""
    encoded = encode_items(tokenizer, texts, prefix)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return score_documents(model, encoded, block_size, stride, batch_size, pad, device)


def _batches(encoded: EncodedDocuments, block_size: int, stride: int, batch_size: int, pad: int) -> list:
    """Every document's windows, longest first, in batches of `batch_size` (inputs, targets, score mask)."""
    windows = [w for d, (ids, keep) in enumerate(zip(encoded.ids, encoded.counted)) for w in document_windows(ids, block_size, stride, d, keep)]
    windows.sort(key=lambda w: len(w.ids), reverse=True)
    return [_window_batch(windows[begin : begin + batch_size], pad) for begin in range(0, len(windows), batch_size)]


def score_documents(
    model: "PreTrainedModel",
    encoded: EncodedDocuments,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    pad: int = 0,
    device: "torch.device | str | None" = None,
    process: tuple[int, int] = (0, 1),
    reduce: Callable[["torch.Tensor"], "torch.Tensor"] | None = None,
) -> PerplexityResult:
    """Score encoded documents with an already-loaded model (eval mode, no_grad, train mode restored).

    `process` = (rank, world): this process scores batches rank, rank + world, ...; `reduce` sums
    a tensor over the processes. Every process runs the same number of forward passes (sharded
    models need them in lockstep); the per-batch sums are added in batch order, so the result
    equals the one-process result.
    """
    import torch

    from adaptkit.io.models import input_device
    from adaptkit.streamed_model import for_each_logits

    if not encoded.ids:
        raise InputError("perplexity: no documents to score")
    block_size, stride = check_windows(model.config, block_size, stride)
    device = device if device is not None else input_device(model)
    batches = _batches(encoded, block_size, stride, batch_size, pad)
    rank, world = process
    mine = list(range(rank, len(batches), world))
    rounds = -(-len(batches) // world)
    nll = torch.zeros(len(batches), dtype=torch.float64)
    tokens = torch.zeros(len(batches), dtype=torch.float64)

    def score(index: int, logits: "torch.Tensor") -> None:
        if index >= len(mine):  # a lockstep pass of a process that has no batch left
            return
        _, targets, score_mask = batches[mine[index]]
        targets, score_mask = targets.to(logits.device), score_mask.to(logits.device)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        nll[mine[index]] = -target_lp[score_mask].double().sum().item()
        tokens[mine[index]] = float(score_mask.sum().item())

    inputs = [batches[i][0] for i in mine] + [batches[0][0][:1]] * (rounds - len(mine))
    was_training = model.training
    model.eval()
    try:
        # right padding + causal attention: real positions never see the pads, so no mask is
        # needed (and without one the attention kernels take their faster causal path)
        for_each_logits(model, inputs, device, score)
    finally:
        if was_training:
            model.train()
    if world > 1 and reduce is not None:
        nll, tokens = reduce(nll), reduce(tokens)
    total = 0.0
    for value in nll.tolist():  # in batch order: the same sum whatever the number of processes
        total += value
    return PerplexityResult(nll_sum=total, tokens=int(tokens.sum().item()), bytes=encoded.bytes, documents=len(encoded.ids))


__all__ = ["PerplexityResult", "EncodedDocuments", "perplexity", "score_documents", "encode_items", "tokenize_chats",
           "document_windows", "tokenize_eval_documents", "default_block_size"]
