"""Building lm-eval generate_until requests for `--generation-server` (adaptkit.evals.lm_eval_server), no server needed."""

from __future__ import annotations

import pytest

from adaptkit.errors import InputError

pytest.importorskip("lm_eval")
from adaptkit.evals.lm_eval_server import prompt_text, request_settings  # noqa: E402


def test_greedy_and_sampling_settings_follow_the_task():
    settings, until = request_settings({"until": ["\n", "Q:"], "max_gen_toks": 7, "do_sample": False, "temperature": 0.7, "top_k": 5}, 256, 3)
    assert settings == {"max_tokens": 7, "seed": 3, "temperature": 0.0, "stop": ["\n", "Q:"]} and until == ["\n", "Q:"]
    settings, until = request_settings({"do_sample": True, "temperature": 0.8, "top_p": 0.9, "top_k": 40, "max_new_tokens": 9}, 256, 0)
    assert settings == {"max_tokens": 9, "seed": 0, "temperature": 0.8, "top_p": 0.9, "top_k": 40} and until == []
    assert request_settings({"until": "\n"}, 12, 0)[0] == {"max_tokens": 12, "seed": 0, "temperature": 0.0, "stop": ["\n"]}


def test_an_unknown_generation_setting_is_refused():
    with pytest.raises(InputError, match="'num_beams'.*without --generation-server"):
        request_settings({"do_sample": False, "num_beams": 4}, 256, 0)


class _BosTokenizer:
    """Characters as ids, BOS (id 0, text '<s>') prepended by default, also to a text that starts with '<s>' (as Llama's does)."""

    bos_token = "<s>"
    adds_bos = True

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        body = [0] if text.startswith("<s>") else []
        body += [ord(c) for c in text.removeprefix("<s>")]
        return ([0] if add_special_tokens and self.adds_bos else []) + body

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def decode(self, ids: list[int]) -> str:
        return "".join("<s>" if i == 0 else chr(i) for i in ids)


class _PlainTokenizer(_BosTokenizer):
    adds_bos = False


class _LM:
    max_length = 8

    def __init__(self, tokenizer: _BosTokenizer):
        self.tokenizer = tokenizer

    def tok_encode(self, text: str) -> list[int]:  # HFLM's rule: no second BOS when the text starts with it
        return self.tokenizer.encode(text, add_special_tokens=not text.startswith("<s>"))


def test_the_prompt_encodes_to_the_in_process_tokens():
    lm = _LM(_BosTokenizer())
    assert prompt_text(lm, "abc", 2) == "abc"  # the server adds the BOS as in-process
    assert prompt_text(lm, "<s>abc", 2) == "abc"  # in-process reads one BOS (the text's), so does the server
    plain = _LM(_PlainTokenizer())
    assert prompt_text(plain, "abcdefghij", 2) == "efghij"  # left-truncated to max_length - max_gen_toks tokens, as HFLM does


def test_a_context_no_text_reproduces_is_refused():
    lm = _LM(_BosTokenizer())
    with pytest.raises(InputError, match="--generation-server: an lm-eval context"):
        prompt_text(lm, "abcdefghij", 3)  # the last 5 ids lack the BOS the server would add
