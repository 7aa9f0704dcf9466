"""An engine over an OpenAI-compatible completions server (vLLM's or SGLang's) a user already runs.

Selected with `engine=openai engine.base_url=http://HOST:PORT/v1`. The model is not loaded here:
each `GenerationRequest` becomes one POST to `{base_url}/completions`, sent with httpx from an
event loop this engine owns in a background thread (as the vLLM adapter does), so `generate`
(blocking, from any thread) and `generate_async` (awaited on any loop, many at once) can be
mixed; at most `concurrency` requests are in flight to the server.

Design:
- The prompt is sent as token ids of the experiment's tokenizer, without special tokens
  (`tokenize: true`, the default), exactly what the vllm engine sends its engine: the chat
  template already wrote the beginning-of-sequence token, and a server given text would add
  another one (vLLM's completions endpoint tokenizes with special tokens). The OpenAI API takes
  a prompt of token ids; `tokenize: false` sends the text for a server that does not.
- Per request: the served model, `max_tokens`, temperature and top_p (greedy: 0 and 1), the seed
  (`request_seed`, the same derivation as the local engines, so a request's seed is the one
  engine=vllm gives it) and the stop strings. `banned_words` cannot be enforced through the API
  (a logit bias bans single tokens only, and vLLM's `bad_words` misses non-canonical spellings),
  so a request with banned words is refused (search rollouts have them: search with
  engine=vllm or transformers; eval and sample have none).
- Faults: HTTP 408, 429 and 5xx answers and connection errors are retried by the engine up to
  `max_retries` times, after `retry_backoff_s` x 2^try seconds (at most MAX_BACKOFF_S, or the
  server's Retry-After), since a busy or restarting server recovers within seconds. Any other
  HTTP error, a body that is not a completion, and a response slower than `timeout_s` raise an
  error naming the request: `engines.calls` records it, retries it on its own terms, or gives up.
- At start the engine asks `{base_url}/models` which models the server has: `served_model`
  (default: the experiment's model path) must be one of them, and vLLM's `max_model_len` there
  becomes this engine's, which the search fits rollout budgets into. `describe()` (the manifest)
  records the URL, the model id, the server's version where it tells it, and the settings; the
  API key (read from the environment variable `api_key_env`) is never recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from typing import Any, Sequence

from retro_search.engines.base import GenerationRequest, GenerationResult, request_seed

__all__ = ["OpenAIEngine", "completion_body", "to_result"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # `vllm serve`'s default port
CONNECT_TIMEOUT_S = 30.0   # a server that does not accept a connection in this long is down
PROBE_TIMEOUT_S = 30.0     # /models and /version at start: answered at once by a live server
MAX_BACKOFF_S = 60.0       # a longer wait between tries would mostly hold up the whole job
RETRY_STATUS = frozenset({408, 429})  # and every 5xx: the server may answer the same request later
SNIPPET_CHARS = 200


class ServerError(RuntimeError):
    """The server refused or garbled a request, or could not be reached after the retries."""


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 3] + "..."


def completion_body(request: GenerationRequest, model: str, prompt: str | list[int]
                    ) -> dict[str, Any]:
    """The JSON body of the completions call for `request` (`prompt`: its text or token ids)."""
    if request.banned_words:
        raise ValueError(
            f"request {request.request_id!r}: the openai engine cannot ban words "
            f"({', '.join(map(repr, request.banned_words[:3]))}"
            f"{', ...' if len(request.banned_words) > 3 else ''}): a completions server bans "
            "single tokens only, not every spelling of a word; use engine=vllm or transformers")
    if not prompt:
        raise ValueError(f"request {request.request_id!r}: the prompt is empty")
    greedy = request.temperature == 0
    body: dict[str, Any] = {
        "model": model, "prompt": prompt, "n": 1, "max_tokens": request.max_tokens,
        "temperature": 0.0 if greedy else float(request.temperature),
        "top_p": 1.0 if greedy else float(request.top_p), "seed": request_seed(request)}
    if request.stop:
        body["stop"] = list(request.stop)
    return body


def to_result(request: GenerationRequest, payload: Any, url: str) -> GenerationResult:
    """The `GenerationResult` of a completions response body (parsed JSON).

    `num_tokens` is the response's `usage.completion_tokens` (one choice, so all of it): the
    tokens the server generated, the one that ended generation included, as the local engines
    count them (vLLM counts len(token_ids), as engine=vllm does); a server without usage must
    return the choice's `token_ids`. `stop_string` is the stop string the server says ended
    generation (vLLM's `stop_reason`, SGLang's `matched_stop`), None for end of sequence or a
    server that does not say. A finish_reason other than "stop" or "length" is an error."""
    rid = request.request_id

    def bad(why: str) -> ServerError:
        return ServerError(f"request {rid!r}: {url} {why}: {_snippet(str(payload))}")

    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise bad("answered without a completion (no choices)")
    choice = choices[0]
    text = choice.get("text")
    if not isinstance(text, str):
        raise bad("answered a completion without text")
    usage = payload.get("usage")
    num_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not (isinstance(num_tokens, int) and not isinstance(num_tokens, bool) and num_tokens >= 0):
        ids = choice.get("token_ids")
        if not isinstance(ids, list):
            raise bad("answered without a token count (usage.completion_tokens)")
        num_tokens = len(ids)
    finish = choice.get("finish_reason")
    if finish == "length":
        return GenerationResult(rid, text, num_tokens, "length", None)
    if finish == "stop":
        said = choice.get("stop_reason", choice.get("matched_stop"))
        stop_string = said if isinstance(said, str) and said in request.stop else None
        return GenerationResult(rid, text, num_tokens, "stop", stop_string)
    raise bad(f"finished with reason {finish!r} instead of 'stop' or 'length' (aborted?)")


class OpenAIEngine:
    """Generate through an OpenAI-compatible completions server; see the module docstring.

    `model`, `tokenizer` and `revision` are the experiment's (config.engine_kwargs): the tokenizer
    the prompts are tokenized with, and the served model's default name. Call `shutdown()` when
    done to close the connections and the event-loop thread.
    """

    def __init__(self, model: str, tokenizer: str | None = None, revision: str | None = None, *,
                 base_url: str = DEFAULT_BASE_URL, served_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 64,
                 timeout_s: float | None = None, max_retries: int = 4,
                 retry_backoff_s: float = 1.0, tokenize: bool = True):
        import httpx

        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"engine.concurrency must be an integer >= 1, got {concurrency!r}")
        self._httpx = httpx
        # httpx logs every request at INFO: one line per generation would bury the job's log
        logging.getLogger("httpx").setLevel(max(logging.getLogger("httpx").level,
                                                logging.WARNING))
        self.base_url = base_url.rstrip("/")
        self.served_model = served_model or model
        self.api_key_env = api_key_env
        self.concurrency = self.batch_size = concurrency  # batch_size: engines.calls' batch limit
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.device = "remote"
        self.max_model_len: int | None = None
        self._server: dict[str, Any] = {}
        self.tokenizer = None
        if tokenize:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, revision=revision)
        key = os.environ.get(api_key_env) if api_key_env else None
        self._has_key = bool(key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s or CONNECT_TIMEOUT_S,
                                                             CONNECT_TIMEOUT_S), pool=None)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-engine-loop",
                                        daemon=True)
        self._thread.start()

        async def start() -> None:  # on the engine's loop, which the client's pool belongs to
            self._client = httpx.AsyncClient(
                headers=headers, timeout=self._timeout,
                limits=httpx.Limits(max_connections=concurrency,
                                    max_keepalive_connections=concurrency))
            self._slots = asyncio.Semaphore(concurrency)
            await self._probe()

        try:
            self._run(start())
        except BaseException:
            self.shutdown()
            raise
        log.info("openai engine: %s", self.describe())

    # --- start-up ----------------------------------------------------------------------------

    async def _probe(self) -> None:
        """Ask the server which models it serves; refuse a served_model it does not have."""
        httpx, url = self._httpx, f"{self.base_url}/models"
        try:
            response = await self._client.get(url, timeout=min(self.timeout_s or PROBE_TIMEOUT_S,
                                                               PROBE_TIMEOUT_S))
        except httpx.HTTPError as err:
            raise ConnectionError(
                f"engine.base_url: no server answers at {url} ({type(err).__name__}: {err}); "
                "check that the server runs, and the host, port and /v1 of the URL") from None
        if response.status_code in (401, 403):
            raise PermissionError(
                f"engine.base_url: {url} refused the API key (HTTP {response.status_code}); "
                f"set the server's key in ${self.api_key_env} (engine.api_key_env names the "
                f"variable){'' if self._has_key else ', which is not set'}")
        try:
            models = [m for m in response.json()["data"] if isinstance(m, dict) and "id" in m]
        except (ValueError, KeyError, TypeError):
            log.warning("engine.base_url: %s did not list its models (HTTP %s); sending requests "
                        "for model %r unchecked", url, response.status_code, self.served_model)
            return
        ids = [m["id"] for m in models]
        found = next((m for m in models if m["id"] == self.served_model), None)
        if found is None:
            raise ValueError(f"engine.served_model: the server at {self.base_url} serves "
                             f"{ids}, not {self.served_model!r}; set engine.served_model to one "
                             "of them")
        length = found.get("max_model_len")
        self.max_model_len = length if isinstance(length, int) and length > 0 else None
        self._server = {"served_model_root": found.get("root"),
                        "owned_by": found.get("owned_by"), **await self._version()}

    async def _version(self) -> dict[str, Any]:
        """The server's version where it tells it (vLLM and SGLang: GET /version)."""
        root = self.base_url.removesuffix("/v1")
        try:
            response = await self._client.get(f"{root}/version", timeout=PROBE_TIMEOUT_S)
            version = response.json().get("version") if response.status_code == 200 else None
        except (self._httpx.HTTPError, ValueError, AttributeError):
            version = None
        return {"server_version": version} if isinstance(version, str) else {}

    def describe(self) -> dict[str, Any]:
        """What ran, for the manifest: the server, the model it served and the settings (never
        the API key, only whether one was sent)."""
        return {"base_url": self.base_url, "served_model": self.served_model, **self._server,
                "max_model_len": self.max_model_len,
                "prompt": "token ids" if self.tokenizer is not None else "text",
                "concurrency": self.concurrency, "timeout_s": self.timeout_s,
                "max_retries": self.max_retries, "api_key_env": self.api_key_env,
                "api_key_sent": self._has_key}

    # --- requests ----------------------------------------------------------------------------

    def _body(self, request: GenerationRequest, ids: list[int] | None) -> dict[str, Any]:
        return completion_body(request, self.served_model, request.prompt if ids is None else ids)

    def _tokenize(self, prompts: list[str]) -> list[list[int] | None]:
        if self.tokenizer is None:
            return [None] * len(prompts)
        return list(self.tokenizer(prompts, add_special_tokens=False).input_ids)

    def _backoff(self, attempt: int, response: Any) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            wait = float(retry_after)
        except (TypeError, ValueError):
            # jitter, so that requests refused together do not come back together
            wait = self.retry_backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
        return min(max(wait, 0.0), MAX_BACKOFF_S)

    async def _complete(self, request: GenerationRequest, body: dict[str, Any]
                        ) -> GenerationResult:
        """One completion on the engine's loop, with the retries of transient faults."""
        httpx, url, rid = self._httpx, f"{self.base_url}/completions", request.request_id
        async with self._slots:
            for attempt in range(self.max_retries + 1):
                response = None
                try:
                    response = await self._client.post(url, json=body)
                except httpx.ConnectTimeout as err:
                    why = f"{type(err).__name__}: cannot connect to {url}"
                except httpx.TimeoutException:
                    raise TimeoutError(f"request {rid!r}: no answer from {url} within "
                                       f"engine.timeout_s={self.timeout_s} s") from None
                except httpx.TransportError as err:  # refused, reset, closed mid-answer
                    why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                else:
                    status = response.status_code
                    if status < 400:
                        try:
                            payload = response.json()
                        except ValueError:
                            raise ServerError(
                                f"request {rid!r}: {url} answered HTTP {status} with a body "
                                f"that is not JSON: {_snippet(response.text)!r}") from None
                        return to_result(request, payload, url)
                    why = f"HTTP {status}: {_snippet(response.text)}"
                    if status not in RETRY_STATUS and status < 500:
                        raise ServerError(f"request {rid!r}: {url} refused it ({why})")
                if attempt == self.max_retries:
                    raise ServerError(f"request {rid!r}: {url} failed {attempt + 1} times "
                                      f"(engine.max_retries={self.max_retries}); last: {why}")
                log.debug("request %r: %s; trying again", rid, why)
                await asyncio.sleep(self._backoff(attempt, response))
        raise AssertionError("unreachable")

    async def generate_async(self, request: GenerationRequest) -> GenerationResult:
        """Generate one request; may be awaited from any event loop, many at once."""
        body = self._body(request, self._tokenize([request.prompt])[0])
        future = asyncio.run_coroutine_threadsafe(self._complete(request, body), self._loop)
        return await asyncio.wrap_future(future)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate all requests, `concurrency` at a time; results in request order. Raises the
        first request's error, after every other request has finished."""
        if not requests:
            return []
        bodies = [self._body(r, ids) for r, ids in
                  zip(requests, self._tokenize([r.prompt for r in requests]))]

        async def run_all():
            return await asyncio.gather(*(self._complete(r, b) for r, b in zip(requests, bodies)),
                                        return_exceptions=True)

        results = self._run(run_all())
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    # --- the loop ----------------------------------------------------------------------------

    def _run(self, coroutine):
        """Run a coroutine on the engine's loop and block until it is done."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def shutdown(self) -> None:
        """Cancel what is in flight, close the connections and stop the loop (idempotent)."""
        if self._loop.is_closed():
            return

        async def close() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            client = getattr(self, "_client", None)
            if client is not None:
                await client.aclose()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
            except Exception as err:  # noqa: BLE001 - closing anyway
                log.warning("openai engine: closing its connections failed: %s", err)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop.close()
