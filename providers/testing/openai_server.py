"""A loopback double of the OpenAI HTTP API (and Azure OpenAI's URL shapes), for tests.

It speaks the real wire protocol, so the real `openai` client is exercised end to end:
JSON bodies, `Authorization: Bearer` / Azure `api-key` headers, Server-Sent Events with
`Transfer-Encoding: chunked`, HTTP error bodies and headers. It listens on 127.0.0.1 only.

Endpoints (each under `/v1`, `/openai/v1` and Azure's `/openai` with `?api-version=`):

* `POST /responses` with `stream: true` — the Responses API event stream
  (`response.created` … `response.output_text.delta` … `response.completed`, or
  `response.incomplete` when the reply hits `max_output_tokens`), a message item or a
  scripted `function_call` item. With `conversation`, the double keeps the conversation's
  items (input, then output) like the real service, so tests can check server-side state.
* `POST /conversations` — creates a conversation; `GET /conversations/{id}` reads one.
* `POST /chat/completions` with `stream: true` (also Azure's
  `/openai/deployments/{deployment}/chat/completions`) — `chat.completion.chunk` events,
  tool-call deltas, `finish_reason`, a usage chunk when `stream_options.include_usage`, then
  `data: [DONE]`.

The reply is deterministic: `reply_for(last user input)` (or `reply_text` when set), streamed
one word-piece per delta; one piece counts as one output token. Everything is recorded
(`requests`) and the behaviour can be changed between requests: reply text or length,
first-token delay, token rate, scripted tool calls (`script_tool_call`) and a queue of
faults consumed one per model request (`inject`, see `Fault`).

    with OpenAIDouble(api_key="sk-test") as double:
        settings.OPENAI_BASE_URL = double.base_url          # http://127.0.0.1:PORT/v1
        settings.AZURE_OPENAI_ENDPOINT = double.azure_endpoint  # http://127.0.0.1:PORT
        double.inject(Fault.RATE_LIMITED, retry_after="7")
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlsplit

_PIECES = re.compile(r"\S+\s*|\s+")

#: Routes: (pattern, endpoint). Every API path is accepted under /v1 (OpenAI), /openai/v1
#: (Azure's v1 API) and /openai (Azure with ?api-version=, as `AzureOpenAI` builds it).
_PREFIX = r"(?P<prefix>/v1|/openai/v1|/openai)"
_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"^{_PREFIX}/responses$"), "responses"),
    (re.compile(rf"^{_PREFIX}/conversations$"), "conversations"),
    (re.compile(rf"^{_PREFIX}/conversations/(?P<conversation>[^/]+)$"), "conversation"),
    (re.compile(rf"^{_PREFIX}/chat/completions$"), "chat.completions"),
    (
        re.compile(r"^(?P<prefix>/openai)/deployments/(?P<deployment>[^/]+)/chat/completions$"),
        "chat.completions",
    ),
)
MODEL_ENDPOINTS = frozenset({"responses", "chat.completions"})

EventKind = Literal["meta", "delta", "final"]


def pieces_of(text: str) -> list[str]:
    """`text` cut into the pieces the double streams, one per delta (and per output token)."""
    return _PIECES.findall(text)


def reply_for(prompt: str, words: int = 24) -> str:
    """The double's reply to `prompt`: it quotes the prompt, then `words` deterministic words.

    The same prompt always gets the same reply, and different prompts different replies, so a
    test can check the reply arrived whole and in order.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    tail = " ".join(
        f"w{index}-{digest[(index * 2) % 60 : (index * 2) % 60 + 4]}" for index in range(words)
    )
    return f'Reply to "{prompt}": {tail}.'


class Fault(enum.StrEnum):
    """Faults the double can inject, one per model request (see `OpenAIDouble.inject`)."""

    #: HTTP 429 with `Retry-After` (and `retry-after-ms` when given).
    RATE_LIMITED = "rate_limited"
    #: HTTP 500 with an OpenAI error body.
    SERVER_ERROR = "server_error"
    #: HTTP 503 with an OpenAI error body.
    UNAVAILABLE = "unavailable"
    #: HTTP 401 (`invalid_api_key`).
    UNAUTHORIZED = "unauthorized"
    #: HTTP 400 with code `content_filter` (Azure's shape for a filtered prompt).
    CONTENT_FILTER = "content_filter"
    #: The stream starts, sends `after_deltas` deltas, then the socket is closed mid-body.
    DROP_CONNECTION = "drop_connection"
    #: After the first event the double sends nothing for `stall_seconds`.
    STALL = "stall"
    #: After `after_deltas` deltas an event whose data line is not valid JSON.
    MALFORMED_EVENT = "malformed_event"
    #: After `after_deltas` deltas the reply fails in-stream: `response.failed` (Responses)
    #: or a `{"error": ...}` chunk (Chat Completions), with `error_code`.
    STREAM_ERROR = "stream_error"
    #: After `after_deltas` deltas a Responses `error` event (Chat: an error chunk).
    ERROR_EVENT = "error_event"
    #: After `after_deltas` deltas the reply stops as filtered: `response.incomplete` with
    #: reason `content_filter` (Responses) or `finish_reason: content_filter` (Chat).
    FILTERED_REPLY = "filtered_reply"


_HTTP_FAULTS = {
    Fault.RATE_LIMITED,
    Fault.SERVER_ERROR,
    Fault.UNAVAILABLE,
    Fault.UNAUTHORIZED,
    Fault.CONTENT_FILTER,
}


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """One queued fault and its options."""

    kind: Fault
    #: RATE_LIMITED: the `Retry-After` header value (None: no header).
    retry_after: str | None = "1"
    #: RATE_LIMITED: the `retry-after-ms` header value (None: no header).
    retry_after_ms: str | None = None
    #: DROP_CONNECTION, MALFORMED_EVENT, STREAM_ERROR, ERROR_EVENT, FILTERED_REPLY: how many
    #: text deltas are sent before the fault.
    after_deltas: int = 2
    #: STALL: how long the double goes quiet after the first event.
    stall_seconds: float = 5.0
    #: STREAM_ERROR / ERROR_EVENT: the error code in the event.
    error_code: str = "server_error"
    #: Which requests consume it: "model" (responses and chat completions) or "conversations".
    endpoint: Literal["model", "conversations"] = "model"


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    """A scripted reply: the model calls `name` with `arguments` (then stops for tool use).

    It is used once, by the next model request that offers a tool of that name.
    """

    name: str
    arguments: Mapping[str, Any]
    call_id: str = ""  # empty: one is generated
    text: str = ""  # text streamed before the call, if any


@dataclass(slots=True)
class RecordedRequest:
    """One request the double received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # the decoded JSON body, or None
    endpoint: str  # "responses", "conversations", "conversation", "chat.completions", "unknown"
    deployment: str | None = None  # Azure's /openai/deployments/{deployment}/...
    #: How it ended: "pending", "completed", "fault:<kind>", "client_disconnected",
    #: "error:<status>".
    outcome: str = "pending"
    #: The text the double streamed (or meant to), for assertions.
    reply: str = ""

    @property
    def api_key(self) -> str | None:
        """The key the client sent: Azure's `api-key` header, else the `Authorization` bearer."""
        if "api-key" in self.headers:
            return self.headers["api-key"]
        authorization = self.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[len("bearer ") :]
        return None


class _ClientGone(Exception):
    """The client closed the connection while the double was writing."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, double: OpenAIDouble) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.double = double


class OpenAIDouble:
    """A threaded loopback OpenAI (and Azure OpenAI) server. Use it as a context manager.

    Attributes below may be changed between requests. `api_key`, when set, is required
    (401 otherwise). `input_tokens` fixes the reported input token count (None: about one
    token per four characters of the request's instructions and input).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        reply_text: str | None = None,
        reply_words: int = 24,
        first_token_delay: float = 0.0,
        tokens_per_second: float | None = None,
        input_tokens: int | None = None,
        cached_tokens: int = 0,
    ) -> None:
        self.api_key = api_key
        self.reply_text = reply_text
        self.reply_words = reply_words
        self.first_token_delay = first_token_delay
        self.tokens_per_second = tokens_per_second
        self.input_tokens = input_tokens
        self.cached_tokens = cached_tokens
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: deque[InjectedFault] = deque()
        self._tool_calls: deque[ScriptedToolCall] = deque()
        self._conversations: dict[str, dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> OpenAIDouble:
        """Start serving on 127.0.0.1 on a free port, in a background thread."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},  # so that stop() returns quickly
                name="openai-double",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled streams are woken up and their connections closed."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- addresses ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, the server's root. Raises RuntimeError when not started."""
        if self._server is None:
            raise RuntimeError("The OpenAI double is not running.")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (`.../v1`), for `OPENAI_BASE_URL` and compatible servers."""
        return f"{self.url}/v1"

    @property
    def azure_endpoint(self) -> str:
        """The Azure-style endpoint (the root), for `AZURE_OPENAI_ENDPOINT`."""
        return self.url

    # --- scripting ------------------------------------------------------------------

    def inject(self, kind: Fault | str, **options: Any) -> None:
        """Queue a fault for a coming request; options are `InjectedFault`'s fields."""
        with self._lock:
            self._faults.append(InjectedFault(Fault(kind), **options))

    def script_tool_call(
        self,
        name: str,
        arguments: Mapping[str, Any],
        *,
        call_id: str = "",
        text: str = "",
    ) -> None:
        """Make the next model request that offers tool `name` answer with a call to it."""
        with self._lock:
            self._tool_calls.append(ScriptedToolCall(name, dict(arguments), call_id, text))

    def reset(self) -> None:
        """Forget requests, faults, scripts and conversations (settings are kept)."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._tool_calls.clear()
            self._conversations.clear()

    # --- inspection -----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def model_requests(self) -> list[RecordedRequest]:
        """The requests to `/responses` and `/chat/completions`, oldest first."""
        return [r for r in self.requests if r.endpoint in MODEL_ENDPOINTS]

    @property
    def conversations(self) -> dict[str, list[dict[str, Any]]]:
        """Each stored conversation's items (input and output, oldest first), by id."""
        with self._lock:
            return {key: list(value["items"]) for key, value in self._conversations.items()}

    def wait_for_outcome(self, record: RecordedRequest, timeout: float = 3.0) -> str:
        """Wait until the double finished handling `record`; return its outcome."""
        deadline = time.monotonic() + timeout
        while record.outcome == "pending" and time.monotonic() < deadline:
            time.sleep(0.01)
        return record.outcome

    # --- internals used by the handler -------------------------------------------------

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)

    def _take_fault(self, endpoint: str) -> InjectedFault | None:
        target = "model" if endpoint in MODEL_ENDPOINTS else endpoint
        with self._lock:
            if self._faults and self._faults[0].endpoint == target:
                return self._faults.popleft()
        return None

    def _take_tool_call(self, offered: Sequence[str]) -> ScriptedToolCall | None:
        with self._lock:
            if self._tool_calls and self._tool_calls[0].name in offered:
                return self._tool_calls.popleft()
        return None

    def _create_conversation(self, metadata: Any, items: Sequence[Any]) -> dict[str, Any]:
        conversation: dict[str, Any] = {
            "id": f"conv_{uuid.uuid4().hex}",
            "object": "conversation",
            "created_at": int(time.time()),
            "metadata": metadata if isinstance(metadata, dict) else {},
        }
        with self._lock:
            self._conversations[conversation["id"]] = {
                "object": conversation,
                "items": [_as_item(item) for item in items],
            }
        return conversation

    def _conversation(self, conversation_id: str) -> dict[str, Any] | None:
        with self._lock:
            stored = self._conversations.get(conversation_id)
            return None if stored is None else dict(stored["object"])

    def _conversation_items(self, conversation_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._conversations[conversation_id]["items"])

    def _append_items(self, conversation_id: str, items: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self._conversations[conversation_id]["items"].extend(items)

    def _reply(self, prompt: str) -> str:
        return (
            self.reply_text if self.reply_text is not None else reply_for(prompt, self.reply_words)
        )

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


# --- request helpers ------------------------------------------------------------------------


def _as_item(item: Any) -> dict[str, Any]:
    """A Responses input item with its `type` made explicit (easy messages may omit it)."""
    if isinstance(item, dict):
        if "type" not in item and "role" in item:
            return {"type": "message", **item}
        return dict(item)
    return {"type": "unknown", "value": item}


def _input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if isinstance(raw, list):
        return [_as_item(item) for item in raw]
    return []


def _text_of(content: Any) -> str:
    """The text of a message's content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _last_prompt_from_items(items: Sequence[Mapping[str, Any]]) -> str:
    """The last user text or tool output in Responses items."""
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            return _text_of(item.get("content"))
        if item.get("type") == "function_call_output":
            return _text_of(item.get("output"))
    return ""


def _last_prompt_from_messages(messages: Any) -> str:
    """The last user text or tool output in Chat Completions messages."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") in {"user", "tool"}:
            return _text_of(message.get("content"))
    return ""


def _estimate_tokens(*values: Any) -> int:
    return max(1, len(json.dumps(values, ensure_ascii=False)) // 4)


def _split_arguments(arguments: str, parts: int = 3) -> list[str]:
    size = max(1, -(-len(arguments) // parts))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _error_body(message: str, error_type: str | None, code: str | None, **extra: Any) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code, **extra}}
    ).encode("utf-8")


# --- the handler ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-double/1"
    timeout = 30  # idle keep-alive connections end after this

    @property
    def double(self) -> OpenAIDouble:
        return cast(_Server, self.server).double

    def handle(self) -> None:
        """Serve the connection's requests; a client that went away is not an error."""
        with contextlib.suppress(ConnectionError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request log lines."""

    # --- plumbing -------------------------------------------------------------------

    def _send_json(
        self, status: int, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        self.end_headers()
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):X}\r\n".encode("ascii") + data + b"\r\n")
            self.wfile.flush()
        except OSError as error:  # BrokenPipeError, ConnectionResetError
            raise _ClientGone from error

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError as error:
            raise _ClientGone from error

    def _drop_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- entry points ---------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query))
        headers = {name.lower(): value for name, value in self.headers.items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        endpoint, match = "unknown", None
        for pattern, name in _ROUTES:
            match = pattern.match(split.path)
            if match:
                endpoint = name
                break
        groups = match.groupdict() if match else {}
        record = RecordedRequest(
            method=method,
            path=split.path,
            query=query,
            headers=headers,
            body=body,
            endpoint=endpoint,
            deployment=groups.get("deployment"),
        )
        self.double._record(record)
        try:
            self._dispatch(record, groups)
        except _ClientGone:
            record.outcome = "client_disconnected"
            self.close_connection = True
        finally:
            if record.outcome == "pending":
                record.outcome = "completed"

    def _reject(self, record: RecordedRequest, status: int, payload: bytes, **headers: str) -> None:
        record.outcome = f"error:{status}"
        self._send_json(status, payload, headers)

    def _dispatch(self, record: RecordedRequest, groups: Mapping[str, str | None]) -> None:
        double = self.double
        if record.endpoint == "unknown":
            self._reject(record, 404, _error_body("Not found.", "invalid_request_error", None))
            return
        if groups.get("prefix") == "/openai" and "api-version" not in record.query:
            self._reject(
                record,
                404,
                json.dumps(
                    {"error": {"code": "404", "message": "Resource not found (no api-version)."}}
                ).encode("utf-8"),
            )
            return
        if double.api_key is not None and record.api_key != double.api_key:
            self._reject(
                record,
                401,
                _error_body(
                    "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                ),
            )
            return
        expected_method = "GET" if record.endpoint == "conversation" else "POST"
        if record.method != expected_method:
            self._reject(
                record, 405, _error_body("Method not allowed.", "invalid_request_error", None)
            )
            return
        if record.method == "POST" and not isinstance(record.body, dict):
            self._reject(
                record,
                400,
                _error_body("The body must be a JSON object.", "invalid_request_error", None),
            )
            return

        fault = double._take_fault(record.endpoint)
        if fault is not None and fault.kind in _HTTP_FAULTS:
            self._http_fault(record, fault)
            return

        if record.endpoint == "conversations":
            body = cast(dict[str, Any], record.body)
            conversation = double._create_conversation(
                body.get("metadata"), body.get("items") or []
            )
            self._send_json(200, json.dumps(conversation).encode("utf-8"))
        elif record.endpoint == "conversation":
            found = double._conversation(str(groups.get("conversation")))
            if found is None:
                self._reject(
                    record,
                    404,
                    _error_body("Conversation not found.", "invalid_request_error", None),
                )
            else:
                self._send_json(200, json.dumps(found).encode("utf-8"))
        elif record.endpoint == "responses":
            self._responses(record, cast(dict[str, Any], record.body), fault)
        else:
            self._chat_completions(record, cast(dict[str, Any], record.body), fault)

    def _http_fault(self, record: RecordedRequest, fault: InjectedFault) -> None:
        record.outcome = f"fault:{fault.kind}"
        if fault.kind is Fault.RATE_LIMITED:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = fault.retry_after_ms
            self._send_json(
                429,
                _error_body(
                    "Rate limit reached for requests. Please try again later.",
                    "requests",
                    "rate_limit_exceeded",
                ),
                headers,
            )
        elif fault.kind is Fault.SERVER_ERROR:
            self._send_json(
                500,
                _error_body(
                    "The server had an error while processing your request.", "server_error", None
                ),
            )
        elif fault.kind is Fault.UNAVAILABLE:
            self._send_json(
                503,
                _error_body(
                    "The engine is currently overloaded, please try again later.",
                    "server_error",
                    None,
                ),
            )
        elif fault.kind is Fault.UNAUTHORIZED:
            self._send_json(
                401,
                _error_body(
                    "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                ),
            )
        else:  # CONTENT_FILTER, Azure's shape
            self._send_json(
                400,
                _error_body(
                    "The response was filtered due to the prompt triggering the content "
                    "management policy.",
                    None,
                    "content_filter",
                    status=400,
                    innererror={"code": "ResponsibleAIPolicyViolation"},
                ),
            )

    # --- streaming with faults, pacing and disconnect detection ------------------------------

    def _pump(
        self,
        record: RecordedRequest,
        events: Iterator[tuple[EventKind, bytes]],
        fault: InjectedFault | None,
        fault_event: Mapping[Fault, bytes],
    ) -> None:
        """Write `events` as chunks, paced, applying a stream fault at its point.

        `fault_event` gives, for MALFORMED_EVENT / STREAM_ERROR / ERROR_EVENT, the bytes to
        write in place of the rest of the stream.
        """
        double = self.double
        self._start_stream()
        stream_fault = (
            fault
            if fault is not None
            and (fault.kind in fault_event or fault.kind is Fault.DROP_CONNECTION)
            else None
        )
        deltas = 0
        first = True
        started = time.monotonic()
        for kind, data in events:
            if kind == "delta":
                if deltas == 0:
                    double._sleep(double.first_token_delay)
                    started = time.monotonic()
                elif double.tokens_per_second:
                    double._sleep(started + deltas / double.tokens_per_second - time.monotonic())
            if stream_fault is not None and kind != "meta" and deltas >= stream_fault.after_deltas:
                record.outcome = f"fault:{stream_fault.kind}"
                if stream_fault.kind is Fault.DROP_CONNECTION:
                    self._drop_connection()
                    return
                self._write_chunk(fault_event[stream_fault.kind])
                self._end_stream()
                return
            self._write_chunk(data)
            if kind == "delta":
                deltas += 1
            if first and fault is not None and fault.kind is Fault.STALL:
                record.outcome = f"fault:{fault.kind}"
                double._sleep(fault.stall_seconds)
            first = False
        self._end_stream()

    # --- Responses API ----------------------------------------------------------------

    def _responses(
        self, record: RecordedRequest, body: dict[str, Any], fault: InjectedFault | None
    ) -> None:
        double = self.double
        if body.get("stream") is not True:
            self._reject(
                record,
                400,
                _error_body(
                    "The double only streams (stream: true).", "invalid_request_error", None
                ),
            )
            return
        if not body.get("model"):
            self._reject(
                record,
                400,
                _error_body(
                    "Missing model.", "invalid_request_error", "missing_required_parameter"
                ),
            )
            return
        conversation_ref = body.get("conversation")
        conversation_id = (
            conversation_ref.get("id") if isinstance(conversation_ref, dict) else conversation_ref
        )
        history: list[dict[str, Any]] = []
        if conversation_id is not None:
            if double._conversation(str(conversation_id)) is None:
                self._reject(
                    record,
                    404,
                    _error_body(
                        f"Conversation with id '{conversation_id}' not found.",
                        "invalid_request_error",
                        None,
                    ),
                )
                return
            history = double._conversation_items(str(conversation_id))
        new_items = _input_items(body)
        context = history + new_items
        offered = [
            str(tool.get("name")) for tool in body.get("tools") or [] if isinstance(tool, dict)
        ]
        script = double._take_tool_call(offered)

        text = (
            script.text if script is not None else double._reply(_last_prompt_from_items(context))
        )
        pieces = pieces_of(text)
        incomplete: str | None = None
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and len(pieces) > limit:
            pieces, incomplete = pieces[:limit], "max_output_tokens"
        if fault is not None and fault.kind is Fault.FILTERED_REPLY:
            pieces, incomplete = pieces[: fault.after_deltas], "content_filter"
            record.outcome = f"fault:{fault.kind}"
        record.reply = "".join(pieces)
        input_tokens = (
            double.input_tokens
            if double.input_tokens is not None
            else _estimate_tokens(body.get("instructions"), context)
        )
        sequence = iter(range(1_000_000))
        response_id = f"resp_{uuid.uuid4().hex}"
        created_at = int(time.time())

        def response_object(
            status: str,
            output: list[dict[str, Any]],
            usage: dict[str, Any] | None = None,
            error: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "response",
                "created_at": created_at,
                "status": status,
                "background": False,
                "completed_at": int(time.time()) if status == "completed" else None,
                "conversation": {"id": conversation_id} if conversation_id else None,
                "error": error,
                "incomplete_details": {"reason": incomplete} if status == "incomplete" else None,
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None,
                "metadata": {},
                "model": body.get("model"),
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None},
                "service_tier": "default",
                "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": "auto",
                "tools": body.get("tools") or [],
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": usage,
                "user": None,
            }

        def event(event_type: str, **fields: Any) -> bytes:
            payload = {"type": event_type, **fields, "sequence_number": next(sequence)}
            return f"event: {event_type}\ndata: {json.dumps(payload)}\n\n".encode()

        def events() -> Iterator[tuple[EventKind, bytes]]:
            yield "meta", event("response.created", response=response_object("in_progress", []))
            yield "meta", event("response.in_progress", response=response_object("in_progress", []))
            output: list[dict[str, Any]] = []
            if pieces:
                item_id = f"msg_{uuid.uuid4().hex}"
                index = len(output)
                message: dict[str, Any] = {
                    "id": item_id,
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
                yield "meta", event("response.output_item.added", output_index=index, item=message)
                empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                yield (
                    "meta",
                    event(
                        "response.content_part.added",
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        part=empty_part,
                    ),
                )
                for piece in pieces:
                    yield (
                        "delta",
                        event(
                            "response.output_text.delta",
                            item_id=item_id,
                            output_index=index,
                            content_index=0,
                            delta=piece,
                            logprobs=[],
                        ),
                    )
                full = "".join(pieces)
                yield (
                    "meta",
                    event(
                        "response.output_text.done",
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        text=full,
                        logprobs=[],
                    ),
                )
                part = {"type": "output_text", "text": full, "annotations": [], "logprobs": []}
                yield (
                    "meta",
                    event(
                        "response.content_part.done",
                        item_id=item_id,
                        output_index=index,
                        content_index=0,
                        part=part,
                    ),
                )
                message = {
                    **message,
                    "status": "incomplete" if incomplete else "completed",
                    "content": [part],
                }
                output.append(message)
                yield "meta", event("response.output_item.done", output_index=index, item=message)
            if script is not None and incomplete is None:
                item_id = f"fc_{uuid.uuid4().hex}"
                index = len(output)
                arguments = json.dumps(dict(script.arguments))
                call = {
                    "id": item_id,
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": script.call_id or f"call_{uuid.uuid4().hex[:24]}",
                    "name": script.name,
                    "arguments": "",
                }
                yield "meta", event("response.output_item.added", output_index=index, item=call)
                for piece in _split_arguments(arguments):
                    yield (
                        "meta",
                        event(
                            "response.function_call_arguments.delta",
                            item_id=item_id,
                            output_index=index,
                            delta=piece,
                        ),
                    )
                yield (
                    "meta",
                    event(
                        "response.function_call_arguments.done",
                        item_id=item_id,
                        output_index=index,
                        name=script.name,
                        arguments=arguments,
                    ),
                )
                call = {**call, "status": "completed", "arguments": arguments}
                output.append(call)
                yield "meta", event("response.output_item.done", output_index=index, item=call)
            usage = {
                "input_tokens": input_tokens,
                "input_tokens_details": {
                    "cached_tokens": double.cached_tokens,
                    "cache_write_tokens": 0,
                },
                "output_tokens": len(pieces),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + len(pieces),
            }
            if conversation_id is not None:
                # The real service adds the input, then the output, once the response ends.
                double._append_items(str(conversation_id), new_items + output)
            if incomplete:
                final = event(
                    "response.incomplete", response=response_object("incomplete", output, usage)
                )
            else:
                final = event(
                    "response.completed", response=response_object("completed", output, usage)
                )
            yield "final", final

        error_code = fault.error_code if fault is not None else "server_error"
        failed = event(
            "response.failed",
            response=response_object(
                "failed",
                [],
                error={"code": error_code, "message": "The model failed to generate a response."},
            ),
        )
        error_event = event(
            "error", code=error_code, message="An error occurred while streaming.", param=None
        )
        fault_events = {
            Fault.MALFORMED_EVENT: (
                b"event: response.output_text.delta\n"
                b'data: {"type": "response.output_text.delta", "delta": \n\n'
            ),
            Fault.STREAM_ERROR: failed,
            Fault.ERROR_EVENT: error_event,
        }
        self._pump(record, events(), fault, fault_events)

    # --- Chat Completions -----------------------------------------------------------------

    def _chat_completions(
        self, record: RecordedRequest, body: dict[str, Any], fault: InjectedFault | None
    ) -> None:
        double = self.double
        if body.get("stream") is not True:
            self._reject(
                record,
                400,
                _error_body(
                    "The double only streams (stream: true).", "invalid_request_error", None
                ),
            )
            return
        model = body.get("model") or record.deployment
        if not model or not isinstance(body.get("messages"), list):
            self._reject(
                record,
                400,
                _error_body("Missing model or messages.", "invalid_request_error", None),
            )
            return
        offered = [
            str(tool.get("function", {}).get("name"))
            for tool in body.get("tools") or []
            if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
        ]
        script = double._take_tool_call(offered)
        text = (
            script.text
            if script is not None
            else double._reply(_last_prompt_from_messages(body["messages"]))
        )
        pieces = pieces_of(text)
        finish = "tool_calls" if script is not None else "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and len(pieces) > limit:
            pieces, finish = pieces[:limit], "length"
        if fault is not None and fault.kind is Fault.FILTERED_REPLY:
            pieces, finish = pieces[: fault.after_deltas], "content_filter"
            record.outcome = f"fault:{fault.kind}"
        record.reply = "".join(pieces)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        input_tokens = (
            double.input_tokens
            if double.input_tokens is not None
            else _estimate_tokens(body["messages"])
        )
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_double",
                "service_tier": "default",
                "choices": choices,
            }
            if include_usage:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n".encode()

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        def events() -> Iterator[tuple[EventKind, bytes]]:
            yield "meta", chunk(choice({"role": "assistant", "content": "", "refusal": None}))
            for piece in pieces:
                yield "delta", chunk(choice({"content": piece}))
            if script is not None and finish == "tool_calls":
                arguments = json.dumps(dict(script.arguments))
                call_id = script.call_id or f"call_{uuid.uuid4().hex[:24]}"
                yield (
                    "meta",
                    chunk(
                        choice(
                            {
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "id": call_id,
                                        "type": "function",
                                        "function": {"name": script.name, "arguments": ""},
                                    }
                                ]
                            }
                        )
                    ),
                )
                for piece in _split_arguments(arguments):
                    yield (
                        "meta",
                        chunk(
                            choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                        ),
                    )
            yield "final", chunk(choice({}, finish))
            if include_usage:
                usage = {
                    "prompt_tokens": input_tokens,
                    "completion_tokens": len(pieces),
                    "total_tokens": input_tokens + len(pieces),
                    "prompt_tokens_details": {
                        "cached_tokens": double.cached_tokens,
                        "audio_tokens": 0,
                    },
                    "completion_tokens_details": {
                        "reasoning_tokens": 0,
                        "audio_tokens": 0,
                        "accepted_prediction_tokens": 0,
                        "rejected_prediction_tokens": 0,
                    },
                }
                yield "meta", chunk([], usage)
            yield "meta", b"data: [DONE]\n\n"

        error_code = fault.error_code if fault is not None else "server_error"
        error_chunk = (
            "data: "
            + json.dumps(
                {
                    "error": {
                        "message": "The model failed to generate a response.",
                        "type": "server_error",
                        "param": None,
                        "code": error_code,
                    }
                }
            )
            + "\n\n"
        ).encode()
        fault_events = {
            Fault.MALFORMED_EVENT: b'data: {"id": "chatcmpl-broken", "choices": [\n\n',
            Fault.STREAM_ERROR: error_chunk,
            Fault.ERROR_EVENT: error_chunk,
        }
        self._pump(record, events(), fault, fault_events)


__all__ = [
    "MODEL_ENDPOINTS",
    "Fault",
    "InjectedFault",
    "OpenAIDouble",
    "RecordedRequest",
    "ScriptedToolCall",
    "pieces_of",
    "reply_for",
]
