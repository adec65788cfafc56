"""The REST API served for real, for the tests that talk to it over HTTP: daphne in a
subprocess (as `make run` serves it) with a data directory of its own, the embedded
dispatcher and channel layer, the demo model paced fast; a plain HTTP client (urllib)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.conftest import RestartableServer

# The demo model answers at once and quickly: a reply takes a fraction of a second.
FAST_DEMO = {"DEMO_FIRST_TOKEN_DELAY_MS": "0", "DEMO_TOKENS_PER_SECOND": "400"}


@dataclass(frozen=True)
class Api:
    server: RestartableServer
    keys: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"{self.server.base_url}/api/v1"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = "alice",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body) of one request; `key` names a key of the setup's."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            all_headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url(path), data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                data = response.read()  # a 204 has no body
                return response.status, dict(response.headers), json.loads(data) if data else None
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read())

    def stream_request(self, body: dict[str, Any]) -> urllib.request.Request:
        return urllib.request.Request(
            self.url("/chat"),
            data=json.dumps({**body, "stream": True}).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.keys['alice']}",
            },
        )

    def stream(self, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The Server-Sent Events of one streamed chat call, in order."""
        request = self.stream_request(body)
        events: list[tuple[str, dict[str, Any]]] = []
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            name = ""
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[len("data: ") :])))
        return events

    def manage_python(self, code: str) -> str:
        return self.server.manage("shell", "-c", code).strip()


@contextmanager
def live_api(data_dir: Path, setup: str, extra_env: dict[str, str] | None = None) -> Iterator[Api]:
    """A server of its own on `data_dir`. `setup` is Python run by `manage.py shell` before
    the server starts; its last line of output is a JSON object of the keys it made, by name."""
    server = RestartableServer(data_dir, {**FAST_DEMO, **(extra_env or {})})
    keys = json.loads(server.manage("shell", "-c", setup).strip().splitlines()[-1])
    server.start()
    try:
        yield Api(server, keys)
    finally:
        server.stop()


def assert_error(body: Any, code: str) -> None:
    """`body` is the API's one error shape, with this code."""
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
