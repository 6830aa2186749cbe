"""Freeze the embedding and LM-head rows of the tokenizer's special and chat-template tokens.

The SSU reference code (github.com/gucci-j/ssu, `--freeze_chat_template_tokens`, used by every SSU
and HFT run there) keeps the input-embedding and LM-head rows of the special tokens fixed, so that
continued pre-training on raw text cannot push down, say, the end-of-turn logit an instruct model
relies on. Here it is a run-level setting (`freeze_special_tokens`, `--set freeze_special_tokens=true`)
that works for every method: the rows are taken out of the plan's trainable entries through the
engine's row masks, so they get no update, no weight decay and no optimizer state.

The token set comes from the tokenizer alone:
- every special token it declares (bos/eos/unk/pad/..., additional special tokens, added tokens
  flagged special), and
- every role marker written in the chat template (`<|im_start|>`, `<|user|>`, `[INST]`, `<think>` ...:
  text of the form `<|...|>`, `<name>`, `</name>` or `[NAME]`) that is a single token of the
  vocabulary. Ordinary sub-word pieces (`user`, `assistant` after `<|im_start|>`) are never included.
Where the reference matches a hard-coded list of OLMo/Qwen/Phi names instead, this reads the markers from
the template, so a model family it does not list is covered too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from adaptkit.engine.plan import TrainingPlan

MARKER_RE = re.compile(r"<\|[^<>|\s]+\|>|</?[A-Za-z][A-Za-z0-9_]*>|\[/?[A-Z][A-Z_]*\]")


def _template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "\n".join(template.values()) if isinstance(template, dict) else str(template)


def special_token_ids(tokenizer: Any) -> dict[int, str]:
    """Token id -> token text of the tokenizer's special tokens and single-token chat-template markers."""
    found: dict[int, str] = {}
    for token_id in getattr(tokenizer, "all_special_ids", None) or []:
        found[int(token_id)] = tokenizer.convert_ids_to_tokens(int(token_id))
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            found[int(token_id)] = str(added)
    for marker in sorted(set(MARKER_RE.findall(_template_text(tokenizer)))):
        ids = tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == marker:
            found[int(ids[0])] = marker
    return dict(sorted(found.items()))


def token_row_parameters(plan: "TrainingPlan") -> list[str]:
    """Names of the plan's trainable tensors that are the input embeddings or the LM head (one name when
    tied; the trained copy when a wrapper such as peft's modules_to_save holds them)."""
    model = plan.model
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    ids = {id(p) for module in modules if module is not None for p in module.parameters()}
    return [name for name, param in model.named_parameters() if id(param) in ids and name in plan.trainable and param.ndim == 2]


def freeze_special_token_rows(plan: "TrainingPlan", tokenizer: Any, log: Callable[[str], None]) -> dict[int, str]:
    """Take the rows of the special tokens out of the trainable embeddings and LM head of `plan`; logs the set."""
    import torch

    tokens = special_token_ids(tokenizer)
    names = token_row_parameters(plan)
    params = dict(plan.model.named_parameters())
    for name in names:
        rows = torch.ones(params[name].shape[0], dtype=torch.bool)
        rows[[i for i in tokens if i < rows.numel()]] = False
        plan.restrict_rows(name, rows)
    listing = ", ".join(f"{i} {text!r}" for i, text in tokens.items())
    log(f"freeze_special_tokens: {len(tokens)} token rows frozen in {', '.join(names) or 'no trainable embedding/head'}: {listing}")
    return tokens
