"""LLM-as-a-judge building blocks shared by `judge-pairwise` and `judge-single`.

- `JudgeParams`: the judge endpoint (`judge.base_url`, `judge.model`, the *name* of the
  API-key variable), concurrency, timeout, retries, the reply cache, the template, and the
  decoding of the evaluated model's answers.
- Judge templates: text files in `adaptkit/evals/judge_templates/` (or `judge.template=FILE`).
  `#` lines at the top are the header (`# kind: pairwise|single`, `# scale: LO-HI` for
  single grading, `# source: ...`); sections start with `=== NAME ===` lines; `{{field}}`
  placeholders are filled in. Pairwise templates have `system` and `user` sections with
  {{instruction}}, {{output_a}}, {{output_b}}; single templates have `system`, `turn 1`
  ({{question_1}}, {{answer_1}}) and `turn 2` (also {{question_2}}, {{answer_2}}).
- Parsing judge replies: `parse_grade` (MT-Bench `[[rating]]`, LightEval `<score>N</score>`,
  "Rating: N", "N/10", a bare number; only values on the template's scale count) and
  `parse_verdict` (`[[A]]`, `[[B]]`, `[[C]]` for a tie, or a reply that names one output).

References: Zheng et al. 2023 (MT-Bench, LLM-as-a-judge), arXiv:2306.05685; Dubois et al.
2024 (length-controlled AlpacaEval), arXiv:2404.04475; LightEval's MT-Bench judge prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import Field

from adaptkit.errors import InputError
from adaptkit.evals.generation import DECODINGS
from adaptkit.evals.tasks import EvalBackend
from adaptkit.specs import Params

if TYPE_CHECKING:
    from adaptkit.io.openai_client import OpenAIClient

TEMPLATE_DIR = Path(__file__).parent / "judge_templates"
PLACEHOLDERS = {
    "pairwise": {"system": set(), "user": {"instruction", "output_a", "output_b"}},
    "single": {"system": set(), "turn 1": {"question_1", "answer_1"}, "turn 2": {"question_1", "answer_1", "question_2", "answer_2"}},
}
_NUMBER = r"(\d+(?:\.\d+)?)"
GRADE_PATTERNS = (
    re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]"),  # MT-Bench: "Rating: [[7]]"
    re.compile(r"<score>\s*" + _NUMBER + r"\s*</score>", re.IGNORECASE),  # LightEval flow-judge
    re.compile(r"(?:rating|score|grade)\s*(?:is|of|:|=)?\s*\**\s*" + _NUMBER, re.IGNORECASE),
    re.compile(_NUMBER + r"\s*/\s*(?:10|5)\b"),
    re.compile(r"\[\s*" + _NUMBER + r"\s*\]"),  # MT-Bench's fallback "[7]"
    re.compile(r"^\s*" + _NUMBER + r"\s*\.?\s*$"),  # a bare number
)
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
VERDICT_LEAD = re.compile(r"^\W*(?:(?:output|assistant|response|answer)\s*)?\(?([AB])\)?(?:\W|$)", re.IGNORECASE)


class JudgeParams(Params):
    """Settings of an LLM-judged task; `--set judge.KEY=V` applies to every judge-* backend."""

    base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the judge, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="judge model name, as the server lists it at /v1/models")
    api_key_env: str = Field("ADAPTKIT_JUDGE_API_KEY", description="name of the environment variable holding the API key (fallback: OPENAI_API_KEY)")
    template: str | None = Field(None, description="judge prompt template: a built-in name or a file")
    concurrency: int = Field(4, ge=1, description="judge requests in flight at once")
    timeout: float = Field(300.0, gt=0, description="seconds per judge request")
    retries: int = Field(4, ge=0, description="retries on HTTP 429 / 5xx, with exponential backoff")
    cache: Union[bool, str] = Field("auto", description="reply cache: 'auto' ($ADAPTKIT_CACHE/judge/replies.sqlite), 'off' (or false), or a file")
    judge_max_tokens: int = Field(2048, ge=1, description="budget of each judge reply (MT-Bench: 2048)")
    max_new_tokens: int = Field(1024, ge=1, description="budget of the evaluated model's answers (MT-Bench: 1024)")
    decoding: Literal[tuple(DECODINGS)] = "greedy"  # type: ignore[valid-type]
    batch_size: int = Field(8, ge=1)
    chat_template: bool = True
    limit: int | None = Field(None, ge=1, description="evaluate only the first N items")


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: kind, grading scale (single) and named sections with {{field}} placeholders."""

    name: str
    kind: str
    sections: dict[str, str]
    scale: tuple[float, float] | None = None

    def render(self, section: str, **values: str) -> str:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values[m.group(1)], self.sections[section])

    def messages(self, section: str, **values: str) -> list[dict[str, str]]:
        system = self.render("system").strip()
        user = {"role": "user", "content": self.render(section, **values).strip()}
        return ([{"role": "system", "content": system}] if system else []) + [user]


def builtin_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))


def load_template(value: str | None, default: str, kind: str, flag: str) -> JudgeTemplate:
    """A built-in template by name (`default` when None) or a template file, checked for `kind`."""
    name = value or default
    path = TEMPLATE_DIR / f"{name}.txt" if (TEMPLATE_DIR / f"{name}.txt").is_file() else Path(name).expanduser()
    if not path.is_file():
        raise InputError(f"{flag}: '{name}' is neither a built-in template ({', '.join(builtin_templates())}) nor a readable file")
    header, sections = _split_template(path.read_text(encoding="utf-8"))
    if header.get("kind") != kind:
        raise InputError(f"{flag}: {path} is a '{header.get('kind', '?')}' template; this task needs a '# kind: {kind}' template")
    for section, fields in PLACEHOLDERS[kind].items():
        if section not in sections:
            raise InputError(f"{flag}: {path} has no '=== {section} ===' section (a {kind} template needs: {', '.join(PLACEHOLDERS[kind])})")
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", sections[section]))
        if used - fields:
            raise InputError(f"{flag}: {path} section '{section}' uses unknown field(s) {sorted(used - fields)} (known: {sorted(fields)})")
    return JudgeTemplate(path.stem if path.parent == TEMPLATE_DIR else str(path), kind, sections, _scale(header, kind, path, flag))


def _split_template(text: str) -> tuple[dict[str, str], dict[str, str]]:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        marker = re.fullmatch(r"===\s*(.+?)\s*===\s*", line)
        if marker:
            current = sections.setdefault(marker.group(1).lower(), [])
        elif current is not None:
            current.append(line)
        elif line.startswith("#"):
            key, sep, value = line.lstrip("#").partition(":")
            if sep:
                header.setdefault(key.strip().lower(), value.strip())
    return header, {k: "\n".join(v) for k, v in sections.items()}


def _scale(header: dict[str, str], kind: str, path: Path, flag: str) -> tuple[float, float] | None:
    if kind != "single":
        return None
    found = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", header.get("scale", ""))
    if not found or int(found.group(1)) >= int(found.group(2)):
        raise InputError(f"{flag}: {path} needs a header line '# scale: LO-HI' (e.g. 1-10) for its grades")
    return float(found.group(1)), float(found.group(2))


def parse_grade(reply: str, scale: tuple[float, float]) -> float | None:
    """The grade in a judge reply, or None: the last on-scale value of the first pattern that has one."""
    low, high = scale
    for pattern in GRADE_PATTERNS:
        values = [float(v) for v in pattern.findall(reply or "")]
        values = [v for v in values if low <= v <= high]
        if values:
            return values[-1]
    return None


def parse_verdict(reply: str) -> str | None:
    """'A', 'B' or 'C' (tie) from a pairwise judge reply; None when absent or contradictory."""
    found = set(VERDICT.findall(reply or ""))
    if len(found) == 1:
        return found.pop()
    if found:
        return None
    lead = VERDICT_LEAD.match(reply or "")
    return lead.group(1).upper() if lead else None


def judge_client(params: JudgeParams, backend: str) -> "OpenAIClient":
    """A client for the judge endpoint, checked now (reachable, key accepted, model listed)."""
    from adaptkit.io.openai_client import OpenAIClient

    for key in ("base_url", "model"):
        if not getattr(params, key):
            raise InputError(f"--set judge.{key}: {backend} needs a judge endpoint; pass --set judge.base_url=http://HOST:PORT/v1 --set judge.model=NAME")
    client = OpenAIClient(params.base_url, params.api_key_env, params.timeout, params.retries, concurrency=params.concurrency,
                          cache=_cache(params.cache), flag="--set judge.base_url")
    client.check_model(params.model, "--set judge.model")
    return client


def _cache(setting: "bool | str"):
    from adaptkit.io.openai_client import ReplyCache

    if setting in ("off", False):  # `--set judge.cache=off` arrives as the boolean false
        return None
    if setting in ("auto", True):
        from adaptkit.data.corpus import cache_dir

        return ReplyCache(cache_dir() / "judge" / "replies.sqlite")
    return ReplyCache(Path(setting).expanduser())


def judge_settings(params: JudgeParams) -> dict[str, Any]:
    """Decoding of judge replies: greedy (temperature 0), as MT-Bench and AlpacaEval judge."""
    return {"temperature": 0.0, "max_tokens": params.judge_max_tokens}


def plain_conversation(messages: list[dict[str, str]]) -> str:
    """A conversation as plain text for models without a chat template (last turn: the assistant's cue)."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "".join(f"{names.get(m['role'], m['role'])}: {m['content']}\n\n" for m in messages) + "Assistant:"


class JudgeBackend(EvalBackend):
    """Base of the judge-* backends: one checked judge client and template for all their tasks."""

    default_template = ""
    template_kind = ""

    def __init__(self, params: JudgeParams):
        super().__init__(params)
        self.client: Any = None
        self.template: JudgeTemplate | None = None

    def connect(self) -> None:
        """Load the template and check the judge endpoint (once; called from `prepare`)."""
        self.template = self.template or load_template(self.params.template, self.default_template, self.template_kind, "--set judge.template")
        self.client = self.client or judge_client(self.params, self.name)

    def ask(self, requests: list[list[dict[str, str]]]) -> list[str]:
        """The judge's replies to each request (cached, `judge.concurrency` at a time)."""
        settings = judge_settings(self.params)
        return self.client.map(lambda messages: self.client.chat(self.params.model, messages, settings, tag=self.name), requests)

    def answerer(self, model: Any, tokenizer: Any, seed: int, server: Any = None):
        """conversations -> the evaluated model's answers (the loaded model's, or those of `server`, a
        ServerGenerator), with this task's decoding and chat-template setting."""
        generator, has_template = (server, server.has_chat_template) if server is not None else in_process(model, tokenizer)
        templated = self.params.chat_template and has_template
        return lambda conversations: answer(generator, conversations, self.params, templated, seed)


def answer(generator: Any, conversations: list[list[dict[str, str]]], params: JudgeParams, templated: bool, seed: int) -> list[str]:
    """The evaluated model's free-form replies (stopped by EOS or the budget) to each conversation."""
    prompts = conversations if templated else [plain_conversation(c) for c in conversations]
    return generator(prompts, max_new_tokens=params.max_new_tokens, decoding=params.decoding, stop=(),
                     batch_size=params.batch_size, chat_template=templated, seed=seed)


def in_process(model: Any, tokenizer: Any):
    """(generator, whether prompts go under the chat template) for a loaded model."""
    from adaptkit.evals.generation import generator_of

    return generator_of(model, tokenizer), bool(getattr(tokenizer, "chat_template", None))


def read_records(path: str | Path, flag: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Records of a benchmark file as published: a JSON array (AlpacaEval's .json) or JSONL (MT-Bench's)."""
    import json

    from adaptkit.evals.data import read_jsonl

    path = Path(path)
    if not (path.is_file() and path.read_text(encoding="utf-8").lstrip().startswith("[")):
        return read_jsonl(path, flag, required)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{flag}: {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    for number, row in enumerate(rows, start=1):
        missing = [f for f in required if not isinstance(row, dict) or not isinstance(row.get(f), str)]
        if missing:
            raise InputError(f"{flag}: {path} record {number} has no text field '{missing[0]}' (expected an object with {', '.join(required)})")
    if not rows:
        raise InputError(f"{flag}: {path} is empty; expected at least one JSON record")
    return rows
