"""Generation through an OpenAI-compatible server that serves the evaluated model.

`ServerGenerator(client, model)` is called like `adaptkit.evals.generation.generate` without
its model and tokenizer: `(prompts, max_new_tokens, decoding, stop, batch_size, chat_template,
seed) -> list[str]`. Prompts go where in-process generation would put them: under the chat
template (a text as one user turn, or a conversation) to /v1/chat/completions, which applies
the served tokenizer's template with the generation prompt; without it, the raw text to
/v1/completions (special tokens added by the server's tokenizer, as in-process). Decoding is
the same: greedy is temperature 0; `paper` sends the SSU paper's sampling (temperature and
top-p are standard; top-k and repetition penalty are the extra fields vLLM, SGLang and TGI
accept). Each output is cut at the first stop string and stripped, as in-process; requests
run with the client's bounded concurrency (`batch_size` is the server's business).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from adaptkit.io.openai_client import OpenAIClient

from adaptkit.evals.generation import DECODINGS, PAPER_SAMPLING

GREEDY_REQUEST: dict[str, Any] = {"temperature": 0.0}
PAPER_REQUEST: dict[str, Any] = {k: v for k, v in PAPER_SAMPLING.items() if k != "do_sample"}  # the in-process settings, one home
NOT_SENT = ("do_sample", "no_repeat_ngram_size")  # no OpenAI-compatible request field: the server samples without it
REQUESTS: dict[str, dict[str, Any]] = {name: {k: v for k, v in s.items() if k not in NOT_SENT} if s.get("do_sample") else GREEDY_REQUEST
                                       for name, s in DECODINGS.items()}


class ServerGenerator:
    """Generations of the model `model` served at `client.base_url`; `has_chat_template` mirrors the served tokenizer."""

    def __init__(self, client: "OpenAIClient", model: str, has_chat_template: bool = True):
        self.client = client
        self.model = model
        self.has_chat_template = has_chat_template

    def __call__(
        self,
        prompts: "Sequence[str | list[dict[str, str]]]",
        max_new_tokens: int = 128,
        decoding: str = "greedy",
        stop: Sequence[str] = ("\n",),
        batch_size: int = 8,
        chat_template: bool = True,
        seed: int = 0,
    ) -> list[str]:
        from adaptkit.errors import InputError
        from adaptkit.evals.generation import cut_at_stop

        settings = {**REQUESTS[decoding], "max_tokens": max_new_tokens, "seed": seed}
        if stop:
            settings["stop"] = list(stop)
        templated = chat_template and self.has_chat_template
        if not templated and any(not isinstance(p, str) for p in prompts):
            raise InputError("a conversation prompt needs the chat template; render it as text for a model without one")

        def one(prompt: "str | list[dict[str, str]]") -> str:
            if templated:
                messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
                text = self.client.chat(self.model, messages, settings, tag="generation")
            else:
                text = self.client.complete(self.model, prompt, settings, tag="generation")
            return cut_at_stop(text, stop)

        return self.client.map(one, prompts)


def server_generator(base_url: str, model: str | None = None, tokenizer: Any = None, concurrency: int = 4, timeout: float = 600.0) -> ServerGenerator:
    """A ServerGenerator for `--generation-server URL`, checked now; the model defaults to the only one served.

    Generations are not cached (a model under evaluation changes between runs); with a local
    `tokenizer`, prompts follow its chat template exactly as in-process generation would.
    """
    from adaptkit.errors import InputError
    from adaptkit.io.openai_client import OpenAIClient

    client = OpenAIClient(base_url, timeout=timeout, concurrency=concurrency, flag="--generation-server")
    if model is not None:
        client.check_model(model, "--generation-server-model")
    else:
        listed = client.models()
        if len(listed) != 1:
            raise InputError(f"--generation-server: {base_url} serves {len(listed)} models ({', '.join(listed[:5])}); name the one to use with --generation-server-model NAME")
        model = listed[0]
    has_template = True if tokenizer is None else bool(getattr(tokenizer, "chat_template", None))
    return ServerGenerator(client, model, has_template)
