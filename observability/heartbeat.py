"""Celery workers say they are alive: one Redis key per worker, refreshed on a timer.

Each worker (its main process, whatever the pool: threads, solo or prefork) writes
`<REDIS_KEY_PREFIX>:workers:<node name>` every WORKER_HEARTBEAT_SECONDS with a lifetime of
WORKER_HEARTBEAT_TTL_SECONDS, from a daemon thread started when the worker is ready
(enterprise_ai/celery.py). A worker that shuts down deletes its key at once; one that dies
(SIGKILL, OOM, a lost machine) stops refreshing it and Redis expires it. `/readyz` and the
`eai_workers_alive` metric count the keys (observability/health.py: `workers_alive()`).

With the prefork pool the thread runs in the parent, which lives as long as the worker does
and never runs tasks; the pool processes it forks inherit no running thread, and redis-py
opens new connections in a forked process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from django.conf import settings
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from enterprise_ai.logging import Throttled

logger = logging.getLogger(__name__)
# A Redis outage fails every beat the same way: one line every 10 s is enough.
warn = Throttled(logger)


_clients: dict[tuple[str, float], Redis] = {}
_clients_lock = threading.Lock()


def redis_client() -> Redis:
    """A Redis client of this process for probes and heartbeats, apart from the cache's and
    the channel layer's pools: short timeouts (READINESS_CHECK_TIMEOUT_SECONDS), so that a
    probe answers "down" quickly instead of waiting out the app's own patience. One per
    REDIS_URL and timeout, kept for the process."""
    url = settings.REDIS_URL
    timeout = float(settings.READINESS_CHECK_TIMEOUT_SECONDS)
    with _clients_lock:
        client = _clients.get((url, timeout))
        if client is None:
            client = Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                socket_keepalive=True,
                # One immediate retry on a broken connection (a pooled one left over from
                # before a Redis restart); none on a timeout, which would double the wait.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                health_check_interval=0,
                max_connections=8,
            )
            _clients[(url, timeout)] = client
        return client


def key_prefix() -> str:
    """What every worker key starts with (for SCAN: `key_prefix() + "*"`)."""
    return f"{settings.REDIS_KEY_PREFIX}:workers:"


def worker_key(hostname: str) -> str:
    return key_prefix() + hostname


class Heartbeat:
    """The heartbeat of one worker node: `start()` once, `stop()` when it shuts down."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.key = worker_key(hostname)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> bool:
        """Write the key once; whether Redis took it (a failure is logged, not raised)."""
        value = json.dumps({"pid": os.getpid(), "at": time.time()})
        ttl_ms = int(settings.WORKER_HEARTBEAT_TTL_SECONDS * 1000)
        try:
            redis_client().set(self.key, value, px=ttl_ms)
        except RedisError as exc:
            warn.warning("worker heartbeat not written: Redis unreachable (%s)", type(exc).__name__)
            return False
        return True

    def stop(self) -> None:
        """Stop beating and delete the key, so readiness sees the worker gone at once."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=settings.READINESS_CHECK_TIMEOUT_SECONDS + 1)
        try:
            redis_client().delete(self.key)
        except RedisError as exc:  # it expires on its own
            logger.warning("worker heartbeat key not deleted (%s)", type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
            try:
                self.beat()
            except Exception:  # never let the thread die: readiness would call the worker dead
                logger.exception("worker heartbeat failed")


_lock = threading.Lock()
_current: Heartbeat | None = None


def start(*, hostname: str) -> Heartbeat:
    """Start this worker's heartbeat (idempotent: a second call returns the running one)."""
    global _current
    with _lock:
        if _current is None:
            _current = Heartbeat(hostname)
            _current.start()
            logger.info("worker heartbeat started: %s", _current.key)
        return _current


def stop() -> None:
    """Stop this worker's heartbeat and delete its key (no-op when none runs)."""
    global _current
    # No lock: this may run in a signal handler (Celery's warm shutdown) on the thread that
    # holds it.
    current, _current = _current, None
    if current is not None:
        current.stop()
