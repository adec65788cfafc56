"""A loopback double of AWS Bedrock Runtime's Converse and ConverseStream operations.

It speaks the real wire protocol (REST-JSON requests; `application/vnd.amazon.eventstream`
responses with AWS's binary framing; AWS's JSON error shape and `x-amzn-ErrorType` header),
so the real boto3 client is exercised end to end on 127.0.0.1, with no outside network.
Point a client at it with `endpoint_url=server.url`. Signatures are not checked.

Operations:

* `POST /model/{modelId}/converse-stream` — events `messageStart`, `contentBlockStart`
  (tool use only, as Bedrock does), `contentBlockDelta` (text, or tool-use input as JSON
  string pieces), `contentBlockStop`, `messageStop` (`stopReason`), then `metadata` (`usage`,
  `metrics.latencyMs`).
* `POST /model/{modelId}/converse` — the same reply as one JSON document.

The reply is deterministic: `expected_reply(prompt, reply_words)` for the last user message's
text (or, for a turn of tool results only, their text), unless `reply_text` is set. Each word
(with its trailing space) is one text delta and one output token; input tokens are the
number of whitespace-separated words in the system prompt and every text and tool-result
block. If `inferenceConfig.maxTokens` is smaller than the reply, the reply is cut there with
`stopReason` `max_tokens`.

A few of Bedrock's request checks are reproduced (answering HTTP 400 ValidationException):
messages present, starting with the user and alternating; no blank text blocks; toolUse and
toolResult blocks only with a `toolConfig`; `maxTokens` at least 1.

Knobs (attributes, read at the start of each request, so they may change between requests):
`reply_text`, `reply_words`, `first_token_delay` (seconds before the response starts),
`tokens_per_second` (pace of the text deltas; None: as fast as possible), `tool_script`
(a `ToolScript`: when the request offers that tool in `toolConfig` and its last turn carries
no tool results, the reply is a tool use, `stopReason` `tool_use`), `cache_read_tokens`
(reported as `usage.cacheReadInputTokens` when not None).

Faults (`inject(Fault(...))`) are queued and consumed one per request, see `FaultKind`.
Every request is recorded (`requests`: operation, path, model id, headers, parsed body), and
every client that went away while its reply was still being written counts in `disconnects`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from providers.testing.eventstream import corrupt, event_message, exception_message

_PATH = re.compile(r"/model/([^/]+)/(converse|converse-stream)")
_PIECES = re.compile(r"\S+\s*")
_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"


class FaultKind(enum.StrEnum):
    """What a `Fault` does to the one request that consumes it."""

    #: HTTP 429 ThrottlingException, with `Retry-After: <retry_after>` unless that is None.
    THROTTLED = "throttled"
    #: HTTP 500 InternalServerException.
    INTERNAL_ERROR = "internal_error"
    #: HTTP 503 ServiceUnavailableException.
    UNAVAILABLE = "unavailable"
    #: HTTP 400 ValidationException.
    VALIDATION = "validation"
    #: HTTP 403 AccessDeniedException.
    ACCESS_DENIED = "access_denied"
    #: After `after_events` events, an in-stream `throttlingException` event, then the end.
    #: (Converse: HTTP 429 without Retry-After.)
    STREAM_THROTTLED = "stream_throttled"
    #: After `after_events` events, an in-stream `serviceUnavailableException`, then the end.
    #: (Converse: HTTP 503.)
    STREAM_UNAVAILABLE = "stream_unavailable"
    #: After `after_events` events, the socket is shut down mid-body (no final chunk).
    #: (Converse: shut down before any answer.)
    DROP = "drop"
    #: After `after_events` events, the body ends cleanly but early: no `messageStop`.
    #: (Converse: the headers, then half the body, then the socket is shut down.)
    CUT = "cut"
    #: After `after_events` events, nothing for `stall_seconds`; then the rest of the reply,
    #: or a dropped connection when `then_drop`. (Converse: the wait comes before the answer.)
    STALL = "stall"
    #: After `after_events` events, the next event with a corrupted payload (its message CRC
    #: fails), then the end. (Converse: a 200 whose body is not JSON.)
    MALFORMED = "malformed"


_HTTP_FAULTS: dict[FaultKind, tuple[int, str]] = {
    FaultKind.THROTTLED: (429, "ThrottlingException"),
    FaultKind.INTERNAL_ERROR: (500, "InternalServerException"),
    FaultKind.UNAVAILABLE: (503, "ServiceUnavailableException"),
    FaultKind.VALIDATION: (400, "ValidationException"),
    FaultKind.ACCESS_DENIED: (403, "AccessDeniedException"),
}

_STREAM_EXCEPTIONS: dict[FaultKind, tuple[str, int, str]] = {
    # kind: (event-stream exception type, Converse's HTTP status, Converse's error type)
    FaultKind.STREAM_THROTTLED: ("throttlingException", 429, "ThrottlingException"),
    FaultKind.STREAM_UNAVAILABLE: (
        "serviceUnavailableException",
        503,
        "ServiceUnavailableException",
    ),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure. `after_events` counts the events sent first (`messageStart` is
    the first), for the in-stream kinds."""

    kind: FaultKind
    retry_after: str | None = "1"
    after_events: int = 1
    stall_seconds: float = 2.0
    then_drop: bool = False


@dataclass(frozen=True, slots=True)
class ToolScript:
    """A scripted tool use: optional text first, then a toolUse block for `name` whose input
    is `input`, streamed as JSON string pieces of `input_chunk_size` characters."""

    name: str
    input: Mapping[str, Any]
    tool_use_id: str = "tooluse_double_0001"
    text_before: str = ""
    input_chunk_size: int = 7


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the double received."""

    operation: str  # "ConverseStream" or "Converse"
    path: str
    model_id: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]


def expected_reply(prompt: str, words: int = 12) -> str:
    """The double's reply to `prompt`: `words` numbered words that depend on the prompt."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    return " ".join(f"w{i}-{digest[(2 * i) % 64 : (2 * i) % 64 + 2]}" for i in range(1, words + 1))


def reply_pieces(text: str) -> list[str]:
    """How the double splits a reply into text deltas (a word and its trailing space)."""
    return _PIECES.findall(text)


@dataclass(frozen=True, slots=True)
class _Config:
    reply_text: str | None
    reply_words: int
    first_token_delay: float
    tokens_per_second: float | None
    tool_script: ToolScript | None
    cache_read_tokens: int | None


@dataclass(slots=True)
class _Reply:
    pieces: list[str]
    tool: ToolScript | None
    stop_reason: str
    input_tokens: int
    cache_read_tokens: int | None
    started: float = field(default_factory=time.monotonic)

    def usage(self) -> dict[str, int]:
        output_tokens = len(self.pieces) + (1 if self.tool else 0)
        usage = {
            "inputTokens": self.input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": self.input_tokens + output_tokens + (self.cache_read_tokens or 0),
        }
        if self.cache_read_tokens is not None:
            usage["cacheReadInputTokens"] = self.cache_read_tokens
        return usage

    def latency_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class _Stop(Exception):
    """The double is stopping, or the client went away: abandon this response."""


class BedrockServer:
    """The double. Use it as a context manager, or call `start()` and `stop()`.

    `url` is the endpoint to give boto3 (`endpoint_url=`), valid once started.
    """

    def __init__(
        self,
        *,
        reply_text: str | None = None,
        reply_words: int = 12,
        first_token_delay: float = 0.0,
        tokens_per_second: float | None = None,
        tool_script: ToolScript | None = None,
        cache_read_tokens: int | None = None,
        faults: Iterable[Fault] = (),
    ) -> None:
        self.reply_text = reply_text
        self.reply_words = reply_words
        self.first_token_delay = first_token_delay
        self.tokens_per_second = tokens_per_second
        self.tool_script = tool_script
        self.cache_read_tokens = cache_read_tokens
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque(faults)
        self._requests: list[RecordedRequest] = []
        self._disconnects = 0
        self._disconnected = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> BedrockServer:
        """Listen on 127.0.0.1 (a free port) and serve in a daemon thread.

        Raises RuntimeError if already started, OSError if the socket cannot be opened.
        """
        if self._httpd is not None:
            raise RuntimeError("The Bedrock double is already running.")
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.double = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"bedrock-double-{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; replies in progress are abandoned."""
        self._stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> BedrockServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port. Raises RuntimeError when not started."""
        if self._httpd is None:
            raise RuntimeError("The Bedrock double is not running.")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The endpoint URL, e.g. `http://127.0.0.1:54321`. Raises RuntimeError when not
        started."""
        return f"http://127.0.0.1:{self.port}"

    # --- faults and records ---------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each following request consumes one, in order."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> list[Fault]:
        """Faults not consumed yet."""
        with self._lock:
            return list(self._faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        """How many clients went away while their reply was still being written."""
        with self._lock:
            return self._disconnects

    def wait_for_disconnect(self, timeout: float, count: int = 1) -> bool:
        """Wait until at least `count` disconnects were seen; False if `timeout` passed."""
        with self._disconnected:
            return self._disconnected.wait_for(lambda: self._disconnects >= count, timeout)

    # --- used by the handler --------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> Fault | None:
        with self._lock:
            self._requests.append(request)
            return self._faults.popleft() if self._faults else None

    def _note_disconnect(self) -> None:
        with self._disconnected:
            self._disconnects += 1
            self._disconnected.notify_all()

    def _config(self) -> _Config:
        return _Config(
            reply_text=self.reply_text,
            reply_words=self.reply_words,
            first_token_delay=self.first_token_delay,
            tokens_per_second=self.tokens_per_second,
            tool_script=self.tool_script,
            cache_read_tokens=self.cache_read_tokens,
        )

    def _wait(self, seconds: float) -> None:
        """Sleep, unless the double stops first (then raise _Stop)."""
        if seconds > 0 and self._stopping.wait(seconds):
            raise _Stop


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    double: BedrockServer


def _words(text: str) -> int:
    return len(text.split())


def _text_of(blocks: Iterable[Any]) -> list[str]:
    texts: list[str] = []
    for block in blocks:
        if not isinstance(block, Mapping):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        result = block.get("toolResult")
        if isinstance(result, Mapping):
            texts.extend(_text_of(result.get("content") or ()))
    return texts


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, Mapping)]


def _validation_problem(body: Mapping[str, Any]) -> str | None:
    """The message of Bedrock's ValidationException for this body, or None if it passes."""
    messages = _messages(body)
    if not messages:
        return "A conversation must start with a user message. Try again with a user message."
    expected_role = "user"
    uses_tools = False
    for number, message in enumerate(messages):
        if message.get("role") != expected_role:
            if number == 0:
                return "A conversation must start with a user message."
            return "A conversation must alternate between user and assistant roles."
        expected_role = "assistant" if expected_role == "user" else "user"
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"The content field in the Message object at messages.{number} is empty."
        for index, block in enumerate(content):
            if not isinstance(block, Mapping):
                return f"messages.{number}.content.{index} is not a content block."
            if "text" in block and not str(block["text"]).strip():
                return (
                    f"The text field in the ContentBlock object at messages.{number}.content."
                    f"{index} is blank. Add text to the text field, and try again."
                )
            uses_tools = uses_tools or "toolUse" in block or "toolResult" in block
    if uses_tools and "toolConfig" not in body:
        return (
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    for system in body.get("system") or ():
        if isinstance(system, Mapping) and "text" in system and not str(system["text"]).strip():
            return "The text field in the SystemContentBlock object is blank."
    max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return "The maximum tokens you requested must be at least 1."
    return None


def _plan(body: Mapping[str, Any], config: _Config) -> _Reply:
    messages = _messages(body)
    last = messages[-1] if messages else {}
    last_content = last.get("content") or []
    has_tool_results = any(isinstance(b, Mapping) and "toolResult" in b for b in last_content)
    prompt = "\n".join(_text_of(last_content))

    input_tokens = sum(_words(t) for t in _text_of(body.get("system") or ()))
    input_tokens += sum(_words(t) for m in messages for t in _text_of(m.get("content") or ()))

    offered = {
        (tool.get("toolSpec") or {}).get("name")
        for tool in (body.get("toolConfig") or {}).get("tools") or ()
        if isinstance(tool, Mapping)
    }
    script = config.tool_script
    if script is not None and script.name in offered and not has_tool_results:
        return _Reply(
            pieces=reply_pieces(script.text_before),
            tool=script,
            stop_reason="tool_use",
            input_tokens=input_tokens,
            cache_read_tokens=config.cache_read_tokens,
        )

    text = config.reply_text
    if text is None:
        text = expected_reply(prompt, config.reply_words)
    pieces = reply_pieces(text)
    stop_reason = "end_turn"
    max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
    if isinstance(max_tokens, int) and len(pieces) > max_tokens:
        pieces = pieces[:max_tokens]
        stop_reason = "max_tokens"
    return _Reply(
        pieces=pieces,
        tool=None,
        stop_reason=stop_reason,
        input_tokens=input_tokens,
        cache_read_tokens=config.cache_read_tokens,
    )


def _stream_events(reply: _Reply) -> list[tuple[str, dict[str, Any], bool]]:
    """(event type, payload, paced) for the whole reply except `metadata`."""
    events: list[tuple[str, dict[str, Any], bool]] = [
        ("messageStart", {"role": "assistant"}, False)
    ]
    index = 0
    if reply.pieces:
        for piece in reply.pieces:
            events.append(
                ("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}, True)
            )
        events.append(("contentBlockStop", {"contentBlockIndex": index}, False))
        index += 1
    if reply.tool is not None:
        tool = reply.tool
        start = {"toolUse": {"toolUseId": tool.tool_use_id, "name": tool.name}}
        events.append(("contentBlockStart", {"contentBlockIndex": index, "start": start}, False))
        arguments = json.dumps(dict(tool.input))
        size = max(1, tool.input_chunk_size)
        for offset in range(0, len(arguments), size):
            delta = {"toolUse": {"input": arguments[offset : offset + size]}}
            events.append(
                ("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}, False)
            )
        events.append(("contentBlockStop", {"contentBlockIndex": index}, False))
    events.append(("messageStop", {"stopReason": reply.stop_reason}, False))
    return events


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BedrockDouble/1.0"

    @property
    def double(self) -> BedrockServer:
        return cast(_HTTPServer, self.server).double

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the records instead."""

    # --- plumbing -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:  # BrokenPipe, ConnectionReset, ConnectionAborted
            self.close_connection = True
            self.double._note_disconnect()
            raise _Stop from exc

    def _start_response(self, status: int, headers: Mapping[str, str]) -> None:
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()  # flushes the buffered header lines
        self.wfile.flush()

    def _send_json(
        self, status: int, document: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        payload = json.dumps(document).encode("utf-8")
        try:
            self._start_response(
                status,
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(payload)),
                    **(headers or {}),
                },
            )
        except OSError as exc:
            raise _Stop from exc
        self._write(payload)

    def _send_error(
        self, status: int, error_type: str, message: str, retry_after: str | None = None
    ) -> None:
        headers = {"x-amzn-ErrorType": f"{error_type}:{_ERROR_NAMESPACE}"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        self._send_json(status, {"message": message}, headers)

    def _drop(self) -> None:
        """Shut the connection down without finishing the response."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _chunk(self, data: bytes) -> None:
        self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunks(self) -> None:
        self._write(b"0\r\n\r\n")

    # --- the operations -------------------------------------------------------------------

    def do_POST(self) -> None:
        try:
            self._handle_post()
        except _Stop:
            self.close_connection = True

    def _handle_post(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        match = _PATH.fullmatch(path)
        if match is None:
            self._send_error(404, "UnknownOperationException", "Unknown operation.")
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_error(400, "SerializationException", "The request body is not JSON.")
            return
        if not isinstance(body, dict):
            self._send_error(400, "SerializationException", "The request body is not an object.")
            return
        streaming = match[2] == "converse-stream"
        fault = self.double._record(
            RecordedRequest(
                operation="ConverseStream" if streaming else "Converse",
                path=path,
                model_id=unquote(match[1]),
                headers={name: value for name, value in self.headers.items()},
                body=body,
            )
        )
        config = self.double._config()

        if fault is not None and fault.kind in _HTTP_FAULTS:
            status, error_type = _HTTP_FAULTS[fault.kind]
            retry_after = fault.retry_after if fault.kind is FaultKind.THROTTLED else None
            self._send_error(status, error_type, f"Injected {error_type}.", retry_after)
            return
        problem = _validation_problem(body)
        if problem is not None:
            self._send_error(400, "ValidationException", problem)
            return

        reply = _plan(body, config)
        self.double._wait(config.first_token_delay)
        if streaming:
            self._converse_stream(reply, config, fault)
        else:
            self._converse(reply, fault)

    def _converse(self, reply: _Reply, fault: Fault | None) -> None:
        kind = fault.kind if fault is not None else None
        if kind in _STREAM_EXCEPTIONS:
            _, status, error_type = _STREAM_EXCEPTIONS[cast(FaultKind, kind)]
            self._send_error(status, error_type, f"Injected {error_type}.")
            return
        if fault is not None and kind is FaultKind.STALL:
            self.double._wait(fault.stall_seconds)
            if fault.then_drop:
                self._drop()
                return
        if kind is FaultKind.DROP:
            self._drop()
            return
        content: list[dict[str, Any]] = []
        if reply.pieces:
            content.append({"text": "".join(reply.pieces)})
        if reply.tool is not None:
            tool = reply.tool
            content.append(
                {
                    "toolUse": {
                        "toolUseId": tool.tool_use_id,
                        "name": tool.name,
                        "input": dict(tool.input),
                    }
                }
            )
        document = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": reply.stop_reason,
            "usage": reply.usage(),
            "metrics": {"latencyMs": reply.latency_ms()},
        }
        payload = json.dumps(document).encode("utf-8")
        if kind is FaultKind.MALFORMED:
            payload = b"{not json" + payload
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        try:
            self._start_response(200, headers)
        except OSError as exc:
            raise _Stop from exc
        if kind is FaultKind.CUT:
            self._write(payload[: len(payload) // 2])
            self._drop()
            return
        self._write(payload)

    def _converse_stream(self, reply: _Reply, config: _Config, fault: Fault | None) -> None:
        headers = {
            "Content-Type": "application/vnd.amazon.eventstream",
            "Transfer-Encoding": "chunked",
        }
        try:
            self._start_response(200, headers)
        except OSError as exc:
            raise _Stop from exc
        events = _stream_events(reply)
        rate = config.tokens_per_second
        started = time.monotonic()
        paced = 0
        # One more step than events: a fault may also come just before `metadata`.
        for number in range(len(events) + 1):
            upcoming = events[number] if number < len(events) else None
            if (
                fault is not None
                and number == fault.after_events
                and self._stream_fault(fault, upcoming)
            ):
                return
            if number == len(events):
                break
            event_type, payload, is_paced = events[number]
            if is_paced and rate:
                self.double._wait(started + paced / rate - time.monotonic())
                paced += 1
            self._chunk(event_message(event_type, payload))
        metadata = {"usage": reply.usage(), "metrics": {"latencyMs": reply.latency_ms()}}
        self._chunk(event_message("metadata", metadata))
        self._end_chunks()

    def _stream_fault(
        self, fault: Fault, upcoming: tuple[str, dict[str, Any], bool] | None
    ) -> bool:
        """Apply an in-stream fault; True when the response is over."""
        kind = fault.kind
        if kind in _STREAM_EXCEPTIONS:
            exception_type = _STREAM_EXCEPTIONS[kind][0]
            self._chunk(exception_message(exception_type, f"Injected {exception_type}."))
            self._end_chunks()
            return True
        if kind is FaultKind.DROP:
            self._drop()
            return True
        if kind is FaultKind.CUT:
            self._end_chunks()
            return True
        if kind is FaultKind.MALFORMED:
            event_type, payload = (upcoming[0], upcoming[1]) if upcoming else ("metadata", {})
            self._chunk(corrupt(event_message(event_type, payload)))
            self._end_chunks()
            self.close_connection = True
            return True
        if kind is FaultKind.STALL:
            self.double._wait(fault.stall_seconds)
            if fault.then_drop:
                self._drop()
                return True
        return False
