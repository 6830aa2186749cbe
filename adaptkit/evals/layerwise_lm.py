"""lm-eval's language-model interface over a model read one decoder layer at a time.

Used by the `lm-eval` backend under `evaluate --layer-by-layer`. Log-likelihood requests
(multiple-choice tasks: XNLI, PAWS-X, XCOPA, XStoryCloze, Belebele, MMLU, ...) and rolling
log-likelihoods (perplexity tasks) need only the logits of token batches, so all requests of
a task go through the model together, in one layer-by-layer pass (several when their hidden
states exceed `adaptkit.streamed_model.HIDDEN_CACHE_BYTES`). Generation tasks need the whole
model at every new token and are refused with a one-line error, unless `--generation-server`
answers them (the lm-eval backend then replaces `generate_until`).

Tokenization, truncation and scoring follow lm-eval's HFLM for causal models, so scores
match it (tested): context and continuation are encoded by lm-eval's `TemplateLM` (whole
string encoded, split at the context's length; trailing context spaces move to the
continuation), the tokenizer's own special-token default applies unless the text already
starts with the prefix token, the model reads the last `max_length + 1` tokens of context +
continuation minus the last one, the score is the summed log-probability of the
continuation tokens and `is_greedy` says whether every one of them is the argmax. Rolling
windows are lm-eval's (`get_rolling_token_windows`, prefix token = BOS, else EOS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from adaptkit.errors import InputError
from adaptkit.streamed_model import for_each_logits

if TYPE_CHECKING:
    from adaptkit.streamed_model import LayerwiseModel


class LayerwiseLM(TemplateLM):
    """An lm-eval LM whose log-likelihoods are computed layer by layer, all requests at once."""

    def __init__(self, model: "LayerwiseModel", tokenizer: Any, batch_size: int = 8):
        super().__init__()
        self.model = model
        self._tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = resolve_max_length(model.config, tokenizer)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def eot_token_id(self) -> int:
        return self._tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self._tokenizer.bos_token_id
        return bos if bos is not None else self._tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return self._tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and string.startswith(self._tokenizer.decode(self.prefix_token_id)):
            options["add_special_tokens"] = False  # the text already carries the prefix token
        return self._tokenizer.encode(string, **options)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        rows = []
        for _, context, continuation in requests:
            if not continuation or len(continuation) > self.max_length:
                raise InputError(f"lm-eval: a continuation of {len(continuation)} tokens does not fit the model's {self.max_length} positions")
            rows.append(((context + continuation)[-(self.max_length + 1) :][:-1], continuation))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        groups = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        inputs = []
        for group in groups:  # right padding: causal attention keeps the pads out of real positions
            batch = torch.full((len(group), max(len(rows[i][0]) for i in group)), pad, dtype=torch.long)
            for row, index in enumerate(group):
                batch[row, : len(rows[index][0])] = torch.tensor(rows[index][0])
            inputs.append(batch)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)

        def score(batch_index: int, logits: torch.Tensor) -> None:
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, index in enumerate(groups[batch_index]):
                length, continuation = len(rows[index][0]), torch.tensor(rows[index][1])
                predicted = logprobs[row, length - len(continuation) : length]
                total = float(predicted.gather(-1, continuation.unsqueeze(-1)).sum())
                results[index] = (total, bool((predicted.argmax(-1) == continuation).all()))

        for_each_logits(self.model, inputs, self.model.device, score)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for owner, (text,) in enumerate(request.args for request in requests):
            tokens = self.tok_encode(text)
            for window in get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        raise InputError("--layer-by-layer: this lm-eval task generates text, which needs the whole model; run it without --layer-by-layer "
                         "or send its generations to a server with --generation-server URL")
