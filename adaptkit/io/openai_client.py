"""A small client for OpenAI-compatible servers (vLLM, TGI, SGLang, `transformers serve`, hosted APIs).

Standard library only (`urllib`, `sqlite3`, threads). It lists `/v1/models`, sends
`/v1/chat/completions` and `/v1/completions` requests with bounded concurrency, a timeout
per request and retries with exponential backoff on HTTP 429 and 5xx, and keeps every
reply in an on-disk cache (`ReplyCache`) keyed by the endpoint and the whole request
(model, messages or prompt, decoding settings) plus a caller's tag (e.g. the judge
template), so a re-run never pays for the same request twice.

The API key is read from an environment variable whose *name* is configurable
(`ADAPTKIT_JUDGE_API_KEY` by default, then `OPENAI_API_KEY`); the key itself is sent
only in the Authorization header and never appears in messages, caches or outputs.
Set-up problems (endpoint unreachable, key refused, model not listed) are InputErrors
naming the setting; failures during a run (after retries) are AdaptkitErrors.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from adaptkit.errors import AdaptkitError, InputError

DEFAULT_KEY_ENV = "ADAPTKIT_JUDGE_API_KEY"
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
SERVE_HINT = "start an OpenAI-compatible server there, e.g. `transformers serve MODEL --port PORT` or `vllm serve MODEL --port PORT`"
T = TypeVar("T")
R = TypeVar("R")


def api_key(env_name: str = DEFAULT_KEY_ENV) -> str | None:
    """The key from the variable `env_name`, else from OPENAI_API_KEY; None when neither is set."""
    return os.environ.get(env_name) or os.environ.get(FALLBACK_KEY_ENV) or None


class ReplyCache:
    """Replies on disk (one SQLite file), keyed by a hash of (endpoint, tag, request); thread-safe."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")

    @staticmethod
    def key(endpoint: str, tag: str, request: dict[str, Any]) -> str:
        text = json.dumps([endpoint, tag, request], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO replies (key, reply) VALUES (?, ?)", (key, reply))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]


class OpenAIClient:
    """Requests to one OpenAI-compatible base URL (ending in /v1); `flag` names the setting in errors."""

    def __init__(
        self,
        base_url: str,
        key_env: str = DEFAULT_KEY_ENV,
        timeout: float = 300.0,
        retries: int = 4,
        backoff: float = 1.0,
        concurrency: int = 4,
        cache: ReplyCache | None = None,
        flag: str = "judge.base_url",
    ):
        self.base_url = base_url.rstrip("/")
        self.key_env = key_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency = max(1, concurrency)
        self.cache = cache
        self.flag = flag
        self.requests_sent = 0  # requests that reached the server (not cache hits), for reports
        self._count_lock = threading.Lock()

    def models(self) -> list[str]:
        """Model ids the server lists at /v1/models."""
        data = self._request("GET", "/models", None, retry=False)
        return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]

    def check_model(self, model: str, flag: str = "judge.model") -> None:
        listed = self.models()
        if model not in listed:
            shown = ", ".join(listed[:5]) + (" ..." if len(listed) > 5 else "") if listed else "none"
            raise InputError(f"{flag}: the server at {self.base_url} does not serve '{model}' (it lists: {shown})")

    def chat(self, model: str, messages: list[dict[str, str]], settings: dict[str, Any], tag: str = "") -> str:
        """The assistant's reply to `messages` (a cached request when the same one was sent before)."""
        body = {"model": model, "messages": messages, **settings}
        return self._cached("/chat/completions", body, tag, lambda d: d["choices"][0]["message"]["content"] or "")

    def complete(self, model: str, prompt: str, settings: dict[str, Any], tag: str = "") -> str:
        """The continuation of `prompt` from /v1/completions."""
        body = {"model": model, "prompt": prompt, **settings}
        return self._cached("/completions", body, tag, lambda d: d["choices"][0]["text"] or "")

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`function` over `items` on at most `concurrency` threads, results in order."""
        items = list(items)
        if self.concurrency == 1 or len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(function, items))

    def _cached(self, path: str, body: dict[str, Any], tag: str, extract: Callable[[dict], str]) -> str:
        key = ReplyCache.key(self.base_url + path, tag, body) if self.cache is not None else ""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        data = self._request("POST", path, body)
        try:
            reply = extract(data)
        except (KeyError, IndexError, TypeError):
            raise AdaptkitError(f"{self.base_url}{path} answered without a completion: {json.dumps(data)[:200]}") from None
        if self.cache is not None:
            self.cache.put(key, reply)
        return reply

    def _request(self, method: str, path: str, body: dict[str, Any] | None, retry: bool = True) -> dict[str, Any]:
        url = self.base_url + path
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return self._send(method, url, body)
            except urllib.error.HTTPError as exc:
                self._raise_for_access(exc, url)
                if (exc.code == 429 or exc.code >= 500) and attempt + 1 < attempts:
                    time.sleep(self._delay(exc, attempt))
                    continue
                detail = exc.read().decode("utf-8", "replace").strip().replace("\n", " ")[:200]
                raise AdaptkitError(f"{url}: HTTP {exc.code} {exc.reason} after {attempt + 1} attempt(s): {detail}") from None
            except OSError as exc:  # URLError, refused connections, timeouts
                reason = getattr(exc, "reason", exc)
                if self.requests_sent == 0:  # never answered: a set-up problem
                    raise InputError(f"{self.flag}: cannot reach {url} ({reason}); {SERVE_HINT}") from None
                if attempt + 1 < attempts:  # a server that answered before: transient
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise AdaptkitError(f"{url}: no answer after {attempt + 1} attempt(s) ({reason})") from None
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = api_key(self.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload = response.read()
        with self._count_lock:
            self.requests_sent += 1
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise AdaptkitError(f"{url} did not answer with JSON: {payload[:120]!r}") from None

    def _raise_for_access(self, exc: urllib.error.HTTPError, url: str) -> None:
        if exc.code in (401, 403):
            where = f"${self.key_env}" + (f" (or ${FALLBACK_KEY_ENV})" if self.key_env != FALLBACK_KEY_ENV else "")
            state = "the key it holds" if api_key(self.key_env) else "no key (the variable is not set)"
            raise InputError(f"{self.flag}: {url} refused access (HTTP {exc.code}) with {state}; set {where} to a valid API key")

    def _delay(self, exc: urllib.error.HTTPError, attempt: int) -> float:
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        try:
            return min(60.0, float(retry_after)) if retry_after else self.backoff * 2**attempt
        except ValueError:
            return self.backoff * 2**attempt
