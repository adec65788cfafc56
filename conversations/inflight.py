"""Replies being generated in this process: their heartbeat and their stop requests.

A process may generate hundreds of replies at once (a worker's threads, the embedded
server's dispatcher). Instead of each reply asking Redis "was I stopped?" for every token
and writing its own heartbeat, one daemon thread per process does both for all of them:

* every CHAT_STOP_POLL_MS, one cache round trip reads the stop requests of every tracked
  reply and sets the flag its generator checks (`Tracked.stopped`);
* every CHAT_HEARTBEAT_SECONDS, one UPDATE refreshes `Message.heartbeat_at` of every
  tracked reply. A reply whose process dies (SIGKILL, OOM, a lost machine) stops getting
  heartbeats, and the sweeper (`conversations.services.replies_sweep`) fails it as
  interrupted once the heartbeat is older than CHAT_HEARTBEAT_TIMEOUT_SECONDS, however long
  the model itself stays silent.

A worker process also sweeps on the same thread (`start_sweeping`), so stuck replies are
found even when beat is down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from uuid import UUID

from django.conf import settings
from django.db import connections
from django.utils import timezone

from enterprise_ai.logging import Throttled

logger = logging.getLogger(__name__)
# Outages repeat the same failure for every batch of every reply: one line every 10 s.
warn = Throttled(logger)


@dataclass
class Tracked:
    """One reply being generated here. `stopped()` is true once a stop was requested."""

    pk: int
    public_id: UUID
    stop: threading.Event = field(default_factory=threading.Event)
    since: float = field(default_factory=time.monotonic)
    beaten: float = field(default_factory=time.monotonic)

    def stopped(self) -> bool:
        return self.stop.is_set()


class _Monitor:
    """The process's tracked replies and the two daemon threads that look after them.

    Stop polls (Redis) and heartbeats and sweeps (the database) run on separate threads, so
    a database that is slow or restarting never delays a stop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: dict[int, Tracked] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._pid = 0
        self._sweeping = False

    def add(self, tracked: Tracked) -> None:
        with self._lock:
            self._replies[tracked.pk] = tracked
            self._ensure_threads()

    def remove(self, tracked: Tracked) -> None:
        with self._lock:
            self._replies.pop(tracked.pk, None)

    def snapshot(self) -> list[Tracked]:
        with self._lock:
            return list(self._replies.values())

    def count(self) -> int:
        return len(self._replies)  # one atomic read of the dict's size

    def sweep_too(self) -> None:
        with self._lock:
            self._sweeping = True
            self._ensure_threads()

    def _ensure_threads(self) -> None:
        # After a fork (Celery's prefork pool) the parent's threads do not exist here.
        if self._pid != os.getpid():
            self._pid, self._threads = os.getpid(), {}
        for name, target in (("reply-stops", self._stops), ("reply-heartbeat", self._beats)):
            thread = self._threads.get(name)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=target, name=name, daemon=True)
                self._threads[name] = thread
                thread.start()

    def _stops(self) -> None:
        while True:
            time.sleep(settings.CHAT_STOP_POLL_MS / 1000)
            tracked = self.snapshot()
            if tracked:
                _poll_stops(tracked)

    def _beats(self) -> None:
        last_sweep = time.monotonic()
        while True:
            # Twice as often as the shorter interval, so neither drifts to twice its length.
            time.sleep(min(settings.CHAT_HEARTBEAT_SECONDS, settings.CHAT_SWEEP_SECONDS) / 2)
            now = time.monotonic()
            # A reply's claim wrote its first heartbeat: beat only for those older than a beat.
            due = [
                t
                for t in self.snapshot()
                if now - t.since >= settings.CHAT_HEARTBEAT_SECONDS
                and now - t.beaten >= settings.CHAT_HEARTBEAT_SECONDS
            ]
            if due:
                _heartbeat([t.pk for t in due])
                for t in due:
                    t.beaten = now
            if self._sweeping and now - last_sweep >= settings.CHAT_SWEEP_SECONDS:
                last_sweep = now
                _sweep()


def _poll_stops(tracked: list[Tracked]) -> None:
    from conversations import streams

    waiting = [t for t in tracked if not t.stopped()]
    if not waiting:
        return
    try:
        stopped = streams.stops_requested([t.public_id for t in waiting])
    except Exception as exc:  # Redis unavailable: try again at the next poll
        warn.warning("stop requests not read: %s", type(exc).__name__)
        return
    for t in waiting:
        if t.public_id in stopped:
            t.stop.set()


def _heartbeat(pks: list[int]) -> None:
    from audit.governed import governed_writes
    from conversations.models import Message

    try:
        # A liveness stamp, every few seconds per process: not an event.
        with governed_writes(reason="reply.heartbeat"):
            Message.objects.filter(pk__in=pks, status=Message.Status.STREAMING).update(
                heartbeat_at=timezone.now()
            )
    except Exception as exc:  # the database restarting: the next beat tries again
        warn.warning("reply heartbeat not written: %s", type(exc).__name__)
    finally:
        connections.close_all()  # back to the pool until the next beat


def _sweep() -> None:
    from conversations.services import replies_sweep

    try:
        replies_sweep()
    except Exception as exc:
        warn.warning("reply sweep failed: %s", type(exc).__name__)
    finally:
        connections.close_all()


_monitor = _Monitor()


@contextmanager
def tracking(*, pk: int, public_id: UUID) -> Iterator[Tracked]:
    """Keep the reply's heartbeat and stop flag up to date while the block runs."""
    tracked = Tracked(pk=pk, public_id=public_id)
    _monitor.add(tracked)
    try:
        yield tracked
    finally:
        _monitor.remove(tracked)


def active() -> int:
    """How many replies this process is generating now (read on every token: no copy)."""
    return _monitor.count()


def start_sweeping() -> None:
    """Also sweep stuck replies from this process every CHAT_SWEEP_SECONDS (workers)."""
    _monitor.sweep_too()
