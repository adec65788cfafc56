"""The shipped nginx configuration for real: deploy/nginx/enterprise-ai.conf.template.

Debian's nginx runs the template (rendered into a temporary directory, with a self-signed
certificate and free loopback ports) in front of two daphne web processes (`manage.py
serve`) and a Celery worker, on PostgreSQL and Redis of the module's own, with the
OpenAI-compatible double as the model. The web processes run as behind any proxy:
`TRUSTED_PROXY_COUNT=1`, the nginx origin in ALLOWED_HOSTS and CSRF_TRUSTED_ORIGINS, secure
cookies, HSTS, the HTTPS redirect. A client that verifies the certificate signs in with the
real form, chats over `wss://`, lets a socket idle for 90 s, and loses a web process
mid-reply. About two and a half minutes, most of it the idle socket.

Without nginx the module skips (fails under CI=true); scripts/ensure-services.sh installs it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import service_missing
from providers.testing.openai_server import OpenAIDouble
from tests.production.processes import (
    ROOT,
    ChatSocket,
    Database,
    Process,
    Stack,
    WebProcess,
    base_env,
    free_port,
    own_services,
    port_open,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(300)]

TEMPLATE = ROOT / "deploy" / "nginx" / "enterprise-ai.conf.template"
PEOPLE = ["nginx-chat", "nginx-idle", "nginx-failover", "nginx-audit", "nginx-forged", "nginx-api"]
PASSWORD = "Nginx-Only-Passw0rd-2026!"
MODEL = "upstream"
#: More than nginx's default proxy_read_timeout (60 s): only the template's long timeouts
#: keep a socket this idle open.
IDLE_SECONDS = 90

SEED = """
import json
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from accounts.api_keys import api_key_create
from accounts.models import User
from costs.models import ModelPrice
from providers.models import AIModel
seed = json.loads({seed!r})
for username in seed["people"]:
    User.objects.create_user(
        username=username, email=f"{{username}}@example.com", password=seed["password"]
    )
model = AIModel.objects.create(
    key=seed["model"], display_name=seed["model"], provider="openai-compatible",
    provider_model_id="double-model", available_to_everyone=True,
    context_window=16384, max_output_tokens=2048, options={{"base_url": seed["base_url"]}},
)
ModelPrice.objects.create(
    model=model, input_per_million=Decimal("2"), output_per_million=Decimal("8"),
    effective_from=timezone.now() - timedelta(days=1),
)
_, plaintext = api_key_create(
    owner=User.objects.get(username=seed["api_person"]), name="nginx", scopes=["chat"], actor=None
)
print(json.dumps({{"api_key": plaintext}}))
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def render(template: str, values: dict[str, str]) -> str:
    """envsubst as the nginx image runs it, for `${EAI_...}` only; every name must be given."""
    names = set(re.findall(r"\$\{(EAI_[A-Z0-9_]+)\}", template))
    assert names == set(values), f"template names {sorted(names)}, given {sorted(values)}"
    return re.sub(r"\$\{(EAI_[A-Z0-9_]+)\}", lambda m: values[m[1]], template)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """The README's openssl command: a certificate for 127.0.0.1 and its key."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def nginx_conf(prefix: Path, site: Path) -> str:
    """The main nginx.conf around the rendered site: every path inside `prefix`."""
    mime = Path("/etc/nginx/mime.types")
    types = f"include {mime};" if mime.exists() else "types { text/css css; text/javascript js; }"
    # As root the workers would run as `nobody`, who cannot read pytest's private tmp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    {types}
    default_type application/octet-stream;
    access_log {prefix}/logs/access.log combined;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {site};
}}
"""


@dataclass
class Proxied:
    """What the module's tests share: nginx in front of two web processes and a worker."""

    url: str  # https://127.0.0.1:<port>
    http_url: str  # the plain-HTTP port, which only redirects
    tls: ssl.SSLContext
    database: Database
    upstream: OpenAIDouble
    stack: Stack
    nginx: Process
    webs: list[WebProcess]
    prefix: Path
    static_root: Path
    api_key: str

    def access_log(self) -> str:
        return (self.prefix / "logs" / "access.log").read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        """GET over HTTPS through nginx (no redirect followed); the response or HTTPError."""
        request = urllib.request.Request(self.url + path, headers=headers or {})
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.tls), _NoRedirect
        )
        try:
            return opener.open(request, timeout=20)
        except urllib.error.HTTPError as error:
            return error

    def sign_in(self, person: str, **kwargs: Any) -> str:
        return sign_in(self.url, person, PASSWORD, context=self.tls, **kwargs)

    async def connect(self, cookie: str, **kwargs: Any) -> ChatSocket:
        return await ChatSocket.connect(self.url, cookie, ssl_context=self.tls, **kwargs)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    nginx = nginx_binary()
    if nginx is None:
        service_missing("nginx is not installed (scripts/ensure-services.sh installs it)")
    assert nginx is not None
    workdir = tmp_path_factory.mktemp("nginx")
    prefix, static_root = workdir / "nginx", workdir / "static"
    for directory in ("logs", "temp"):
        (prefix / directory).mkdir(parents=True)
    https_port, http_port = free_port(), free_port()
    url = f"https://127.0.0.1:{https_port}"
    cert, key = self_signed_certificate(prefix)
    tls = ssl.create_default_context(cafile=str(cert))

    with own_services("eai_nginx") as (database, redis), OpenAIDouble() as upstream:
        env = base_env(
            database_url=database.url,
            redis_url=redis.url,
            key_prefix=f"eai-nginx-{secrets.token_hex(3)}",
            data_dir=workdir,
            # Behind one TLS-terminating proxy, with the production path's HTTPS defaults.
            TRUSTED_PROXY_COUNT="1",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            CSRF_TRUSTED_ORIGINS=url,
            SECURE_SSL_REDIRECT="true",
            SECURE_COOKIES="true",
            SECURE_HSTS_SECONDS="31536000",
            STATIC_ROOT=str(static_root),
            # daphne's keepalive pings would cross nginx every 20 s and reset its timers: off
            # here (an hour), so the idle socket below is idle for real.
            WEBSOCKET_PING_SECONDS="3600",
            # Signed-in people's addresses in clear, so the test reads the address the audit
            # trail recorded over SQL (sealing them: audit/tests/test_personal.py).
            AUDIT_SEAL_IP="false",
        )
        stack = Stack(workdir / "stack", env)
        try:
            stack.manage("migrate", "--noinput")
            stack.manage("collectstatic", "--noinput")
            seed = {
                "people": PEOPLE,
                "password": PASSWORD,
                "model": MODEL,
                "base_url": upstream.base_url,
                "api_person": "nginx-api",
            }
            seeded = stack.manage("shell", "-c", SEED.format(seed=json.dumps(seed)))
            api_key = json.loads(seeded.strip().splitlines()[-1])["api_key"]
            webs = [stack.start_web(f"web-{n}", wait=False) for n in (1, 2)]
            worker = stack.start_worker(concurrency=4, wait=False)

            site = prefix / "enterprise-ai.conf"
            site.write_text(
                render(
                    TEMPLATE.read_text(),
                    {
                        "EAI_WEB_1": f"127.0.0.1:{webs[0].port}",
                        "EAI_WEB_2": f"127.0.0.1:{webs[1].port}",
                        "EAI_HTTPS_PORT": f"127.0.0.1:{https_port}",
                        "EAI_HTTP_PORT": f"127.0.0.1:{http_port}",
                        "EAI_SERVER_NAME": "127.0.0.1 localhost",
                        "EAI_TLS_CERT": str(cert),
                        "EAI_TLS_KEY": str(key),
                        "EAI_STATIC_ROOT": str(static_root),
                    },
                )
            )
            conf = prefix / "nginx.conf"
            conf.write_text(nginx_conf(prefix, site))
            check = subprocess.run(
                [nginx, "-t", "-q", "-c", str(conf), "-p", str(prefix), "-e", "stderr"],
                capture_output=True,
                text=True,
                check=False,
            )
            assert check.returncode == 0, f"nginx -t refused the rendered template:\n{check.stderr}"
            proxy = stack.start(
                "nginx",
                [nginx, "-c", str(conf), "-p", str(prefix), "-e", "stderr", "-g", "daemon off;"],
                ready=lambda _: port_open("127.0.0.1", https_port),
            )
            stack.wait_ready(*webs, worker)
            yield Proxied(
                url=url,
                http_url=f"http://127.0.0.1:{http_port}",
                tls=tls,
                database=database,
                upstream=upstream,
                stack=stack,
                nginx=proxy,
                webs=webs,
                prefix=prefix,
                static_root=static_root,
                api_key=api_key,
            )
        finally:
            stack.close()


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, proxied: Proxied) -> Iterator[None]:
    """A failing test's report gets each process's log tail and nginx's error log."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        error_log = (proxied.prefix / "logs" / "error.log").read_text(errors="replace")
        report.sections.append(
            (
                "process logs",
                f"{proxied.stack.report()}\n===== nginx error.log\n{error_log[-6000:]}",
            )
        )


# --- Helpers ----------------------------------------------------------------------------------


def pace(upstream: OpenAIDouble, *, first_token: float, rate: float, words: int) -> None:
    upstream.first_token_delay = first_token
    upstream.tokens_per_second = rate
    upstream.reply_words = words


async def send(chat: ChatSocket, text: str, conversation: str | None = None) -> dict[str, Any]:
    await chat.send({"type": "send", "conversation": conversation, "text": text, "model": MODEL})
    frames = await chat.until(lambda f: f["type"] in {"accepted", "error"}, timeout=20)
    assert frames[-1]["type"] == "accepted", f"the message was refused: {frames[-1]}"
    return frames[-1]


def ended(reply: str) -> Any:
    return lambda f: f.get("message") == reply and f["type"] in {"done", "error"}


def deltas_of(frames: list[dict[str, Any]], reply: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "delta" and f["message"] == reply]


def stored(proxied: Proxied, reply: str) -> tuple[str, str]:
    """(status, content) of the reply's row."""
    rows = proxied.database.rows(
        "SELECT status, content FROM conversations_message WHERE public_id = %s", reply
    )
    assert rows, f"reply {reply} is not stored"
    return rows[0][0], proxied.database.plaintext(rows[0][1])


def upstream_reply(proxied: Proxied, text: str) -> str:
    """What the double answered to the message `text`."""
    replies = [
        record.reply
        for record in proxied.upstream.model_requests()
        if text in json.dumps(record.body.get("messages") if isinstance(record.body, dict) else "")
    ]
    assert len(replies) == 1, f"{len(replies)} upstream calls for {text!r}"
    return str(replies[0])


def login_ips(proxied: Proxied, username: str) -> list[str]:
    """The IP of each `auth.login` audit event of `username`, once there is one (the web
    process's chainer thread links events into the chain just after their commit)."""

    def ips() -> list[str]:
        rows = proxied.database.rows(
            "SELECT host(e.ip) FROM audit_auditevent e JOIN accounts_user u "
            "ON u.id = e.actor_id WHERE e.action = 'auth.login' AND u.username = %s "
            "ORDER BY e.sequence",
            username,
        )
        return [row[0] for row in rows]

    return list(wait_until(ips, timeout=10, what=f"{username}'s sign-in chained"))


# --- Tests ------------------------------------------------------------------------------------


def test_plain_http_is_redirected_to_https_and_nginx_names_no_version(proxied: Proxied) -> None:
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(proxied.http_url + "/accounts/login/?next=/c/", timeout=10)
    assert redirect.value.code == 301
    assert redirect.value.headers["Location"] == "https://127.0.0.1/accounts/login/?next=/c/"
    assert redirect.value.headers["Server"] == "nginx"


def test_security_headers_survive_the_proxy_and_static_files_come_from_nginx(
    proxied: Proxied,
) -> None:
    response = proxied.get("/accounts/login/")
    assert response.status == 200
    headers = response.headers
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    policy = {
        name: values
        for name, *values in (
            part.split() for part in headers["Content-Security-Policy"].split(";")
        )
    }
    # The app saw the request as HTTPS (X-Forwarded-Proto) for the client's Host and port.
    assert policy["connect-src"] == ["'self'", proxied.url.replace("https://", "wss://")]
    assert policy["script-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "camera=()" in headers["Permissions-Policy"]
    assert headers.get_all("Strict-Transport-Security") == [headers["Strict-Transport-Security"]], (
        "HSTS twice"
    )
    assert headers["Server"] == "nginx", "nginx's version (or daphne) shows"
    cookies = headers.get_all("Set-Cookie") or []
    assert any(c.startswith("__Host-csrftoken=") and "Secure" in c for c in cookies), cookies

    # A file collected for the app is served with caching ...
    collected = next(proxied.static_root.rglob("*.js"))
    path = "/static/" + collected.relative_to(proxied.static_root).as_posix()
    static = proxied.get(path)
    assert static.status == 200 and static.read() == collected.read_bytes()
    assert "max-age=3600" in (static.headers.get_all("Cache-Control") or [])
    # ... by nginx from disk: a file that appeared after the web processes started (WhiteNoise
    # indexes its files at start-up and would not know it) is served too.
    (proxied.static_root / "nginx-only.txt").write_text("from nginx\n")
    assert proxied.get("/static/nginx-only.txt").read() == b"from nginx\n"
    assert proxied.get("/static/no-such-file.js").status == 404


def test_the_audit_trail_records_the_client_address_not_nginx_nor_a_forged_hop(
    proxied: Proxied,
) -> None:
    # nginx reaches the web processes from 127.0.0.1; the client connects from another
    # loopback address, so the two can be told apart.
    proxied.sign_in("nginx-audit", source_address="127.0.0.2")
    assert login_ips(proxied, "nginx-audit") == ["127.0.0.2"]
    assert re.search(r"^127\.0\.0\.2 .*\"POST /accounts/login/ ", proxied.access_log(), re.M)

    # A client that writes its own X-Forwarded-For is still recorded as where it came from:
    # with TRUSTED_PROXY_COUNT=1 the app takes the last hop, the one nginx appended.
    proxied.sign_in(
        "nginx-forged", source_address="127.0.0.3", headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert login_ips(proxied, "nginx-forged") == ["127.0.0.3"]


async def test_sign_in_and_a_reply_streams_over_the_upgraded_socket(proxied: Proxied) -> None:
    pace(proxied.upstream, first_token=0.1, rate=40, words=40)
    cookie = proxied.sign_in("nginx-chat")
    assert "__Host-sessionid=" in cookie
    text = "Through nginx: a streamed reply"
    async with await proxied.connect(cookie) as chat:
        accepted = await send(chat, text)
        frames = await chat.until(ended(accepted["message"]), timeout=30)
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "complete", frames[-1]
    deltas = deltas_of(frames, accepted["message"])
    assert len(deltas) > 5, "the reply did not stream"
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    status, content = stored(proxied, accepted["message"])
    assert status == "complete"
    assert "".join(d["text"] for d in deltas) == content == upstream_reply(proxied, text)


def test_server_sent_events_pass_through_nginx_as_they_are_written(proxied: Proxied) -> None:
    # About four seconds of reply, a token at a time.
    pace(proxied.upstream, first_token=0.2, rate=6, words=20)
    text = "Through nginx: an API stream"
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
    connection = http.client.HTTPSConnection(
        "127.0.0.1", int(proxied.url.rsplit(":", 1)[1]), context=proxied.tls, timeout=30
    )
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(body),
            headers={
                "Authorization": f"Bearer {proxied.api_key}",
                "Content-Type": "application/json",
            },
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()[:500]
        assert response.headers["Content-Type"].startswith("text/event-stream")
        arrivals: list[tuple[float, str]] = []
        while line := response.readline():
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        arrivals.append((time.monotonic(), choice["delta"]["content"]))
            elif line.startswith(b"data: [DONE]"):
                break
    finally:
        connection.close()
    assert "".join(piece for _, piece in arrivals) == upstream_reply(proxied, text)
    # Each piece came as the model wrote it, not all at once when the reply ended.
    assert len(arrivals) > 10
    assert arrivals[-1][0] - arrivals[0][0] > 2, "the events arrived in one burst (buffered)"


async def test_a_socket_idle_for_90_seconds_through_nginx_stays_open_and_chats(
    proxied: Proxied,
) -> None:
    pace(proxied.upstream, first_token=0.1, rate=60, words=20)
    cookie = proxied.sign_in("nginx-idle")
    # No pings from either side (the web processes' are an hour apart here): nothing crosses
    # nginx while the socket idles, longer than nginx's default 60 s timeouts.
    async with await proxied.connect(cookie, ping_interval=None) as chat:
        started = time.monotonic()
        try:
            assert await chat.quiet_for(IDLE_SECONDS) == []
        except ConnectionClosed as exc:
            raise AssertionError(
                f"the idle socket was closed after {time.monotonic() - started:.0f} s: {exc}"
            ) from None
        assert time.monotonic() - started >= IDLE_SECONDS
        text = "Through nginx: after a long silence"
        accepted = await send(chat, text)
        frames = await chat.until(ended(accepted["message"]), timeout=30)
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "complete", frames[-1]
    assert stored(proxied, accepted["message"])[0] == "complete"


async def test_a_killed_web_process_the_reconnect_reaches_the_other_and_the_reply_is_kept(
    proxied: Proxied,
) -> None:
    cookie = proxied.sign_in("nginx-failover")
    # About six seconds of reply, so that the web process dies in the middle of it.
    pace(proxied.upstream, first_token=0.3, rate=10, words=50)
    before = [web.log_size() for web in proxied.webs]
    chat = await proxied.connect(cookie)
    try:
        text = "Through nginx: my server dies while I read"
        accepted = await send(chat, text)
        reply, conversation = accepted["message"], accepted["conversation"]
        await chat.until(lambda f: f["type"] == "delta" and f["message"] == reply, timeout=20)

        # The web process holding this socket: the one that logged the handshake.
        def holder() -> WebProcess | None:
            for web, since in zip(proxied.webs, before, strict=True):
                with web.log_path.open("rb") as log:
                    log.seek(since)
                    if b"/ws/chat/" in log.read():
                        return web
            return None

        serving = wait_until(holder, timeout=10, what="a web process logged the handshake")
        (other,) = [web for web in proxied.webs if web is not serving]
        serving.kill()  # SIGKILL
        with pytest.raises(AssertionError, match="closed"):
            await chat.until(lambda f: False, timeout=15)
    finally:
        await chat.close()

    # The page reconnects through nginx (which finds the dead process refusing and moves on)
    # and subscribes again, as static/js/chat.js does: the snapshot and what follows it.
    other_since = other.log_size()
    async with await proxied.connect(cookie) as again:
        await again.send({"type": "subscribe", "conversation": conversation})
        (snapshot,) = [
            f
            for f in await again.until(lambda f: f["type"] == "snapshot", timeout=15)
            if f["type"] == "snapshot"
        ]
        (shown,) = [m for m in snapshot["messages"] if m["id"] == reply]
        text_seen = shown["text"]
        if shown["status"] in {"pending", "streaming"}:
            frames = await again.until(ended(reply), timeout=30)
            after = [d for d in deltas_of(frames, reply) if d["seq"] > shown["seq"]]
            assert [d["seq"] for d in after] == list(
                range(shown["seq"] + 1, shown["seq"] + 1 + len(after))
            )
            text_seen += "".join(d["text"] for d in after)
            assert frames[-1]["type"] == "done" and frames[-1]["status"] == "complete"
        else:
            assert shown["status"] == "complete", shown
        assert b"/ws/chat/" in other.log_path.read_bytes()[other_since:], "not the other one"
        # Every request finds the survivor, also those nginx first tried on the dead one.
        for _ in range(4):
            assert proxied.get("/accounts/login/").status == 200

        # Nothing lost: what the person sees is what is stored is what the model said.
        status, content = stored(proxied, reply)
        assert status == "complete"
        assert text_seen == content == upstream_reply(proxied, text)

        # And the conversation carries on, on the surviving process.
        pace(proxied.upstream, first_token=0.1, rate=60, words=20)
        follow_up = await send(again, "Through nginx: still here?", conversation)
        frames = await again.until(ended(follow_up["message"]), timeout=30)
        assert frames[-1]["type"] == "done" and frames[-1]["status"] == "complete"
    assert proxied.nginx.alive and other.alive
