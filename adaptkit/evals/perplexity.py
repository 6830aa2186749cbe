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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

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


def document_windows(ids: list[int], block_size: int, stride: int, document: int = 0) -> list[Window]:
    """Windows that predict tokens 1..len(ids)-1 exactly once (token 0 is context only)."""
    windows = []
    target = 1  # next position to predict
    n = len(ids)
    first = True
    while target < n:
        step = block_size if first else stride
        end = min(target + step, n)  # predict positions target..end-1
        start = max(0, end - 1 - block_size)
        windows.append(Window(document, ids[start : end], end - target))
        target = end
        first = False
    return windows


def tokenize_documents(
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
        score_mask[row, length - w.scored : length] = True
    return input_ids, targets, score_mask


def perplexity(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    texts: Sequence[str],
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    prefix: str = "bos",
    device: "torch.device | str | None" = None,
) -> PerplexityResult:
    """Perplexity of `model` on `texts` (see the module docstring for the exact definition)."""
    import torch

    from adaptkit.io.models import input_device
    from adaptkit.streamed_model import for_each_logits

    if not texts:
        raise InputError("perplexity: no documents to score")
    block_size, stride = check_windows(model.config, block_size, stride)
    device = device if device is not None else input_device(model)
    documents, total_bytes = tokenize_documents(tokenizer, texts, prefix)
    windows = [w for d, ids in enumerate(documents) for w in document_windows(ids, block_size, stride, d)]
    windows.sort(key=lambda w: len(w.ids), reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = [_window_batch(windows[begin : begin + batch_size], pad) for begin in range(0, len(windows), batch_size)]
    nll = 0.0
    tokens = 0

    def score(index: int, logits: "torch.Tensor") -> None:
        nonlocal nll, tokens
        _, targets, score_mask = batches[index]
        targets, score_mask = targets.to(logits.device), score_mask.to(logits.device)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        nll -= target_lp[score_mask].double().sum().item()
        tokens += int(score_mask.sum().item())

    was_training = model.training
    model.eval()
    # right padding + causal attention: real positions never see the pads, so no mask is
    # needed (and without one the attention kernels take their faster causal path)
    for_each_logits(model, [input_ids for input_ids, _, _ in batches], device, score)
    if was_training:
        model.train()
    return PerplexityResult(nll_sum=nll, tokens=tokens, bytes=total_bytes, documents=len(texts))


__all__ = ["PerplexityResult", "perplexity", "document_windows", "tokenize_documents", "default_block_size"]
