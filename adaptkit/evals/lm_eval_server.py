"""lm-eval `generate_until` requests answered by the server of `--generation-server`.

Each request (context, generation kwargs) becomes one /v1/completions request, built as
lm-eval's HFLM builds its in-process generation (lm-eval 0.4, `HFLM.generate_until`):
- the prompt is a text the server's tokenizer (the evaluated model's, special tokens by its
  default, as `transformers serve` and vLLM tokenize completions prompts) turns into exactly
  the ids HFLM would read: `lm.tok_encode(context)`, left-truncated to `max_length -
  max_gen_toks`; a context no text reproduces is refused with a one-line error;
- `max_tokens` is the task's `max_gen_toks` (lm-eval's aliases resolved by its own
  `normalize_gen_kwargs`), `stop` the task's `until`;
- decoding as the task asks: greedy (`do_sample: false` or temperature 0) is temperature 0;
  sampling sends temperature and the task's top_p / top_k / min_p / repetition_penalty (the
  last three are the extra fields vLLM, SGLang and TGI accept); any other setting is refused;
- the reply is cut at the first stop string (`until` plus the EOS text, as HFLM adds it) by
  lm-eval's own `postprocess_generated_text`.
The chat template needs nothing here: with `apply_chat_template`, lm-eval renders each context
with the evaluated model's tokenizer before the request is made, exactly as in-process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from adaptkit.errors import InputError

if TYPE_CHECKING:
    from adaptkit.evals.server_generation import ServerGenerator

SAMPLING_FIELDS = ("top_p", "top_k", "min_p", "repetition_penalty")


def request_settings(gen_kwargs: dict[str, Any], default_max_gen_toks: int, seed: int) -> tuple[dict[str, Any], list[str]]:
    """(completions request fields, the task's stop strings) for one lm-eval generation request."""
    from lm_eval.models.utils import normalize_gen_kwargs

    kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks)
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    settings: dict[str, Any] = {"max_tokens": kwargs.pop("max_gen_toks"), "seed": seed}
    sampling, temperature = kwargs.pop("do_sample"), float(kwargs.pop("temperature", 0.0))
    settings["temperature"] = temperature if sampling else 0.0
    for field in SAMPLING_FIELDS:
        if field in kwargs:
            value = kwargs.pop(field)
            if sampling:
                settings[field] = value
    if kwargs:
        raise InputError(f"--generation-server: lm-eval generation setting '{next(iter(kwargs))}' has no completions-request field; "
                         "run this task without --generation-server")
    stop = [s for s in until if s]
    if stop:
        settings["stop"] = stop
    return settings, until


def prompt_text(lm: Any, context: str, max_gen_toks: int) -> str:
    """A text that the tokenizer encodes (with its default special tokens) into the ids HFLM generates from."""
    tokenizer = lm.tokenizer
    ids = lm.tok_encode(context)[-(lm.max_length - max_gen_toks):]
    bos = getattr(tokenizer, "bos_token", None)
    candidates = [context, context[len(bos):] if bos and context.startswith(bos) else None, tokenizer.decode(ids)]
    for candidate in candidates:
        if candidate is not None and list(tokenizer(candidate)["input_ids"]) == list(ids):
            return candidate
    raise InputError("--generation-server: an lm-eval context cannot be sent as a text the server tokenizes to the tokens "
                     "generated from in-process; run this task without --generation-server")


def server_generate_until(lm: Any, generator: "ServerGenerator", seed: int) -> Callable[..., list[str]]:
    """A `generate_until` for the lm-eval LM `lm` (HFLM or LayerwiseLM) that generates through `generator`'s server."""
    from lm_eval.models.utils import postprocess_generated_text

    eos = lm.tokenizer.decode(lm.eot_token_id, skip_special_tokens=False)
    default_max = getattr(lm, "max_gen_toks", 256)
    think_end = getattr(lm, "think_end_token", None)

    def generate_until(requests: list, disable_tqdm: bool = False) -> list[str]:
        jobs = []
        for context, gen_kwargs in (request.args for request in requests):
            settings, until = request_settings(gen_kwargs, default_max, seed)
            jobs.append((prompt_text(lm, context, settings["max_tokens"]), settings, until + ([eos] if eos not in until else [])))

        def one(job: tuple[str, dict[str, Any], list[str]]) -> str:
            reply = generator.client.complete(generator.model, job[0], job[1], tag="generation")
            return postprocess_generated_text(reply, job[2], think_end if isinstance(think_end, str) else None)

        return generator.client.map(one, jobs)

    return generate_until
