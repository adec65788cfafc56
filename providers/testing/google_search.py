"""A loopback double of the Google Custom Search JSON API (GET /customsearch/v1).

Answers like the real service: `{"items": [{"title", "link", "snippet"}, ...]}`, checks the
key and engine id, honours `num`, and records every request for assertions. Faults can be
queued, one per request: 429 (quota), 500, or a stall.

    with GoogleSearchDouble(api_key="k", engine_id="cx") as double:
        settings.GOOGLE_SEARCH_ENDPOINT = double.endpoint
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class SearchRequest:
    path: str
    params: dict[str, str]


class GoogleSearchDouble:
    def __init__(self, *, api_key: str = "test-key", engine_id: str = "test-engine") -> None:
        self.api_key = api_key
        self.engine_id = engine_id
        self.requests: list[SearchRequest] = []
        self.faults: deque[str] = deque()
        self.stall_seconds = 2.0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/customsearch/v1"

    def results_for(self, query: str, count: int) -> list[dict[str, str]]:
        """The results the double returns for `query` (deterministic)."""
        slug = "-".join(query.lower().split())[:40]
        return [
            {
                "title": f"Result {n} about {query}",
                "link": f"https://example.com/{slug}/{n}",
                "snippet": f"Snippet {n}: what the web says about {query}. " + "More text. " * 40,
            }
            for n in range(1, count + 1)
        ]

    def __enter__(self) -> GoogleSearchDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                double.requests.append(SearchRequest(url.path, params))
                fault = double.faults.popleft() if double.faults else None
                if fault == "429":
                    self._send(429, {"error": {"code": 429, "message": "Quota exceeded."}})
                    return
                if fault == "500":
                    self._send(500, {"error": {"code": 500, "message": "Backend Error"}})
                    return
                if fault == "stall":
                    time.sleep(double.stall_seconds)
                if url.path != "/customsearch/v1":
                    self._send(404, {"error": {"code": 404, "message": "Not Found"}})
                    return
                if params.get("key") != double.api_key:
                    self._send(400, {"error": {"code": 400, "message": "API key not valid."}})
                    return
                if params.get("cx") != double.engine_id or not params.get("q"):
                    self._send(400, {"error": {"code": 400, "message": "Invalid Value"}})
                    return
                count = min(int(params.get("num", "10")), 10)
                self._send(
                    200,
                    {
                        "kind": "customsearch#search",
                        "items": double.results_for(params["q"], count),
                    },
                )

        return Handler
