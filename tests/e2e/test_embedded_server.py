"""`make run`'s server for real: daphne, HTTP login with CSRF, a WebSocket with `websockets`."""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from providers.demo import demo_reply
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def login(server: Server) -> str:
    """Log in through the real login form; return the session cookie header."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    page = opener.open(f"{server.base_url}/accounts/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "the login form carries a CSRF token"
    body = urllib.parse.urlencode(
        {"username": server.username, "password": server.password, "csrfmiddlewaretoken": token[1]}
    ).encode()
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(f"{server.base_url}/accounts/login/", data=body, timeout=10)
    assert redirect.value.code == 302, "a good login redirects into the app"
    cookies = {cookie.name: cookie.value for cookie in jar}
    assert "sessionid" in cookies
    return f"sessionid={cookies['sessionid']}"


def test_login_without_csrf_token_is_refused(embedded_server: Server) -> None:
    body = urllib.parse.urlencode({"username": "e2e-admin", "password": "x"}).encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{embedded_server.base_url}/accounts/login/", data=body, timeout=10)
    assert refused.value.code == 403


def test_pages_need_login_and_static_files_are_served(embedded_server: Server) -> None:
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(f"{embedded_server.base_url}/", timeout=10)
    assert redirect.value.code == 302
    assert redirect.value.headers["Location"].startswith("/accounts/login/")
    with urllib.request.urlopen(
        f"{embedded_server.base_url}/static/js/chat.js", timeout=10
    ) as response:
        assert b"WebSocket" in response.read()


async def test_logged_in_socket_receives_a_complete_streamed_reply(embedded_server: Server) -> None:
    cookie = login(embedded_server)
    ws_url = embedded_server.base_url.replace("http://", "ws://") + "/ws/chat/"
    async with connect(
        ws_url,
        origin=Origin(embedded_server.origin),
        additional_headers={"Cookie": cookie},
        open_timeout=10,
    ) as socket:
        await socket.send(
            json.dumps(
                {"type": "send", "conversation": None, "text": "End to end", "model": "demo"}
            )
        )
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not frames or frames[-1]["type"] not in {"done", "error"}:
            assert time.monotonic() < deadline, frames
            frames.append(json.loads(await socket.recv()))

        assert frames[0]["type"] == "accepted"
        deltas = [f for f in frames if f["type"] == "delta"]
        assert len(deltas) > 1, "the reply arrives in several pieces"
        assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
        assert "".join(d["text"] for d in deltas) == demo_reply("End to end")
        assert frames[-1]["type"] == "done" and "<strong>demo model</strong>" in frames[-1]["html"]

        # What was streamed is what is stored: a fresh subscription shows it.
        await socket.send(
            json.dumps({"type": "subscribe", "conversation": frames[0]["conversation"]})
        )
        snapshot = json.loads(await socket.recv())
        assert snapshot["type"] == "snapshot"
        assert [m["status"] for m in snapshot["messages"]] == ["complete", "complete"]
        assert snapshot["messages"][1]["html"] == frames[-1]["html"]


async def test_socket_from_a_foreign_origin_is_refused(embedded_server: Server) -> None:
    cookie = login(embedded_server)
    ws_url = embedded_server.base_url.replace("http://", "ws://") + "/ws/chat/"
    with pytest.raises(Exception) as refused:
        async with connect(
            ws_url, origin=Origin("http://evil.example"), additional_headers={"Cookie": cookie}
        ):
            pass
    assert "403" in str(refused.value)


def test_served_process_signs_audit_checkpoints_and_the_trail_verifies(tmp_path: Any) -> None:
    """`make run`'s process signs checkpoints on schedule, with no Celery beat."""
    from tests.e2e.conftest import RestartableServer

    server = RestartableServer(tmp_path, {"AUDIT_CHECKPOINT_INTERVAL_SECONDS": "10"})
    server.start()
    try:
        login(server.server)  # at least one event in the chain
        deadline = time.monotonic() + 40
        while True:
            report = server.manage("verify_audit_chain")
            checkpoints = int(re.search(r"(\d+) checkpoints", report)[1])  # type: ignore[index]
            if checkpoints >= 1 or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        server.stop()
    assert report.startswith("OK: the chain verifies"), report
    assert checkpoints >= 1, "no checkpoint was signed by the serving process"
