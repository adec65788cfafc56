"""Metrics on the production path, with every piece a real process.

Two daphne web processes and a Celery worker share one PROMETHEUS_MULTIPROC_DIR, as on one
host: a scrape of either web process reports what the worker counted (the chat turn, the
provider call, the tokens), the sockets open in both, the `llm` queue waiting in Redis, and
the worker's heartbeat. A SIGKILLed web process's sockets stop counting. The worker's own
exporter (WORKER_METRICS_PORT) serves the same counts under the same access rules.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from observability.testing import Samples, parse_samples, sample_value
from providers.testing.openai_server import OpenAIDouble
from tests.production.processes import (
    ChatSocket,
    Stack,
    base_env,
    free_port,
    own_services,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(180)]

PERSON, PASSWORD = "metrics-tester", "Metrics-Only-Passw0rd-2026!"
MODEL = "upstream"
TOKEN = "metrics-scrape-token-" + secrets.token_hex(8)

SEED = """
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from accounts.models import User
from costs.models import ModelPrice
from providers.models import AIModel
User.objects.create_user(username={person!r}, email="m@example.com", password={password!r})
model = AIModel.objects.create(
    key={model!r}, display_name="Upstream", provider="openai-compatible",
    provider_model_id="double-model", available_to_everyone=True,
    context_window=16384, max_output_tokens=2048, options={{"base_url": {base_url!r}}},
)
ModelPrice.objects.create(
    model=model, input_per_million=Decimal("2"), output_per_million=Decimal("8"),
    effective_from=timezone.now() - timedelta(days=1),
)
"""


def scrape(url: str, token: str | None = TOKEN) -> Samples:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=20) as response:
        return parse_samples(response.read().decode())


value = sample_value


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with own_services("eai_metrics") as (database, redis), OpenAIDouble() as upstream:
        env = base_env(
            database_url=database.url,
            redis_url=redis.url,
            key_prefix=f"eai-metrics-{secrets.token_hex(3)}",
            data_dir=tmp_path,
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
            METRICS_TOKEN=TOKEN,
            # No address is trusted: every scrape needs the token.
            METRICS_ALLOWED_IPS="192.0.2.1/32",
            WORKER_HEARTBEAT_SECONDS="1",
            WORKER_HEARTBEAT_TTL_SECONDS="4",
        )
        with Stack(tmp_path / "stack", env) as processes:
            processes.manage("migrate", "--noinput")
            seed = SEED.format(
                person=PERSON, password=PASSWORD, model=MODEL, base_url=upstream.base_url
            )
            processes.manage("shell", "-c", seed)
            yield processes


async def chat_turn(base_url: str, cookie: str, text: str) -> dict[str, object]:
    async with await ChatSocket.connect(base_url, cookie) as chat:
        await chat.send({"type": "send", "text": text, "model": MODEL})
        frames = await chat.until(lambda f: f["type"] in {"done", "error"}, timeout=60)
    return frames[-1]


def test_one_scrape_reports_every_process_on_the_host(stack: Stack) -> None:
    worker_port = free_port()
    web = stack.start_web("web", wait=False)
    other = stack.start_web("web-2", wait=False)
    worker = stack.start_worker(extra_env={"WORKER_METRICS_PORT": str(worker_port)}, wait=False)
    stack.wait_ready(web, other, worker)
    metrics_url = f"{web.base_url}/metrics"

    # Not public: no token, a wrong token.
    for token in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(metrics_url, token)
        assert refused.value.code == 401

    cookie = sign_in(web.base_url, PERSON, PASSWORD)
    done = asyncio.run(chat_turn(web.base_url, cookie, "Count this turn"))
    assert done["type"] == "done", done

    # The worker counted the turn; both web processes report it.
    for url in (metrics_url, f"{other.base_url}/metrics"):
        samples = scrape(url)
        assert value(samples, "eai_chat_turns_total", model=MODEL, outcome="complete") == 1
        assert (
            value(
                samples,
                "eai_provider_calls_total",
                provider="openai-compatible",
                model=MODEL,
                outcome="ok",
            )
            == 1
        )
        assert value(samples, "eai_llm_tokens_total", model=MODEL, direction="output") > 0
        assert value(samples, "eai_chat_time_to_first_token_seconds_count", model=MODEL) == 1
        assert value(samples, "eai_workers_alive") == 1
        assert value(samples, "eai_metrics_source_up", source="queue") == 1

    # The worker's own exporter: the same counts, the same access rule.
    worker_url = f"http://127.0.0.1:{worker_port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(worker_url, None)
    assert refused.value.code == 403
    assert value(scrape(worker_url), "eai_chat_turns_total", model=MODEL, outcome="complete") == 1

    async def sockets_across_processes() -> None:
        other_cookie = sign_in(other.base_url, PERSON, PASSWORD)
        first = await ChatSocket.connect(web.base_url, cookie)
        second = await ChatSocket.connect(other.base_url, other_cookie)
        try:
            samples = scrape(metrics_url)
            assert value(samples, "eai_websocket_connections_open") == 2
            # A web process killed outright never says its sockets closed: they stop
            # counting once it is gone.
            other.kill(signal.SIGKILL)
            wait_until(
                lambda: value(scrape(metrics_url), "eai_websocket_connections_open") == 1,
                timeout=20,
                what="the killed process's socket no longer counted",
            )
        finally:
            await first.close()
            await second.close()

    asyncio.run(sockets_across_processes())

    # With the worker gone, a message waits in the llm queue (Redis) and the heartbeat lapses.
    worker.stop()
    wait_until(
        lambda: value(scrape(metrics_url), "eai_workers_alive") == 0,
        timeout=20,
        what="the stopped worker no longer counted alive",
    )

    async def send_without_worker() -> None:
        async with await ChatSocket.connect(web.base_url, cookie) as chat:
            await chat.send({"type": "send", "text": "Nobody will answer yet", "model": MODEL})
            await chat.until(lambda f: f["type"] in {"accepted", "error"}, timeout=20)

    asyncio.run(send_without_worker())
    samples = scrape(metrics_url)
    assert value(samples, "eai_llm_queue_length", queue="llm") == 1
    assert value(samples, "eai_chat_replies_in_flight", status="pending") == 1
